"""When and why RS@k trained from scratch collapses (issue 10): the surrogate's reach, step by step.

RS@k's gradient for a positive of soft rank r̃ is about σ'((k − r̃)/τ_k)/τ_k ≤ e^{−(r̃ − k)/τ_k}/τ_k
(docs/method.md §2): a query whose best positive ranks beyond ``reach`` = max(k) + 10·τ_k gets less than e^{−10}
of the gradient it would get inside the top k. This script trains the small CNN from random weights on the Han
training characters with RS@k at several (batch, rank temperature, learning rate) settings and records, at every
step, the loss, the fraction of the batch's queries that are out of reach (exact ranks), the mean pairwise cosine of
the batch (1 = every embedding the same), the norm of ∂L/∂embeddings, and at ``--validations`` points the
validation Recall@1 (characters held out of the training split; the test split is never touched).

    python benchmarks/rsk_collapse.py --configs 4096:0.01:1e-3:15 1024:0.05:1e-3:60 1024:0.01:1e-3:60 4096:0.01:1e-4:15

Each configuration writes ``benchmarks/results/rsk_collapse/<config>.json`` atomically (a finished one is skipped);
``--report`` draws ``rsk_collapse.png`` and ``rsk_collapse.md`` from them.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from pytorch_metric_learning.samplers import MPerClassSampler
from torch.utils.data import DataLoader, Dataset

from pml_recallk import RecallAtKAccuracyCalculator, RecallKSurrogateLoss, cached_backward, datasets
from pml_recallk._io import write_json_atomic
from pml_recallk.benchmark import harness
from pml_recallk.models.small_cnn import SmallConvNet
from pml_recallk.models.transforms import test_transform, train_transform
from pml_recallk.trainers.collapse import mean_pairwise_cosine, out_of_reach_fraction

RESULTS = Path(__file__).resolve().parent / "results" / "rsk_collapse"


class _Transformed(Dataset):
    def __init__(self, dataset, transform):
        self.dataset, self.transform, self.labels = dataset, transform, np.asarray(dataset.labels)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        image, label = self.dataset[i]
        return self.transform(image), label


def validation_recall_at_1(model, dataset) -> float:
    loader = DataLoader(_Transformed(dataset, test_transform(32, channels=1)), batch_size=512)
    model.eval()
    with torch.no_grad():
        parts = [(model(x), y) for x, y in loader]
    model.train()
    e, y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    calculator = RecallAtKAccuracyCalculator(k_values=(1,), include=("recall_at_1",))
    return float(calculator.get_accuracy(e, y, e, y, ref_includes_query=True)["recall_at_1"])


def run_config(batch: int, rank_temperature: float, lr: float, steps: int, args, train, val) -> dict:
    random.seed(args.seed)
    np.random.seed(args.seed)  # noqa: NPY002 - PML's MPerClassSampler draws from numpy's global generator
    torch.manual_seed(args.seed)
    model = SmallConvNet(128, in_channels=1, width=args.width)
    loss_fn = RecallKSurrogateLoss(rank_temperature=rank_temperature)
    reach = max(loss_fn.k_values) + 10 * float(np.max(loss_fn.k_temperature))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    sampler = MPerClassSampler(train.labels, m=4, batch_size=batch, length_before_new_iter=steps * batch)
    transform = train_transform(32, channels=1, flip=False, scale=(0.8, 1.0))
    loader = DataLoader(_Transformed(train, transform), batch_size=batch, sampler=sampler, drop_last=True)
    log = {"step": [], "loss": [], "out_of_reach": [], "mean_cos": [], "grad_norm": [], "val": []}
    log["val"].append((0, validation_recall_at_1(model, val)))
    seen = {}

    def loss_and_diagnostics(embeddings, labels):
        seen["embeddings"] = embeddings
        log["out_of_reach"].append(out_of_reach_fraction(embeddings, labels, reach=int(reach)))
        log["mean_cos"].append(mean_pairwise_cosine(embeddings))
        return loss_fn(embeddings, labels)

    start = time.perf_counter()
    for step, (images, labels) in enumerate(loader, start=1):
        loss = cached_backward(model, images, labels, loss_and_diagnostics, chunk_size=min(batch, 512))
        grad = seen["embeddings"].grad
        log["grad_norm"].append(float(grad.norm()) if grad is not None else float("nan"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        log["step"].append(step)
        log["loss"].append(float(loss))
        if step % max(1, steps // args.validations) == 0 or step == steps:
            log["val"].append((step, validation_recall_at_1(model, val)))
            print(
                f"  step {step}: loss {log['loss'][-1]:.4f}, out of reach {log['out_of_reach'][-1]:.2f}, "
                f"mean cos {log['mean_cos'][-1]:.3f}, val R@1 {log['val'][-1][1]:.4f}",
                file=sys.stderr,
                flush=True,
            )
    log["seconds"] = time.perf_counter() - start
    log["reach"] = reach
    return log


def soft_rank_census(args, train) -> list[dict]:
    """Out-of-reach queries by exact rank and by soft rank, for the untrained network, per batch size and τ_rank.

    The soft rank of a positive counts every database item by σ((s_z − s_p)/τ_rank), so even a top-ranked positive
    has r̃ ≈ 1 + Σ_z σ(−(s_p − s_z)/τ_rank): when many similarities lie within a few τ_rank of it (an untrained
    network's embeddings are nearly parallel), that sum alone exceeds the reach. The network runs in training mode
    (BatchNorm on batch statistics, chunks of 256), as the loss sees it in the first step.
    """
    from pml_recallk import functional

    torch.manual_seed(args.seed)
    model = SmallConvNet(128, in_channels=1, width=args.width).train()
    transformed = _Transformed(train, test_transform(32, channels=1))
    labels_all = np.asarray(train.labels)
    rows = []
    for batch in (256, 1024, 4096):
        rng = np.random.default_rng(args.seed)
        classes = rng.choice(np.unique(labels_all), size=batch // 4, replace=False)
        index = np.concatenate([rng.choice(np.flatnonzero(labels_all == c), 4, replace=False) for c in classes])
        images = torch.stack([transformed[int(i)][0] for i in index])
        with torch.no_grad():
            e = torch.cat([model(chunk) for chunk in images.split(256)])
        y = torch.as_tensor(labels_all[index])
        sim, self_index = e @ e.T, torch.arange(len(e))
        positives, valid = functional.build_positive_index(y, y, self_index)
        reach = 16 + 10
        for tau in (0.005, 0.01, 0.05):
            ranks = functional.soft_ranks(sim, positives, valid, self_index, rank_temperature=tau)
            best = ranks.masked_fill(~valid, float("inf")).min(dim=1).values
            rows.append(
                {
                    "batch": batch,
                    "rank_temperature": tau,
                    "exact_out_of_reach": out_of_reach_fraction(e, y, reach),
                    "soft_out_of_reach": float((best > reach).float().mean()),
                    "median_best_soft_rank": float(best.median()),
                    "mean_cos": mean_pairwise_cosine(e),
                    "similarity_std": float(sim.std()),
                }
            )
    return rows


def _name(batch: int, rank_temperature: float, lr: float) -> str:
    return f"b{batch}_tau{rank_temperature:g}_lr{lr:g}"


def report() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("b*.json"))}
    if not runs:
        return
    fig, axes = plt.subplots(1, 4, figsize=(20, 4))
    lines = [
        "# RS@k from scratch on Han glyphs: reach of the surrogate and collapse",
        "",
        "| config | steps | val R@1 at 0 | best val R@1 (step) | last val R@1 | out of reach, first → last 10 steps | "
        "mean cos, last 10 | loss, first → last 10 | s/step |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, log in runs.items():
        val = np.asarray(log["val"])
        best = int(np.argmax(val[1:, 1])) + 1 if len(val) > 1 else 0
        first, last = slice(0, 10), slice(-10, None)
        lines.append(
            f"| {name} | {log['step'][-1]} | {val[0, 1]:.3f} | {val[best, 1]:.3f} ({int(val[best, 0])}) | "
            f"{val[-1, 1]:.3f} | {np.mean(log['out_of_reach'][first]):.2f} → "
            f"{np.mean(log['out_of_reach'][last]):.2f} | {np.mean(log['mean_cos'][last]):.3f} | "
            f"{np.mean(log['loss'][first]):.3f} → {np.mean(log['loss'][last]):.3f} | "
            f"{log['seconds'] / log['step'][-1]:.1f} |"
        )
        axes[0].plot(val[:, 0], 100 * val[:, 1], marker="o", label=name)
        for ax, key in zip(axes[1:], ("out_of_reach", "mean_cos", "loss")):
            ax.plot(log["step"], log[key], label=name, linewidth=1)
    for ax, title in zip(axes, ("validation Recall@1 (%)", "queries out of reach", "mean pairwise cosine", "loss")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "rsk_collapse.png", dpi=110)
    (RESULTS / "rsk_collapse.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--configs", nargs="+", default=["4096:0.01:1e-3:15", "1024:0.05:1e-3:60"], help="batch:tau:lr:steps"
    )
    parser.add_argument("--validations", type=int, default=5, help="validation points per configuration")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report", action="store_true", help="only redraw the table and plot")
    parser.add_argument("--census", action="store_true", help="out-of-reach queries of the untrained network")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.census:
        full = datasets.HanGlyphs(split="train")
        train, _ = datasets.class_disjoint_split(full, val_fraction=0.2, seed=0)
        rows = soft_rank_census(args, train)
        lines = [
            "# Reach of the surrogate for the untrained network (Han training characters, seed 0)",
            "",
            "`python benchmarks/rsk_collapse.py --census`. A query is out of reach when its best positive ranks beyond",
            "max(k) + 10 = 26 (its recall sigmoid's slope is then below e^-10 of its peak). Batches of batch/4 classes",
            "× 4.",
            "",
            "| batch | τ_rank | similarity std | out of reach (exact rank) | out of reach (soft rank) "
            "| median soft rank of the best positive |",
            "|---|---|---|---|---|---|",
        ]
        for row in rows:
            lines.append(
                f"| {row['batch']} | {row['rank_temperature']} | {row['similarity_std']:.3f} "
                f"| {row['exact_out_of_reach']:.2f} "
                f"| {row['soft_out_of_reach']:.2f} | {row['median_best_soft_rank']:.1f} |"
            )
        harness.write_results(RESULTS / "soft_rank_census", {"rows": rows}, "\n".join(lines))
        print("\n".join(lines))
        return 0
    if not args.report:
        full = datasets.HanGlyphs(split="train")
        train, val = datasets.class_disjoint_split(full, val_fraction=0.2, seed=0)
        for spec in args.configs:
            batch, tau, lr, steps = spec.split(":")
            name = _name(int(batch), float(tau), float(lr)) + f"_s{steps}"
            out = RESULTS / f"{name}.json"
            if out.exists():
                continue
            print(name, file=sys.stderr, flush=True)
            log = run_config(int(batch), float(tau), float(lr), int(steps), args, train, val)
            write_json_atomic({**log, "config": spec, "args": vars(args), "command": " ".join(sys.argv)}, out)
    report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
