"""The many-class Han glyph study (issue 10): does RS@k gain with the batch size, and against PML's losses?

Two protocols on :class:`pml_recallk.datasets.HanGlyphs` (3,500 level-1 characters; train and test split by
character and by typeface design):

* ``scratch``: the small CNN trained from random weights on the training characters;
* ``finetune``: the paper's shape. A backbone is trained once on the disjoint ``pretrain`` characters (in the
  training designs only) and cached with its recipe; every arm then fine-tunes that same checkpoint, with BatchNorm
  frozen as in the paper, for the same number of epochs (a larger batch takes fewer steps), or for as many steps as
  batch 256 takes (the ``*_eqsteps`` arms), so that batch size and step count are not confounded.

Each (protocol, arm, seed) run writes ``result.json`` atomically: test Recall@{1,2,4,8,16,32} and MAP@R at the
epoch with the best validation Recall@1 (validation characters are carved from the training characters; the test
split is never used to choose anything), the validation curve, the loss curve and, for RS@k, the collapse
diagnostics (how many queries have their best positive beyond the reach of the surrogate's gradient). A finished
run is skipped, so an interrupted sweep resumes.

    python benchmarks/han_study.py pretrain
    python benchmarks/han_study.py run --protocol finetune --arms rsk_b256 rsk_b1024 rsk_b4096 --seeds 0 1 2
    python benchmarks/han_study.py report

This script drives the library directly (dataset, model, losses, ``cached_backward``, the calculator); the same
arms will move into the benchmark runner's sweep files once it expresses arms.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from pytorch_metric_learning import losses, miners
from pytorch_metric_learning.samplers import MPerClassSampler
from torch.utils.data import DataLoader, Dataset

from pml_recallk import RecallAtKAccuracyCalculator, RecallKSurrogateLoss, SimilarityMixup, cached_backward, datasets
from pml_recallk._io import save_torch_atomic, write_json_atomic
from pml_recallk.models.small_cnn import SmallConvNet
from pml_recallk.models.transforms import test_transform, train_transform

RESULTS = Path(__file__).resolve().parent / "results" / "han_study"
K_VALUES = (1, 2, 4, 8, 16, 32)


@dataclass(frozen=True)
class Arm:
    """One configuration: a loss at a batch size, optionally at batch 256's step count."""

    loss: str
    batch: int
    equal_steps: bool = False
    mixup: str = ""  # "", "official" or "database"
    lr_factor: float = 1.0
    overrides: dict = field(default_factory=dict)  # keyword arguments of RecallKSurrogateLoss

    @property
    def trains(self) -> bool:
        return self.loss != "floor"


def _arms() -> dict[str, Arm]:
    arms = {"floor": Arm("floor", 0)}
    for b in (256, 1024, 4096):
        arms[f"rsk_b{b}"] = Arm("rsk", b)
    for b in (1024, 4096):
        arms[f"rsk_b{b}_eqsteps"] = Arm("rsk", b, equal_steps=True)
    for b in (256, 1024, 4096):
        for mode in ("official", "database"):
            arms[f"rsk_simix_{mode}_b{b}"] = Arm("rsk", b, mixup=mode)
    for name in ("multi_similarity", "contrastive", "proxy_anchor", "fastap", "triplet"):
        for b in (256, 1024):
            arms[f"{name}_b{b}"] = Arm(name, b)
    return arms


ARMS = _arms()


# ------------------------------------------------------------------------------------------------ data


class _Transformed(Dataset):
    def __init__(self, dataset, transform):
        self.dataset, self.transform, self.labels = dataset, transform, np.asarray(dataset.labels)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        image, label = self.dataset[i]
        return self.transform(image), label


def load_data(args, split: str) -> dict[str, Dataset]:
    """``{"train", "val", "test"}`` for the level-1 characters, or ``{"train", "val"}`` of the pretraining set."""
    options = dict(image_size=args.image_size, images_per_class=args.images_per_class, seed=args.split_seed)
    base = datasets.HanGlyphs(split=split, **options)
    train, val = datasets.class_disjoint_split(base, val_fraction=0.2, seed=args.split_seed)
    data = {"train": train, "val": val}
    if split == "train":
        data["test"] = datasets.HanGlyphs(split="test", **options)
    return data


