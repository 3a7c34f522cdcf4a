"""Downstream task datasets: derived from the sample data, or read from the paper datasets' formats.

``python -m medcoss_monai.data.tasks prepare [--force]`` writes, for each default task, derived files
and a decathlon-style ``datalist.json`` (fixed splits ``training`` / ``validation`` / ``test``, seed 0)
under ``sample_dir()/tasks/<task>/``:

============== =================================================================================
task           items
============== =================================================================================
text_cls       Indiana reports, multi-label over the 8 most frequent major MeSH headings:
               ``{"text", "id", "label": [8 ints]}``; the JSON carries ``"classes"``
xray_cls       non-overlapping tiles of the chest (0) and tibia (1) films, PNG: ``{"image", "label"}``
xray_seg       tiles of the chest film and its lung-field mask (Otsu + morphology), PNG
ct_cls         lesion (1) / lesion-free (0) sub-volumes of the lung CTs, NIfTI in HU
ct_seg         the lung CTs cropped to the body, with lesion masks, NIfTI
mri_cls        tumour (1) / tumour-free (0) sub-volumes of the brain T1c volumes (the MRI probe task),
               NIfTI, intensities already normalised like the MRI stage (percentile clip + z-score)
mri_seg        the brain T1c volumes cropped to the head, with tumour masks, NIfTI
mri_tissue_seg the MNI ICBM 2009a T1 template with grey / white matter labels (from its tissue
               maps); left hemisphere trains, right anterior validates, right posterior tests
pathology_cls  tissue (1) / background (0) tiles of the slide, PNG
pathology_seg  tiles of the slide and their tissue masks, PNG
============== =================================================================================

3D sub-volumes are cut on the grid the CT / MRI stages train on (1.5 x 1.5 x 3 mm, RAS). With one
source volume per class or two volumes per task the splits cannot be by patient: 2D tiles (which do
not overlap) and 3D sub-volumes (which may overlap, positives share their lesion) are split at random
with seed 0; the 3D segmentation tasks train on one volume and hold out the other (``lung1`` /
``brain2``) as both ``validation`` and ``test``. The sample data proves the machinery; it is no
benchmark.

Loaders for the formats of the paper datasets: :func:`datalist_from_class_folders` (ChestXR,
NCT-CRC-HE), :func:`datalist_from_image_mask_folders` (QaTa-COV19, GlaS) and
:func:`datalist_from_labelled_sentences` (PubMed 20k RCT). :func:`check_task_labels` checks labels
and masks before training.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medcoss_monai.data.checks import BadInputError
from medcoss_monai.utils import atomic_write_json

__all__ = [
    "TASKS",
    "TASK_VERSION",
    "tasks_dir",
    "task_dir",
    "task_datalist_path",
    "load_task_datalist",
    "prepare_task",
    "prepare_tasks",
    "split_items",
    "datalist_from_class_folders",
    "datalist_from_image_mask_folders",
    "datalist_from_labelled_sentences",
    "check_task_labels",
    "main",
]

TASK_VERSION = 2
"""Bumped when a task's derived files change, so ``prepare`` rewrites older ones."""

SPLIT_SEED = 0
VALIDATION_FRACTION, TEST_FRACTION = 0.1, 0.3
TEXT_NUM_CLASSES = 8
XRAY_LONGEST, XRAY_TILE = 1024, 128
SLIDE_TILE = 224
GRID_3D, SPACING_3D = (64, 64, 16), (1.5, 1.5, 3.0)
CROPS_PER_CLASS_3D = 16
MRI_PERCENTILES = (0.5, 99.5)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_MASK_MARKERS = ("mask_", "_mask", "_anno", "_label", "_seg", "_gt")


def tasks_dir() -> Path:
    """``sample_dir()/tasks``."""
    from medcoss_monai.data.samples import sample_dir

    return sample_dir() / "tasks"


def task_dir(task: str) -> Path:
    """Folder of one derived task, ``sample_dir()/tasks/<task>``."""
    _check_task(task)
    return tasks_dir() / task


def task_datalist_path(task: str) -> Path:
    """``sample_dir()/tasks/<task>/datalist.json`` (may not exist yet)."""
    return task_dir(task) / "datalist.json"


def load_task_datalist(task: str, prepare: bool = True) -> dict[str, Any]:
    """The parsed datalist of a derived task, preparing it first when missing.

    Args:
        task: one of :data:`TASKS`.
        prepare: run :func:`prepare_task` when the datalist is missing or stale.

    Returns:
        the datalist dict (``training``, ``validation``, ``test``; ``classes`` for classification).

    Raises:
        FileNotFoundError: the datalist is missing and ``prepare`` is False.
    """
    path = task_datalist_path(task)
    if prepare and not _is_fresh(path):
        prepare_task(task)
    if not path.is_file():
        raise FileNotFoundError(f"Task '{task}' is not prepared: run `python -m medcoss_monai.data.tasks prepare`.")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"Unknown task '{task}'; expected one of {sorted(TASKS)}.")
    return task


