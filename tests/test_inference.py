"""``pml-recallk embed`` and ``retrieve`` (pml_recallk.experiments.inference) on a tiny trained glyph run.

The references are independent of the code under test: the model's output computed one image at a time, and
nearest neighbours by brute force in float64 loops. The page is loaded in a real headless browser (Debian's
chromium) when one is installed.
"""

from __future__ import annotations

import html.parser
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pml_recallk.cli import main
from pml_recallk.experiments import builders, load_checkpoint, resolve_config, run_experiment
from pml_recallk.experiments.inference import (
    choose_queries,
    config_hash,
    embed_split,
    load_trained_model,
    retrieve,
    save_retrieval,
)


@pytest.fixture(scope="module")
def run(tiny_overrides, tmp_path_factory):
    config = resolve_config(overrides=[*tiny_overrides, "data.max_classes=8", "train.epochs=1", "train.device='cpu'"])
    output = tmp_path_factory.mktemp("run")
    run_experiment(config, output, log=lambda message: None)
    return output


@pytest.fixture(scope="module")
def embedded(run):
    return embed_split(load_trained_model(run), "test", progress=False)


def cosine_top_k(embeddings: np.ndarray, query: np.ndarray, k: int, exclude: int | None) -> tuple[list, list]:
    """Brute force in float64: each database item's cosine similarity to ``query``, sorted, ``exclude`` left out."""
    scored = []
    for index, item in enumerate(embeddings.astype(np.float64)):
        if index != exclude:
            scored.append((float(item @ query / (np.linalg.norm(item) * np.linalg.norm(query))), index))
    scored.sort(key=lambda pair: -pair[0])
    return [index for _, index in scored[:k]], [similarity for similarity, _ in scored[:k]]


# ------------------------------------------------------------------------------------------------- embed


def test_embeddings_are_the_models_output_one_image_at_a_time(run, embedded):
    state = load_checkpoint(run)
    config = state["config"]
    model = builders.build_model(config, builders.input_channels(config))
    model.load_state_dict(state["model"])
    model.eval()
    dataset = embedded.dataset
    assert embedded.embeddings.dtype == np.float32
    assert embedded.embeddings.shape == (len(dataset), config["model"]["embedding_size"])
    with torch.no_grad():
        plain = np.stack([model(dataset[i][0][None])[0].numpy() for i in range(len(dataset))])
    np.testing.assert_allclose(embedded.embeddings, plain, rtol=1e-5, atol=1e-6)
    assert embedded.labels.tolist() == [dataset[i][1] for i in range(len(dataset))]


def test_chunks_give_the_same_embeddings_as_one_chunk(run, embedded):
    chunked = embed_split(load_trained_model(run), "test", batch_size=7, progress=False)
    np.testing.assert_allclose(chunked.embeddings, embedded.embeddings, rtol=1e-5, atol=1e-6)
    assert chunked.paths == embedded.paths


def test_paths_name_each_glyph_readably_and_once(embedded):
    characters = embedded.dataset.dataset.dataset.characters  # TransformedDataset → ClassSubset → Glyphs
    assert len(set(embedded.paths)) == len(embedded.paths)
    for path, label in zip(embedded.paths, embedded.dataset.dataset.class_ids):
        assert f": {characters[label]} in " in path


def test_config_hash_is_of_the_checkpoints_config_and_stable(run, embedded):
    config = load_checkpoint(run)["config"]
    reordered = {table: dict(reversed(list(values.items()))) for table, values in reversed(list(config.items()))}
    assert embedded.config_hash == config_hash(reordered)
    assert len(embedded.config_hash) == 16 and int(embedded.config_hash, 16) >= 0
    changed = {**config, "train": {**config["train"], "lr": config["train"]["lr"] * 2}}
    assert config_hash(changed) != embedded.config_hash


