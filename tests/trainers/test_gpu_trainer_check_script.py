"""benchmarks/gpu_trainer_check.py runs end to end on a CPU with tiny sizes (the lead runs it once on a GPU)."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from torch import nn

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "gpu_trainer_check.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("gpu_trainer_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_embedder(script):
    def build(embedding_size, device):
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(3, 4, 3, stride=4),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4, embedding_size),
            script.L2Normalize(),
        )
        return script.freeze_batchnorm(model.to(device))

    return build


def test_runs_with_tiny_flags_and_writes_json_to_out(script, monkeypatch, tmp_path):
    # ResNet-50 itself is checked below; a tiny model keeps this run to seconds on a shared CPU.
    monkeypatch.setattr(script, "resnet50_embedder", tiny_embedder(script))
    monkeypatch.setenv("OUT", str(tmp_path))
    flags = "--device cpu --batch 16 --chunk 4 --image-size 32 --reference-batch 8 --steps 1"
    report = script.main([*flags.split(), "--precisions", "float32,bfloat16"])

    assert json.loads((tmp_path / "gpu_trainer_check.json").read_text()) == report
    assert report["gradient_equality"]["passed"]
    assert report["loss_function"] == "RecallKSurrogateLoss"
    assert [(r["mode"], r["precision"], r["batch"]) for r in report["results"]] == [
        (mode, precision, batch)
        for precision in ("float32", "bfloat16")
        for mode, batch in (("cached", 16), ("cached", 8), ("plain", 8))
    ]
    assert all("error" not in r and r["images_per_second"] > 0 for r in report["results"])
    assert abs(report["ratios"]["float32"]["reference_batch_loss_cached_minus_plain"]) < 1e-5
    assert set(report["ratios"]["bfloat16"]) == {
        "time_per_image_cached_over_plain",
        "peak_memory_big_over_reference_batch",
        "reference_batch_loss_cached_minus_plain",
    }


def test_resnet50_embedder_outputs_unit_embeddings_with_frozen_batchnorm(script):
    model = script.resnet50_embedder(512, torch.device("cpu"))
    with torch.no_grad():
        embeddings = model(torch.randn(2, 3, 32, 32))
    assert embeddings.shape == (2, 512)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(2))
    batchnorms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert model.training and batchnorms and not any(m.training for m in batchnorms)


@pytest.mark.parametrize("flag", ["--chunk 0", "--batch -1", "--precisions float8"])
def test_rejects_bad_flags(script, flag):
    with pytest.raises(SystemExit):
        script.parse_args(flag.split())