def _is_fresh(path: Path) -> bool:
    from medcoss_monai.data.samples import sample_dir

    if not path.is_file():
        return False
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return False
    return data.get("version") == TASK_VERSION and data.get("root") == str(sample_dir())


# ----------------------------------------------------------------------------------------------- splits


def split_items(
    items: Sequence[dict[str, Any]],
    validation_fraction: float = VALIDATION_FRACTION,
    test_fraction: float = TEST_FRACTION,
    seed: int = SPLIT_SEED,
) -> dict[str, list[dict[str, Any]]]:
    """Seeded random split into ``training`` / ``validation`` / ``test`` (each split keeps the shuffled order).

    Args:
        items: the items.
        validation_fraction: share of items in ``validation``.
        test_fraction: share of items in ``test``.
        seed: the shuffling seed.

    Returns:
        dict with the three lists.
    """
    order = np.random.RandomState(seed).permutation(len(items))
    n_test = int(round(test_fraction * len(items)))
    n_val = int(round(validation_fraction * len(items)))
    shuffled = [items[i] for i in order]
    return {
        "training": shuffled[n_test + n_val :],
        "validation": shuffled[n_test : n_test + n_val],
        "test": shuffled[:n_test],
    }


def _write_datalist(task: str, splits: dict[str, list], extra: dict[str, Any] | None = None) -> Path:
    from medcoss_monai.data.samples import sample_dir

    data = {
        "name": f"medcoss_monai task: {task}",
        "description": f"Written by `python -m medcoss_monai.data.tasks prepare`; paths are absolute. {TASKS[task][1]}",
        "version": TASK_VERSION,
        "root": str(sample_dir()),
        "seed": SPLIT_SEED,
        **(extra or {}),
        **{f"num{k[0].upper()}{k[1:]}": len(v) for k, v in splits.items()},
        **splits,
    }
    return atomic_write_json(data, task_datalist_path(task))


# --------------------------------------------------------------------------------------------- text_cls


def _prepare_text_cls(out: Path) -> dict[str, Any]:
    from medcoss_monai.data.samples import load_datalist

    source = load_datalist("report")
    reports = [it for split in ("training", "validation") for it in source.get(split, [])]
    counts = collections.Counter(term for it in reports for term in set(it.get("mesh", [])))
    # most frequent first; ties broken by name so the class list never depends on dict order
    classes = [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:TEXT_NUM_CLASSES]]
    items = [
        {"text": it["text"], "id": it.get("id", ""), "label": [int(c in it.get("mesh", [])) for c in classes]}
        for it in reports
    ]
    items.sort(key=lambda it: it["id"])  # the corpus order must not depend on the report datalist split
    return {"splits": split_items(items), "extra": {"classes": classes, "multilabel": True}}


# ------------------------------------------------------------------------------------------------- xray


def _load_film(path: str) -> np.ndarray:
    """A film in [0, 1], longest side resized to :data:`XRAY_LONGEST` (area), as (H, W) float32."""
    from monai.transforms import Resize

    from medcoss_monai.transforms import LoadXRay

    img = Resize(XRAY_LONGEST, size_mode="longest", mode="area")(LoadXRay()(path))
    return np.asarray(img[0], dtype=np.float32)


def _save_png(array: np.ndarray, path: Path) -> str:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        array = np.clip(np.round(array * 255.0), 0, 255).astype(np.uint8)
    Image.fromarray(array).save(path)
    return str(path)


def _tiles(shape: Sequence[int], tile: int) -> list[tuple[int, int]]:
    """Top-left corners of the non-overlapping ``tile`` x ``tile`` grid inside ``shape`` (partial tiles dropped)."""
    return [(r * tile, c * tile) for r in range(shape[0] // tile) for c in range(shape[1] // tile)]


def lung_field_mask(film: np.ndarray) -> np.ndarray:
    """Lung fields of a PA chest film (bone bright): dark regions that do not touch the film border.

    Otsu's threshold on the smoothed film separates air-filled (dark) from dense (bright) regions; air
    outside the body touches the border and is dropped, the two largest remaining regions are kept,
    then opened and hole-filled.

    Args:
        film: (H, W) film in [0, 1], bright = dense.

    Returns:
        bool (H, W) mask.
    """
    from scipy import ndimage as ndi

    from medcoss_monai.data.slides import otsu_threshold

    smooth = ndi.gaussian_filter(film, sigma=film.shape[0] / 256)
    dark = smooth < otsu_threshold(smooth)
    dark = ndi.binary_opening(dark, structure=np.ones((5, 5)), iterations=2)
    labels, n = ndi.label(dark)
    border = set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))) - {0}
    sizes = ndi.sum(dark, labels, index=np.arange(1, n + 1))
    keep = [i + 1 for i in np.argsort(sizes)[::-1] if i + 1 not in border][:2]
    mask = np.isin(labels, keep)
    return ndi.binary_fill_holes(ndi.binary_closing(mask, structure=np.ones((9, 9))))


