"""3D buffer items as crops: candidates on a grid of crops, and rehearsal of exactly the chosen crop.

The reference cuts every CT and MR volume into sub-volumes before pre-training, and k-means chooses the
buffer among those sub-volumes (reference: ``Preprocess/splitting_to_patches.py``,
``Preprocess/ADNI_split_slice.py``, ``main_buffer_kmean.py``). Here a volume stays one datalist item;
with the bundle switch ``buffer_crops`` its candidates are the crops of a grid over the preprocessed
volume (:class:`VolumeCropsDataset`; by default, as the reference, the slice axis is tiled with 50%
overlap, ``buffer_crop_overlap``, and each tile keeps one centred crop in-plane; ``buffer_crop_axes``
names the axes tiled, ``[0, 1, 2]`` covers the whole volume), each buffer item of ``buffer.json`` is a
file plus a crop location (:data:`CROP_KEYS`), and a later stage cuts exactly that crop again
(:class:`LocatedCropd`).

A crop location is in voxels of the volume as the stage's ``load_transforms`` leave it (reoriented,
resampled to the stage's spacing, windowed, padded to at least the crop size): the rehearsing stage
prepares the volume with the settings the stage recorded, and :class:`LocatedCropd` refuses a volume
whose shape differs from the recorded ``volume_shape``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import Dataset
from monai.transforms import MapTransform, MultiSampleTrait, Randomizable, RandCropd, apply_transform

__all__ = [
    "CROP_KEYS",
    "CROP_ROW",
    "CROP_SIZE",
    "CROP_START",
    "VOLUME_SHAPE",
    "LocatedCropd",
    "VolumeCropsDataset",
    "axis_starts",
    "crop_candidates",
    "crop_rehearsal_transform",
    "grid_starts",
    "has_crops",
    "without_random_crops",
]

CROP_START = "crop_start"
"""Item key: first voxel of the crop, one index per spatial axis."""
CROP_SIZE = "crop_size"
"""Item key: the crop's size in voxels, per spatial axis."""
VOLUME_SHAPE = "volume_shape"
"""Item key: spatial shape of the preprocessed volume the crop was cut from."""
CROP_KEYS = (CROP_START, CROP_SIZE, VOLUME_SHAPE)
"""Keys a crop item of ``buffer.json`` adds to its datalist item."""
CROP_ROW = "index"
"""Batch key of a crop candidate: the row of its volume in the datalist."""


def axis_starts(length: int, size: int, overlap: float) -> list[int]:
    """Start positions of crops of ``size`` along one axis of ``length`` voxels.

    The stride is ``ceil(size * (1 - overlap))``; the last crop is moved back to end at the volume's
    end, as the reference's tiling does (``Preprocess/splitting_to_patches.py``: ``d1 = d2 - tile_size``).

    Args:
        length: voxels along the axis.
        size: crop size along the axis.
        overlap: fraction of a crop shared with the next one, in [0, 1).

    Returns:
        Sorted unique starts; ``[0]`` when the axis is no longer than the crop.
    """
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"crop overlap must be in [0, 1), got {overlap}.")
    if length <= size:
        return [0]
    stride = max(1, math.ceil(size * (1.0 - overlap)))
    count = math.ceil((length - size) / stride) + 1
    return [min(i * stride, length - size) for i in range(count)]


