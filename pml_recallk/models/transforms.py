"""The paper's input pipelines, scaled to any image size.

Train: RandomResizedCrop(image_size) + RandomHorizontalFlip → tensor → normalise.
Test: Resize(round(image_size · 256/224)) + CenterCrop(image_size) → tensor → normalise.
At ``image_size=224`` these are the paper's 224-px crops and 256-px resize. Normalisation uses the ImageNet
mean/std for 3 channels and mean 0.5, std 0.5 for 1 channel. Images are converted to the mode the channel
count asks for first ("RGB" or "L"), so either kind of PIL image can come in.
"""

from __future__ import annotations

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


def _mode_and_normalize(channels: int) -> tuple[ConvertMode, T.Normalize]:
    if channels == 3:
        return ConvertMode("RGB"), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    if channels == 1:
        return ConvertMode("L"), T.Normalize((0.5,), (0.5,))
    raise ValueError(f"channels must be 1 or 3, got {channels}")


def _check_size(image_size: int) -> None:
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")


def train_transform(
    image_size: int, channels: int = 3, flip: bool = True, scale: tuple[float, float] = (0.08, 1.0)
) -> T.Compose:
    """RandomResizedCrop(image_size, scale) [+ RandomHorizontalFlip] → ToTensor → Normalize.

    Args:
        image_size: side of the square output.
        channels: 3 (RGB, ImageNet statistics) or 1 (grayscale, mean 0.5 / std 0.5).
        flip: random horizontal flips; turn off for characters, which a mirror changes.
        scale: range of the cropped area as a fraction of the image (torchvision's default (0.08, 1.0) is the
            paper's; small images do better with a milder range such as (0.5, 1.0)).

    Example:
        >>> from PIL import Image
        >>> train_transform(32, channels=1, flip=False)(Image.new("L", (40, 40))).shape
        torch.Size([1, 32, 32])
    """
    _check_size(image_size)
    if not 0.0 < scale[0] <= scale[1] <= 1.0:
        raise ValueError(f"scale must satisfy 0 < scale[0] <= scale[1] <= 1, got {scale}")
    convert, normalize = _mode_and_normalize(channels)
    steps = [convert, T.RandomResizedCrop(image_size, scale=tuple(scale))]
    if flip:
        steps.append(T.RandomHorizontalFlip())
    return T.Compose([*steps, T.ToTensor(), normalize])


def test_transform(image_size: int, channels: int = 3) -> T.Compose:
    """Resize(round(image_size · 256/224)) → CenterCrop(image_size) → ToTensor → Normalize.

    Example:
        >>> from PIL import Image
        >>> test_transform(224)(Image.new("RGB", (500, 300))).shape
        torch.Size([3, 224, 224])
    """
    _check_size(image_size)
    convert, normalize = _mode_and_normalize(channels)
    resize = round(image_size * 256 / 224)
    return T.Compose([convert, T.Resize(resize), T.CenterCrop(image_size), T.ToTensor(), normalize])


# The name starts with "test", so pytest would collect it wherever a test module imports it.
test_transform.__test__ = False
