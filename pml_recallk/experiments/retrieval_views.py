"""The two views of ``pml-recallk retrieve``: a picture (``retrieval.png``) and a static page (``index.html``).

Both show one row per query: the query, then its top k neighbours best first, each neighbour framed green when
its class is the query's and red when it is not (a ✓ or ✗ with the class under it, and the cosine similarity).
A query from a file has no label, so its neighbours are framed grey. The page embeds its images as base64 PNG,
so it is one file that opens in any browser with no server.

Both take the ``summary`` of :class:`~pml_recallk.experiments.inference.Retrieval` (what ``neighbours.json``
holds) and ``images``, a PIL image for every path it names.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the file backend

__all__ = ["draw_retrieval_grid", "mark_of", "retrieval_page"]

COLOURS = {True: "#1a9641", False: "#d7191c", None: "#7f7f7f"}  # correct, wrong, no label to compare with
QUERY_COLOUR = "#2c7bb6"
# Text under a picture is cut to this many characters (a long class folder name would overlap its neighbours).
MAX_TEXT = 16


def mark_of(correct: bool | None) -> str:
    """``✓`` for a neighbour of the query's class, ``✗`` for another class, nothing for a query without label."""
    return {True: "✓", False: "✗", None: ""}[correct]


def _short(text: Any) -> str:
    text = str(text)
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def _query_text(query: Mapping[str, Any]) -> str:
    return _short(query["class"]) if query["class"] is not None else _short(Path(query["path"]).name)


def _headline(summary: Mapping[str, Any]) -> str:
    marks = [n["correct"] for q in summary["queries"] for n in q["neighbours"] if n["correct"] is not None]
    counted = f": {sum(marks)} of {len(marks)} neighbours of the query's class" if marks else ""
    return f"Top {summary['top_k']} by cosine similarity in {summary['dataset']} {summary['split']}{counted}"


def _frame(ax, colour: str, width: float) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(width)


def draw_retrieval_grid(summary: Mapping[str, Any], images: Mapping[str, Any], path: str | Path) -> None:
    """Draw the queries (rows) and their neighbours (columns) into the PNG file ``path``."""
    queries, k = summary["queries"], summary["top_k"]
    cell = 1.35  # inches per picture, text included
    height = cell * 1.25 * len(queries) + 0.8
    fig = plt.figure(figsize=(cell * (k + 1.25), height), dpi=110)
    # The title sits in a fixed 0.8 inches above the grid, whatever the number of rows.
    grid = fig.add_gridspec(
        len(queries), k + 2, width_ratios=[1, 0.25, *[1] * k], hspace=0.45, wspace=0.12, top=1 - 0.8 / height
    )
    for row, query in enumerate(queries):
        ax = fig.add_subplot(grid[row, 0])
        ax.imshow(images[query["path"]], interpolation="nearest")
        _frame(ax, QUERY_COLOUR, 4)
        ax.set_xlabel(_query_text(query), fontsize=9, color=QUERY_COLOUR, fontweight="bold", labelpad=3)
        if row == 0:
            ax.set_title("query", fontsize=10, color=QUERY_COLOUR, fontweight="bold")
        for column, neighbour in enumerate(query["neighbours"]):
            ax = fig.add_subplot(grid[row, column + 2])
            ax.imshow(images[neighbour["path"]], interpolation="nearest")
            colour = COLOURS[neighbour["correct"]]
            _frame(ax, colour, 4)
            mark = mark_of(neighbour["correct"])
            text = f"{mark} {_short(neighbour['class'])}".strip() + f"\n{neighbour['similarity']:.3f}"
            ax.set_xlabel(text, fontsize=9, color=colour, fontweight="bold", labelpad=3, linespacing=1.1)
            if row == 0:
                ax.set_title(f"#{column + 1}", fontsize=10)
    fig.suptitle(_headline(summary), fontsize=11, y=1 - 0.25 / height)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def _data_uri(image: Any) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; }
table { border-collapse: separate; border-spacing: 8px; }
th { font-weight: normal; color: #555; }
figure { margin: 0; text-align: center; }
img { width: 112px; height: 112px; object-fit: contain; image-rendering: pixelated; background: #fff;
      border: 5px solid #7f7f7f; box-sizing: border-box; display: block; }
figcaption { font-size: 13px; font-weight: bold; margin-top: 3px; max-width: 112px; overflow-wrap: anywhere; }
.query img { border-color: #2c7bb6; } .query figcaption { color: #2c7bb6; }
.correct img { border-color: #1a9641; } .correct figcaption { color: #1a9641; }
.wrong img { border-color: #d7191c; } .wrong figcaption { color: #d7191c; }
td.gap { width: 16px; }
small { font-weight: normal; color: #555; }
"""


def _figure(kind: str, path: str, image_uri: str, caption: str, detail: str) -> str:
    return (
        f'<td class="{kind}"><figure><img src="{image_uri}" alt="{html.escape(path)}" title="{html.escape(path)}" '
        f'data-path="{html.escape(path)}"><figcaption>{caption}<br><small>{detail}</small></figcaption></figure></td>'
    )


def retrieval_page(summary: Mapping[str, Any], images: Mapping[str, Any]) -> str:
    """The static HTML page of the retrieval (one ``<tr class="query-row">`` per query), as text."""
    uris = {path: _data_uri(image) for path, image in images.items()}
    rows = []
    for query in summary["queries"]:
        label = "" if query["label"] is None else f"label {query['label']}"
        cells = [_figure("query", query["path"], uris[query["path"]], html.escape(_query_text(query)), label)]
        cells.append('<td class="gap"></td>')
        for neighbour in query["neighbours"]:
            kind = {True: "neighbour correct", False: "neighbour wrong", None: "neighbour"}[neighbour["correct"]]
            caption = html.escape(f"{mark_of(neighbour['correct'])} {_short(neighbour['class'])}".strip())
            similarity = f"{neighbour['similarity']:.3f}"
            cells.append(_figure(kind, neighbour["path"], uris[neighbour["path"]], caption, similarity))
        rows.append('<tr class="query-row">' + "".join(cells) + "</tr>")
    header = "<tr><th>query</th><th></th>" + "".join(f"<th>#{i + 1}</th>" for i in range(summary["top_k"])) + "</tr>"
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8"><title>pml-recallk retrieval</title>',
            f"<style>{_STYLE}</style></head><body>",
            f"<h1>{html.escape(_headline(summary))}</h1>",
            f"<p>Checkpoint <code>{html.escape(str(summary['checkpoint']))}</code> (config hash "
            f"<code>{html.escape(summary['config_hash'])}</code>). Green: the query's class; red: another class. "
            "Under each neighbour: the cosine similarity. Hover a picture for its path.</p>",
            f"<table><thead>{header}</thead><tbody>",
            *rows,
            "</tbody></table></body></html>",
            "",
        ]
    )
