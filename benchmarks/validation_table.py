"""The validation side of a sweep: per arm, the best epoch's validation Recall@1 and MAP@R (mean over seeds).

A recipe search must choose on validation classes only; the runner's report shows test metrics. This table reads
the same ``runs/<arm>/seed_<n>/result.json`` files and shows only what the runs saw on validation.

    python benchmarks/validation_table.py benchmarks/results/sweep_han_glyphs_finetune_rsk_search
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np


def validation_rows(results_dir: Path) -> list[dict]:
    runs = defaultdict(list)
    for path in sorted(results_dir.glob("runs/*/seed_*/result.json")):
        result = json.loads(path.read_text())
        curve = result.get("val_curve") or []
        if len(curve) < 2:  # floors: nothing trained, nothing chosen
            continue
        # The epoch the run chose (by eval.select_by, validation Recall@1 unless set), not a choice made here.
        (best,) = [point for point in curve if point["epoch"] == result["best_epoch"]]
        runs[path.parts[-3]].append((best, curve[-1], result["spec"]["steps"]))
    rows = []
    for arm, seeds in runs.items():
        rows.append(
            {
                "arm": arm,
                "seeds": len(seeds),
                "steps": seeds[0][2],
                "best_epoch": [int(best["epoch"]) for best, _, _ in seeds],
                "val_recall_at_1": float(np.mean([best["recall_at_1"] for best, _, _ in seeds])),
                "val_map_at_r": float(np.mean([best["mean_average_precision_at_r"] for best, _, _ in seeds])),
                "last_val_map_at_r": float(np.mean([last["mean_average_precision_at_r"] for _, last, _ in seeds])),
            }
        )
    return sorted(rows, key=lambda row: -row["val_map_at_r"])


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
