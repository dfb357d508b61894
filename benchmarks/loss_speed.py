"""Forward+backward time and peak extra memory of the RS@k loss, against the released code's algorithm and a naive
vectorised version, and of SiMix against materialising the virtual embeddings.

Every configuration runs in a fresh subprocess so that its peak resident memory (ru_maxrss) is its own; "extra
memory" is that peak minus the resident memory just before the loss is called (embeddings already allocated).
Times are the median of a few repetitions after the memory-measuring first call. Ratios are taken within one run.

    python benchmarks/loss_speed.py                      # full table (B = 256, 1000, 4000; SiMix at 400, 4000)
    python benchmarks/loss_speed.py --sizes 256 --quick  # smoke test
    python benchmarks/loss_speed.py --device cuda --sizes 4000 10000 --out benchmarks/results/loss_speed_cuda
    python benchmarks/loss_speed.py --paths --threads 1 --sizes 4000 20000 100000 --dense-max 20000 \
        --out benchmarks/results/loss_speed_tiled         # dense vs tiled (vs fused on CUDA) vs floor

Methods (all d = 512, 4 samples per class, L2-normalised embeddings, default temperatures):
    ours          RecallKSurrogateLoss (chunked, recomputing backward)
    released_loop a per-query Python loop following the released code's algorithm (written from docs/method.md, query
                  counted in its own rank as there); one backward at the end
    naive         a vectorised version that builds the whole B×P×B difference tensor under autograd
    floor         one B×B matmul plus one pass of B×P×B sigmoids forward and backward (a lower bound)
    simix_official / simix_database   SimilarityMixup(RecallKSurrogateLoss()) in each mode
    materialised  the virtual embeddings built explicitly (as the released code does), then our loss on B + V items

With ``--paths`` (issue 13, memory linear in the batch):
    dense / tiled / fused   RecallKSurrogateLoss(path=...): the B×B similarities held whole, or recomputed tile by
                  tile from the embeddings (fused: the sigmoid sums in a Triton kernel, CUDA only)
    floor_tiled   the arithmetic any exact method does, without autograd or bookkeeping, by tiles: forward one B×B
                  product and one pass of B×P×B sigmoids; backward one pass of their derivatives and the two
                  products of the similarity gradient with the embeddings
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from pml_recallk.benchmark import harness
from pml_recallk.benchmark.harness import current_rss_mb, peak_rss_mb

LOSS_METHODS = ("ours", "released_loop", "naive", "floor")
PATH_METHODS = ("dense", "tiled", "fused", "floor_tiled")
SIMIX_METHODS = ("ours", "simix_database", "simix_official", "materialised")


def released_loop_loss(emb: torch.Tensor, m: int, k_values=(1, 2, 4, 8, 16), tau=0.01) -> torch.Tensor:
    """The released code's algorithm, one query at a time, classes in contiguous blocks of m (docs/method.md §2)."""
    batch = len(emb)
    total = emb.new_zeros(())
    for q in range(batch):
        sims = (emb[q] * emb).sum(1)  # (B,)
        group = slice((q // m) * m, (q // m) * m + m)
        diff = sims[:, None] - sims[None, group]  # (B, m): s_z − s_p for the m members p of q's class
        sig = torch.sigmoid(diff / tau)
        mask = torch.ones_like(sig)
        mask[torch.arange(group.start, group.stop), torch.arange(m)] = 0  # z ≠ p
        ranks = 1 + (sig * mask).sum(0)  # the query itself stays in the sum, as released
        not_self = torch.ones(m, device=emb.device)
        not_self[q % m] = 0
        recalls = []
        for k in k_values:
            hits = (torch.sigmoid(k - ranks) * not_self).sum()
            recalls.append(torch.clamp(hits, max=k) / min(k, m - 1))
        total = total + (1 - torch.stack(recalls).mean()) / batch
    return total


def naive_loss(emb: torch.Tensor, labels: torch.Tensor, k_values=(1, 2, 4, 8, 16), tau=0.01) -> torch.Tensor:
    """Everything at once: the (B, P, B) difference tensor and its sigmoid stay in the autograd graph."""
    batch = len(emb)
    sim = emb @ emb.T
    eye = torch.eye(batch, dtype=torch.bool, device=emb.device)
    same = (labels[:, None] == labels[None, :]) & ~eye
    positives = same.nonzero()[:, 1].view(batch, -1)  # equal class sizes: P = m − 1 per query
    pos_sim = sim.gather(1, positives)
    sig = torch.sigmoid((sim[:, None, :] - pos_sim[:, :, None]) / tau)
    not_p = torch.ones_like(sig).scatter_(2, positives[:, :, None], 0)
    ranks = 1 + (sig * not_p * ~eye[:, None, :]).sum(2)
    recalls = [torch.clamp(torch.sigmoid(k - ranks).sum(1), max=k) / min(k, positives.shape[1]) for k in k_values]
    return (1 - torch.stack(recalls, 1).mean(1)).mean()


def floor_step(emb: torch.Tensor, labels: torch.Tensor, diff: torch.Tensor) -> torch.Tensor:
    """One B×B matmul and one B×P×B sigmoid pass, forward and backward: work any exact method must do."""
    sim = emb @ emb.T
    return sim.sum() * 0 + torch.sigmoid(diff).sum()


def floor_tiled(emb: torch.Tensor, positives: int, tau: float = 0.01) -> float:
    """The floor of the tiled path (see the module docstring), with no autograd; P = ``positives`` columns. Tiles and
    sigmoid chunks of the sizes the tiled path picks by default, so the products are as efficient as there."""
    from pml_recallk.functional import default_query_chunk_size, default_tile_size

    tile = default_tile_size(len(emb), emb.device)
    chunk = min(tile, default_query_chunk_size(positives, len(emb), emb.device))
    grad = torch.zeros_like(emb)
    total = 0.0
    for start in range(0, len(emb), tile):
        rows = slice(start, start + tile)
        sim = emb[rows] @ emb.T / tau
        grad_sim = torch.empty_like(sim)
        for first in range(0, len(sim), chunk):
            part = sim[first : first + chunk]
            sig = torch.sigmoid(part[:, None, :] - part[:, :positives, None])
            total += float(sig.sum())
            grad_sim[first : first + chunk] = torch.ops.aten.sigmoid_backward(torch.ones_like(sig), sig).sum(1)
        grad[rows] = grad_sim @ emb
        grad.addmm_(grad_sim.T, emb[rows])
    return total


def materialised_loss(emb: torch.Tensor, labels: torch.Tensor, loss_fn) -> torch.Tensor:
    from pml_recallk.losses.similarity_mixup import same_class_pairs

    first, second = same_class_pairs(labels)
    alpha = torch.rand(len(first), 1, device=emb.device)
    unit = F.normalize(emb, dim=1)
    virtual = alpha * unit[first] + (1 - alpha) * unit[second]
    return loss_fn(torch.cat([unit, virtual]), torch.cat([labels, labels[first]]))


def worker(method: str, batch: int, device: str, repeats: int, threads: int | None) -> dict:
    from pytorch_metric_learning.distances import DotProductSimilarity

    from pml_recallk import RecallKSurrogateLoss, SimilarityMixup

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    m, dim = 4, 512
    labels = torch.arange(batch // m, device=device).repeat_interleave(m)
    emb0 = F.normalize(torch.randn(batch, dim, device=device), dim=1)
    diff = None
    if method == "floor":
        diff = torch.randn(batch, m - 1, batch, device=device, requires_grad=True)

    def step():
        emb = emb0.clone().requires_grad_(True)
        if method == "floor_tiled":
            return floor_tiled(emb0, m - 1)
        if method in ("dense", "tiled", "fused"):
            loss = RecallKSurrogateLoss(path=method)(emb, labels)
        elif method == "ours":
            loss = RecallKSurrogateLoss()(emb, labels)
        elif method == "released_loop":
            loss = released_loop_loss(F.normalize(emb, dim=1), m)
        elif method == "naive":
            loss = naive_loss(F.normalize(emb, dim=1), labels)
        elif method == "floor":
            loss = floor_step(emb, labels, diff)
        elif method.startswith("simix_"):
            loss = SimilarityMixup(RecallKSurrogateLoss(), mode=method.split("_")[1])(emb, labels)
        elif method == "materialised":
            inner = RecallKSurrogateLoss(distance=DotProductSimilarity(normalize_embeddings=False))
            loss = materialised_loss(emb, labels, inner)
        else:
            raise ValueError(method)
        loss.backward()
        if device == "cuda":
            torch.cuda.synchronize()
        return float(loss.detach())

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = current_rss_mb()
    start, cpu_start = time.perf_counter(), time.thread_time()
    value = step()
    times, cpu_times = [time.perf_counter() - start], [time.thread_time() - cpu_start]
    extra = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else peak_rss_mb()) - base
    for _ in range(repeats - 1):
        start, cpu_start = time.perf_counter(), time.thread_time()
        step()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.thread_time() - cpu_start)
    # On CUDA the first call includes kernel warm-up: report the median of the later calls when there are some.
    timed = times[1:] if len(times) > 1 else times
    cpu_timed = cpu_times[1:] if len(cpu_times) > 1 else cpu_times
    return {
        "method": method,
        "batch": batch,
        "seconds": statistics.median(timed),
        # CPU time of the calling thread: with one torch thread, all the work, unaffected by other jobs' load.
        "cpu_seconds": statistics.median(cpu_timed),
        "extra_mb": extra,
        "loss": value,
    }


def run(method: str, batch: int, device: str, repeats: int, timeout: float, threads: int | None) -> dict:
    args = ["--worker", method, batch, "--device", device, "--repeats", repeats]
    if threads:
        args += ["--threads", threads]
    try:
        return harness.run_worker(__file__, args, timeout=timeout)
    except harness.WorkerFailed as failure:
        return {"method": method, "batch": batch, "seconds": None, "extra_mb": None, "note": failure.note[:80]}


def fmt(x, spec):
    return "—" if x is None else format(x, spec)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "BATCH"), help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1000, 4000])
    parser.add_argument("--simix-sizes", type=int, nargs="+", default=[400, 4000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per worker (default: torch's)")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--quick", action="store_true", help="one repetition, skip SiMix")
    parser.add_argument("--out", default="benchmarks/results/loss_speed")
    parser.add_argument("--paths", action="store_true", help="compare RecallKSurrogateLoss's dense/tiled/fused paths")
    parser.add_argument("--dense-max", type=int, default=20000, help="--paths: largest B the dense path runs at")
    parser.add_argument("--floor-max", type=int, default=None, help="--paths: largest B the floor runs at")
    parser.add_argument("--methods", nargs="*", default=list(PATH_METHODS), help="--paths: the methods to run")
    parser.add_argument("--reuse", nargs="*", default=[], help="--paths: JSONs of earlier runs whose rows stand in")
    args = parser.parse_args(argv)
    if args.worker:
        harness.print_worker_result(
            worker(args.worker[0], int(args.worker[1]), args.device, args.repeats, args.threads)
        )
        return
    if args.paths:
        compare_paths(args, " ".join([Path(sys.executable).name, *sys.argv]))
        return
    repeats = 1 if args.quick else args.repeats
    rows = []
    for batch in args.sizes:
        for method in LOSS_METHODS:
            # The per-query loop is slow; one call is enough to time it.
            reps = 1 if method == "released_loop" else repeats
            rows.append(run(method, batch, args.device, reps, args.timeout, args.threads))
            print(json.dumps(rows[-1]), flush=True)
    simix_rows = []
    if not args.quick:
        for batch in args.simix_sizes:
            for method in SIMIX_METHODS:
                simix_rows.append(run(method, batch, args.device, repeats, args.timeout, args.threads))
                print(json.dumps(simix_rows[-1]), flush=True)
    write_report(rows, simix_rows, args, " ".join([Path(sys.executable).name, *sys.argv]))


def ratio(a, b):
    return None if a is None or b is None else a / b


def times(x) -> str:
    return "—" if x is None else f"{x:.2f}×"


def report_header(title: str, args, command: str) -> list[str]:
    return [
        f"# {title}",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
        f"({args.threads or torch.get_num_threads()} torch threads per run), torch {torch.__version__}, "
        f"device `{args.device}`, load average {os.getloadavg()[0]:.1f} at the end. ",
    ]


def write_outputs(out: str, lines: list[str], payload: dict) -> None:
    harness.write_results(out, payload, "\n".join(lines))
    print("\n".join(lines))


def write_report(rows, simix_rows, args, command) -> None:
    def get(table, method, batch):
        return next(r for r in table if r["method"] == method and r["batch"] == batch)

    lines = report_header("RS@k loss: time and memory of one forward + backward", args, command)
    lines[-1] += (
        "d = 512, 4 samples per class, default temperatures. "
        "Extra memory = peak resident (CPU) or allocated (CUDA) memory during the call minus memory before it."
    )
    lines += [
        "",
        "| B | ours s | released loop s | naive B×P×B s | floor s | loop / ours | naive / ours | ours / floor "
        "| ours MB | loop MB | naive MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for batch in args.sizes:
        o, lp, nv, fl = (get(rows, m, batch) for m in LOSS_METHODS)
        lines.append(
            f"| {batch} | {fmt(o['seconds'], '.3f')} | {fmt(lp['seconds'], '.2f')} | {fmt(nv['seconds'], '.3f')} "
            f"| {fmt(fl['seconds'], '.3f')} | {fmt(ratio(lp['seconds'], o['seconds']), '.1f')}× "
            f"| {fmt(ratio(nv['seconds'], o['seconds']), '.1f')}× | {fmt(ratio(o['seconds'], fl['seconds']), '.2f')}× "
            f"| {fmt(o['extra_mb'], '.0f')} | {fmt(lp['extra_mb'], '.0f')} | {fmt(nv['extra_mb'], '.0f')} |"
        )
    notes = [r for r in rows + simix_rows if r.get("note")]
    if simix_rows:
        lines += [
            "",
            "## SiMix",
            "",
            "RS@k alone, `SimilarityMixup(RecallKSurrogateLoss(), mode=...)`, and the released code's approach of "
            "materialising every virtual embedding (then our loss on the B + V items, official semantics).",
            "",
            "| B | virtual items | method | s | extra MB | s / RS@k alone |",
            "|---|---|---|---|---|---|",
        ]
        for batch in args.simix_sizes:
            alone = get(simix_rows, "ours", batch)
            for method in SIMIX_METHODS:
                r = get(simix_rows, method, batch)
                lines.append(
                    f"| {batch} | {batch // 4 * 6} | {method} | {fmt(r['seconds'], '.3f')} | "
                    f"{fmt(r['extra_mb'], '.0f')} | {fmt(ratio(r['seconds'], alone['seconds']), '.2f')}× |"
                )
    if notes:
        lines += ["", "Not measured: " + "; ".join(f"{r['method']} B={r['batch']}: {r['note']}" for r in notes)]
    write_outputs(args.out, lines, {"command": command, "loss": rows, "simix": simix_rows})


def compare_paths(args, command) -> None:
    """Dense vs tiled (vs fused on CUDA) vs the tiled floor at each B; one repetition above 20,000. With ``--reuse``,
    the rows of the methods not in ``--methods`` come from those earlier runs' JSON."""
    rows, earlier, args.reused_commands = [], {}, []
    for path in args.reuse:
        previous = json.loads(Path(path).read_text())
        measured = [r for r in previous["paths"] if r.get("seconds") is not None]
        earlier.update({(r["method"], r["batch"]): {**r, "command": previous["command"]} for r in measured})
        args.reused_commands.append(previous["command"])
    for batch in args.sizes:
        for method in PATH_METHODS:
            skip = _path_skip_reason(method, batch, args)
            if method not in args.methods:
                skip = None if (method, batch) in earlier else skip or "not run (not in --methods)"
                rows.append(earlier.get((method, batch)) or {"method": method, "batch": batch, "note": skip})
                rows[-1] = {"seconds": None, "extra_mb": None, **rows[-1]}
            elif skip:
                rows.append({"method": method, "batch": batch, "seconds": None, "extra_mb": None, "note": skip})
            else:
                reps = args.repeats if batch <= 20000 else 1
                rows.append(run(method, batch, args.device, reps, args.timeout, args.threads))
            print(json.dumps(rows[-1]), flush=True)
    write_paths_report(rows, args, command)


def plot_paths(rows, key: str, path: Path) -> None:
    """Time and extra memory against B for each path, log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for method in PATH_METHODS:
        points = sorted((r["batch"], r.get(key), r["extra_mb"]) for r in rows if r["method"] == method and r.get(key))
        if points:
            batches, seconds, memory = zip(*points)
            time_axis.plot(batches, seconds, "o-", label=method)
            memory_axis.plot(batches, memory, "o-", label=method)
    for axis, label in ((time_axis, "forward + backward, s"), (memory_axis, "extra memory, MB")):
        axis.set(xscale="log", yscale="log", xlabel="B (batch = database)", ylabel=label)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _path_skip_reason(method: str, batch: int, args) -> str | None:
    if method == "fused" and args.device != "cuda":
        return "Triton kernels need CUDA"
    if method == "dense" and batch > args.dense_max:
        return f"B×B similarities and gradient: {2 * 4 * batch * batch / 2**30:.0f} GiB"
    if method == "floor_tiled" and args.floor_max is not None and batch > args.floor_max:
        return "not run (CPU time, about that of the tiled path)"
    return None


def write_paths_report(rows, args, command) -> None:
    def get(method, batch):
        return next(r for r in rows if r["method"] == method and r["batch"] == batch)

    lines = report_header("RS@k: dense vs tiled path, one forward + backward", args, command)
    if getattr(args, "reused_commands", None):
        runs = "; ".join(f"`{c}`" for c in args.reused_commands)
        lines[3:3] = [
            "",
            f"Rows of the methods not in `--methods` come from the earlier runs {runs} (each row's "
            "command is in the JSON).",
        ]
    lines[-1] += (
        "d = 512, 4 samples per class (P = 3), default temperatures and chunk sizes. "
        "Extra memory = peak resident (CPU) or allocated (CUDA) memory during the call minus memory before it "
        "(the B×512 embeddings already allocated). Time: median of the repetitions (one above B = 20,000); on CPU "
        "with one torch thread the CPU time of that thread (`time.thread_time`: the machine is shared, wall time "
        "varies with the other jobs' load; the JSON has both), else wall time."
    )
    lines += [
        "",
        "| B | dense s | tiled s | fused s | floor s | tiled / dense | fused / floor | tiled / floor "
        "| dense MB | tiled MB | fused MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    key = "cpu_seconds" if args.device == "cpu" and args.threads == 1 else "seconds"
    for batch in args.sizes:
        d, t, f, fl = ({**r, "seconds": r.get(key)} for r in (get(m, batch) for m in PATH_METHODS))
        lines.append(
            f"| {batch} | {fmt(d['seconds'], '.3f')} | {fmt(t['seconds'], '.3f')} | {fmt(f['seconds'], '.3f')} "
            f"| {fmt(fl['seconds'], '.3f')} | {times(ratio(t['seconds'], d['seconds']))} "
            f"| {times(ratio(f['seconds'], fl['seconds']))} | {times(ratio(t['seconds'], fl['seconds']))} "
            f"| {fmt(d['extra_mb'], '.0f')} | {fmt(t['extra_mb'], '.0f')} | {fmt(f['extra_mb'], '.0f')} |"
        )
    notes = [r for r in rows if r.get("note")]
    if notes:
        lines += ["", "Not measured: " + "; ".join(f"{r['method']} B={r['batch']}: {r['note']}" for r in notes)]
    lines += ["", f"![time and memory against B]({Path(args.out).with_suffix('.png').name})"]
    write_outputs(args.out, lines, {"command": command, "paths": rows})
    plot_paths(rows, key, Path(args.out).with_suffix(".png"))


if __name__ == "__main__":
    main()
