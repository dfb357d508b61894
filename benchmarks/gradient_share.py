"""How many items of a batch each loss learns from, at the start of the Han fine-tune (issue 10).

RS@k trails contrastive and FastAP at the same epochs and gains more than they do from a larger batch at the same
steps. One measurable reason is how the gradient is spread over the batch. For one batch drawn as the trainer
draws it (MPerClassSampler, m = 4, the training augmentation; BatchNorm frozen or on each chunk of 256 as the
run's ``train.freeze_batchnorm`` says),
each loss's gradient with respect to the embeddings gives one norm g_i per item, and this script reports:

* the participation ratio (Σ g_i)² / (B Σ g_i²): 1 when every item gets the same gradient, 1/B when one item
  gets it all;
* the share of items that carry 90 % of Σ g_i² (the fewest such items, over B);
* the share of items with g_i below 1 % of the largest ("silent").

It is scale-free, so the losses' reductions (mean over queries, pairs or triplets) do not matter, and neither
does Adam's normalisation. Three batches per batch size, from the checkpoint a fine-tune starts from:

    python benchmarks/gradient_share.py --threads 1

writes ``benchmarks/results/gradient_share/gradient_share.{md,json}``. Any sweep arm's network and data instead of
the Han config, at its starting weights or at a trained run's best checkpoint, with RS@k variants (``NAME+key=value``
sets keys of the loss table), e.g. the icon study's (issue 21):

    python benchmarks/gradient_share.py --sweep benchmarks/configs/sweep_icons_finetune.toml --arm rsk_b256 \
        --losses rsk rsk+calibration_weight=0.1 rsk+rank_temperature=0.04 contrastive fastap --name icons_start
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from pml_recallk.benchmark import harness
from pml_recallk.benchmark.harness import gradient_spread
from pml_recallk.experiments import builders, resolve_config
from pml_recallk.experiments.checkpoints import load_init_weights

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "gradient_share"
LOSSES = ("rsk", "contrastive", "fastap", "multi_similarity", "triplet")


def loss_config(config, variant: str) -> dict:
    """The config with the loss of ``variant``: a preset name, optionally ``+key=value`` keys of its table."""
    from pml_recallk.experiments.config import apply_overrides, validate_config  # noqa: PLC0415

    name, *settings = variant.split("+")
    config = apply_overrides(config, [f"loss.name={name}", *(f"loss.{setting}" for setting in settings)])
    validate_config(config)
    return config


def gradient_norms(loss_name: str, config, embeddings: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """‖∂L/∂e_i‖ for every item i of the batch, under the loss (and miner) the benchmark builds for ``loss_name``
    (a preset, or ``preset+key=value+…``)."""
    config = loss_config(config, loss_name)
    loss_fn, miner = builders.build_loss(config, num_classes=int(labels.max()) + 1)
    leaf = embeddings.detach().clone().requires_grad_(True)
    pairs = miner(leaf, labels) if miner is not None else None
    loss = loss_fn(leaf, labels, pairs) if pairs is not None else loss_fn(leaf, labels)
    (grad,) = torch.autograd.grad(loss, leaf, allow_unused=True)
    if grad is None:  # no pair or triplet was active: no item learns anything
        return np.zeros(len(labels))
    return grad.norm(dim=1).double().numpy()


def share_with_a_positive_near_the_top(embeddings: torch.Tensor, labels: torch.Tensor, k: int = 16) -> float:
    """The share of queries whose nearest positive is among their ``k`` most similar other items (cosine): the
    queries for which RS@k's recall sigmoids σ((k − r̃)/τ_k), k ≤ 16, are not flat."""
    e = torch.nn.functional.normalize(embeddings.double(), dim=1)
    sim = e @ e.T
    sim.fill_diagonal_(-float("inf"))
    same = labels[:, None] == labels[None, :]
    same.fill_diagonal_(False)
    best_positive = sim.masked_fill(~same, -float("inf")).max(1).values
    rank = (sim > best_positive[:, None]).sum(1) + 1  # 1: the nearest other item is a positive
    return float((rank <= k).double().mean())


def similarity_spread(embeddings: torch.Tensor) -> tuple[float, float]:
    """Mean and standard deviation of the cosine similarities between distinct items of the batch. A network whose
    embeddings all point one way (spread ≪ RS@k's τ_rank of 0.01) gives every soft rank about half the batch."""
    e = torch.nn.functional.normalize(embeddings.double(), dim=1)
    off_diagonal = (e @ e.T)[~torch.eye(len(e), dtype=torch.bool)]
    return float(off_diagonal.mean()), float(off_diagonal.std())


