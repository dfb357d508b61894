"""RS@k on a GPU under float16/bfloat16 autocast: the loss stays finite and equals its float32 value.

    python benchmarks/gpu_loss_check.py --device cuda [--batch 4000]

Three checks at B = 4000 (1000 classes × 4, d = 512):
  1. float32 embeddings, loss called inside `torch.autocast(float16)`: equal to the float32 loss (1e-4).
  2. a Linear layer run under autocast(float16) gives float16 embeddings; the loss of those (upcast inside) equals the
     float32 loss of the same float16 values (1e-4), is finite, and its gradient is finite.
  3. the same with bfloat16.
  4. loss and gradient on the device (float32) equal a float64 CPU computation of the same inputs (B = 400).
  5. the tiled and the fused path (compiled Triton kernels) equal the dense path on the device, loss and gradient,
     in float32 and float64, with a reference set and with SiMix's excluded columns (B = 1000).
Prints JSON; writes it to $OUT/gpu_loss_check.json when OUT is set.
"""

import argparse
import json
import os

import torch
import torch.nn.functional as F

from pml_recallk import RecallKSurrogateLoss


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=4000)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    labels = torch.arange(args.batch // 4, device=device).repeat_interleave(4)
    centres = torch.randn(args.batch // 4, 512, device=device)
    inputs = centres[labels] + 2.0 * torch.randn(args.batch, 512, device=device)
    loss_fn = RecallKSurrogateLoss()
    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "batch": args.batch}

    emb32 = F.normalize(inputs, dim=1)
    reference = loss_fn(emb32, labels).item()
    with torch.autocast(device.type, dtype=torch.float16):
        inside = loss_fn(emb32, labels)
    results["float32_embeddings_under_fp16_autocast"] = {
        "loss": inside.item(),
        "float32_loss": reference,
        "dtype": str(inside.dtype),
        "abs_diff": abs(inside.item() - reference),
        "ok": abs(inside.item() - reference) <= 1e-4,
    }

    for dtype in (torch.float16, torch.bfloat16):
        layer = torch.nn.Linear(512, 512, device=device)
        with torch.autocast(device.type, dtype=dtype):
            emb = layer(inputs)
            loss = loss_fn(emb, labels)
        loss.backward()
        same_values = loss_fn(emb.detach().float(), labels).item()
        grads_finite = all(torch.isfinite(p.grad).all().item() for p in layer.parameters())
        results[f"{dtype}_embeddings"] = {
            "embedding_dtype": str(emb.dtype),
            "loss_dtype": str(loss.dtype),
            "loss": loss.item(),
            "float32_loss_of_same_values": same_values,
            "abs_diff": abs(loss.item() - same_values),
            "finite_loss_and_grads": bool(torch.isfinite(loss).item() and grads_finite),
            "ok": abs(loss.item() - same_values) <= 1e-4 and grads_finite,
        }
    small = inputs[:400].double().cpu()
    small_labels = labels[:400].cpu()
    e64 = small.clone().requires_grad_(True)
    loss64 = loss_fn(e64, small_labels)
    loss64.backward()
    e32 = small.float().to(device).requires_grad_(True)
    loss32 = loss_fn(e32, small_labels.to(device))
    loss32.backward()
    grad_err = ((e32.grad.double().cpu() - e64.grad).abs().max() / e64.grad.abs().max()).item()
    results["device_float32_vs_cpu_float64"] = {
        "loss_abs_diff": abs(loss32.item() - loss64.item()),
        "grad_max_rel_err": grad_err,
        "ok": abs(loss32.item() - loss64.item()) <= 1e-4 and grad_err <= 1e-3,
    }
    results["paths_agree"] = check_paths(device)
    text = json.dumps(results, indent=1)
    print(text)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "gpu_loss_check.json"), "w") as f:
            f.write(text)


def check_paths(device: torch.device, batch: int = 1000) -> dict:
    """Tiled and fused against dense on the device: max relative differences of the loss and of the gradient."""
    from pml_recallk import SimilarityMixup

    out = {}
    generator = torch.Generator(device=device).manual_seed(1)
    labels = torch.arange(batch // 4, device=device).repeat_interleave(4)
    cases = {
        "self": lambda path, e, ref: RecallKSurrogateLoss(path=path, tile_size=96)(e, labels),
        "ref_emb": lambda path, e, ref: RecallKSurrogateLoss(path=path, tile_size=96)(
            e, labels, ref_emb=ref, ref_labels=labels[: len(ref)]
        ),
        "simix_database_only": lambda path, e, ref: SimilarityMixup(
            RecallKSurrogateLoss(path=path, tile_size=96), mode="database_only", alpha_range=(0.3, 0.3)
        )(e, labels),
    }
    for dtype in (torch.float32, torch.float64):
        emb = torch.randn(batch, 64, device=device, dtype=dtype, generator=generator)
        ref = torch.randn(batch // 2, 64, device=device, dtype=dtype, generator=generator)
        for case, run in cases.items():
            values = {}
            for path in ("dense", "tiled", "fused"):
                e = emb.clone().requires_grad_(True)
                loss = run(path, e, ref)
                loss.backward()
                values[path] = (loss.detach(), e.grad)
            for path in ("tiled", "fused"):
                loss_err = ((values[path][0] - values["dense"][0]).abs() / values["dense"][0].abs()).item()
                grad_err = ((values[path][1] - values["dense"][1]).abs().max() / values["dense"][1].abs().max()).item()
                tol = 1e-5 if dtype == torch.float32 else 1e-10
                out[f"{case}_{str(dtype).split('.')[1]}_{path}"] = {
                    "loss_rel_err": loss_err,
                    "grad_max_rel_err": grad_err,
                    "ok": loss_err <= tol and grad_err <= 100 * tol,
                }
    return out


if __name__ == "__main__":
    main()
