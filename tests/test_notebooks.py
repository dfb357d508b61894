"""Every example notebook runs top to bottom (with PML_RECALLK_QUICK=1: tiny settings), and is committed executed."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "examples").glob("*.ipynb"))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_there_are_four_examples():
    assert [path.name[:2] for path in NOTEBOOKS] == ["01", "02", "03", "04"]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs_top_to_bottom_with_quick_settings(path, tmp_path, monkeypatch):
    monkeypatch.setenv("PML_RECALLK_QUICK", "1")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    # Tiny convolutions: on a busy machine a second thread costs more in synchronisation than it saves.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend turns figures into PNG outputs
    notebook = nbformat.read(path, as_version=4)
    # The kernel runs in a scratch folder, so whatever a notebook writes (runs/...) stays out of the repository.
    client = nbclient.NotebookClient(
        notebook, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails
    images = [
        output for cell in notebook.cells for output in cell.get("outputs", []) if "image/png" in output.get("data", {})
    ]
    assert images, f"{path.name} drew no plot"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_is_committed_executed_with_its_plots(path):
    notebook = nbformat.read(path, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    # Executed in order, top to bottom, in one kernel session.
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1))
    outputs = [output for cell in code for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"], f"{path.name} was committed with an error"
    pngs = [base64.b64decode(o.data["image/png"]) for o in outputs if "image/png" in o.get("data", {})]
    assert pngs and all(png.startswith(PNG_SIGNATURE) for png in pngs)
