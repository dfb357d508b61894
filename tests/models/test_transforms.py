"""The paper's train/test input pipelines, scaled to any image size."""

from __future__ import annotations

import pickle

import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from pml_recallk.models.transforms import IMAGENET_MEAN, IMAGENET_STD, test_transform, train_transform


@pytest.mark.parametrize("image_size, expected_resize", [(224, 256), (32, 37), (64, 73)])
def test_test_transform_resizes_by_256_over_224_then_crops(image_size, expected_resize):
    resize = next(step for step in test_transform(image_size).transforms if isinstance(step, T.Resize))
    assert resize.size == expected_resize
    out = test_transform(image_size)(Image.new("RGB", (300, 200)))
    assert out.shape == (3, image_size, image_size)


def test_test_transform_normalises_with_imagenet_statistics():
    colour = (10, 128, 250)
    out = test_transform(16)(Image.new("RGB", (20, 20), colour))
    for c in range(3):
        expected = (colour[c] / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        torch.testing.assert_close(out[c], torch.full((16, 16), expected), rtol=0, atol=1e-5)


def test_grayscale_pipelines_use_half_mean_and_std():
    out = test_transform(8, channels=1)(Image.new("L", (8, 8), 51))
    torch.testing.assert_close(out, torch.full((1, 8, 8), (51 / 255 - 0.5) / 0.5), rtol=0, atol=1e-6)


@pytest.mark.parametrize("channels, mode_in", [(1, "RGB"), (3, "L"), (1, "L"), (3, "RGB")])
def test_any_input_mode_gets_the_requested_channel_count(channels, mode_in):
    image = Image.new(mode_in, (40, 30))
    assert train_transform(24, channels=channels)(image).shape == (channels, 24, 24)
    assert test_transform(24, channels=channels)(image).shape == (channels, 24, 24)


def _asymmetric_square():
    image = Image.new("L", (16, 16), 0)
    image.paste(255, (0, 0, 4, 16))  # a bright stripe on the left edge
    return image


@pytest.mark.parametrize("flip", [True, False])
def test_flip_option(flip):
    # scale (1, 1) on a square image crops the whole image, so the only randomness left is the flip.
    torch.manual_seed(0)
    transform = train_transform(16, channels=1, flip=flip, scale=(1.0, 1.0))
    left_bright = [bool(transform(_asymmetric_square())[0, :, 0].mean() > 0) for _ in range(30)]
    assert all(left_bright) != flip and any(left_bright)


def test_train_crop_uses_the_scale_range():
    crop = next(
        step for step in train_transform(32, scale=(0.5, 1.0)).transforms if isinstance(step, T.RandomResizedCrop)
    )
    assert crop.scale == (0.5, 1.0) and crop.size == (32, 32)
    crop = next(step for step in train_transform(224).transforms if isinstance(step, T.RandomResizedCrop))
    assert crop.scale == (0.08, 1.0)  # the paper's (torchvision's default)


def test_transforms_pickle_for_dataloader_workers():
    for transform in (train_transform(32, channels=1), test_transform(32)):
        restored = pickle.loads(pickle.dumps(transform))
        assert restored(Image.new("RGB", (40, 40))).shape[1:] == (32, 32)


@pytest.mark.parametrize("make", [train_transform, test_transform])
def test_bad_arguments(make):
    with pytest.raises(ValueError, match="channels"):
        make(32, channels=2)
    with pytest.raises(ValueError, match="image_size"):
        make(0)


def test_bad_scale():
    with pytest.raises(ValueError, match="scale"):
        train_transform(32, scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="scale"):
        train_transform(32, scale=(0.9, 0.5))


@pytest.mark.parametrize("channels, mean, std", [(3, (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)), (1, (0.7,), (0.1,))])
def test_given_mean_and_std_normalise_each_channel(channels, mean, std):
    colour = (10, 128, 250)[:channels]
    image = Image.new("RGB" if channels == 3 else "L", (20, 20), colour if channels == 3 else colour[0])
    for transform in (
        test_transform(16, channels, mean, std),
        train_transform(16, channels, False, (1.0, 1.0), mean, std),
    ):
        out = transform(image)
        for c in range(channels):
            expected = (colour[c] / 255 - mean[c]) / std[c]
            torch.testing.assert_close(out[c], torch.full((16, 16), expected), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "mean, std", [((0.5,), (0.5, 0.5, 0.5)), ((0.5, 0.5), (0.5, 0.5)), ((0.5,) * 3, (0.5, 0.0, 1.0))]
)
def test_a_mean_or_std_that_does_not_fit_the_channels_is_refused(mean, std):
    with pytest.raises(ValueError, match="one value per channel"):
        test_transform(16, 3, mean, std)
