"""The Triton kernels of path="fused", against plain sums and the PyTorch path.

On CPU they run in Triton's interpreter, which Triton only sets up when ``TRITON_INTERPRET=1`` is in the environment
before it is imported; so without it, one test reruns this file in a subprocess with it. With
``PML_RECALLK_TEST_DEVICE=cuda`` the same tests run the compiled kernels (benchmarks/gpu_loss_check.py also does).
"""

import os
import subprocess
import sys

import pytest
import torch

from pml_recallk import RecallKSurrogateLoss
from pml_recallk import _tiled as tiled

triton_kernels = pytest.importorskip("pml_recallk._triton")
if triton_kernels.triton is None:
    pytest.skip("triton is not installed", allow_module_level=True)


DEVICE = torch.device(os.environ.get("PML_RECALLK_TEST_DEVICE", "cpu"))
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
RUNNABLE = DEVICE.type == "cuda" or INTERPRETED
# The interpreter evaluates σ(x) = 1/(1 + e^−x) in numpy, which warns when e^−x overflows to inf (σ is then 0, exactly).
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
needs_kernels = pytest.mark.skipif(
    not RUNNABLE, reason="rerun with TRITON_INTERPRET=1 by test_kernels_in_the_interpreter"
)


@pytest.mark.slow
@pytest.mark.skipif(RUNNABLE, reason="the kernels run in this process")
def test_kernels_in_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout


def _plain_sums(sim, positive_sim, tau, derivative):
    """Σ_z σ((s_qz − s_qp)/τ) (or σ'), written out on the full (T, P, N) tensor."""
    sig = torch.sigmoid((sim[:, None, :] - positive_sim[:, :, None]) / tau)
    return (sig * (1 - sig) if derivative else sig).sum(2)


@needs_kernels
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 2, 5), (5, 17, 300), (2, 40, 129)])
@pytest.mark.parametrize("derivative", [False, True])
def test_sigmoid_sums_kernel(shape, derivative, dtype):
    queries, positives, database = shape
    gen = torch.Generator().manual_seed(sum(shape))
    sim = torch.randn(queries, database, generator=gen, dtype=dtype).to(DEVICE)
    positive_sim = torch.randn(queries, positives, generator=gen, dtype=dtype).to(DEVICE)
    got = triton_kernels.sigmoid_sums(sim, positive_sim, 0.05, derivative)
    expected = _plain_sums(sim.double(), positive_sim.double(), 0.05, derivative)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=1e-6)


@needs_kernels
@pytest.mark.parametrize("shape", [(3, 2, 5), (4, 19, 260)])
def test_column_gradients_kernel(shape, dtype):
    queries, positives, database = shape
    gen = torch.Generator().manual_seed(sum(shape))
    sim = torch.randn(queries, database, generator=gen, dtype=dtype).to(DEVICE)
    positive_sim = torch.randn(queries, positives, generator=gen, dtype=dtype).to(DEVICE)
    weight = torch.randn(queries, positives, generator=gen, dtype=dtype).to(DEVICE)
    got = triton_kernels.column_gradients(sim, positive_sim, weight, 0.1)
    sig = torch.sigmoid((sim.double()[:, None, :] - positive_sim.double()[:, :, None]) / 0.1)
    expected = (weight.double()[:, :, None] * sig * (1 - sig)).sum(1)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=1e-6)


@needs_kernels
@pytest.mark.parametrize("with_excluded", [False, True])
def test_tile_functions_match_the_pytorch_chunks(with_excluded, dtype):
    gen = torch.Generator().manual_seed(3)
    sim = torch.randn(6, 50, generator=gen, dtype=dtype).to(DEVICE)
    positive_index = torch.randint(0, 50, (6, 4), generator=gen).to(DEVICE)
    excluded = torch.randint(-1, 50, (6, 3), generator=gen).to(DEVICE) if with_excluded else None
    weight = torch.randn(6, 4, generator=gen, dtype=dtype).to(DEVICE)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-11, "atol": 1e-11}
    for kernel_args in [(), (weight,)]:
        function = tiled.tile_rank_grad if kernel_args else tiled.tile_ranks
        expected = function(sim, positive_index, excluded, *kernel_args, 0.05, 2, "torch")
        got = function(sim, positive_index, excluded, *kernel_args, 0.05, 2, "triton")
        torch.testing.assert_close(got, expected, **tol)


@needs_kernels
def test_fused_loss_and_gradients_equal_the_tiled_path(dtype):
    gen = torch.Generator().manual_seed(4)
    emb, labels = (
        torch.randn(20, 6, generator=gen, dtype=dtype).to(DEVICE),
        torch.tensor([0, 1, 2, 3, 4] * 3 + [5, 5, 6, 7, 7], device=DEVICE),
    )
    results = {}
    for path in ("tiled", "fused"):
        e = emb.clone().requires_grad_(True)
        loss = RecallKSurrogateLoss(path=path, tile_size=6, rank_temperature=0.05, count_query_in_rank=True)(e, labels)
        loss.backward()
        results[path] = (loss.detach(), e.grad)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-12}
    torch.testing.assert_close(results["fused"][0], results["tiled"][0], **tol)
    torch.testing.assert_close(results["fused"][1], results["tiled"][1], **tol)


@pytest.mark.skipif(RUNNABLE, reason="the kernels can run here")
def test_fused_path_on_cpu_without_the_interpreter_says_what_to_do():
    loss_fn = RecallKSurrogateLoss(path="fused")
    with pytest.raises(ValueError, match="path='tiled'"):
        loss_fn(torch.randn(8, 3), torch.arange(4).repeat(2))


@needs_kernels
def test_the_prepared_gpu_check_of_the_paths_runs_and_agrees():
    """benchmarks/gpu_loss_check.py's path comparison, here on small sizes (the GPU session runs it at B = 1000)."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).parents[2] / "benchmarks" / "gpu_loss_check.py"
    spec = importlib.util.spec_from_file_location("gpu_loss_check", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.check_paths(DEVICE, batch=24)
    assert len(results) == 12 and all(r["ok"] for r in results.values()), results
