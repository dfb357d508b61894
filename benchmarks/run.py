"""The loss benchmark: ``python benchmarks/run.py --sweep benchmarks/configs/sweep_glyphs_debian.toml``.

The same as ``pml-recallk benchmark ...``; see ``docs/benchmark.md`` and ``pml_recallk/benchmark/``.
"""

import sys

from pml_recallk.benchmark import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], prog="python benchmarks/run.py"))
