"""Convert nsfwjs's MobileNetV2 (a TF.js Keras layers model) into a state dict of ``MobileNetV2Trunk``.

    bash benchmarks/icons/fetch.sh --small                      # nsfwjs@4.3.0 lands in benchmarks/.cache/npm
    python benchmarks/icons/convert_mobilenet_v2.py \\
        --nsfwjs benchmarks/.cache/npm/nsfwjs-4.3.0/package --output benchmarks/.cache/mobilenet_v2_nsfwjs.pth

Then train with ``model.name = "mobilenet_v2"`` and ``model.pretrained_path`` = that file (nothing downloads).

The package keeps the model in ``dist/models/mobilenet_v2/``: ``model.min.js`` (the Keras 2.2.4 topology and the
weights manifest, as a JavaScript object literal in a UMD wrapper) and ``group1-shard1of1.min.js`` (every weight
as one base64 string). Each tensor is uint8-quantised on its own: value = q · scale + min, with scale and min from
the manifest. Keras stores a convolution kernel as (kh, kw, in, out) and a depthwise kernel as (kh, kw, channels,
multiplier); PyTorch wants (out, in, kh, kw) and (channels, multiplier, kh, kw). The classifier on top (dense_1 …
dense_3) is not converted.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import re
from pathlib import Path

import numpy as np
import torch

from pml_recallk.models.mobilenet_v2 import NUM_BLOCKS, MobileNetV2Trunk

MODEL_DIR = Path("dist/models/mobilenet_v2")
# One manifest entry, as the minified literal writes it (numbers like ".0066" and "-5.08").
_WEIGHT = re.compile(
    r'\{name:"(?P<name>[^"]+)",shape:\[(?P<shape>[\d,]*)\],dtype:"float32",'
    r'quantization:\{min:(?P<min>[-+\d.eE]+),scale:(?P<scale>[-+\d.eE]+),dtype:"uint8"\}\}'
)
_BATCHNORM = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}


def read_keras_weights(package: Path) -> dict[str, np.ndarray]:
    """Keras weight name → dequantised float32 array, from the unpacked nsfwjs package folder."""
    manifest_text = (package / MODEL_DIR / "model.min.js").read_text()
    entries = list(_WEIGHT.finditer(manifest_text))
    if len(entries) != manifest_text.count("quantization:"):
        raise ValueError("the weights manifest has entries this parser does not read; is this nsfwjs 4.3.0?")
    shard_text = (package / MODEL_DIR / "group1-shard1of1.min.js").read_text()
    shard = max(re.findall(r'"([A-Za-z0-9+/=]+)"', shard_text), key=len)  # the only long string literal
    data = np.frombuffer(base64.b64decode(shard), dtype=np.uint8)
    weights, offset = {}, 0
    for entry in entries:
        shape = tuple(int(size) for size in entry["shape"].split(",") if size)
        count = int(np.prod(shape))
        quantised = data[offset : offset + count].astype(np.float64)
        weights[entry["name"]] = (quantised * float(entry["scale"]) + float(entry["min"])).astype(np.float32)
        weights[entry["name"]] = weights[entry["name"]].reshape(shape)
        offset += count
    if offset != data.size:
        raise ValueError(f"the manifest covers {offset} bytes of a {data.size}-byte shard")
    return weights


def keras_layer_names() -> dict[str, str]:
    """Torch module path → Keras layer-name prefix, e.g. ``"blocks.3.expand"`` → ``"block_3_expand"``."""
    names = {"stem.conv": "Conv1", "stem.bn": "bn_Conv1", "last_conv.conv": "Conv_1", "last_conv.bn": "Conv_1_bn"}
    for part in ("depthwise", "project"):
        names[f"blocks.0.{part}.conv"] = f"expanded_conv_{part}"
        names[f"blocks.0.{part}.bn"] = f"expanded_conv_{part}_BN"
    for block in range(1, NUM_BLOCKS):
        for part in ("expand", "depthwise", "project"):
            names[f"blocks.{block}.{part}.conv"] = f"block_{block}_{part}"
            names[f"blocks.{block}.{part}.bn"] = f"block_{block}_{part}_BN"
    return names


def to_state_dict(keras: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The state dict of a whole :class:`MobileNetV2Trunk` from the Keras weights (checked against it)."""
    state = {}
    for module, layer in keras_layer_names().items():
        if module.endswith(".conv"):
            if f"{layer}/depthwise_kernel" in keras:  # (kh, kw, C, 1) → (C, 1, kh, kw)
                kernel = keras[f"{layer}/depthwise_kernel"].transpose(2, 3, 0, 1)
            else:  # (kh, kw, in, out) → (out, in, kh, kw)
                kernel = keras[f"{layer}/kernel"].transpose(3, 2, 0, 1)
            state[f"{module}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel))
        else:
            for keras_name, torch_name in _BATCHNORM.items():
                state[f"{module}.{torch_name}"] = torch.from_numpy(keras[f"{layer}/{keras_name}"].copy())
            state[f"{module}.num_batches_tracked"] = torch.tensor(0)
    used = {f"{layer}/{suffix}" for layer in keras_layer_names().values()
            for suffix in ("kernel", "depthwise_kernel", *_BATCHNORM)}  # fmt: skip
    left = sorted(name for name in keras if name not in used)
    if any(not name.startswith("dense_") for name in left):
        raise ValueError(f"Keras weights not converted: {left}")
    expected = MobileNetV2Trunk().state_dict()
    if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in expected):
        raise ValueError("the converted weights do not fit MobileNetV2Trunk")
    return state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nsfwjs", type=Path, required=True, help="the unpacked nsfwjs package folder")
    parser.add_argument("--output", type=Path, required=True, help="state dict file to write (.pth)")
    args = parser.parse_args()
    state = to_state_dict(read_keras_weights(args.nsfwjs))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, args.output)
    # Of the tensors' values in name order, not of the file: torch.save's zip records the file's name.
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode() + state[name].numpy().tobytes())
    print(f"wrote {args.output}: {len(state)} tensors, sha256 of the values {digest.hexdigest()}")


if __name__ == "__main__":
    main()
