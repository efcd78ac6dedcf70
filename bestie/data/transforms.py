"""Training augmentation shared by every training stage: one geometric transform for an image,
its label maps and its points, plus photometric jitter and ImageNet normalisation.

A :class:`GeometricTransform` is *sampled* once per example (random scale, random crop
position, random flip) and then *applied* to everything that lives on the image's pixel
grid, so the image, any number of label maps and any point set stay aligned exactly:

- images: bilinear resize, then crop (padded with the ImageNet mean colour where the crop
  leaves the image), then flip;
- label maps: nearest-neighbour resize, same crop (padded with 255 = ignore), same flip;
- points: the same maps in closed form, with pixel centres at integer coordinates::

      x' = (x + 0.5) * scale_x - 0.5 - x0        (scale, then crop)
      x' = (crop_width - 1) - x'                 (flip)

  ``scale_x = round(W * scale) / W`` (and likewise for y) is the factor the resized image
  really has, so points and pixels agree to the sub-pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from bestie.structures import IGNORE

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MEAN_RGB",
    "GeometricTransform",
    "sample_geometric",
    "ColorJitter",
    "sample_color_jitter",
    "normalize",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MEAN_RGB = tuple(round(255 * m) for m in IMAGENET_MEAN)  # padding colour: 0 after normalize()


def _crop_pad(array: np.ndarray, box: tuple[int, int, int, int], fill) -> np.ndarray:
    """Cut ``box`` (x0, y0, x1, y1) out of ``array`` [H, W, ...]; outside the array: ``fill``."""
    x0, y0, x1, y1 = box
    height, width = array.shape[:2]
    out = np.empty((y1 - y0, x1 - x0, *array.shape[2:]), dtype=array.dtype)
    out[...] = fill
    # The part of the box that overlaps the array, in array and in output coordinates.
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if sx0 < sx1 and sy0 < sy1:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = array[sy0:sy1, sx0:sx1]
    return out


def _nearest_indices(out_size: int, in_size: int) -> np.ndarray:
    """Source index of each output pixel for a pixel-centre-aligned nearest resize."""
    scale = out_size / in_size
    return np.minimum(((np.arange(out_size) + 0.5) / scale).astype(np.int64), in_size - 1)


@dataclass(frozen=True)
class GeometricTransform:
    """Scale the image by ``scale``, cut ``crop_box`` out of the scaled image, then maybe flip.

    Attributes:
        image_size: (height, width) of the input.
        scale: resize factor (the output grid is ``round(size * scale)``).
        crop_box: (x0, y0, x1, y1) in scaled-image pixels, x1/y1 exclusive; may reach past
            the scaled image (that part is padded).
        flip: mirror the crop horizontally.
    """

    image_size: tuple[int, int]
    scale: float
    crop_box: tuple[int, int, int, int]
    flip: bool

    @property
    def scaled_size(self) -> tuple[int, int]:
        """(height, width) of the image after scaling, before the crop."""
        height, width = self.image_size
        return max(1, round(height * self.scale)), max(1, round(width * self.scale))

    def _flip(self, array: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(array[:, ::-1]) if self.flip else array

    def apply_image(self, image: np.ndarray, fill: tuple[int, ...] = MEAN_RGB) -> np.ndarray:
        """[H, W, 3] uint8 -> [crop_h, crop_w, 3] uint8 (bilinear; padding ``fill``)."""
        self._check_size(image)
        height, width = self.scaled_size
        if (height, width) != image.shape[:2]:
            # PIL's resize is pixel-centre aligned, as the point formula assumes.
            image = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
        return self._flip(_crop_pad(image, self.crop_box, np.asarray(fill, dtype=image.dtype)))

    def apply_labels(self, labels: np.ndarray, fill: int = IGNORE) -> np.ndarray:
        """[H, W] (or [H, W, K]) label map -> [crop_h, crop_w] (nearest; padding ``fill``)."""
        self._check_size(labels)
        height, width = self.scaled_size
        rows = _nearest_indices(height, labels.shape[0])
        cols = _nearest_indices(width, labels.shape[1])
        return self._flip(_crop_pad(labels[rows[:, None], cols[None, :]], self.crop_box, fill))

    def apply_points(self, points: np.ndarray) -> np.ndarray:
        """[K, 2] (x, y) -> [K, 2] float32 in output pixels (may fall outside the crop)."""
        points = np.asarray(points, dtype=np.float32).reshape(-1, 2)
        (height, width), (scaled_h, scaled_w) = self.image_size, self.scaled_size
        x0, y0, x1, _ = self.crop_box
        x = (points[:, 0] + 0.5) * (scaled_w / width) - 0.5 - x0
        y = (points[:, 1] + 0.5) * (scaled_h / height) - 0.5 - y0
        if self.flip:
            x = (x1 - x0 - 1) - x
        return np.stack([x, y], axis=1).astype(np.float32)

    def _check_size(self, array: np.ndarray) -> None:
        if tuple(array.shape[:2]) != tuple(self.image_size):
            raise ValueError(
                f"array of size {array.shape[:2]} given to a transform for size {self.image_size}"
            )


def sample_geometric(
    rng: np.random.Generator,
    image_size: tuple[int, int],
    crop_size: int | tuple[int, int],
    scale_range: tuple[float, float] = (1.0, 1.0),
    flip_prob: float = 0.5,
) -> GeometricTransform:
    """Random scale (uniform in ``scale_range``), random crop position, random flip.

    Where the scaled image is larger than the crop, the crop lies inside it; where it is
    smaller, the image lies at a random place inside the crop (the rest is padding).
    """
    crop_h, crop_w = (crop_size, crop_size) if isinstance(crop_size, int) else crop_size
    scale = float(rng.uniform(*scale_range))
    transform = GeometricTransform(tuple(image_size), scale, (0, 0, crop_w, crop_h), False)
    height, width = transform.scaled_size
    x0 = int(rng.integers(min(0, width - crop_w), max(0, width - crop_w) + 1))
    y0 = int(rng.integers(min(0, height - crop_h), max(0, height - crop_h) + 1))
    flip = bool(rng.random() < flip_prob)
    return GeometricTransform(tuple(image_size), scale, (x0, y0, x0 + crop_w, y0 + crop_h), flip)


@dataclass(frozen=True)
class ColorJitter:
    """Photometric distortion: brightness shift, then contrast and saturation factors.

    Attributes:
        brightness: added to every channel, in grey levels.
        contrast: blend factor against the image's mean grey (1 = unchanged).
        saturation: blend factor against the pixel's own grey (1 = unchanged).
    """

    brightness: float = 0.0
    contrast: float = 1.0
    saturation: float = 1.0

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """[H, W, 3] uint8 -> [H, W, 3] uint8."""
        luma = np.array([0.299, 0.587, 0.114], dtype=np.float32)
        out = image.astype(np.float32) + self.brightness
        mean_grey = (out @ luma).mean()
        out = (out - mean_grey) * self.contrast + mean_grey
        grey = (out @ luma)[..., None]  # [H, W, 1]
        out = (out - grey) * self.saturation + grey
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def sample_color_jitter(
    rng: np.random.Generator, brightness: float = 32.0, contrast: float = 0.5, saturation: float = 0.5
) -> ColorJitter:
    """Brightness uniform in [-b, b] grey levels; contrast and saturation uniform in [1 - c, 1 + c]."""
    return ColorJitter(
        brightness=float(rng.uniform(-brightness, brightness)),
        contrast=float(rng.uniform(1 - contrast, 1 + contrast)),
        saturation=float(rng.uniform(1 - saturation, 1 + saturation)),
    )


def normalize(image: np.ndarray) -> torch.Tensor:
    """[H, W, 3] uint8 RGB -> [3, H, W] float32, ImageNet mean and std normalised."""
    tensor = torch.tensor(image).permute(2, 0, 1).float().div_(255)  # copies: PIL arrays are read-only
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return tensor.sub_(mean).div_(std)
