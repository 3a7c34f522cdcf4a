"""The rehearsal-buffer manifest ``stage_<modality>/buffer.json``: written once per stage, read by later stages.

Layout::

    {
      "modality": "report", "n_total": 3164, "n_clusters": 32, "buffer_ratio": 0.05,
      "cluster_ratio": 0.01, "sampler": "kmeans",
      "items": [{...the datalist item..., "cluster": 0, "distance": 0.41}, ...]
    }

A random buffer has ``"cluster": -1`` and ``"distance": null`` on its items.

A buffer of 3D crops (bundle switch ``buffer_crops``) chose among the crops of a grid over each volume:
its items add ``"crop_start"``, ``"crop_size"`` and ``"volume_shape"`` (voxels of the preprocessed
volume, see :mod:`medcoss_monai.buffer.crops`), ``n_total`` counts crops, and the manifest adds
``"crop_grid": {"roi_size": [...], "overlap": [...], "n_volumes": N}``. Items without these keys are
whole items (every buffer.json written before crops existed).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medcoss_monai.utils import atomic_write_json, to_jsonable

__all__ = ["BUFFER_FIELDS", "FILE_KEYS", "check_crop_items", "load_buffer_manifest", "missing_files", "write_buffer_manifest"]

BUFFER_FIELDS = ("modality", "n_total", "n_clusters", "buffer_ratio", "cluster_ratio", "sampler", "items")
"""Top-level fields every buffer.json has."""

FILE_KEYS = ("image", "label", "text_file")
"""Item keys that name files; an item with inline ``"text"`` needs no file."""


def write_buffer_manifest(
    path: str | os.PathLike,
    modality: str,
    items: Sequence[Mapping[str, Any]],
    indices: Sequence[int] | np.ndarray,
    n_total: int,
    n_clusters: int,
    buffer_ratio: float,
    cluster_ratio: float,
    sampler: str,
    cluster_ids: Sequence[int] | np.ndarray | None = None,
    distances: Sequence[float] | np.ndarray | None = None,
    crop_grid: Mapping[str, Any] | None = None,
) -> Path:
    """Writes buffer.json atomically (a temporary file in the same folder, then ``os.replace``).

    Args:
        path: the buffer.json to write (its folder is created).
        modality: the stage's modality.
        items: the stage's datalist items, in the order the embeddings were computed.
        indices: the chosen rows of ``items``, in the order they are written.
        n_total: number of items the buffer was chosen from.
        n_clusters: number of k-means centres (0 for a random buffer).
        buffer_ratio: the fraction kept.
        cluster_ratio: the clusters per item.
        sampler: the sampler's name ("kmeans", "random").
        cluster_ids: cluster of each chosen item (aligned with ``indices``); -1 when None.
        distances: distance of each chosen item to its centre (aligned with ``indices``); null when None.
        crop_grid: for a buffer of 3D crops (``items`` are then the crop candidates), the grid they were
            cut on (``roi_size``, ``overlap``, ``n_volumes``), written as ``"crop_grid"``.

    Returns:
        The path written.
    """
    path = Path(path)
    indices = [int(i) for i in np.asarray(indices).reshape(-1)]
    bad = [i for i in indices if not 0 <= i < len(items)]
    if bad:
        raise IndexError(f"{path}: buffer indices {bad[:10]} are outside the {len(items)} items.")
    if len(set(indices)) != len(indices):
        raise ValueError(f"{path}: buffer indices are not unique.")
    for name, values in (("cluster_ids", cluster_ids), ("distances", distances)):
        if values is not None and len(values) != len(indices):
            raise ValueError(f"{path}: {name} has {len(values)} entries for {len(indices)} chosen items.")
    chosen = []
    for j, i in enumerate(indices):
        item = {str(k): v for k, v in dict(items[i]).items() if k not in ("cluster", "distance")}
        item["cluster"] = int(cluster_ids[j]) if cluster_ids is not None else -1
        item["distance"] = float(distances[j]) if distances is not None else None
        chosen.append(item)
    manifest = {
        "modality": str(modality),
        "n_total": int(n_total),
        "n_clusters": int(n_clusters),
        "buffer_ratio": float(buffer_ratio),
        "cluster_ratio": float(cluster_ratio),
        "sampler": str(sampler),
        "items": chosen,
    }
    if crop_grid is not None:
        manifest["crop_grid"] = dict(crop_grid)
    check_crop_items(path, chosen)
    # a reader (or a killed run) never sees half a file
    return atomic_write_json(to_jsonable(manifest), path, indent=1)


def missing_files(items: Sequence[Mapping[str, Any]]) -> list[str]:
    """Paths named by items' file keys (:data:`FILE_KEYS`) that do not exist, each listed once, in order.

    Args:
        items: datalist items.

    Returns:
        The missing paths.
    """
    missing: list[str] = []
    for item in items:
        for key in FILE_KEYS:
            value = item.get(key)
            if value is None:
                continue
            if isinstance(value, dict):  # a multi-contrast study: {contrast: path}
                value = list(value.values())
            for p in value if isinstance(value, (list, tuple)) else [value]:
                p = os.fspath(p)
                if not os.path.exists(p) and p not in missing:
                    missing.append(p)
    return missing


def _voxel_list(value: Any, positive: bool) -> bool:
    """Whether ``value`` is a list of integers (>= 1 when ``positive``, else >= 0)."""
    if not isinstance(value, (list, tuple)) or not value:
        return False
    low = 1 if positive else 0
    return all(isinstance(v, int) and not isinstance(v, bool) and v >= low for v in value)


def check_crop_items(path: str | os.PathLike, items: Sequence[Mapping[str, Any]]) -> None:
    """Refuses malformed crop locations: a buffer is all crops or all whole items, each crop inside its volume.

    Args:
        path: the buffer.json, for messages.
        items: its items.

    Raises:
        ValueError: some items have a crop location and others not, or a location is malformed or
            reaches outside the recorded ``volume_shape``.
    """
    located = [i for i, it in enumerate(items) if "crop_start" in it]
    if not located:
        return  # whole items: a buffer written before crops existed, or of a 2D / text stage
    if len(located) != len(items):
        whole = sorted(set(range(len(items))) - set(located))
        raise ValueError(f"{path}: items {whole[:10]} have no crop location but others do; a buffer is all crops or all whole items.")
    for i, it in enumerate(items):
        start, size, shape = it.get("crop_start"), it.get("crop_size"), it.get("volume_shape")
        if not (_voxel_list(start, False) and _voxel_list(size, True) and len(start) == len(size)):
            raise ValueError(f"{path}: item {i} has a malformed crop location (start {start!r}, size {size!r}).")
        if shape is None:
            continue
        if not _voxel_list(shape, True) or len(shape) != len(start) or any(s + z > n for s, z, n in zip(start, size, shape)):
            raise ValueError(f"{path}: item {i}: the crop at {start} of size {size} is outside its volume {shape!r}.")


def load_buffer_manifest(path: str | os.PathLike, check_files: bool = True) -> dict[str, Any]:
    """Reads and validates a buffer.json.

    Args:
        path: the buffer.json.
        check_files: refuse a buffer whose items' files (``image``, ``label``, ``text_file``) have vanished.

    Returns:
        The manifest dict (fields :data:`BUFFER_FIELDS`).

    Raises:
        FileNotFoundError: the manifest is missing, or (``check_files``) files of its items are; the
            message names the buffer.json and lists every missing path.
        ValueError: the manifest is not valid JSON or lacks fields / has malformed items or crop locations
            (:func:`check_crop_items`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"rehearsal buffer manifest {path} does not exist.")
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}).") from e
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: expected a JSON object with fields {list(BUFFER_FIELDS)}.")
    absent = [k for k in BUFFER_FIELDS if k not in manifest]
    if absent:
        raise ValueError(f"{path}: missing fields {absent}.")
    items = manifest["items"]
    if not isinstance(items, list) or not all(isinstance(it, dict) for it in items):
        raise ValueError(f"{path}: 'items' must be a list of objects.")
    for name in ("n_total", "n_clusters"):
        if not isinstance(manifest[name], int) or manifest[name] < 0:
            raise ValueError(f"{path}: '{name}' must be a non-negative integer, got {manifest[name]!r}.")
    if len(items) > manifest["n_total"]:
        raise ValueError(f"{path}: {len(items)} items but n_total is {manifest['n_total']}.")
    no_data = [i for i, it in enumerate(items) if not any(k in it for k in (*FILE_KEYS, "text"))]
    if no_data:
        raise ValueError(f"{path}: items {no_data[:10]} have none of {[*FILE_KEYS, 'text']}.")
    check_crop_items(path, items)
    if check_files:
        missing = missing_files(items)
        if missing:
            listing = "\n  ".join(missing)
            raise FileNotFoundError(
                f"{path}: {len(missing)} file(s) of the rehearsal buffer have vanished; "
                f"restore them or select the buffer again:\n  {listing}"
            )
    return manifest
