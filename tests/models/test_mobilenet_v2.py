"""MobileNetV2Embedder and the nsfwjs weight conversion.

The port is checked against the original: nsfwjs's model run by TF.js (pure JavaScript) in node, on the packages
``benchmarks/icons/fetch.sh --small DIR`` fetches (``PML_RECALLK_ICONS_TEST_NPM=DIR``; default ``icons-small``
in the project's cache folder). Without node or the packages that test is skipped, in CI (``CI=true``) it fails.
The rest runs anywhere: Keras's padding against a float64 loop, the dequantisation against the formula, the cut,
the frozen BatchNorm, the weight loading and the registry.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pml_recallk.experiments import resolve_config
from pml_recallk.experiments.builders import build_model as build_config_model
from pml_recallk.models import build_model
from pml_recallk.models.mobilenet_v2 import ConvBN, MobileNetV2Embedder, MobileNetV2Trunk
from pml_recallk.models.transforms import IMAGENET_MEAN, IMAGENET_STD

REPO = Path(__file__).resolve().parents[2]
NPM_ENV = "PML_RECALLK_ICONS_TEST_NPM"
FETCH = "bash benchmarks/icons/fetch.sh --small DIR"


def _load_converter():
    path = REPO / "benchmarks/icons/convert_mobilenet_v2.py"
    spec = importlib.util.spec_from_file_location("convert_mobilenet_v2", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and worker processes look the module up by name
    spec.loader.exec_module(module)
    return module


convert = _load_converter()


def _npm_folder() -> Path:
    folder = os.environ.get(NPM_ENV)
    # The project's one cache folder ($PML_RECALLK_CACHE, else ~/.cache/pml-recallk), as for the Han fonts.
    cache = Path(os.environ.get("PML_RECALLK_CACHE") or Path.home() / ".cache" / "pml-recallk").expanduser()
    path = Path(folder).expanduser() if folder else cache / "icons-small"
    missing = [p for p in ("nsfwjs-4.3.0/package", "tensorflow-tfjs-4.22.0/package") if not (path / p).is_dir()]
    if missing or shutil.which("node") is None:
        message = f"needs node and {missing or 'the packages'} in {path}: run `{FETCH}` and set {NPM_ENV}=DIR"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def _keras_same_conv_reference(x: np.ndarray, kernel: np.ndarray, stride: int) -> np.ndarray:
    """TensorFlow's "same" convolution in float64 loops: output size ceil(H / stride), total padding
    max((out − 1)·stride + k − H, 0), of which floor(total / 2) before and the rest after. x (C, H, W),
    kernel (O, C, k, k)."""
    channels, height, width = x.shape
    out_channels, _, k, _ = kernel.shape
    out_h, out_w = -(-height // stride), -(-width // stride)
    pad_h = max((out_h - 1) * stride + k - height, 0)
    pad_w = max((out_w - 1) * stride + k - width, 0)
    top, left = pad_h // 2, pad_w // 2
    out = np.zeros((out_channels, out_h, out_w))
    for o in range(out_channels):
        for i in range(out_h):
            for j in range(out_w):
                total = 0.0
                for c in range(channels):
                    for a in range(k):
                        for b in range(k):
                            row, col = i * stride + a - top, j * stride + b - left
                            if 0 <= row < height and 0 <= col < width:
                                total += x[c, row, col] * kernel[o, c, a, b]
                out[o, i, j] = total
    return out


@pytest.mark.parametrize("stride", [1, 2])
def test_conv_padding_is_keras_same_padding(stride):
    # The pretrained weights expect TF's padding: at stride 2 on an even size, no row above and one below.
    torch.manual_seed(0)
    layer = ConvBN(2, 3, 3, stride, 1, relu=False).double().eval()
    layer.bn.running_mean.zero_()
    layer.bn.running_var.fill_(1 - 1e-3)  # with eps 1e-3 the BatchNorm is then the identity
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        got = layer(x)[0].numpy()
    expected = _keras_same_conv_reference(x[0].numpy(), layer.conv.weight.detach().numpy(), stride)
    np.testing.assert_allclose(got, expected, atol=1e-10)


def _fake_package(folder: Path, payload: bytes) -> Path:
    """An nsfwjs-like package with two uint8 tensors in the manifest and ``payload`` as the shard."""
    model_dir = folder / "dist/models/mobilenet_v2"
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "model.min.js").write_text(
        'a.exports={modelTopology:{name:"m"},weightsManifest:[{paths:["group1-shard1of1"],weights:['
        '{name:"a/kernel",shape:[1,2,3],dtype:"float32",quantization:{min:-.5,scale:.25,dtype:"uint8"}},'
        '{name:"b/gamma",shape:[3],dtype:"float32",quantization:{min:2,scale:1e-2,dtype:"uint8"}}]}]}'
    )
    (model_dir / "group1-shard1of1.min.js").write_text(f'h.exports="{base64.b64encode(payload).decode()}"')
    return folder


def test_dequantisation_follows_the_manifest(tmp_path):
    # value = q * scale + min, tensors in manifest order, each shaped as declared.
    weights = convert.read_keras_weights(_fake_package(tmp_path, bytes([0, 1, 2, 3, 4, 5, 255, 0, 7])))
    np.testing.assert_array_equal(weights["a/kernel"], (np.arange(6) * 0.25 - 0.5).reshape(1, 2, 3))
    np.testing.assert_allclose(weights["b/gamma"], [2 + 2.55, 2.0, 2.07], rtol=1e-6)


def test_shard_size_must_match_the_manifest(tmp_path):
    with pytest.raises(ValueError, match="covers 9 bytes of a 10-byte shard"):
        convert.read_keras_weights(_fake_package(tmp_path, bytes(10)))


@pytest.mark.parametrize(("last_block", "features"), [(None, 1280), (16, 320), (13, 160), (10, 96), (0, 16)])
def test_cut_and_output(last_block, features):
    model = MobileNetV2Embedder(embedding_size=16, last_block=last_block).eval()
    assert model.backbone.num_features == features
    embeddings = model(torch.randn(3, 3, 48, 48))
    assert embeddings.shape == (3, 16)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(3))
    assert model.embedding_layer() is model.head


@pytest.mark.parametrize("last_block", [-1, 17, 2.0, "13"])
def test_bad_last_block(last_block):
    with pytest.raises(ValueError, match="last_block"):
        MobileNetV2Embedder(last_block=last_block)


def test_bad_input_shape():
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        MobileNetV2Embedder(embedding_size=8)(torch.randn(2, 1, 32, 32))


def test_input_normalisation_is_undone():
    # The project's transforms normalise with ImageNet statistics; the trunk must see the [0, 1] pixels.
    torch.manual_seed(0)
    model = MobileNetV2Embedder(embedding_size=8, last_block=3).eval()
    pixels = torch.rand(2, 3, 32, 32)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model.features((pixels - mean) / std), model.backbone(pixels).mean(dim=(2, 3)))


def test_freeze_batchnorm_keeps_statistics():
    model = MobileNetV2Embedder(embedding_size=8, last_block=2, freeze_batchnorm=True).train()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    assert all(torch.equal(before[k], model.state_dict()[k]) for k in before)
    assert model.backbone.stem.bn.weight.grad is not None  # the affine parameters still train
    trained = MobileNetV2Embedder(embedding_size=8, last_block=2, freeze_batchnorm=False).train()
    trained(torch.randn(4, 3, 32, 32))
    assert not torch.equal(trained.backbone.stem.bn.running_mean, torch.zeros(32))


def test_whole_trunk_weights_load_into_a_cut_trunk(tmp_path):
    torch.manual_seed(1)
    whole = MobileNetV2Trunk()
    path = tmp_path / "trunk.pth"
    torch.save(whole.state_dict(), path)
    cut = MobileNetV2Embedder(embedding_size=8, pretrained_path=path, last_block=13)
    for name, value in cut.backbone.state_dict().items():
        assert torch.equal(value, whole.state_dict()[name]), name
    # Entries that are not above the cut stay strict: an unknown name inside the kept blocks is an error.
    torch.save({**whole.state_dict(), "blocks.3.extra": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="blocks.3.extra"):
        MobileNetV2Embedder(embedding_size=8, pretrained_path=path, last_block=13)
    # A cut trunk's file does not fill a deeper trunk.
    torch.save(MobileNetV2Trunk(last_block=5).state_dict(), path)
    with pytest.raises(ValueError, match="missing keys"):
        MobileNetV2Embedder(embedding_size=8, pretrained_path=path, last_block=13)


def test_registry_and_config():
    assert build_model("mobilenet_v2_block13", embedding_size=8).last_block == 13
    assert build_model("mobilenet_v2_block10", embedding_size=8).last_block == 10
    assert build_model("mobilenet_v2", embedding_size=8).last_block is None
    config = resolve_config(overrides=["model.name=mobilenet_v2_block13", "train.freeze_batchnorm=true"])
    model = build_config_model(config)
    assert isinstance(model, MobileNetV2Embedder) and model.freeze_batchnorm and model.last_block == 13
    config = resolve_config(overrides=["model.name=mobilenet_v2", "model.pretrained_path=/no/such/file.pth"])
    with pytest.raises(Exception, match="model.pretrained_path"):
        build_config_model(config)


def _tfjs_activations(npm: Path, pixels: np.ndarray, layers: list[str], tmp_path: Path) -> dict[str, np.ndarray]:
    input_file = tmp_path / "input.f32"
    pixels.astype("<f4").tofile(input_file)
    command = [
        "node",
        str(REPO / "benchmarks/icons/tfjs_activations.js"),
        str(npm / "tensorflow-tfjs-4.22.0/package"),
        str(npm / "nsfwjs-4.3.0/package"),
        str(input_file),
        *map(str, pixels.shape[:3]),
        *layers,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    decoded = json.loads(result.stdout)
    return {
        name: np.frombuffer(base64.b64decode(v["data"]), dtype="<f4").reshape(v["shape"]) for name, v in decoded.items()
    }


def test_port_matches_tfjs(tmp_path):
    """Same pixels through TF.js and the converted PyTorch trunk: the ImageNet half (block 10's depthwise ReLU),
    the bottleneck of block 13 and the last layer (out_relu) agree to 1e-4 of the activations' largest value.

    Why that tolerance: both run float32 with different summation orders (TF.js's im2col matmul vs PyTorch's
    kernels); a rounding error of ~6e-8 relative per operation, over ~50 layers and sums of up to 960 terms,
    gives ~1e-6 to 1e-5 relative. Measured: max abs difference 6e-6 at block 10 (scale 6), 2e-5 at block 13
    (scale 9.6), 3e-5 at out_relu (scale 6). A layout or padding error moves activations by O(1)."""
    npm = _npm_folder()
    weights = convert.to_state_dict(convert.read_keras_weights(npm / "nsfwjs-4.3.0/package"))
    trunk = MobileNetV2Trunk()
    trunk.load_state_dict(weights)
    trunk.eval()
    # nsfwjs feeds [0, 1]; the Keras input layer is fixed at 224 px (the padding layers are the same at any size).
    pixels = np.random.default_rng(0).random((2, 224, 224, 3), dtype=np.float32)
    layers = {"block_10_depthwise_relu": trunk.blocks[10].depthwise, "block_13_project_BN": trunk.blocks[13].project}
    captured = {}
    for name, module in layers.items():
        module.register_forward_hook(lambda _m, _i, output, name=name: captured.__setitem__(name, output))
    with torch.no_grad():
        captured["out_relu"] = trunk(torch.from_numpy(pixels).permute(0, 3, 1, 2))
    expected = _tfjs_activations(npm, pixels, list(captured), tmp_path)
    for name, output in captured.items():
        got = output.permute(0, 2, 3, 1).numpy()
        scale = float(np.abs(expected[name]).max())
        assert got.shape == expected[name].shape, name
        assert scale > 0.5, f"{name}: activations too small to compare ({scale})"
        np.testing.assert_allclose(got, expected[name], rtol=0, atol=1e-4 * scale, err_msg=name)
