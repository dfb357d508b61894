"""ResNet50GeM and ViTEmbedder on timm backbones (random init; weights only from local files).

Full-size backbones are slow to build on a CPU, so each is built once per module.
"""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from pml_recallk.models import GeM, ResNet50GeM, ViTEmbedder, build_model
from pml_recallk.models.weights import load_backbone_weights


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return ResNet50GeM(embedding_size=512)


@pytest.fixture(scope="module")
def fresh_resnet50_state(tmp_path_factory):
    """A timm resnet50 (with its ImageNet classifier) saved the way training scripts save checkpoints."""
    torch.manual_seed(1)
    reference = timm.create_model("resnet50", pretrained=False)
    path = tmp_path_factory.mktemp("weights") / "resnet50.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}, path)
    return path, reference.state_dict()


def batchnorms(model):
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def test_resnet_outputs_unit_embeddings(resnet):
    resnet.eval()
    out = resnet(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 512)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(1))


def test_resnet_is_trunk_gem_layernorm_linear(resnet):
    assert isinstance(resnet.pool, GeM) and resnet.pool.p.item() == pytest.approx(3.0)
    assert resnet.head.norm.normalized_shape == (2048,)
    assert (resnet.head.linear.in_features, resnet.head.linear.out_features) == (2048, 512)


def test_resnet_batchnorm_stays_frozen_in_training_mode(resnet):
    resnet.train()
    assert resnet.training and resnet.head.training
    layers = batchnorms(resnet)
    assert len(layers) == 53 and not any(layer.training for layer in layers)  # every BN of ResNet-50
    before = {k: v.clone() for k, v in resnet.state_dict().items() if "running" in k or "num_batches" in k}
    out = resnet(torch.randn(2, 3, 64, 64))
    after = resnet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # the affine parameters still learn
    out[:, 0].sum().backward()
    assert all(layer.weight.requires_grad and layer.weight.grad is not None for layer in layers)
    resnet.zero_grad(set_to_none=True)


def test_resnet_two_training_forwards_agree(resnet):
    # What gradient-cached training relies on: no batch statistics, no running-stat drift between passes.
    resnet.train()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(resnet(x), resnet(x))
        torch.testing.assert_close(resnet(x)[:1], resnet(x[:1]))


def test_resnet_batchnorm_trains_when_not_frozen(resnet):
    resnet.freeze_batchnorm = False
    try:
        resnet.train()
        assert all(layer.training for layer in batchnorms(resnet))
    finally:
        resnet.freeze_batchnorm = True
        resnet.train()


def test_resnet_loads_a_local_checkpoint(fresh_resnet50_state):
    path, reference = fresh_resnet50_state
    model = ResNet50GeM(pretrained_path=path)
    loaded = model.backbone.state_dict()
    assert set(reference) - set(loaded) == {"fc.weight", "fc.bias"}  # the classifier is dropped
    assert all(torch.equal(loaded[k], reference[k]) for k in loaded)


def test_missing_weights_file_is_reported(tmp_path, resnet):
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        load_backbone_weights(resnet.backbone, tmp_path / "nothing.pth")


def test_unreadable_weights_file_is_reported(tmp_path, resnet):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(ValueError, match="bad.pth"):
        load_backbone_weights(resnet.backbone, bad)


def test_a_checkpoint_that_is_not_a_state_dict_is_reported(tmp_path, resnet):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(ValueError, match="state dict"):
        load_backbone_weights(resnet.backbone, path)


def test_key_and_shape_mismatches_are_listed(tmp_path, resnet, fresh_resnet50_state):
    _, reference = fresh_resnet50_state
    state = dict(reference)
    del state["layer1.0.conv1.weight"]
    state["extra.weight"] = torch.zeros(1)
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    path = tmp_path / "mismatch.pth"
    torch.save(state, path)
    with pytest.raises(ValueError) as error:
        load_backbone_weights(resnet.backbone, path)
    message = str(error.value)
    assert "layer1.0.conv1.weight" in message and "extra.weight" in message and "conv1.weight" in message


def test_safetensors_checkpoint_loads(tmp_path, resnet, fresh_resnet50_state):
    from safetensors.torch import save_file

    _, reference = fresh_resnet50_state
    target = timm.create_model("resnet50", pretrained=False, num_classes=0, global_pool="")
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in reference.items() if not k.startswith("fc.")}, str(path))
    load_backbone_weights(target, path)
    assert all(torch.equal(v, reference[k]) for k, v in target.state_dict().items())


@pytest.fixture(scope="module")
def vit_b32():
    torch.manual_seed(0)
    return ViTEmbedder("vit_base_patch32_224", embedding_size=512).eval()


def test_vit_embeds_the_cls_token(vit_b32):
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        out = vit_b32(x)
        tokens = vit_b32.backbone.forward_features(x)  # (1, 1 + 49, 768) after the final norm
        expected = vit_b32.head(tokens[:, 0])
    assert out.shape == (1, 512) and tokens.shape == (1, 50, 768)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(1))
    torch.testing.assert_close(out, expected)
    assert vit_b32.head.norm.normalized_shape == (768,)


@pytest.mark.slow  # writes and reads a 350 MB checkpoint
def test_vit_loads_its_own_backbone_weights(tmp_path, vit_b32):
    # A checkpoint whose names carry a "backbone." prefix (saved from this wrapper's trunk) loads too.
    path = tmp_path / "vit.pth"
    torch.save({f"backbone.{k}": v for k, v in vit_b32.backbone.state_dict().items()}, path)
    target = timm.create_model("vit_base_patch32_224", pretrained=False, num_classes=0, global_pool="token")
    load_backbone_weights(target, path)
    reference = vit_b32.backbone.state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in target.state_dict().items())


def test_vit_rejects_non_vit_variants():
    with pytest.raises(ValueError, match="variant"):
        ViTEmbedder("resnet50")


@pytest.mark.slow
def test_vit_b16_via_build_model():
    model = build_model("vit_b16", embedding_size=64).eval()
    assert model.variant == "vit_base_patch16_224"
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 64)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(1))
