"""pml_recallk.benchmark.harness: a worker process's result, memory and time probes, results written one way, and
the gradient spread measures (against values worked out by hand)."""

from __future__ import annotations

import json
import textwrap
import time

import numpy as np
import pytest

from pml_recallk.benchmark import harness
from pml_recallk.benchmark.harness import gradient_spread

# ------------------------------------------------------------------------------------------ gradient spread


def test_equal_gradients_participate_fully():
    result = gradient_spread(np.full(10, 0.3))
    # (10 · 0.3)² / (10 · 10 · 0.09) = 1; 9 of 10 equal squares reach 90 %; none below 1 % of the largest.
    assert result == pytest.approx({"participation": 1.0, "share_for_90": 0.9, "silent": 0.0})


def test_one_item_with_all_the_gradient():
    result = gradient_spread(np.array([0.0, 0.0, 2.0, 0.0]))
    assert result == pytest.approx({"participation": 0.25, "share_for_90": 0.25, "silent": 0.75})


def test_uneven_gradients():
    norms = np.array([3.0, 1.0, 1.0, 0.001])
    # Σ g = 5.001, Σ g² = 11.000001; 90 % of it is 9.9: 9 (the 3) is short, 9 + 1 = 10 reaches it.
    expected = {"participation": 5.001**2 / (4 * 11.000001), "share_for_90": 2 / 4, "silent": 1 / 4}
    assert gradient_spread(norms) == pytest.approx(expected)


def test_no_gradient_at_all():
    assert gradient_spread(np.zeros(5)) == {"participation": 0.0, "share_for_90": 0.0, "silent": 1.0}


# ------------------------------------------------------------------------------------------------ workers


def _script(tmp_path, body: str):
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(body))
    return path


def test_a_worker_returns_the_json_object_on_its_last_line(tmp_path):
    script = _script(
        tmp_path,
        """
        import json, sys
        print("progress that is not JSON")
        print(json.dumps({"args": sys.argv[1:], "x": 0.5}))
        """,
    )
    assert harness.run_worker(script, ["--worker", 3]) == {"args": ["--worker", "3"], "x": 0.5}


@pytest.mark.parametrize(
    ("body", "note"),
    [
        ("import sys\nprint('{}')\nsys.exit('out of memory: B = 4000')", "out of memory: B = 4000"),
        ("print('done')", "printed no JSON object on its last line"),
        ("print('[1, 2]')", "printed no JSON object on its last line"),
        ("import time\ntime.sleep(30)", "> 1 s"),
    ],
)
def test_a_worker_without_a_result_raises_with_a_one_line_note(tmp_path, body, note):
    with pytest.raises(harness.WorkerFailed) as failure:
        harness.run_worker(_script(tmp_path, body), [], timeout=1)
    assert failure.value.note == note


def test_peak_memory_sees_an_allocation_inside_the_block():
    pytest.importorskip("psutil")
    size = 64 * harness.MIB
    with harness.PeakResidentMemory() as memory:
        block = np.ones(size // 8)  # written, so resident
        time.sleep(0.2)  # the sampling thread gets its turn on a busy machine
        del block
    assert memory.peak - memory.before >= 0.9 * size
    assert harness.peak_rss_mb() >= harness.current_rss_mb() > 0


def test_results_are_written_as_json_and_markdown(tmp_path):
    harness.write_results(tmp_path / "out" / "speed", {"command": "c", "rows": [{"x": 1}]}, "# Speed")
    assert json.loads((tmp_path / "out" / "speed.json").read_text()) == {"command": "c", "rows": [{"x": 1}]}
    assert (tmp_path / "out" / "speed.md").read_text() == "# Speed\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["speed.json", "speed.md"]
