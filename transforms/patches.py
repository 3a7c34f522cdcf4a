"""The MAE-style random resized crop for 2D images: MONAI's random state, torchvision's crop and resize.

For 3D volumes MONAI has everything: ``SpatialPadd(spatial_size=roi)`` then
``RandSpatialCropSamplesd(roi_size=roi, num_samples=n, random_size=False)``. The pad is what keeps a
volume smaller than the roi from producing short crops (which would break collation); keep it in
the deterministic part of the chain.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform, SpatialPad
from monai.utils import ensure_tuple_rep
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2.functional import resized_crop

from medcoss_monai.errors import BadInputError

from .twins import RandomizableTwind

__all__ = ["RandResizedCrop", "RandResizedCropd"]


class RandResizedCrop(RandomizableTransform):
    """Crop a random box of random area and aspect ratio from a 2D image, then resize it to ``spatial_size``.

    The box covers a fraction ``s ~ U(scale)`` of the image area with aspect ratio (width / height)
    ``r``, ``log r ~ U(log ratio)`` (the Inception / MAE augmentation). Up to 10 draws are tried for a
    box that fits; otherwise the whole image is taken, narrowed to the nearest allowed ratio. An
    image smaller than ``spatial_size`` is padded (symmetrically, with zeros) first.

    Args:
        spatial_size: output (H, W).
        scale: range of the box area as a fraction of the image area.
        ratio: range of the box aspect ratio, width / height.
        mode: interpolation of the resize, a torchvision ``InterpolationMode`` value (``"bilinear"``,
            ``"bicubic"``, ``"nearest"`` for labels, ``"nearest-exact"``).
        anti_aliasing: when downsampling with ``"bilinear"``/``"bicubic"``, use torchvision's antialiased
            resize (a widened triangle/cubic filter, ~1 ms for a 224 crop; MONAI ``Resize``'s Gaussian
            ``anti_aliasing`` costs ~40x more).
        pad_mode: ``SpatialPad`` mode for images smaller than ``spatial_size``.

    The box is drawn from ``self.R`` (MONAI's ``Randomizable``); the crop and resize are torchvision's
    ``resized_crop``. Input: channel-first (C, H, W) tensor; output a (C, *spatial_size) float32 tensor
    (metadata is not kept: the training chains run with ``track_meta`` off).
    """

    def __init__(
        self,
        spatial_size: Sequence[int] | int,
        scale: Sequence[float] = (0.2, 1.0),
        ratio: Sequence[float] = (3.0 / 4.0, 4.0 / 3.0),
        mode: str = "bilinear",
        anti_aliasing: bool = True,
        pad_mode: str = "constant",
    ):
        RandomizableTransform.__init__(self, prob=1.0)
        self.spatial_size = ensure_tuple_rep(spatial_size, 2)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}.")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {ratio}.")
        self.mode = InterpolationMode(mode)
        self.anti_aliasing = anti_aliasing
        self.padder = SpatialPad(self.spatial_size, mode=pad_mode)
        self._box: tuple[int, int, int, int] | None = None

    def randomize(self, spatial_shape: Sequence[int]) -> None:  # type: ignore[override]
        """Draw the box ``(top, left, height, width)`` for an image of ``spatial_shape`` (H, W), already padded."""
        super().randomize(None)
        height, width = int(spatial_shape[0]), int(spatial_shape[1])
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * self.R.uniform(*self.scale)
            r = math.exp(self.R.uniform(*log_ratio))
            w, h = int(round(math.sqrt(target * r))), int(round(math.sqrt(target / r)))
            if 0 < w <= width and 0 < h <= height:
                top, left = self.R.randint(0, height - h + 1), self.R.randint(0, width - w + 1)
                self._box = (int(top), int(left), h, w)
                return
        # fallback: the largest centred box with an allowed ratio
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            w, h = int(round(height * self.ratio[1])), height
        else:
            w, h = width, height
        self._box = ((height - h) // 2, (width - w) // 2, h, w)

    def __call__(self, img: torch.Tensor, randomize: bool = True, mode: str | None = None) -> torch.Tensor:  # type: ignore[override]
        """Crop and resize ``img``; ``randomize=False`` reuses the last box (the shape after padding must match)."""
        if img.ndim != 3:
            raise ValueError(
                f"RandResizedCrop expects a channel-first 2D image (C, H, W), got shape {tuple(img.shape)}."
            )
        img = self.padder(img)
        if randomize:
            self.randomize(img.shape[1:])
        if self._box is None:
            raise RuntimeError("RandResizedCrop: call with randomize=True first.")
        top, left, h, w = self._box
        if top + h > img.shape[1] or left + w > img.shape[2]:
            raise ValueError(f"The crop box {self._box} does not fit an image of shape {tuple(img.shape)}.")
        mode = InterpolationMode(mode) if mode is not None else self.mode
        crop = torch.as_tensor(img).float()
        # antialiasing only when shrinking: enlarging needs no low-pass filter
        antialias = self.anti_aliasing and (h > self.spatial_size[0] or w > self.spatial_size[1])
        out = resized_crop(crop, top, left, h, w, list(self.spatial_size), interpolation=mode, antialias=antialias)
        if antialias and mode in (InterpolationMode.BILINEAR, InterpolationMode.BICUBIC):
            # the widened cubic overshoots, and triangle weights sum to 1 only up to rounding: keep the crop's range
            low, high = torch.aminmax(crop[:, top : top + h, left : left + w])
            out = out.clamp(float(low), float(high))
        return out


class RandResizedCropd(RandomizableTwind):
    """Dictionary twin of :class:`RandResizedCrop`: the same box for every key (image and label stay aligned).

    Args:
        keys: keys to crop.
        spatial_size, scale, ratio, anti_aliasing, pad_mode: see :class:`RandResizedCrop`.
        mode: interpolation per key (a string or one per key, e.g. ``["bilinear", "nearest"]``).
        allow_missing_keys: see ``MapTransform``.
    """

    array_attribute = "cropper"

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: Sequence[int] | int,
        scale: Sequence[float] = (0.2, 1.0),
        ratio: Sequence[float] = (3.0 / 4.0, 4.0 / 3.0),
        mode: Sequence[str] | str = "bilinear",
        anti_aliasing: bool = True,
        pad_mode: str = "constant",
        allow_missing_keys: bool = False,
    ):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob=1.0)
        self.cropper = RandResizedCrop(spatial_size, scale, ratio, anti_aliasing=anti_aliasing, pad_mode=pad_mode)
        self.mode = ensure_tuple_rep(mode, len(self.keys))
        known = [m.value for m in InterpolationMode]
        unknown = [m for m in self.mode if m not in known]
        if unknown:  # a bundle override such as --crop_mode: the user's to fix, before any data is read
            raise BadInputError(f"crop interpolation mode {unknown[0]!r} is not one of {known} (e.g. --crop_mode).")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        first = True
        for key, mode in self.key_iterator(d, self.mode):
            d[key] = self.cropper(d[key], randomize=first, mode=mode)
            first = False
        return d