def draw_batch(train, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    labels_all = np.asarray(train.labels)
    classes = rng.choice(np.unique(labels_all), size=batch // 4, replace=False)
    index = np.concatenate([rng.choice(np.flatnonzero(labels_all == c), 4, replace=False) for c in classes])
    torch.manual_seed(seed)  # the augmentation's draws
    images = torch.stack([train[int(i)][0] for i in index])
    return images, torch.as_tensor(labels_all[index])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "examples" / "configs" / "han_glyphs_finetune.toml"))
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--draws", type=int, default=3, help="batches per batch size")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sweep", help="take the network, data and recipe of an arm of this sweep file instead")
    parser.add_argument("--arm", help="the arm of --sweep (seed 0)")
    parser.add_argument("--checkpoint", default="", help="a run folder or checkpoint to load instead of the start")
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), help="presets, or preset+key=value+...")
    parser.add_argument(
        "--name", default="gradient_share", help="results file name (benchmarks/results/gradient_share/)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.sweep:
        from pml_recallk import benchmark  # noqa: PLC0415

        sweep, _ = benchmark.load_sweep(args.sweep)
        config = sweep.arm_config(sweep.arm(args.arm), seed=0)
        source = f"sweep `{Path(args.sweep).name}`, arm `{args.arm}`"
    else:
        config = resolve_config(config_file=args.config)
        source = f"config `{Path(args.config).name}`"
    torch.manual_seed(config["train"]["seed"])  # the head's initialisation, as the run's
    train = builders.build_datasets(config, splits=["train"])["train"]
    model = builders.build_model(config)
    start = args.checkpoint or config["model"]["init_checkpoint"]
    if start:
        load_init_weights(model, start)
    # The network as the trainer sees it: frozen BatchNorm (eval mode), or BatchNorm on each chunk of 256's own
    # statistics (train.freeze_batchnorm = false; its running statistics, which eval mode would use, start at 0 / 1).
    batch_statistics = not config["train"]["freeze_batchnorm"]
    model.train(batch_statistics)
    rows = []
    for batch in args.batches:
        for draw in range(args.draws):
            images, labels = draw_batch(train, batch, seed=draw)
            with torch.no_grad():
                embeddings = torch.cat([model(chunk) for chunk in images.split(256 if batch_statistics else 512)])
            near_top = share_with_a_positive_near_the_top(embeddings, labels)
            mean, spread = similarity_spread(embeddings)
            for loss_name in args.losses:
                rows.append({"batch": batch, "draw": draw, "loss": loss_name,
                             **gradient_spread(gradient_norms(loss_name, config, embeddings, labels)),
                             "positive_in_top_16": near_top, "similarity_mean": mean,
                             "similarity_std": spread})  # fmt: skip
            print(f"batch {batch} draw {draw} done", file=sys.stderr, flush=True)
    lines = [
        f"# How many items of a batch each loss learns from ({source})",
        "",
        f"`python {' '.join(sys.argv)}`; {source}, weights `{start or config['model']['pretrained_path'] or 'random'}`"
        f", BatchNorm {'on each chunk of 256' if batch_statistics else 'frozen (eval mode)'}"
        f". Means over {args.draws} batches of batch/4 training "
        "classes × 4. Participation ratio (Σ g)² / (B Σ g²) of the per-item gradient norms g (1: every item the "
        "same); the share of items that carry 90 % of Σ g²; the share below 1 % of the largest g.",
        "",
        "| loss | batch | participation ratio | share carrying 90 % | silent share |",
        "|---|---:|---:|---:|---:|",
    ]
    top = [
        f"{batch}: {np.mean([r['positive_in_top_16'] for r in rows if r['batch'] == batch]):.2f}"
        for batch in args.batches
    ]
    similarities = [
        f"{batch}: {np.mean([r['similarity_mean'] for r in rows if r['batch'] == batch]):.6f} ± "
        f"{np.mean([r['similarity_std'] for r in rows if r['batch'] == batch]):.2g}"
        for batch in args.batches
    ]
    lines[3:3] = [
        "",
        "Queries whose nearest positive is among their 16 nearest items (the largest k), by batch: "
        + ", ".join(top)
        + ".",
        "",
        "Cosine similarity between distinct items of a batch, mean ± standard deviation, by batch: "
        + ", ".join(similarities)
        + ".",
    ]
    for loss_name in args.losses:
        for batch in args.batches:
            mine = [r for r in rows if r["loss"] == loss_name and r["batch"] == batch]
            mean = {key: float(np.mean([r[key] for r in mine])) for key in ("participation", "share_for_90", "silent")}
            lines.append(
                f"| {loss_name} | {batch} | {mean['participation']:.2f} | {mean['share_for_90']:.2f} "
                f"| {mean['silent']:.2f} |"
            )
    harness.write_results(RESULTS / args.name, {"rows": rows, "command": " ".join(sys.argv)}, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
