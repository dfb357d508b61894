"""The code on docs/recall_at_k_accuracy_calculator.md runs as written."""

import re
from pathlib import Path

PAGE = Path(__file__).parents[2] / "docs" / "recall_at_k_accuracy_calculator.md"


def test_docs_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)
    # The first block lists signatures; the last is the runnable example.
    assert blocks and "RecallAtKAccuracyCalculator(k_values=" in blocks[-1]
    exec(compile(blocks[-1], str(PAGE), "exec"), {})
    assert "recall_at_1" in capsys.readouterr().out
