"""cached_backward against plain backward: the pattern of sentence-transformers' cached-loss test."""

import copy
import doctest
import re
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pytorch_metric_learning import losses
from torch import nn

import pml_recallk.trainers.gradient_cache
from pml_recallk import cached_backward

BATCH = 16  # 4 classes × 4
CHUNK_SIZES = [1, 3, 5, 8, 16, 40]  # 3 and 5 do not divide the batch; 40 is larger than it

LOSSES = {
    "multi_similarity": losses.MultiSimilarityLoss,
    "fast_ap": losses.FastAPLoss,
    "contrastive": losses.ContrastiveLoss,
}


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
@pytest.mark.parametrize("loss_name", sorted(LOSSES))
def test_equals_plain_full_batch_backward_without_randomness(chunk_size, loss_name, dtype, make_cnn, image_batch, ref):
    # Frozen BatchNorm and no dropout: each sample's embedding depends on that sample only.
    model = make_cnn(dtype=dtype, dropout=0.0)
    reference_model = copy.deepcopy(model)
    inputs, labels = image_batch(dtype=dtype)
    loss_fn = LOSSES[loss_name]()

    loss = cached_backward(model, inputs, labels, loss_fn, chunk_size)
    reference_loss = loss_fn(reference_model(inputs), labels)
    reference_loss.backward()

    torch.testing.assert_close(loss, reference_loss.detach(), **ref.tolerance(dtype))
    for grad, reference_grad in zip(ref.gradients(model), ref.gradients(reference_model), strict=True):
        torch.testing.assert_close(grad, reference_grad, **ref.tolerance(dtype))
    assert not loss.requires_grad


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
@pytest.mark.parametrize("batchnorm_trains", [False, True], ids=["bn_frozen", "bn_chunk_statistics"])
def test_dropout_and_batchnorm_equal_a_seeded_plain_chunked_step(
    chunk_size, batchnorm_trains, make_cnn, image_batch, ref, device
):
    model = make_cnn(batchnorm_trains=batchnorm_trains)
    reference_model = copy.deepcopy(model)
    inputs, labels = image_batch()
    loss_fn = losses.MultiSimilarityLoss()

    torch.manual_seed(7)
    loss = cached_backward(model, inputs, labels, loss_fn, chunk_size)
    rng_after = rng_states(device)
    torch.manual_seed(7)
    reference_loss = ref.chunked_backward(reference_model, inputs, labels, loss_fn, chunk_size)

    torch.testing.assert_close(loss, reference_loss, rtol=1e-12, atol=1e-12)
    for grad, reference_grad in zip(ref.gradients(model), ref.gradients(reference_model), strict=True):
        torch.testing.assert_close(grad, reference_grad, rtol=1e-6, atol=1e-10)
    # Running statistics: one update per chunk, as in the plain chunked step (unchanged when frozen).
    for stat, reference_stat in zip(
        ref.running_statistics(model), ref.running_statistics(reference_model), strict=True
    ):
        torch.testing.assert_close(stat, reference_stat, rtol=1e-12, atol=1e-12)
    # The global generators continue exactly as after the plain step.
    assert all(torch.equal(a, b) for a, b in zip(rng_after, rng_states(device), strict=True))


def rng_states(device):
    return [torch.get_rng_state()] + ([torch.cuda.get_rng_state(device)] if device.type == "cuda" else [])


def test_batchnorm_running_statistics_change_once_per_chunk(make_cnn, image_batch, ref):
    # A control for the test above: the statistics do move, by exactly one update per chunk.
    model = make_cnn(dropout=0.0, batchnorm_trains=True)
    before = ref.running_statistics(model)
    inputs, labels = image_batch()
    cached_backward(model, inputs, labels, losses.MultiSimilarityLoss(), chunk_size=5)
    num_batches_tracked = [b for name, b in model.named_buffers() if name.endswith("num_batches_tracked")]
    assert [int(n) for n in num_batches_tracked] == [4, 4]  # ceil(16 / 5) chunks, not twice as many
    assert not torch.allclose(before[0], ref.running_statistics(model)[0])


def test_dropout_matters_so_replay_is_tested(make_cnn, image_batch, ref):
    # Negative control: with other random numbers the gradients differ, so the equality above needs replay.
    inputs, labels = image_batch()
    grads = []
    for seed in (1, 2):
        model = make_cnn()
        torch.manual_seed(seed)
        cached_backward(model, inputs, labels, losses.MultiSimilarityLoss(), chunk_size=4)
        grads.append(ref.gradients(model))
    assert not torch.allclose(grads[0][0], grads[1][0])