def _film_paths() -> dict[str, str]:
    from medcoss_monai.data.samples import load_datalist

    data = load_datalist("xray")
    films = {it["body_part"]: it["image"] for it in data["training"] + data.get("validation", []) if "body_part" in it}
    missing = {"chest", "tibia"} - set(films)
    if missing:
        raise BadInputError(f"The xray sample datalist lacks the {sorted(missing)} film(s); rerun the sample fetch.")
    return films


def _prepare_xray_cls(out: Path) -> dict[str, Any]:
    items = []
    for label, part in enumerate(("chest", "tibia")):
        film = _load_film(_film_paths()[part])
        for y, x in _tiles(film.shape, XRAY_TILE):
            tile = film[y : y + XRAY_TILE, x : x + XRAY_TILE]
            # collimator shadow (burnt white) and empty tiles carry no anatomy
            if (tile > 0.97).mean() > 0.5 or tile.std() < 0.01:
                continue
            path = _save_png(tile, out / "images" / f"{part}_y{y}_x{x}.png")
            items.append({"image": path, "label": label, "source": part})
    return {"splits": split_items(items, 0.1, 0.3), "extra": {"classes": ["chest", "tibia"]}}


def _prepare_xray_seg(out: Path) -> dict[str, Any]:
    film = _load_film(_film_paths()["chest"])
    mask = lung_field_mask(film)
    _save_png(film, out / "chest_film.png")
    _save_png(mask, out / "chest_lung_mask.png")
    items = []
    for y, x in _tiles(film.shape, XRAY_TILE):
        image = _save_png(film[y : y + XRAY_TILE, x : x + XRAY_TILE], out / "images" / f"chest_y{y}_x{x}.png")
        label = _save_png(mask[y : y + XRAY_TILE, x : x + XRAY_TILE], out / "masks" / f"chest_y{y}_x{x}.png")
        items.append({"image": image, "label": label})
    return {"splits": split_items(items, 0.1, 0.3), "extra": {"classes": ["background", "lung"], "mask_values": [0, 255]}}


# --------------------------------------------------------------------------------------------------- 3D


def _load_on_grid(files: dict[str, str], modes: Sequence[str]) -> dict[str, Any]:
    """Volumes as (1, H, W, D) MetaTensors on the RAS 1.5 x 1.5 x 3 mm grid, one resampling mode per key."""
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd, Spacingd

    keys = list(files)
    chain = Compose(
        [
            LoadImaged(keys, image_only=True),
            EnsureChannelFirstd(keys),
            Orientationd(keys, axcodes="RAS"),
            Spacingd(keys, pixdim=SPACING_3D, mode=list(modes)),
        ]
    )
    return chain(dict(files))


def _load_volume_pair(image: str, label: str | None) -> tuple[Any, Any]:
    """Image (bilinear) and label (nearest) on the stages' 3D grid (see :func:`_load_on_grid`)."""
    files = {"image": image, **({"label": label} if label else {})}
    d = _load_on_grid(files, ["bilinear", "nearest"][: len(files)])
    return d["image"], d.get("label")


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path, dtype: Any) -> str:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array, dtype=dtype), np.asarray(affine, dtype=np.float64)), str(path))
    return str(path)


def _crop_affine(affine: np.ndarray, start: Sequence[int]) -> np.ndarray:
    shifted = np.array(affine, dtype=np.float64)
    shifted[:3, 3] = affine[:3, :3] @ np.asarray(start, dtype=np.float64) + affine[:3, 3]
    return shifted


def _pad_to(array: np.ndarray, size: Sequence[int], value: float) -> np.ndarray:
    pad = [(0, max(0, s - a)) for a, s in zip(array.shape, size)]
    return np.pad(array, pad, constant_values=value) if any(p[1] for p in pad) else array