def test_embed_command_writes_an_npz_without_pickles(run, embedded, tmp_path, capsys):
    output = tmp_path / "emb.npz"
    assert main(["embed", "--checkpoint", str(run), "--output", str(output)]) == 0
    assert str(output) in capsys.readouterr().out
    with np.load(output, allow_pickle=False) as saved:
        np.testing.assert_array_equal(saved["embeddings"], embedded.embeddings)
        np.testing.assert_array_equal(saved["labels"], embedded.labels)
        assert saved["paths"].tolist() == embedded.paths
        assert str(saved["config_hash"]) == embedded.config_hash


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--output", "{tmp}/missing/emb.npz"], "folder .* does not exist"),
        (["--output", "{tmp}"], "is a folder; name a file such as emb.npz"),
        (["--output", "{tmp}/emb.npz", "--batch-size", "0"], "--batch-size must be at least 1"),
        (["--output", "{tmp}/emb.npz", "--split", "nope"], "no split 'nope'"),
    ],
)
def test_embed_mistakes_are_one_line(run, tmp_path, capsys, argv, message):
    argv = [arg.format(tmp=tmp_path) for arg in argv]
    assert main(["embed", "--checkpoint", str(run), *argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pml-recallk: error: ")
    assert __import__("re").search(message, lines[0]), lines[0]
    assert not (tmp_path / "emb.npz").exists()


# ---------------------------------------------------------------------------------------------- retrieve


def test_choose_queries_is_seeded_and_covers_classes_first():
    labels = np.repeat(np.arange(5), 4)
    first = choose_queries(labels, 7, seed=3)
    assert first.tolist() == choose_queries(labels, 7, seed=3).tolist()
    assert first.tolist() != choose_queries(labels, 7, seed=4).tolist()
    assert sorted(labels[first[:5]].tolist()) == [0, 1, 2, 3, 4]  # one per class before any class twice
    assert len(set(first.tolist())) == 7
    with pytest.raises(ValueError, match="between 1 and the 20 items"):
        choose_queries(labels, 21)


def test_neighbours_are_the_brute_force_cosine_top_k(run, embedded):
    result = retrieve(load_trained_model(run), "test", top_k=5, num_queries=6, seed=1, progress=False).summary
    assert len(result["queries"]) == 6
    for query in result["queries"]:
        index = query["index"]
        expected, similarities = cosine_top_k(embedded.embeddings, embedded.embeddings[index], 5, exclude=index)
        got = [n["index"] for n in query["neighbours"]]
        assert index not in got
        # Equal as lists except where two similarities tie to float32 precision (then either order is right).
        np.testing.assert_allclose([n["similarity"] for n in query["neighbours"]], similarities, atol=2e-6)
        close = np.isclose(similarities[:-1], similarities[1:], atol=2e-6, rtol=0)
        for position, (a, b) in enumerate(zip(got, expected)):
            if not (close[position - 1] if position else False) and not (close[position] if position < 4 else False):
                assert a == b
        for neighbour in query["neighbours"]:
            assert neighbour["path"] == embedded.paths[neighbour["index"]]
            assert neighbour["label"] == embedded.labels[neighbour["index"]]
            assert neighbour["correct"] == (neighbour["label"] == query["label"])


def test_query_files_without_label_find_their_own_image(run, embedded, tmp_path):
    dataset = embedded.dataset.dataset.dataset  # the rendered glyphs, untransformed
    subset = embedded.dataset.dataset
    files = []
    for item in (0, 5):
        path = tmp_path / f"query{item}.png"
        dataset[subset.indices[item]][0].save(path)
        files.append(path)
    result = retrieve(load_trained_model(run), "test", top_k=3, query_files=files, progress=False).summary
    for query, file, item in zip(result["queries"], files, (0, 5)):
        assert query["path"] == str(file) and query["label"] is None
        assert all(n["correct"] is None for n in query["neighbours"])
        # The file is that item's picture, so the item itself (or an exact duplicate) is the nearest.
        assert query["neighbours"][0]["similarity"] == pytest.approx(1.0, abs=1e-5)
        expected, _ = cosine_top_k(embedded.embeddings, embedded.embeddings[item], 1, exclude=None)
        assert query["neighbours"][0]["similarity"] >= 1 - 1e-5 and expected[0] in (
            item,
            query["neighbours"][0]["index"],
        )


@pytest.fixture(scope="module")
def retrieval_dir(run, tmp_path_factory):
    output = tmp_path_factory.mktemp("retrieval")
    assert main(["retrieve", "--checkpoint", str(run), "--queries", "4", "--top-k", "3", "--output", str(output)]) == 0
    return output


def test_retrieve_command_writes_json_picture_and_page(retrieval_dir):
    summary = json.loads((retrieval_dir / "neighbours.json").read_text())
    assert len(summary["queries"]) == 4 and all(len(q["neighbours"]) == 3 for q in summary["queries"])
    with Image.open(retrieval_dir / "retrieval.png") as picture:
        assert picture.format == "PNG" and picture.width > 400 and picture.height > 300
    page = (retrieval_dir / "index.html").read_text()
    assert page.count('<tr class="query-row">') == 4 and "data:image/png;base64," in page


class _Images(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.images = []  # (class of the cell, data-path, naturalWidth as written by the page's check script)
        self.cell = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "td":
            self.cell = attrs.get("class")
        if tag == "img":
            self.images.append((self.cell, attrs.get("data-path"), attrs.get("data-natural-width")))


CHECK_SCRIPT = (
    '<script>window.addEventListener("load", () => { for (const img of document.images) '
    'img.setAttribute("data-natural-width", img.naturalWidth); });</script></body>'
)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium (apt-get install chromium)")
def test_page_opens_in_a_headless_browser_with_every_image_decoded(retrieval_dir, tmp_path):
    page = tmp_path / "checked.html"
    page.write_text((retrieval_dir / "index.html").read_text().replace("</body>", CHECK_SCRIPT))
    command = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run",
               f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()]  # fmt: skip
    dom = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout
    parser = _Images()
    parser.feed(dom)
    summary = json.loads((retrieval_dir / "neighbours.json").read_text())
    expected = []
    for query in summary["queries"]:
        expected.append(("query", query["path"]))
        expected += [
            ("neighbour correct" if n["correct"] else "neighbour wrong", n["path"]) for n in query["neighbours"]
        ]
    assert [(cell, path) for cell, path, _ in parser.images] == expected
    image_size = 16  # the run's data.image_size: a decoded image has its real width, a broken one 0
    assert all(width == str(image_size) for _, _, width in parser.images), parser.images


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--top-k", "0"], "--top-k must be at least 1"),
        (["--queries", "0"], "--queries must be at least 1"),
        (["--top-k", "100000"], "--top-k must be between 1 and"),
        (["--queries", "100000"], "--queries: queries must be between 1 and the"),
        (["--query", "{tmp}/nothing.png"], "--query .*nothing.png.*: no such image file"),
        (["--query", "{tmp}/text.png"], "--query .*text.png.*: not a readable image"),
    ],
)
def test_retrieve_mistakes_are_one_line(run, tmp_path, capsys, argv, message):
    (tmp_path / "text.png").write_text("not a picture")
    argv = [arg.format(tmp=tmp_path) for arg in argv]
    assert main(["retrieve", "--checkpoint", str(run), "--output", str(tmp_path / "out"), *argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pml-recallk: error: "), lines
    assert __import__("re").search(message, lines[0]), lines[0]
    assert not (tmp_path / "out").exists()


def test_retrieve_into_a_file_is_refused(run, tmp_path, capsys):
    (tmp_path / "taken").write_text("")
    assert main(["retrieve", "--checkpoint", str(run), "--output", str(tmp_path / "taken")]) == 2
    assert "is a file; name a folder" in capsys.readouterr().err


def test_save_retrieval_makes_the_folder(run, tmp_path):
    retrieval = retrieve(load_trained_model(run), "test", top_k=2, num_queries=2, progress=False)
    files = save_retrieval(retrieval, tmp_path / "new" / "folder")
    assert sorted(path.name for path in files.values()) == ["index.html", "neighbours.json", "retrieval.png"]
    assert all(path.is_file() for path in files.values())


# ------------------------------------------------------------------------------- a data set of image files


def make_vehicle_tree(root: Path, rng: np.random.Generator) -> None:
    """A VehicleID-layout folder of 20 × 20 JPEGs: 8 training vehicles, 3 test vehicles, 4 photos each, each
    vehicle one colour with noise (the three test lists name the same 3 vehicles)."""
    (root / "image").mkdir(parents=True)
    (root / "train_test_split").mkdir()
    vehicles = {"train_list.txt": range(8)} | {f"test_list_{n}.txt": range(100, 103) for n in (800, 1600, 2400)}
    for listing, ids in vehicles.items():
        lines = []
        for vehicle in ids:
            colour = np.random.default_rng(vehicle).integers(0, 256, size=3)
            for photo in range(4):
                name = f"{vehicle:04d}_{photo}"
                pixels = np.clip(colour + rng.normal(0, 20, size=(20, 20, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / "image" / f"{name}.jpg")
                lines.append(f"{name} {vehicle}")
        (root / "train_test_split" / listing).write_text("\n".join(lines) + "\n")


def test_retrieve_on_image_files_reports_the_files(tmp_path, capsys):
    root = tmp_path / "VehicleID"
    make_vehicle_tree(root, np.random.default_rng(0))
    small = ["model.name='small_cnn'", "model.embedding_size=8", "model.width=4", "data.image_size=16",
             "data.batch_size=8", "train.iterations_per_epoch=1", "train.epochs=1", "train.device='cpu'"]  # fmt: skip
    config = resolve_config("vehicleid", overrides=[*small, f"data.root={json.dumps(str(root))}"])
    run_experiment(config, tmp_path / "run", log=lambda message: None)
    output = tmp_path / "retrieval"
    argv = ["retrieve", "--checkpoint", str(tmp_path / "run"), "--top-k", "3"]  # the first test split: test_small
    assert main([*argv, "--query", str(root / "image" / "0101_2.jpg"), "--output", str(output)]) == 0
    (query,) = json.loads((output / "neighbours.json").read_text())["queries"]
    assert query["path"] == str(root / "image" / "0101_2.jpg") and query["label"] is None
    # The query is an image of the split itself: it is its own nearest neighbour, by its file's path.
    assert query["neighbours"][0]["path"] == str(root / "image" / "0101_2.jpg")
    assert query["neighbours"][0]["class"] == "101"
    assert all(Path(n["path"]).is_file() for n in query["neighbours"])
    assert main([*argv, "--queries", "3", "--output", str(output)]) == 0
    summary = json.loads((output / "neighbours.json").read_text())
    assert sorted(q["class"] for q in summary["queries"]) == ["100", "101", "102"]  # one query per class first
    for q in summary["queries"]:
        assert all(n["correct"] == (n["class"] == q["class"]) for n in q["neighbours"])
    assert summary["split"] == "test_small"


def test_docstring_examples_run():
    import doctest

    from pml_recallk import _paths
    from pml_recallk.evaluation import knn
    from pml_recallk.experiments import inference

    for module in (inference, knn, _paths):
        assert doctest.testmod(module).failed == 0


@pytest.mark.parametrize("count", [2.5, True, "3"])
def test_choose_queries_refuses_a_count_that_is_no_int(count):
    with pytest.raises(TypeError, match="queries must be an int"):
        choose_queries([0, 1, 2, 3], count)
