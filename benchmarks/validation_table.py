"""The validation side of a sweep: per arm, the best epoch's validation Recall@1 and MAP@R (mean over seeds).

A recipe search must choose on validation classes only; the runner's report shows test metrics. This table reads
the same ``runs/<arm>/seed_<n>/result.json`` files and shows only what the runs saw on validation.

    python benchmarks/validation_table.py benchmarks/results/sweep_han_glyphs_finetune_rsk_search
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pml_recallk.benchmark.report import validation_rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results_dir", type=Path)
    args = parser.parse_args(argv)
    rows = validation_rows(args.results_dir)
    lines = [
        f"# Validation only: {args.results_dir}",
        "",
        f"`python benchmarks/validation_table.py {args.results_dir}`. Best epoch: the one each run chose (by",
        "validation Recall@1 unless its eval.select_by says otherwise); rows sorted by that epoch's validation MAP@R",
        "(Recall@1 of the small validation split saturates). Means over seeds.",
        "",
        "| arm | seeds | steps | best epoch(s) | val R@1 (%) | val MAP@R (%) | last epoch's val MAP@R (%) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['arm']} | {row['seeds']} | {row['steps']} | {row['best_epoch']} "
            f"| {100 * row['val_recall_at_1']:.2f} | {100 * row['val_map_at_r']:.2f} "
            f"| {100 * row['last_val_map_at_r']:.2f} |"
        )
    text = "\n".join(lines) + "\n"
    (args.results_dir / "validation.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