def test_different_data_gives_different_gradients(make_cnn, image_batch, ref):
    grads = []
    for data_seed in (1, 2):
        inputs, labels = image_batch(seed=data_seed)
        model = make_cnn(dropout=0.0)
        cached_backward(model, inputs, labels, losses.MultiSimilarityLoss(), chunk_size=4)
        grads.append(ref.gradients(model))
    assert not torch.allclose(grads[0][0], grads[1][0])


def test_scaled_loss_stands_in_for_amp_scaling(make_cnn, image_batch, ref):
    model = make_cnn()
    reference_model = copy.deepcopy(model)
    inputs, labels = image_batch()
    loss_fn = losses.MultiSimilarityLoss()

    torch.manual_seed(3)
    cached_backward(model, inputs, labels, lambda e, y: 1000 * loss_fn(e, y), chunk_size=5)
    torch.manual_seed(3)
    ref.chunked_backward(reference_model, inputs, labels, loss_fn, chunk_size=5)

    for grad, reference_grad in zip(ref.gradients(model), ref.gradients(reference_model), strict=True):
        torch.testing.assert_close(grad, 1000 * reference_grad, rtol=1e-6, atol=1e-9)


def test_grad_scaler_scales_the_cached_gradients(make_cnn, image_batch, ref, device):
    model = make_cnn(dropout=0.0)
    reference_model = copy.deepcopy(model)
    inputs, labels = image_batch()
    loss_fn = losses.MultiSimilarityLoss()
    scaler = torch.amp.GradScaler(device.type, init_scale=1024.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    cached_backward(model, inputs, labels, loss_fn, chunk_size=5, grad_scaler=scaler)
    ref.chunked_backward(reference_model, inputs, labels, loss_fn, chunk_size=5)

    for grad, reference_grad in zip(ref.gradients(model), ref.gradients(reference_model), strict=True):
        torch.testing.assert_close(grad, 1024 * reference_grad, rtol=1e-6, atol=1e-9)
    scaler.unscale_(optimizer)
    for grad, reference_grad in zip(ref.gradients(model), ref.gradients(reference_model), strict=True):
        torch.testing.assert_close(grad, reference_grad, rtol=1e-6, atol=1e-12)


def test_gradients_accumulate_like_backward(make_cnn, image_batch, ref):
    model = make_cnn(dropout=0.0)
    reference_model = copy.deepcopy(model)
    inputs, labels = image_batch()
    loss_fn = losses.MultiSimilarityLoss()
    for m in (model, reference_model):
        for p in m.parameters():
            p.grad = torch.ones_like(p)

    cached_backward(model, inputs, labels, loss_fn, chunk_size=3)
    loss_fn(reference_model(inputs), labels).backward()

    for grad, reference_grad in zip(ref.gradients(model), ref.gradients(reference_model), strict=True):
        torch.testing.assert_close(grad, reference_grad, rtol=1e-6, atol=1e-10)


def test_parameters_of_the_loss_get_their_gradient(make_cnn, image_batch, device):
    model = make_cnn(dropout=0.0)
    reference_model = copy.deepcopy(model)
    inputs, labels = image_batch()
    loss_fn = losses.ProxyAnchorLoss(num_classes=4, embedding_size=8).to(device, torch.float64)
    reference_loss_fn = copy.deepcopy(loss_fn)

    cached_backward(model, inputs, labels, loss_fn, chunk_size=5)
    reference_loss_fn(reference_model(inputs), labels).backward()

    torch.testing.assert_close(loss_fn.proxies.grad, reference_loss_fn.proxies.grad, rtol=1e-6, atol=1e-10)


def test_similarity_mixup_draws_its_random_numbers_as_in_a_plain_step(make_cnn, image_batch, ref):
    recallk = pytest.importorskip("pml_recallk.losses")
    model = make_cnn()
    reference_model = copy.deepcopy(model)
    inputs, labels = image_batch()
    loss_fn = recallk.SimilarityMixup(recallk.RecallKSurrogateLoss(k_values=(1, 2, 4))).train()

    torch.manual_seed(11)
    loss = cached_backward(model, inputs, labels, loss_fn, chunk_size=5)
    torch.manual_seed(11)
    reference_loss = ref.chunked_backward(reference_model, inputs, labels, loss_fn, chunk_size=5)

    torch.testing.assert_close(loss, reference_loss, rtol=1e-10, atol=1e-12)
    for grad, reference_grad in zip(ref.gradients(model), ref.gradients(reference_model), strict=True):
        torch.testing.assert_close(grad, reference_grad, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("amp", [torch.bfloat16, torch.float16], ids=str)
def test_amp_equals_a_plain_autocast_step_with_the_loss_in_float32(amp, make_cnn, image_batch, ref, device):
    model = make_cnn(dtype=torch.float32)
    reference_model = copy.deepcopy(model)
    inputs, labels = image_batch(dtype=torch.float32)
    loss_fn = losses.MultiSimilarityLoss()
    seen_dtypes = []

    def recording_loss(embeddings, labels):
        seen_dtypes.append((embeddings.dtype, torch.is_autocast_enabled(device.type)))
        return loss_fn(embeddings, labels)

    torch.manual_seed(5)
    loss = cached_backward(model, inputs, labels, recording_loss, chunk_size=5, amp=amp)
    torch.manual_seed(5)
    chunks = []
    for chunk in inputs.split(5):
        # One autocast region per chunk: within one region autocast caches the low-precision copy of each
        # weight, and all chunks' weight gradients would be summed in that precision before reaching float32.
        with torch.autocast(device.type, dtype=amp):
            chunks.append(reference_model(chunk))
    embeddings = torch.cat(chunks)
    reference_loss = loss_fn(embeddings.float(), labels)
    reference_loss.backward()

    assert seen_dtypes == [(torch.float32, False)]
    torch.testing.assert_close(loss, reference_loss.detach(), rtol=1e-5, atol=1e-6)
    for grad, reference_grad in zip(ref.gradients(model), ref.gradients(reference_model), strict=True):
        torch.testing.assert_close(grad, reference_grad, rtol=1e-5, atol=1e-6)


def test_float16_with_a_grad_scaler_overflows_and_the_scaler_skips_the_step(make_cnn, image_batch, device):
    model = make_cnn(dtype=torch.float32, dropout=0.0)
    inputs, labels = image_batch(dtype=torch.float32)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    # 2**40 × G does not fit in float16 (max 65504): the cached gradient overflows, as a plain backward would.
    scaler = torch.amp.GradScaler(device.type, init_scale=2.0**40)

    cached_backward(model, inputs, labels, losses.MultiSimilarityLoss(), 5, grad_scaler=scaler, amp=torch.float16)
    scaler.step(optimizer)
    scaler.update()

    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert scaler.get_scale() == 2.0**39


@settings(max_examples=20, deadline=None)
@given(
    batch_size=st.integers(1, 12),
    chunk_size=st.integers(1, 14),
    seed=st.integers(0, 2**16),
)
def test_any_batch_and_chunk_size_give_the_plain_gradient(batch_size, chunk_size, seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 7), nn.Dropout(0.5), nn.Tanh(), nn.Linear(7, 3)).double()
    reference_model = copy.deepcopy(model)
    inputs = torch.randn(batch_size, 5, dtype=torch.float64)
    labels = torch.randint(0, 3, (batch_size,))

    def loss_fn(embeddings, labels):  # depends on all rows jointly, like a metric loss
        return (embeddings @ embeddings.T).logsumexp(dim=1).mean() + embeddings[:, 0].dot(labels.double())

    torch.manual_seed(seed + 1)
    cached_backward(model, inputs, labels, loss_fn, chunk_size)
    torch.manual_seed(seed + 1)
    loss_fn(torch.cat([reference_model(c) for c in inputs.split(chunk_size)]), labels).backward()

    for p, q in zip(model.parameters(), reference_model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-12)


def test_progress_bar_is_shown(make_cnn, image_batch, capsys):
    inputs, labels = image_batch()
    cached_backward(make_cnn(), inputs, labels, losses.MultiSimilarityLoss(), 5, progress_bar=True)
    assert "cached_backward" in capsys.readouterr().err


@pytest.mark.parametrize("chunk_size", [0, -3])
def test_rejects_non_positive_chunk_size(chunk_size, make_cnn, image_batch):
    inputs, labels = image_batch()
    with pytest.raises(ValueError, match="chunk_size"):
        cached_backward(make_cnn(), inputs, labels, losses.MultiSimilarityLoss(), chunk_size)


@pytest.mark.parametrize("chunk_size", [2.5, True, "4", None])
def test_rejects_non_int_chunk_size(chunk_size, make_cnn, image_batch):
    inputs, labels = image_batch()
    with pytest.raises(TypeError, match="chunk_size"):
        cached_backward(make_cnn(), inputs, labels, losses.MultiSimilarityLoss(), chunk_size)


def test_rejects_inputs_and_labels_of_different_lengths(make_cnn, image_batch):
    inputs, labels = image_batch()
    with pytest.raises(ValueError, match="same length"):
        cached_backward(make_cnn(), inputs, labels[:-1], losses.MultiSimilarityLoss(), 4)


@pytest.mark.parametrize(
    "output",
    [lambda x: x.flatten(1).sum(1), lambda x: x, lambda x: (x.flatten(1),), lambda x: x.flatten(1)[:1]],
    ids=["1d", "4d", "tuple", "wrong_length"],
)
def test_rejects_a_model_whose_output_is_not_a_2d_batch_of_embeddings(output, image_batch):
    class Model(nn.Module):
        def forward(self, x):
            return output(x)

    inputs, labels = image_batch()
    with pytest.raises(ValueError, match="2-D tensor"):
        cached_backward(Model(), inputs, labels, losses.MultiSimilarityLoss(), 4)


def test_rejects_a_model_that_is_not_a_module(image_batch):
    inputs, labels = image_batch()
    with pytest.raises(TypeError, match="nn.Module"):
        cached_backward(lambda x: x.flatten(1), inputs, labels, losses.MultiSimilarityLoss(), 4)


@pytest.mark.parametrize("amp,error", [(torch.float32, ValueError), (torch.int8, ValueError), ("bf16", TypeError)])
def test_rejects_an_amp_that_is_not_a_half_precision_dtype(amp, error, make_cnn, image_batch):
    inputs, labels = image_batch()
    with pytest.raises(error, match="amp=torch.bfloat16"):
        cached_backward(make_cnn(), inputs, labels, losses.MultiSimilarityLoss(), 4, amp=amp)


def test_rejects_amp_on_a_device_without_autocast():
    model = nn.Linear(4, 2, device="meta")
    with pytest.raises(ValueError, match="not available on 'meta'"):
        cached_backward(model, torch.randn(4, 4), torch.arange(4), losses.MultiSimilarityLoss(), 2, amp=torch.bfloat16)


@pytest.mark.parametrize(
    "loss_fn,message",
    [
        (lambda e, y: e.sum(1), "scalar tensor"),
        (lambda e, y: 1.5, "scalar tensor"),
        (lambda e, y: torch.tensor(1.5, dtype=e.dtype), "does not require grad"),
    ],
    ids=["vector", "float", "constant"],
)
def test_rejects_a_loss_that_is_not_a_differentiable_scalar(loss_fn, message, make_cnn, image_batch):
    inputs, labels = image_batch()
    with pytest.raises(ValueError, match=message):
        cached_backward(make_cnn(), inputs, labels, loss_fn, 4)


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_a_nonfinite_loss_stops_without_writing_gradients(bad_value, make_cnn, image_batch):
    model = make_cnn()
    inputs, labels = image_batch()
    with pytest.raises(FloatingPointError, match="no gradient was written"):
        cached_backward(model, inputs, labels, lambda e, y: e.sum() * bad_value, 4)
    assert all(p.grad is None for p in model.parameters())


def test_a_nonfinite_loss_is_returned_when_not_stopping(make_cnn, image_batch):
    model = make_cnn()
    inputs, labels = image_batch()
    with pytest.warns(pml_recallk.trainers.gradient_cache.NonFiniteStepWarning, match="the loss is nan"):
        loss = cached_backward(model, inputs, labels, lambda e, y: e.sum() * float("nan"), 4, stop_on_nan=False)
    assert torch.isnan(loss)
    assert all(p.grad is None for p in model.parameters())


def test_docstring_example_runs():
    result = doctest.testmod(pml_recallk.trainers.gradient_cache)
    assert result.attempted > 0 and result.failed == 0


def test_plain_loop_example_of_the_docs_runs():
    page = (Path(__file__).parents[2] / "docs" / "cached_backward.md").read_text()
    section = page.split("## Example: a plain PyTorch loop", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    namespace = {}
    exec(code, namespace)
    assert torch.isfinite(namespace["loss"]) and not namespace["loss"].requires_grad


# ---- RS@k with non-finite embeddings, and the whole training split as one batch -----------------------------------


def _poison(model: nn.Module) -> nn.Module:
    """A NaN weight in the last layer: every embedding is NaN, as after a diverged step."""
    with torch.no_grad():
        model.head[1].weight[0, 0] = float("nan")
    return model


def test_rsk_with_nan_embeddings_stops_with_a_clear_error(make_cnn, image_batch):
    from pml_recallk import RecallKSurrogateLoss

    model = _poison(make_cnn(dropout=0.0))
    inputs, labels = image_batch()
    with pytest.raises(FloatingPointError, match="NaN or infinite embeddings; no gradient was written"):
        cached_backward(model, inputs, labels, RecallKSurrogateLoss(), 4)
    assert all(p.grad is None for p in model.parameters())


def test_rsk_with_nan_embeddings_is_skipped_with_a_warning_when_not_stopping(make_cnn, image_batch):
    from pml_recallk import RecallKSurrogateLoss
    from pml_recallk.trainers.gradient_cache import NonFiniteStepWarning

    model = _poison(make_cnn(dropout=0.0))
    inputs, labels = image_batch()
    with pytest.warns(NonFiniteStepWarning, match="NaN or infinite embeddings"):
        loss = cached_backward(model, inputs, labels, RecallKSurrogateLoss(), 4, stop_on_nan=False)
    assert torch.isnan(loss)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("path", ["dense", "tiled"])
def test_whole_training_split_as_one_batch_equals_the_plain_full_batch_gradient(path, make_cnn, device):
    """The recipe of docs/cached_backward.md: every image of a (small) training split in one cached step, RS@k on the
    tiled path; the gradient is that of one plain forward and backward of the whole split."""
    from pml_recallk import RecallKSurrogateLoss

    generator = torch.Generator().manual_seed(3)
    split = torch.randn(96, 3, 8, 8, generator=generator, dtype=torch.float64).to(device)
    labels = torch.arange(24, device=device).repeat_interleave(4)[torch.randperm(96, generator=generator)]
    model = make_cnn(dropout=0.0)
    reference_model = copy.deepcopy(model)
    loss_fn = RecallKSurrogateLoss(rank_temperature=0.05, path=path, tile_size=10)

    loss = cached_backward(model, split, labels, loss_fn, chunk_size=16)
    reference = RecallKSurrogateLoss(rank_temperature=0.05, path="dense")(reference_model(split), labels)
    reference.backward()
    torch.testing.assert_close(loss, reference.detach(), rtol=1e-12, atol=0)
    for grad, reference_grad in zip(
        (p.grad for p in model.parameters()), (p.grad for p in reference_model.parameters()), strict=True
    ):
        torch.testing.assert_close(grad, reference_grad, rtol=1e-9, atol=1e-12)


# Reliability cases CB12, CB13, CB17 (/work/shared/notes/reliability-cases.md): a clear error naming the cause.


def test_a_model_without_trainable_parameters_is_refused_by_name():
    labels = torch.arange(4).repeat_interleave(4)
    with pytest.raises(ValueError, match="model has no parameter that requires grad"):
        cached_backward(nn.Identity(), torch.randn(16, 6), labels, losses.MultiSimilarityLoss(), 4)


class _Rounding(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(6, 8)

    def forward(self, x):
        return self.linear(x).round().long()


def test_integer_embeddings_are_refused_before_any_gradient():
    labels = torch.arange(4).repeat_interleave(4)
    with pytest.raises(ValueError, match="floating-point embeddings.*torch.int64"):
        cached_backward(_Rounding(), torch.randn(16, 6), labels, losses.MultiSimilarityLoss(), 4)


def test_a_last_chunk_of_one_input_under_train_mode_batchnorm_names_chunk_size():
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8)).train()
    labels = torch.arange(4).repeat_interleave(4)
    with pytest.raises(ValueError, match="chunk_size=5 leaves a chunk of 1 input"):
        cached_backward(model, torch.randn(16, 6), labels, losses.MultiSimilarityLoss(), 5)
    cached_backward(model, torch.randn(16, 6), labels, losses.MultiSimilarityLoss(), 6)  # a last chunk of 4 is fine
