"""Where a stage keeps its deterministic preprocessing: in memory, on disk, or nowhere.

Loading, reorienting, resampling to the stage's spacing and windowing a volume is the same every epoch;
only the crops and augmentations that follow are random. MONAI's cache datasets run the transforms
up to the first random one once per item and keep the result:

- ``"memory"``: ``CacheDataset``, every item in RAM (the demo: a few volumes, fastest);
- ``"disk"``: ``PersistentDataset``, one file per item under ``cache_dir`` (paper scale: thousands of
  1 mm volumes do not fit in RAM, and the cache outlives the process, so later stages, resumed runs and
  other seeds reuse it);
- ``"none"``: ``Dataset``, everything recomputed every epoch (to measure what the cache saves).

The disk cache of a modality lives in ``<cache_dir>/<modality>_<digest>``, the digest of the stage's
recorded settings (spacing, HU window, sizes...): a run with other settings never reads a stale cache,
and a later stage preparing that modality's rehearsal buffer with the same settings writes beside it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.data.utils import pickle_hashing

__all__ = ["DATASET_CACHES", "cache_folder", "stage_dataset", "settings_digest"]

DATASET_CACHES = ("memory", "disk", "none")

logger = logging.getLogger(__name__)


def settings_digest(settings: Mapping[str, Any]) -> str:
    """A short, stable digest of a stage's preprocessing settings (JSON with sorted keys)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def cache_folder(cache_dir: str | Path, settings: Mapping[str, Any]) -> Path:
    """``<cache_dir>/<modality>_<digest of settings>``: where a modality's disk cache with these settings lives."""
    return Path(cache_dir) / f"{settings.get('modality', 'items')}_{settings_digest(settings)}"


def stage_dataset(
    data: Sequence[Mapping[str, Any]],
    transform: Callable,
    cache: str = "memory",
    cache_dir: str | Path | None = None,
    settings: Mapping[str, Any] | None = None,
) -> Dataset:
    """The training dataset of a stage with its deterministic preprocessing cached as ``cache`` says.

    Args:
        data: datalist items.
        transform: the whole chain (deterministic transforms, then random ones).
        cache: ``"memory"``, ``"disk"`` or ``"none"`` (see the module docstring).
        cache_dir: root of the disk cache (required for ``"disk"``); the items go to
            :func:`cache_folder` ``(cache_dir, settings)``.
        settings: the stage's preprocessing settings and its ``modality``, naming the cache folder.

    Returns:
        A MONAI ``CacheDataset``, ``PersistentDataset`` or ``Dataset``.

    Raises:
        ValueError: unknown ``cache``, or ``"disk"`` without ``cache_dir``.
    """
    if cache == "memory":
        # num_workers 0: the cache is filled in this process, so a failing file names itself in one traceback
        return CacheDataset(data, transform=transform, cache_rate=1.0, num_workers=0, progress=False)
    if cache == "disk":
        if not cache_dir:
            raise ValueError("dataset_cache 'disk' needs a cache_dir.")
        folder = cache_folder(cache_dir, settings or {})
        folder.mkdir(parents=True, exist_ok=True)
        try:
            # the deterministic transforms (with their arguments) are part of each item's key too, so a
            # transform changed by hand rather than through a setting never reads a stale file
            return PersistentDataset(data, transform=transform, cache_dir=folder, hash_transform=pickle_hashing)
        except (pickle.PicklingError, AttributeError, TypeError) as e:
            logger.warning(f"dataset cache keyed by the settings only (the transforms cannot be pickled: {e}).")
            return PersistentDataset(data, transform=transform, cache_dir=folder)
    if cache == "none":
        return Dataset(data, transform=transform)
    raise ValueError(f"dataset_cache must be one of {DATASET_CACHES}, got {cache!r}.")
