"""The README's and the docs' Python examples run as written."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def python_blocks(path: Path) -> list[str]:
    """Runnable examples: Python blocks that import something (signature blocks, which do not, are skipped)."""
    blocks = re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)
    return [b for b in blocks if re.search(r"^(import|from) ", b, flags=re.M)]


@pytest.mark.parametrize("path", [p for p in PAGES if python_blocks(p)], ids=lambda p: p.name)
def test_python_examples_run(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    for block in python_blocks(path):
        exec(compile(block, f"{path.name}:example", "exec"), {"__name__": "__example__"})


def test_readme_opens_with_install_main_job_and_tests():
    first_block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S).group(1)
    lines = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert lines[0].startswith("pip install torch==2.14.1 torchvision==0.29.1")
    assert lines[1] == "pml-recallk train" and lines[2] == "pytest"
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install torch==2.14.1 torchvision==0.29.1" in ci and 'pip install -e ".[dev]"' in ci
    assert "\npytest\n" in ci