def _sub_volumes(
    image: np.ndarray, label: np.ndarray, foreground: np.ndarray, rng: np.random.RandomState, n: int
) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """Corners of ``n`` crops containing the whole lesion and ``n`` crops with no lesion voxel but foreground."""
    size = np.asarray(GRID_3D)
    high = np.asarray(image.shape) - size
    idx = np.argwhere(label > 0)
    lo, hi = idx.min(0), idx.max(0)
    # a positive crop must contain the lesion's bounding box (or its centre when the lesion is larger)
    start_min = np.clip(np.minimum(hi - size + 1, (lo + hi) // 2 - size // 2), 0, high)
    start_max = np.clip(np.maximum(lo, (lo + hi) // 2 - size // 2), 0, high)
    positives = [tuple(int(rng.randint(a, b + 1)) for a, b in zip(start_min, start_max)) for _ in range(n)]
    negatives: list[tuple[int, ...]] = []
    for _ in range(200 * n):
        if len(negatives) == n:
            break
        s = tuple(int(rng.randint(0, h + 1)) for h in high)
        window = tuple(slice(a, a + b) for a, b in zip(s, size))
        if not label[window].any() and foreground[window].mean() > 0.3:
            negatives.append(s)
    return positives, negatives


def _lesion_pairs(modality: str) -> dict[str, dict[str, str]]:
    """Source name (``lung1``...) -> item, for the sample volumes with lesion / tumour masks (not the atlas)."""
    from medcoss_monai.data.samples import load_datalist

    data = load_datalist(modality)
    items = data["training"] + data.get("validation", [])
    return {
        Path(it["image"]).name.split("_")[0]: it
        for it in items
        if "label" in it and str(it["label"]).endswith("_label.nrrd")
    }


def _prepare_cls_3d(out: Path, modality: str) -> dict[str, Any]:
    pairs = _lesion_pairs(modality)
    rng = np.random.RandomState(SPLIT_SEED)
    items = []
    for source in sorted(pairs):
        image_t, label_t = _load_volume_pair(pairs[source]["image"], pairs[source]["label"])
        image, label = np.asarray(image_t[0], np.float32), np.asarray(label_t[0]) > 0
        image, label = _pad_to(image, GRID_3D, float(image.min())), _pad_to(label, GRID_3D, 0)
        if modality == "ct":
            foreground = image > -500  # soft tissue and bone, not air
        else:
            foreground = image > np.percentile(image, 50)
            lo, hi = np.percentile(image, MRI_PERCENTILES)
            image = np.clip(image, lo, hi)
            image = (image - image.mean()) / max(float(image.std()), 1e-6)  # as the MRI stage normalises
        positives, negatives = _sub_volumes(image, label, foreground, rng, CROPS_PER_CLASS_3D)
        affine = np.asarray(image_t.affine)
        for cls, corners in ((1, positives), (0, negatives)):
            for k, s in enumerate(corners):
                window = tuple(slice(a, a + b) for a, b in zip(s, GRID_3D))
                path = _save_nifti(image[window], _crop_affine(affine, s), out / "images" / f"{source}_{cls}_{k:02d}.nii.gz", np.float32)
                items.append({"image": path, "label": cls, "source": source})
    negative, positive = ("lesion-free", "lesion") if modality == "ct" else ("tumour-free", "tumour")
    # seeded random split over both volumes: a split by volume leaves one lesion to learn from and
    # puts every linear probe at chance, which measures nothing
    return {"splits": split_items(items, 0.1, 0.3), "extra": {"classes": [negative, positive]}}


def _prepare_seg_3d(out: Path, modality: str, test_source: str, margin: int = 4) -> dict[str, Any]:
    pairs = _lesion_pairs(modality)
    items = []
    for source in sorted(pairs):
        image_t, label_t = _load_volume_pair(pairs[source]["image"], pairs[source]["label"])
        image, label = np.asarray(image_t[0], np.float32), (np.asarray(label_t[0]) > 0).astype(np.uint8)
        body = image > (-500 if modality == "ct" else np.percentile(image, 50))
        idx = np.argwhere(body)
        lo = np.maximum(idx.min(0) - margin, 0)
        hi = np.minimum(idx.max(0) + margin + 1, image.shape)
        # never crop below the network's input grid
        hi = np.minimum(np.maximum(hi, lo + np.asarray(GRID_3D)), image.shape)
        lo = np.maximum(np.minimum(lo, hi - np.asarray(GRID_3D)), 0)
        window = tuple(slice(a, b) for a, b in zip(lo, hi))
        affine = _crop_affine(np.asarray(image_t.affine), lo)
        items.append(
            {
                "image": _save_nifti(image[window], affine, out / "images" / f"{source}.nii.gz", np.float32),
                "label": _save_nifti(label[window], affine, out / "labels" / f"{source}.nii.gz", np.uint8),
                "source": source,
            }
        )
    test = [it for it in items if it["source"] == test_source]
    # two volumes: one trains, the other is both validation and test (stated in the datalist)
    splits = {"training": [it for it in items if it["source"] != test_source], "validation": test, "test": test}
    return {"splits": splits, "extra": {"classes": ["background", "lesion" if modality == "ct" else "tumour"],
                                        "note": "validation and test are the same held-out volume"}}


def _prepare_mri_tissue_seg(out: Path, threshold: float = 0.5) -> dict[str, Any]:
    """The ICBM 2009a T1 template with grey / white matter labels, split by hemisphere and half.

    Labels: 0 background and CSF, 1 grey matter, 2 white matter (the larger tissue probability where
    it reaches ``threshold``). The volume is resampled to the MRI stage's grid; the left hemisphere
    trains, the right hemisphere's anterior half validates and its posterior half tests, so no voxel
    is shared between splits.
    """
    from medcoss_monai.data.samples import load_datalist

    source = next((it for it in load_datalist("mri")["training"] if "gm" in it and "wm" in it), None)
    if source is None:
        raise FileNotFoundError("The MRI sample datalist has no template with grey / white matter maps ('gm', 'wm').")
    keys = ("image", "gm", "wm")
    d = _load_on_grid({k: source[k] for k in keys}, ["bilinear"] * len(keys))  # tissue maps are probabilities
    image = np.asarray(d["image"][0], np.float32)
    gm, wm = (np.asarray(d[k][0], np.float32) / 255.0 for k in ("gm", "wm"))
    label = np.where(np.maximum(gm, wm) >= threshold, np.where(gm >= wm, 1, 2), 0).astype(np.uint8)
    affine = np.asarray(d["image"].affine)
    mid_x, mid_y = image.shape[0] // 2, image.shape[1] // 2
    regions = {
        "training": (slice(0, mid_x), slice(None)),  # RAS: low x is the left hemisphere
        "validation": (slice(mid_x, None), slice(mid_y, None)),  # right, anterior
        "test": (slice(mid_x, None), slice(0, mid_y)),  # right, posterior
    }
    splits: dict[str, list[dict[str, Any]]] = {}
    for split, (xs, ys) in regions.items():
        window = (xs, ys, slice(None))
        start = [w.start or 0 for w in window]
        crop_affine = _crop_affine(affine, start)
        img, lab = _pad_to(image[window], GRID_3D, 0.0), _pad_to(label[window], GRID_3D, 0)
        splits[split] = [{
            "image": _save_nifti(img, crop_affine, out / "images" / f"icbm_{split}.nii.gz", np.float32),
            "label": _save_nifti(lab, crop_affine, out / "labels" / f"icbm_{split}.nii.gz", np.uint8),
            "source": f"icbm2009a_{split}",
        }]
    return {"splits": splits, "extra": {"classes": ["background", "grey matter", "white matter"]}}


# -------------------------------------------------------------------------------------------- pathology


def _slide_tiles() -> tuple[str, np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """The slide, its level-0 RGB (H, W, 3), a cleaned level-0 tissue mask and the tile grid."""
    from scipy import ndimage as ndi

    from medcoss_monai.data.samples import load_datalist
    from medcoss_monai.data.slides import _open, _reader, tissue_mask

    data = load_datalist("pathology")
    slide = (data["training"] + data.get("validation", []))[0]["image"]
    mask, level, _ = tissue_mask(slide, level=0)
    mask = ndi.binary_fill_holes(ndi.binary_opening(mask, structure=np.ones((5, 5))))
    reader = _reader()
    wsi = _open(reader, slide)
    try:
        rgb, _ = reader.get_data(wsi, level=0)  # (C, H, W)
    finally:
        wsi.close()
    rgb = np.moveaxis(np.asarray(rgb[:3]), 0, -1).astype(np.uint8)
    return slide, rgb, mask, _tiles(mask.shape, SLIDE_TILE)


def _prepare_pathology(out: Path, segmentation: bool) -> dict[str, Any]:
    _, rgb, mask, corners = _slide_tiles()
    items = []
    for y, x in corners:
        window = (slice(y, y + SLIDE_TILE), slice(x, x + SLIDE_TILE))
        tissue = float(mask[window].mean())
        if segmentation:
            items.append(
                {
                    "image": _save_png(rgb[window], out / "images" / f"tile_y{y}_x{x}.png"),
                    "label": _save_png(mask[window], out / "masks" / f"tile_y{y}_x{x}.png"),
                }
            )
        elif tissue >= 0.5 or tissue <= 0.02:  # clear tissue or clear glass; mixed tiles are ambiguous
            items.append({"image": _save_png(rgb[window], out / "images" / f"tile_y{y}_x{x}.png"), "label": int(tissue >= 0.5)})
    extra: dict[str, Any] = {"classes": ["background", "tissue"]}
    if segmentation:
        extra["mask_values"] = [0, 255]
    return {"splits": split_items(items, 0.1, 0.3), "extra": extra}


# ------------------------------------------------------------------------------------------------ tasks

TASKS: dict[str, tuple[Callable[[Path], dict[str, Any]], str]] = {
    "text_cls": (_prepare_text_cls, "Multi-label: the 8 most frequent major MeSH headings of the Indiana reports."),
    "xray_cls": (_prepare_xray_cls, "Tiles of the chest (0) and tibia (1) films."),
    "xray_seg": (_prepare_xray_seg, "Tiles of the chest film and its lung-field mask (Otsu + morphology), 0/255 PNG."),
    "ct_cls": (lambda o: _prepare_cls_3d(o, "ct"), "Lesion (1) / lesion-free (0) CT sub-volumes in HU."),
    "ct_seg": (lambda o: _prepare_seg_3d(o, "ct", "lung1"), "Lung CTs cropped to the body with lesion masks."),
    "mri_cls": (lambda o: _prepare_cls_3d(o, "mri"), "Tumour (1) / tumour-free (0) T1c sub-volumes, normalised."),
    "mri_seg": (lambda o: _prepare_seg_3d(o, "mri", "brain2"), "Brain T1c volumes cropped to the head with tumour masks."),
    "mri_tissue_seg": (_prepare_mri_tissue_seg, "ICBM 2009a T1 with grey / white matter labels, split by hemisphere."),
    "pathology_cls": (lambda o: _prepare_pathology(o, False), "Tissue (1) / background (0) tiles of the slide."),
    "pathology_seg": (lambda o: _prepare_pathology(o, True), "Slide tiles and their tissue masks, 0/255 PNG."),
}
"""Task name -> (preparing function, one-line description)."""


def prepare_task(task: str, force: bool = False) -> Path:
    """Write one task's derived files and datalist (skipped when already written by this version).

    Args:
        task: one of :data:`TASKS`.
        force: rewrite even when up to date.

    Returns:
        the datalist path.
    """
    path = task_datalist_path(task)
    if not force and _is_fresh(path):
        return path
    out = task_dir(task)
    if out.exists():
        shutil.rmtree(out)  # a rerun must not leave files of an older layout behind
    out.mkdir(parents=True)
    result = TASKS[task][0](out)
    return _write_datalist(task, result["splits"], result.get("extra"))


def prepare_tasks(tasks: Sequence[str] | None = None, force: bool = False, verbose: bool = True) -> dict[str, Path]:
    """Prepare several tasks (default: all), fetching the sample data first if needed.

    Args:
        tasks: task names; None for all of :data:`TASKS`.
        force: rewrite even when up to date.
        verbose: print one line per task.

    Returns:
        task -> datalist path.
    """
    from medcoss_monai.data.samples import fetch

    fetch(verbose=False)
    paths = {}
    for task in tasks or list(TASKS):
        start = time.time()
        paths[task] = prepare_task(task, force=force)
        if verbose:
            with open(paths[task], encoding="utf-8") as f:
                data = json.load(f)
            counts = ", ".join(f"{k} {len(data[k])}" for k in ("training", "validation", "test"))
            print(f"{task:14s} {counts}  ({time.time() - start:.1f} s) -> {paths[task]}")
    return paths


# ------------------------------------------------------------------------------- user formats (paper data)


def _list_images(folder: Path, extensions: Sequence[str]) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in extensions)


def datalist_from_class_folders(
    root: str | os.PathLike,
    classes: Sequence[str] | None = None,
    extensions: Sequence[str] = IMAGE_SUFFIXES,
    validation_fraction: float = VALIDATION_FRACTION,
    test_fraction: float = TEST_FRACTION,
    seed: int = SPLIT_SEED,
) -> dict[str, Any]:
    """Datalist of an image-classification dataset stored as one folder per class (ChestXR, NCT-CRC-HE).

    ``root/<class>/**/<image>``; when ``root`` holds ``train``/``training``, ``val``/``validation``
    and/or ``test`` folders, each with class folders, those are the splits. Otherwise the images are
    split at random with ``seed``.

    Args:
        root: the dataset folder.
        classes: the class names in label order; default: the sorted class-folder names.
        extensions: image file suffixes to take (lower case).
        validation_fraction: share for ``validation`` when ``root`` is not already split.
        test_fraction: share for ``test`` when ``root`` is not already split.
        seed: split seed.

    Returns:
        ``{"classes": [...], "training": [...], "validation": [...], "test": [...]}``, items
        ``{"image": absolute path, "label": class index}``.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        BadInputError: no class folder or no image found, or a class folder that is not in ``classes``.
    """
    root = Path(root).absolute()
    if not root.is_dir():
        raise FileNotFoundError(f"Class-folder dataset '{root}' is not a folder.")
    split_names = {"train": "training", "training": "training", "val": "validation", "valid": "validation",
                   "validation": "validation", "dev": "validation", "test": "test", "testing": "test"}
    subdirs = sorted(p for p in root.iterdir() if p.is_dir())
    presplit = {split_names[p.name.lower()]: p for p in subdirs if p.name.lower() in split_names}
    folders = {s: sorted(q for q in p.iterdir() if q.is_dir()) for s, p in presplit.items()} if presplit else {"all": subdirs}
    found = sorted({f.name for fs in folders.values() for f in fs})
    if not found:
        raise BadInputError(f"'{root}' has no class folders (expected {root}/<class>/<images>).")
    classes = list(classes) if classes is not None else found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise BadInputError(f"'{root}' has class folders {unknown} that are not in the class list {classes}.")
    splits: dict[str, list] = {}
    for split, class_dirs in folders.items():
        splits[split] = [
            {"image": str(p), "label": classes.index(d.name)} for d in class_dirs for p in _list_images(d, extensions)
        ]
    if not any(splits.values()):
        raise BadInputError(f"No image with suffix {list(extensions)} found under '{root}'.")
    if "all" in splits:
        splits = split_items(splits["all"], validation_fraction, test_fraction, seed)
    for name in ("training", "validation", "test"):
        splits.setdefault(name, [])
    return {"classes": classes, **splits}


def _mask_key(stem: str) -> str:
    """Image stem a mask file belongs to: the stem without a mask marker (``mask_x``, ``x_anno``, ...)."""
    low = stem
    for marker in _MASK_MARKERS:
        if marker.endswith("_") and low.lower().startswith(marker):
            return low[len(marker):]
        if marker.startswith("_") and low.lower().endswith(marker):
            return low[: -len(marker)]
    return low


def datalist_from_image_mask_folders(
    images_dir: str | os.PathLike,
    masks_dir: str | os.PathLike,
    extensions: Sequence[str] = IMAGE_SUFFIXES + (".nii", ".nii.gz", ".nrrd"),
    validation_fraction: float = VALIDATION_FRACTION,
    test_fraction: float = TEST_FRACTION,
    seed: int = SPLIT_SEED,
) -> dict[str, Any]:
    """Datalist of a segmentation dataset with images and masks in two folders (QaTa-COV19, GlaS).

    A mask belongs to the image whose file name it repeats, with or without a marker: ``x.png`` goes
    with ``x.png``, ``mask_x.png`` (QaTa), ``x_anno.bmp`` (GlaS), ``x_mask``/``x_label``/``x_seg``/``x_gt``.

    Args:
        images_dir: folder of images (searched recursively).
        masks_dir: folder of masks (searched recursively).
        extensions: file suffixes to take.
        validation_fraction: share for ``validation``.
        test_fraction: share for ``test``.
        seed: split seed.

    Returns:
        ``{"training", "validation", "test"}`` of ``{"image", "label"}`` (absolute paths).

    Raises:
        FileNotFoundError: a folder is missing.
        BadInputError: an image has no mask (the message names the images), or nothing was found.
    """
    images_dir, masks_dir = Path(images_dir).absolute(), Path(masks_dir).absolute()
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"Segmentation folder '{folder}' does not exist.")

    def stem(p: Path) -> str:
        name = p.name
        for suffix in sorted(extensions, key=len, reverse=True):
            if name.lower().endswith(suffix):
                return name[: -len(suffix)]
        return p.stem

    def listing(folder: Path) -> list[Path]:
        return sorted(p for p in folder.rglob("*") if p.is_file() and any(p.name.lower().endswith(e) for e in extensions))

    masks = {_mask_key(stem(p)): p for p in listing(masks_dir)}
    images = [p for p in listing(images_dir) if images_dir != masks_dir or _mask_key(stem(p)) == stem(p)]
    if not images:
        raise BadInputError(f"No image with suffix {list(extensions)} found under '{images_dir}'.")
    orphans = [str(p) for p in images if stem(p) not in masks]
    if orphans:
        shown = ", ".join(orphans[:5]) + (f" and {len(orphans) - 5} more" if len(orphans) > 5 else "")
        raise BadInputError(f"{len(orphans)} image(s) have no mask in '{masks_dir}': {shown}.")
    items = [{"image": str(p), "label": str(masks[stem(p)])} for p in images]
    return split_items(items, validation_fraction, test_fraction, seed)


def _read_sentences(path: Path, classes: list[str] | None) -> tuple[list[dict[str, Any]], list[str]]:
    items, labels, abstract = [], [], ""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            if line.startswith("###"):  # abstract header: "###24491034"
                abstract = line[3:].strip()
                continue
            if "\t" not in line:
                raise BadInputError(f"{path}:{number}: expected 'LABEL<TAB>sentence', got {line[:80]!r}.")
            label, sentence = line.split("\t", 1)
            items.append({"text": sentence.strip(), "label": label.strip(), "abstract_id": abstract})
            labels.append(label.strip())
    return items, labels


def datalist_from_labelled_sentences(path: str | os.PathLike, classes: Sequence[str] | None = None) -> dict[str, Any]:
    """Datalist of a sentence-classification corpus in the PubMed 20k RCT format.

    Lines ``LABEL<TAB>sentence``; ``###<id>`` lines start an abstract and blank lines are skipped. ``path``
    is one such file (all items go to ``training``) or a folder with ``train.txt``, ``dev.txt`` and
    ``test.txt`` (the corpus as distributed).

    Args:
        path: the file or folder.
        classes: class names in label order; default: the sorted labels found.

    Returns:
        ``{"classes": [...], "training", "validation", "test"}`` of
        ``{"text", "label": class index, "abstract_id"}``.

    Raises:
        FileNotFoundError: nothing to read at ``path``.
        BadInputError: a malformed line (named by file and line number) or a label not in ``classes``.
    """
    path = Path(path).absolute()
    if path.is_dir():
        files = {"training": path / "train.txt", "validation": path / "dev.txt", "test": path / "test.txt"}
        files = {k: v for k, v in files.items() if v.is_file()}
        if not files:
            raise FileNotFoundError(f"'{path}' has none of train.txt, dev.txt, test.txt.")
    elif path.is_file():
        files = {"training": path}
    else:
        raise FileNotFoundError(f"Labelled-sentence corpus '{path}' does not exist.")
    raw = {split: _read_sentences(p, None) for split, p in files.items()}
    found = sorted({label for _, labels in raw.values() for label in labels})
    classes = list(classes) if classes is not None else found
    out: dict[str, Any] = {"classes": classes, "training": [], "validation": [], "test": []}
    for split, (items, _) in raw.items():
        for item in items:
            if item["label"] not in classes:
                raise BadInputError(f"{files[split]}: label '{item['label']}' is not in the class list {classes}.")
            out[split].append({**item, "label": classes.index(item["label"])})
    return out


# ------------------------------------------------------------------------------------------ label checks


def _header(path: str) -> tuple[tuple[int, ...], tuple[float, ...] | None]:
    """Spatial shape and spacing of an image file, from its header (PIL, nibabel or ITK)."""
    lower = path.lower()
    if lower.endswith(IMAGE_SUFFIXES):
        from PIL import Image

        with Image.open(path) as im:
            return (im.height, im.width), None
    if lower.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        img = nib.load(path)
        return tuple(int(s) for s in img.shape[:3]), tuple(float(z) for z in img.header.get_zooms()[:3])
    import itk

    reader = itk.ImageFileReader.New(FileName=path)
    reader.UpdateOutputInformation()
    image = reader.GetOutput()
    size = tuple(int(s) for s in image.GetLargestPossibleRegion().GetSize())[::-1]
    return size, tuple(float(s) for s in image.GetSpacing())[::-1]


def _mask_values(path: str) -> np.ndarray:
    from monai.transforms import LoadImage

    return np.unique(np.asarray(LoadImage(image_only=True)(path)))


def check_task_labels(
    items: Sequence[dict[str, Any]],
    num_classes: int,
    image_key: str = "image",
    label_key: str = "label",
    mask_values: Sequence[int] | None = None,
    spacing_tol: float = 1e-3,
) -> None:
    """Check the labels of a task datalist before training; all problems are reported together.

    - class labels (an int, or a list of ``num_classes`` 0/1 for multi-label) must lie in
      ``[0, num_classes)``;
    - a mask file must have its image's spatial shape and spacing (read from the headers) and hold only
      values in ``[0, num_classes)`` (or in ``mask_values``, e.g. ``[0, 255]`` for 8-bit PNG masks).

    Args:
        items: datalist items.
        num_classes: the number of classes (segmentation: including background).
        image_key: key of the image path (used for masks).
        label_key: key of the label.
        mask_values: allowed mask values, default ``range(num_classes)``.
        spacing_tol: relative spacing tolerance.

    Raises:
        BadInputError: naming each bad file or item and the problem.
    """
    allowed = set(int(v) for v in (mask_values if mask_values is not None else range(num_classes)))
    problems = []
    for i, item in enumerate(items):
        where = item.get(image_key, item.get("id", f"item {i}"))
        if label_key not in item:
            problems.append(f"{where}: no '{label_key}'")
            continue
        label = item[label_key]
        if isinstance(label, bool) or isinstance(label, (int, np.integer)):
            if not 0 <= int(label) < num_classes:
                problems.append(f"{where}: label {label} is outside the class list (0..{num_classes - 1})")
        elif isinstance(label, (list, tuple)):
            if len(label) != num_classes or any(v not in (0, 1) for v in label):
                problems.append(f"{where}: multi-label {list(label)} is not {num_classes} values of 0/1")
        elif isinstance(label, (str, os.PathLike)):
            mask = str(label)
            if not os.path.isfile(mask):
                problems.append(f"{mask}: mask file not found")
                continue
            try:
                m_shape, m_spacing = _header(mask)
                i_shape, i_spacing = _header(str(item[image_key]))
            except Exception as e:  # any header reader failure: name the file
                problems.append(f"{mask}: cannot read header ({e.__class__.__name__}: {e})")
                continue
            if m_shape != i_shape:
                problems.append(f"{mask}: mask shape {m_shape} differs from image {item[image_key]} shape {i_shape}")
                continue
            if m_spacing and i_spacing and not np.allclose(m_spacing, i_spacing, rtol=spacing_tol):
                problems.append(f"{mask}: mask spacing {m_spacing} differs from image {item[image_key]} spacing {i_spacing}")
                continue
            bad = sorted(set(int(v) for v in _mask_values(mask)) - allowed)
            if bad:
                problems.append(f"{mask}: mask values {bad[:10]} are outside the allowed values {sorted(allowed)[:10]}")
        else:
            problems.append(f"{where}: label of type {type(label).__name__} is not a class index, list or mask path")
    if problems:
        raise BadInputError(f"{len(problems)} label problem(s):\n" + "\n".join(f"  {p}" for p in problems))


# -------------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m medcoss_monai.data.tasks prepare [--force] [--tasks a b]`` / ``list``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="write the derived task files and datalists")
    prep.add_argument("--force", action="store_true", help="rewrite even when up to date")
    prep.add_argument("--tasks", nargs="*", default=None, choices=sorted(TASKS), help="default: all")
    sub.add_parser("list", help="print the tasks")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.command == "list":
        for name, (_, text) in TASKS.items():
            print(f"{name:14s} {text}")
        return 0
    start = time.time()
    prepare_tasks(args.tasks, force=args.force)
    print(f"done in {time.time() - start:.1f} s; tasks under {tasks_dir()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