def embed(model, dataset, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    loader = DataLoader(_Transformed(dataset, test_transform(image_size, channels=1)), batch_size=512)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        parts = [(model(x), y) for x, y in loader]
    model.train(was_training)
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def evaluate(model, dataset, image_size: int) -> dict[str, float]:
    embeddings, labels = embed(model, dataset, image_size)
    metrics = tuple(f"recall_at_{k}" for k in K_VALUES) + ("mean_average_precision_at_r",)
    calculator = RecallAtKAccuracyCalculator(k_values=K_VALUES, include=metrics)
    metrics = calculator.get_accuracy(embeddings, labels, embeddings, labels, ref_includes_query=True)
    return {k: float(v) for k, v in metrics.items()}


# ------------------------------------------------------------------------------------------------ losses


def build_loss(arm: Arm, num_classes: int, embedding_size: int):
    """(loss, miner or None). Settings as each paper (and PML's defaults) recommend."""
    if arm.loss == "rsk":
        loss = RecallKSurrogateLoss(**arm.overrides)
        return (SimilarityMixup(loss, mode=arm.mixup) if arm.mixup else loss), None
    if arm.loss == "multi_similarity":
        return losses.MultiSimilarityLoss(alpha=2.0, beta=50.0, base=0.5), miners.MultiSimilarityMiner(epsilon=0.1)
    if arm.loss == "contrastive":
        return losses.ContrastiveLoss(pos_margin=0.0, neg_margin=1.0), None
    if arm.loss == "proxy_anchor":
        return losses.ProxyAnchorLoss(num_classes, embedding_size, margin=0.1, alpha=32.0), None
    if arm.loss == "fastap":
        return losses.FastAPLoss(num_bins=10), None
    if arm.loss == "triplet":
        return losses.TripletMarginLoss(margin=0.1), miners.TripletMarginMiner(margin=0.1, type_of_triplets="semihard")
    raise ValueError(f"unknown loss {arm.loss!r}")


def rank_diagnostics(embeddings: torch.Tensor, labels: torch.Tensor, reach: int) -> dict[str, float]:
    """Mean cosine of distinct pairs, and the fraction of queries whose best positive ranks beyond ``reach``.

    The surrogate's gradient for a positive of rank r is about σ'((k − r)/τ_k) ≤ e^{−(r − k)/τ_k}: a query whose
    best positive ranks far beyond the largest k gets essentially no gradient (docs/method.md §2).
    """
    with torch.no_grad():
        e = torch.nn.functional.normalize(embeddings.float(), dim=1)
        sim = e @ e.T
        n = len(e)
        mean_cos = float((sim.sum() - sim.diagonal().sum()) / (n * (n - 1)))
        sim.fill_diagonal_(-math.inf)
        same = labels[:, None] == labels[None, :]
        best_pos = sim.masked_fill(~same, -math.inf).max(dim=1).values
        rank = (sim > best_pos[:, None]).sum(dim=1) + 1  # negatives above the best positive, + 1
        return {"mean_cos": mean_cos, "out_of_reach": float((rank > reach).float().mean())}


# ------------------------------------------------------------------------------------------------ training


def _set_seed(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - PML's MPerClassSampler draws from numpy's global generator


def _freeze_batchnorm(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


def _optimizer(model, loss, lr: float, weight_decay: float):
    groups = [{"params": list(model.parameters()), "lr": lr}]
    loss_params = list(loss.parameters())
    if loss_params:  # ProxyAnchor's proxies: 100 × the network's rate, as its paper does
        groups.append({"params": loss_params, "lr": lr * 100})
    return torch.optim.Adam(groups, weight_decay=weight_decay)


def _loader(train, arm: Arm, steps: int, args) -> DataLoader:
    transform = train_transform(args.image_size, channels=1, flip=False, scale=(0.5, 1.0))
    sampler = MPerClassSampler(train.labels, m=4, batch_size=arm.batch, length_before_new_iter=steps * arm.batch)
    return DataLoader(_Transformed(train, transform), batch_size=arm.batch, sampler=sampler, drop_last=True)


def train_arm(model, arm: Arm, data, args, epochs: int, lr: float, freeze_bn: bool) -> dict:
    """Train ``model`` in place; return the history and the state of the best validation epoch."""
    num_classes = len(np.unique(data["train"].labels))
    loss, miner = build_loss(arm, num_classes, args.embedding_size)
    opt = _optimizer(model, loss, lr, args.weight_decay)
    steps = len(data["train"]) // (256 if arm.equal_steps else arm.batch)
    loader = _loader(data["train"], arm, steps, args)
    diagnostics: list[dict] = []

    def loss_fn(embeddings, labels):
        if arm.loss == "rsk":
            diagnostics.append(rank_diagnostics(embeddings, labels, reach=2 * max(loss_k_values(loss))))
        return loss(embeddings, labels, miner(embeddings, labels)) if miner else loss(embeddings, labels)

    # Epoch 0 (before training) is recorded but never selected: a run that only loses accuracy must show it.
    val = [evaluate(model, data["val"], args.image_size)["recall_at_1"]]
    best = (-1.0, 0, None)
    history = {"val_recall_at_1": val, "loss": [], "seconds_per_epoch": []}
    for epoch in range(1, epochs + 1):
        model.train()
        if freeze_bn:
            _freeze_batchnorm(model)
        start = time.perf_counter()
        for images, labels in loader:
            value = cached_backward(model, images, labels, loss_fn, chunk_size=min(arm.batch, 1024))
            opt.step()
            opt.zero_grad(set_to_none=True)
            history["loss"].append(float(value))
        history["seconds_per_epoch"].append(time.perf_counter() - start)
        val.append(evaluate(model, data["val"], args.image_size)["recall_at_1"])
        _print(f"  epoch {epoch}/{epochs}: loss {np.mean(history['loss'][-steps:]):.4f}, val R@1 {val[-1]:.4f}")
        if val[-1] > best[0]:
            best = (val[-1], epoch, {k: v.clone() for k, v in model.state_dict().items()})
    history["steps"] = len(history["loss"])
    history["best_epoch"] = best[1]
    history["diagnostics"] = diagnostics
    model.load_state_dict(best[2])
    return history


def loss_k_values(loss) -> list[int]:
    inner = getattr(loss, "loss", loss)
    return list(inner.k_values)


def _print(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ protocols


def _recipe_key(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def pretrain(args) -> Path:
    """Train the backbone once on the pretraining characters; cached by recipe (a rerun returns the cache)."""
    recipe = {
        "loss": "proxy_anchor",
        "width": args.width,
        "embedding_size": args.embedding_size,
        "image_size": args.image_size,
        "images_per_class": args.pretrain_images_per_class,
        "epochs": args.pretrain_epochs,
        "batch": 256,
        "lr": 1e-3,
        "weight_decay": args.weight_decay,
        "seed": 0,
        "split_seed": args.split_seed,
    }
    path = RESULTS / "pretrained" / f"small_cnn_{_recipe_key(recipe)}.pt"
    if path.exists():
        return path
    _set_seed(0)
    pre_args = argparse.Namespace(**{**vars(args), "images_per_class": recipe["images_per_class"]})
    data = load_data(pre_args, "pretrain")
    _print(f"pretraining on {len(data['train'])} images of {len(np.unique(data['train'].labels))} characters")
    model = SmallConvNet(args.embedding_size, in_channels=1, width=args.width)
    start = time.perf_counter()
    history = train_arm(model, Arm("proxy_anchor", 256), data, pre_args, recipe["epochs"], recipe["lr"], False)
    record = {"recipe": recipe, "history": history, "seconds": time.perf_counter() - start}
    save_torch_atomic({"state_dict": model.state_dict(), **record}, path)
    write_json_atomic({k: v for k, v in record.items()}, path.with_suffix(".json"))
    return path


def run_one(args, protocol: str, name: str, seed: int, data, init: dict | None) -> None:
    out = RESULTS / protocol / name / f"seed_{seed}" / "result.json"
    if out.exists():
        return
    arm = ARMS[name]
    _print(f"{protocol} / {name} / seed {seed}")
    _set_seed(seed)
    model = SmallConvNet(args.embedding_size, in_channels=1, width=args.width)
    if init is not None:
        model.load_state_dict(init["state_dict"])
    start = time.perf_counter()
    history = {}
    if arm.trains:
        epochs = args.epochs_finetune if protocol == "finetune" else args.epochs_scratch
        lr = (args.lr_finetune if protocol == "finetune" else args.lr_scratch) * arm.lr_factor
        history = train_arm(model, arm, data, args, epochs, lr, freeze_bn=protocol == "finetune")
    test = evaluate(model, data["test"], args.image_size)
    result = {
        "protocol": protocol,
        "arm": name,
        "settings": asdict(arm),
        "seed": seed,
        "test": test,
        "history": history,
        "seconds": time.perf_counter() - start,
        "init_recipe": init["recipe"] if init else None,
        "args": {k: v for k, v in vars(args).items() if k not in ("func",)},
        "torch_threads": torch.get_num_threads(),
        "command": " ".join(sys.argv),
    }
    write_json_atomic(result, out)
    _print(f"  test R@1 {test['recall_at_1']:.4f}  MAP@R {test['mean_average_precision_at_r']:.4f}")


def run(args) -> None:
    data = load_data(args, "train")
    _print({k: (len(v), len(np.unique(v.labels))) for k, v in data.items()})
    init = torch.load(pretrain(args), weights_only=False) if args.protocol == "finetune" else None
    for seed in args.seeds:
        for name in args.arms:
            run_one(args, args.protocol, name, seed, data, init)


# ------------------------------------------------------------------------------------------------ report


def _load_results() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*/*/seed_*/result.json"))]


def _mean_std(values) -> str:
    values = 100 * np.asarray(values, dtype=float)
    std = values.std(ddof=1) if len(values) > 1 else float("nan")
    return f"{values.mean():.1f} ± {std:.1f}" if len(values) > 1 else f"{values.mean():.1f}"


def report(args) -> None:
    results = _load_results()
    metrics = [f"recall_at_{k}" for k in K_VALUES] + ["mean_average_precision_at_r"]
    lines = ["# Han glyph study: test metrics (%, mean ± sample std over seeds)", ""]
    header = "| arm | seeds | " + " | ".join(
        m.replace("recall_at_", "R@").replace("mean_average_precision_at_r", "MAP@R") for m in metrics
    )
    csv = ["protocol,arm,seed,steps,seconds," + ",".join(metrics)]
    for protocol in ("scratch", "finetune"):
        rows = [r for r in results if r["protocol"] == protocol]
        if not rows:
            continue
        lines += [f"## {protocol}", "", header + " | steps | min/run |", "|" + "---|" * (len(metrics) + 4)]
        for name in [a for a in ARMS if any(r["arm"] == a for r in rows)]:
            group = [r for r in rows if r["arm"] == name]
            cells = [_mean_std([r["test"][m] for r in group]) for m in metrics]
            steps = group[0]["history"].get("steps", 0)
            minutes = np.mean([r["seconds"] for r in group]) / 60
            lines.append(f"| {name} | {len(group)} | " + " | ".join(cells) + f" | {steps} | {minutes:.1f} |")
            for r in group:
                csv.append(
                    f"{protocol},{name},{r['seed']},{steps},{r['seconds']:.1f},"
                    + ",".join(f"{r['test'][m]:.5f}" for m in metrics)
                )
        lines.append("")
    (RESULTS / "table.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "per_seed.csv").write_text("\n".join(csv) + "\n")
    _plot(results)
    print("\n".join(lines))


def _plot(results: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protocols = [p for p in ("scratch", "finetune") if any(r["protocol"] == p for r in results)]
    if not protocols:
        return
    fig, axes = plt.subplots(1, len(protocols), figsize=(6 * len(protocols), 4.2), squeeze=False)
    for ax, protocol in zip(axes[0], protocols):
        rows = [r for r in results if r["protocol"] == protocol and ARMS[r["arm"]].trains]
        series: dict[str, dict[int, list[float]]] = {}
        for r in rows:
            arm = ARMS[r["arm"]]
            label = (
                arm.loss + (f"+simix_{arm.mixup}" if arm.mixup else "") + (" (equal steps)" if arm.equal_steps else "")
            )
            series.setdefault(label, {}).setdefault(arm.batch, []).append(100 * r["test"]["recall_at_1"])
        for label, points in sorted(series.items()):
            batches = sorted(points)
            means = [np.mean(points[b]) for b in batches]
            stds = [np.std(points[b], ddof=1) if len(points[b]) > 1 else 0 for b in batches]
            ax.errorbar(batches, means, yerr=stds, marker="o", capsize=3, label=label)
        for r in results:
            if r["protocol"] == protocol and r["arm"] == "floor":
                ax.axhline(100 * r["test"]["recall_at_1"], color="grey", linestyle=":", linewidth=1)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel("test Recall@1 (%)")
        ax.set_title(f"{protocol} (dotted: {'pretrained' if protocol == 'finetune' else 'untrained'} floor)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "recall_at_1_vs_batch.png", dpi=120)


# ------------------------------------------------------------------------------------------------ command


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--embedding-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--images-per-class", type=int, default=8)
    parser.add_argument("--pretrain-images-per-class", type=int, default=12)
    parser.add_argument("--pretrain-epochs", type=int, default=8)
    parser.add_argument("--epochs-scratch", type=int, default=12)
    parser.add_argument("--epochs-finetune", type=int, default=4)
    parser.add_argument("--lr-scratch", type=float, default=1e-3)
    parser.add_argument("--lr-finetune", type=float, default=3e-4)
    parser.add_argument("--weight-decay", type=float, default=4e-4)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("pretrain").set_defaults(func=lambda a: print(pretrain(a)))
    p = sub.add_parser("run")
    p.add_argument("--protocol", choices=("scratch", "finetune"), required=True)
    p.add_argument("--arms", nargs="+", choices=sorted(ARMS), required=True)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.set_defaults(func=run)
    sub.add_parser("report").set_defaults(func=report)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
