"""The paper's input pipelines, scaled to any image size.

Train: RandomResizedCrop(image_size) + RandomHorizontalFlip → tensor → normalise.
Test: Resize(round(image_size · 256/224)) + CenterCrop(image_size) → tensor → normalise.
At ``image_size=224`` these are the paper's 224-px crops and 256-px resize. Normalisation uses the given
per-channel ``mean``/``std``, by default the ImageNet mean/std for 3 channels and mean 0.5, std 0.5 for 1 channel.
Images are converted to the mode the channel count asks for first ("RGB" or "L"), so either kind of PIL image can
come in.
"""

from __future__ import annotations

from collections.abc import Sequence

from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ConvertMode:
    """Convert a PIL image to ``mode`` (a class rather than a lambda so DataLoader workers can pickle it)."""

    def __init__(self, mode: str):
        self.mode = mode

    def __call__(self, image):
        return image if image.mode == self.mode else image.convert(self.mode)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self.mode!r})"


def _mode_and_normalize(
    channels: int, mean: Sequence[float] | None, std: Sequence[float] | None
) -> tuple[ConvertMode, T.Normalize]:
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if mean is None and std is None:
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.5,), (0.5,))
    if mean is None or std is None or len(mean) != channels or len(std) != channels or min(std) <= 0:
        raise ValueError(
            f"mean and std must both hold one value per channel ({channels}), every std above 0; got mean={mean}, "
            f"std={std}"
        )
    return ConvertMode("RGB" if channels == 3 else "L"), T.Normalize(tuple(mean), tuple(std))


def _check_size(image_size: int) -> None:
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")


def train_transform(
    image_size: int,
    channels: int = 3,
    flip: bool = True,
    scale: tuple[float, float] = (0.08, 1.0),
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> T.Compose:
    """RandomResizedCrop(image_size, scale) [+ RandomHorizontalFlip] → ToTensor → Normalize.

    Args:
        image_size: side of the square output.
        channels: 3 (RGB, ImageNet statistics) or 1 (grayscale, mean 0.5 / std 0.5).
        flip: random horizontal flips; turn off for characters, which a mirror changes.
        scale: range of the cropped area as a fraction of the image (torchvision's default (0.08, 1.0) is the
            paper's; small images do better with a milder range such as (0.5, 1.0)).
        mean, std: per-channel normalisation of the [0, 1] pixels (None: ImageNet's on 3 channels, 0.5 on 1).

    Example:
        >>> from PIL import Image
        >>> train_transform(32, channels=1, flip=False)(Image.new("L", (40, 40))).shape
        torch.Size([1, 32, 32])
    """
    _check_size(image_size)
    if not 0.0 < scale[0] <= scale[1] <= 1.0:
        raise ValueError(f"scale must satisfy 0 < scale[0] <= scale[1] <= 1, got {scale}")
    convert, normalize = _mode_and_normalize(channels, mean, std)
    steps = [convert, T.RandomResizedCrop(image_size, scale=tuple(scale))]
    if flip:
        steps.append(T.RandomHorizontalFlip())
    return T.Compose([*steps, T.ToTensor(), normalize])


def test_transform(
    image_size: int, channels: int = 3, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> T.Compose:
    """Resize(round(image_size · 256/224)) → CenterCrop(image_size) → ToTensor → Normalize (``mean``/``std`` as in
    :func:`train_transform`).

    Example:
        >>> from PIL import Image
        >>> test_transform(224)(Image.new("RGB", (500, 300))).shape
        torch.Size([3, 224, 224])
    """
    _check_size(image_size)
    convert, normalize = _mode_and_normalize(channels, mean, std)
    resize = round(image_size * 256 / 224)
    return T.Compose([convert, T.Resize(resize), T.CenterCrop(image_size), T.ToTensor(), normalize])


# The name starts with "test", so pytest would collect it wherever a test module imports it.
test_transform.__test__ = False
