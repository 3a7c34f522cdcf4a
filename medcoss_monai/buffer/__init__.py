"""Rehearsal buffer: k-means (and random) selection of a stage's items and the buffer.json manifest."""

from .crops import (
    CROP_KEYS,
    LocatedCropd,
    VolumeCropsDataset,
    crop_rehearsal_transform,
    grid_starts,
    has_crops,
    without_random_crops,
)
from .manifest import (
    BUFFER_FIELDS,
    FILE_KEYS,
    check_crop_items,
    load_buffer_manifest,
    missing_files,
    write_buffer_manifest,
)
from .sampling import SAMPLERS, buffer_size, kmeans_sample, n_clusters_for, random_sample, select_nearest

__all__ = [
    "BUFFER_FIELDS",
    "CROP_KEYS",
    "FILE_KEYS",
    "LocatedCropd",
    "SAMPLERS",
    "VolumeCropsDataset",
    "buffer_size",
    "check_crop_items",
    "crop_rehearsal_transform",
    "grid_starts",
    "has_crops",
    "kmeans_sample",
    "load_buffer_manifest",
    "missing_files",
    "n_clusters_for",
    "random_sample",
    "select_nearest",
    "without_random_crops",
    "write_buffer_manifest",
]