def grid_starts(
    shape: Sequence[int], roi_size: Sequence[int], overlap: float, axes: Sequence[int] | None = None
) -> list[tuple[int, ...]]:
    """Start corners of every crop of the grid over a volume (last axis fastest).

    Along the tiled ``axes`` crops follow :func:`axis_starts`; along every other axis there is one crop,
    centred (the reference tiles the slices only and keeps the whole, resized, in-plane field of view:
    ``Preprocess/splitting_to_patches.py``, ``Preprocess/ADNI_split_slice.py``).

    Args:
        shape: spatial shape of the volume.
        roi_size: crop size per axis.
        overlap: fraction of a crop shared with its neighbour along a tiled axis.
        axes: the spatial axes tiled (None: every axis).

    Returns:
        A list of start tuples.
    """
    if len(shape) != len(roi_size):
        raise ValueError(f"crop size {list(roi_size)} does not match a volume of {len(shape)} spatial axes.")
    tiled = range(len(shape)) if axes is None else [int(a) for a in axes]
    if any(not 0 <= a < len(shape) for a in tiled):
        raise ValueError(f"crop axes {list(tiled)} are not spatial axes of a {len(shape)}D volume.")
    positions = [
        axis_starts(int(n), int(r), float(overlap)) if a in tiled else [max(0, (int(n) - int(r)) // 2)]
        for a, (n, r) in enumerate(zip(shape, roi_size))
    ]
    starts: list[tuple[int, ...]] = [()]
    for along in positions:
        starts = [s + (p,) for s in starts for p in along]
    return starts


def _spatial_slices(start: Sequence[int], size: Sequence[int]) -> tuple[slice, ...]:
    return (slice(None), *(slice(int(s), int(s) + int(z)) for s, z in zip(start, size)))


class VolumeCropsDataset(Dataset):
    """The buffer candidates of a 3D stage: every crop of a grid over every preprocessed volume.

    Item ``i`` is a list of crop dicts, one per grid position (MONAI's ``list_data_collate`` flattens
    them into one batch), each holding the crop under ``key`` and, as tensors, the volume's row
    (:data:`CROP_ROW`), :data:`CROP_START`, :data:`CROP_SIZE` and :data:`VOLUME_SHAPE`.

    Args:
        data: the stage's datalist items.
        transform: the deterministic preprocessing of one volume (the stage's ``load_transforms``); it
            must leave every axis at least ``roi_size`` long (the stage pads to the crop size).
        roi_size: crop size per spatial axis (the stage's ``img_size_3d``).
        overlap: fraction of a crop shared with its neighbour along a tiled axis.
        axes: the spatial axes tiled; the others get one centred crop (None: every axis).
        key: the image key.
    """

    def __init__(
        self,
        data: Sequence[Mapping[str, Any]],
        transform: Callable,
        roi_size: Sequence[int],
        overlap: float = 0.5,
        axes: Sequence[int] | None = None,
        key: str = "image",
    ) -> None:
        super().__init__(data, transform)
        self.roi_size = tuple(int(r) for r in roi_size)
        self.overlap = float(overlap)
        self.axes = None if axes is None else [int(a) for a in axes]
        self.key = key

    def _transform(self, index: int) -> list[dict[str, Any]]:
        volume = apply_transform(self.transform, dict(self.data[index]))[self.key]
        shape = tuple(int(n) for n in volume.shape[1:])
        if any(n < r for n, r in zip(shape, self.roi_size)):
            raise ValueError(f"buffer crops: item {index} has shape {list(shape)}, smaller than the crop {list(self.roi_size)}; pad it first.")
        crops = []
        for start in grid_starts(shape, self.roi_size, self.overlap, self.axes):
            crops.append({
                self.key: volume[_spatial_slices(start, self.roi_size)],
                CROP_ROW: index,
                CROP_START: torch.tensor(start),
                CROP_SIZE: torch.tensor(self.roi_size),
                VOLUME_SHAPE: torch.tensor(shape),
            })
        return crops


class LocatedCropd(MapTransform):
    """Prepares a buffer item and cuts the crop its ``buffer.json`` entry records.

    The item's :data:`CROP_START`, :data:`CROP_SIZE` and :data:`VOLUME_SHAPE` are read before
    ``transform`` runs (it may select keys), then ``keys`` of its output are cut to that crop. It is
    deterministic, so the datasets' caches keep the crop, not the volume.

    Args:
        keys: image keys to crop.
        transform: the stage's deterministic preprocessing (loading, spacing, intensity, padding).
        allow_missing_keys: as MONAI's ``MapTransform``.
    """

    def __init__(self, keys: KeysCollection, transform: Callable, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = transform

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        missing = [k for k in (CROP_START, CROP_SIZE) if k not in data]
        if missing:
            raise KeyError(f"LocatedCropd: the item has no {missing}; it is not a crop of a buffer.")
        start, size = [int(s) for s in data[CROP_START]], [int(z) for z in data[CROP_SIZE]]
        shape = data.get(VOLUME_SHAPE)
        out = dict(apply_transform(self.transform, dict(data)))
        for key in self.key_iterator(out):
            spatial = [int(n) for n in out[key].shape[1:]]
            if shape is not None and spatial != [int(n) for n in shape]:
                raise ValueError(
                    f"buffer crop of {data.get(key)}: the volume was {list(shape)} voxels when the crop was chosen and is "
                    f"{spatial} now (other spacing or size settings); select the buffer again."
                )
            if len(start) != len(spatial) or any(s < 0 or s + z > n for s, z, n in zip(start, size, spatial)):
                raise ValueError(f"buffer crop of {data.get(key)}: start {start} size {size} is outside the volume {spatial}.")
            out[key] = out[key][_spatial_slices(start, size)]
        return out


def without_random_crops(transforms: Sequence[Callable]) -> list[Callable]:
    """The random transforms of a stage without its random crop samplers (what a located crop keeps: flips, rotations).

    Args:
        transforms: a stage's ``train#random_transforms``.

    Returns:
        The transforms that do not cut random crops (MONAI's ``Rand*Crop*d`` families).
    """

    def cuts_random_crops(t: Any) -> bool:
        return isinstance(t, RandCropd) or (isinstance(t, Randomizable) and isinstance(t, MultiSampleTrait))

    return [t for t in transforms if not cuts_random_crops(t)]


def has_crops(items: Sequence[Mapping[str, Any]]) -> bool:
    """Whether buffer items are crops (file + location) rather than whole items.

    Args:
        items: the ``items`` of a buffer.json.

    Returns:
        True when the items carry :data:`CROP_START`.
    """
    return any(CROP_START in it for it in items)


def crop_rehearsal_transform(parser: Any, items: Sequence[Mapping[str, Any]], source: Any = "") -> Callable:
    """The transform a later stage rehearses crop items with: the earlier stage's ``buffer_crop_preprocessing``.

    Args:
        parser: the earlier stage's parsed bundle (with the rehearsing stage's shared sizes).
        items: the crop items.
        source: the buffer.json, for messages.

    Returns:
        The transform (located crop, then the stage's augmentations without random crops).

    Raises:
        ValueError: the bundle has no ``buffer_crop_preprocessing``, or the crops' size is not the
            ``img_size_3d`` the rehearsing stage trains at.
    """
    if "buffer_crop_preprocessing" not in parser:
        raise ValueError(f"{source}: the buffer holds crops, but its stage bundle has no 'buffer_crop_preprocessing'.")
    roi = [int(r) for r in parser.get_parsed_content("img_size_3d")]
    sizes = {tuple(int(z) for z in it[CROP_SIZE]) for it in items}
    if sizes != {tuple(roi)}:
        raise ValueError(
            f"{source}: the buffer's crops are {sorted(list(s) for s in sizes)} voxels but this stage trains at "
            f"img_size_3d {roi}; select the buffer again at this size."
        )
    return parser.get_parsed_content("buffer_crop_preprocessing")


class _CropItems(Sequence):
    """Datalist items of crop candidates, built when read (only the chosen few are): a volume's item plus its crop."""

    def __init__(self, items: Sequence[Mapping[str, Any]], rows: np.ndarray, crops: Mapping[str, np.ndarray]) -> None:
        self.items, self.rows, self.crops = items, rows, crops

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, j: int) -> dict[str, Any]:  # type: ignore[override]
        location = {k: [int(v) for v in self.crops[k][j]] for k in CROP_KEYS}
        return {**dict(self.items[int(self.rows[j])]), **location}


def crop_candidates(
    items: Sequence[Mapping[str, Any]], rows: np.ndarray, crops: Mapping[str, np.ndarray]
) -> Sequence[dict[str, Any]]:
    """The datalist items of the crops: each crop's volume item with its :data:`CROP_KEYS`.

    Args:
        items: the stage's datalist items (volumes).
        rows: the volume row of each crop.
        crops: ``{crop key: (M, ndim)}`` as :func:`~medcoss_monai.handlers.buffer_selection.embed_crops` returns.

    Returns:
        One item per crop, made when indexed (hundreds of thousands of crops at paper scale).

    Raises:
        ValueError: a volume gave no crop (the loader must visit every volume).
    """
    lost = sorted(set(range(len(items))) - {int(r) for r in rows})
    if lost:
        raise ValueError(f"buffer selection: {len(lost)} of {len(items)} volumes gave no crop (first row {lost[0]}).")
    return _CropItems(items, rows, crops)
