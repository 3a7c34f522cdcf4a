"""Sample tasks cut from held-out volumes on the CT / MRI stage grid: ``ct_cls``, ``ct_seg``, ``mri_cls``,
``mri_seg``, ``mri_tissue_seg``; see :mod:`.sample_tasks` for what each holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd, Spacingd

from medcoss_monai.data.folder_datalists import SPLIT_SEED, split_items
from medcoss_monai.samples.sample_tasks import (
    CEREBRA_GROUPS,
    CROPS_PER_CLASS_3D,
    CT_CLASSES,
    GRID_3D,
    MRI_PERCENTILES,
    SPACING_3D,
    _cerebra_ids,
    _group_labels,
    _held_out,
    _source,
)

__all__ = [
    "derive_ct_cls",
    "derive_ct_seg",
    "derive_mri_cls",
    "derive_mri_seg",
    "derive_mri_tissue_seg",
]


def _load_on_grid(files: dict[str, str], modes: Sequence[str]) -> dict[str, Any]:
    """Volumes as (1, H, W, D) MetaTensors on the RAS :data:`SPACING_3D` grid, one resampling mode per key."""
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


def _mri_normalise(image: np.ndarray) -> np.ndarray:
    """As the MRI stage normalises: percentile clip, then zero mean and unit variance."""
    lo, hi = np.percentile(image, MRI_PERCENTILES)
    image = np.clip(image, lo, hi)
    return ((image - image.mean()) / max(float(image.std()), 1e-6)).astype(np.float32)


def _sub_volume_corners(
    present: np.ndarray, foreground: np.ndarray, rng: np.random.RandomState, n: int, min_present: float = 0.1
) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """Corners of ``n`` crops where ``present`` fills at least ``min_present``, and ``n`` crops without any
    ``present`` voxel but with at least 30% foreground."""
    size = np.asarray(GRID_3D)
    high = np.asarray(present.shape) - size
    positives: list[tuple[int, ...]] = []
    negatives: list[tuple[int, ...]] = []
    for _ in range(500 * n):
        if len(positives) == n and len(negatives) == n:
            break
        s = tuple(int(rng.randint(0, h + 1)) for h in high)
        window = tuple(slice(a, a + b) for a, b in zip(s, size))
        share = float(present[window].mean())
        if share >= min_present and len(positives) < n:
            positives.append(s)
        elif share == 0.0 and foreground[window].mean() >= 0.3 and len(negatives) < n:
            negatives.append(s)
    return positives, negatives


def _derive_cls_3d(out: Path, image: np.ndarray, present: np.ndarray, foreground: np.ndarray, affine: np.ndarray,
                    source: str, classes: list[str]) -> dict[str, Any]:
    rng = np.random.RandomState(SPLIT_SEED)
    image, present, foreground = (_pad_to(a, GRID_3D, v) for a, v in ((image, float(image.min())), (present, 0), (foreground, 0)))
    positives, negatives = _sub_volume_corners(present, foreground, rng, CROPS_PER_CLASS_3D)
    items = []
    for cls, corners in ((1, positives), (0, negatives)):
        for k, s in enumerate(corners):
            window = tuple(slice(a, a + b) for a, b in zip(s, GRID_3D))
            path = _save_nifti(image[window], _crop_affine(affine, s), out / "images" / f"{cls}_{k:02d}.nii.gz", np.float32)
            items.append({"image": path, "label": cls, "source": source})
    return {"splits": split_items(items, seed=SPLIT_SEED), "extra": {"classes": classes}}


def _chest_ct() -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """The held-out chest CT in HU and its grouped labels (:data:`CT_CLASSES`) on the stage grid, affine, source."""
    item = _held_out("ct", "cxr.nii.gz")
    d = _load_on_grid({"image": item["image"], "label": item["label"]}, ["bilinear", "nearest"])
    labels = _group_labels(np.asarray(d["label"][0]).astype(np.int32), CT_CLASSES)
    return np.asarray(d["image"][0], np.float32), labels, np.asarray(d["image"].affine), item["image"]


def derive_ct_cls(out: Path) -> dict[str, Any]:
    """Sub-volumes of the held-out chest CT in HU: heart (1) or no heart (0) (TotalSegmentator labels).

    Args:
        out: the task folder; sub-volumes under ``images/``.

    Returns:
        ``{"splits": {...}, "extra": {"classes": [...]}}``.
    """
    image, labels, affine, path = _chest_ct()
    heart = labels == list(CT_CLASSES).index("heart") + 1
    return _derive_cls_3d(out, image, heart, image > -500, affine, _source(path), ["no heart", "heart"])


def derive_ct_seg(out: Path, margin: int = 4) -> dict[str, Any]:
    """Axial slabs of the held-out chest CT with lung / heart / liver / bone labels (:data:`CT_CLASSES`).

    Slabs are :data:`GRID_3D` deep and cropped to the body in-plane; slab ``k`` goes to training,
    validation, test, training, ... for ``k % 3`` = 0, 1, 2.

    Args:
        out: the task folder; slabs under ``images/`` and ``labels/``.
        margin: voxels kept around the body.

    Returns:
        ``{"splits": {...}, "extra": {"classes": [...]}}``.
    """
    image, labels, affine, path = _chest_ct()
    idx = np.argwhere(image > -500)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, image.shape)
    depth = GRID_3D[2]
    splits: dict[str, list[dict[str, Any]]] = {"training": [], "validation": [], "test": []}
    names = list(splits)
    for k, z in enumerate(range(0, image.shape[2] - depth + 1, depth)):
        start = (int(lo[0]), int(lo[1]), z)
        window = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(z, z + depth))
        img, lab = _pad_to(image[window], GRID_3D, -1024.0), _pad_to(labels[window], GRID_3D, 0)
        a = _crop_affine(affine, start)
        splits[names[k % 3]].append({
            "image": _save_nifti(img, a, out / "images" / f"slab{k:02d}.nii.gz", np.float32),
            "label": _save_nifti(lab, a, out / "labels" / f"slab{k:02d}.nii.gz", np.uint8),
            "source": _source(path),
        })
    return {"splits": splits, "extra": {"classes": ["background", *CT_CLASSES]}}


def _icbm_2009c() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """The held-out ICBM 2009c T1 (normalised), its grouped CerebrA labels and brain mask on the stage grid."""
    item = _held_out("mri", "mni_icbm152_t1_tal_nlin_sym_09c.nii")
    d = _load_on_grid({"image": item["image"], "regions": item["regions"], "mask": item["mask"]},
                      ["bilinear", "nearest", "nearest"])
    image = _mri_normalise(np.asarray(d["image"][0], np.float32))
    labels = _group_labels(np.rint(np.asarray(d["regions"][0])).astype(np.int32), _cerebra_ids())
    return image, labels, np.asarray(d["mask"][0]) > 0, np.asarray(d["image"].affine), item["image"]


def derive_mri_cls(out: Path) -> dict[str, Any]:
    """Sub-volumes of the held-out ICBM 2009c T1, normalised: cerebellum (1) or cerebrum (0).

    Args:
        out: the task folder; sub-volumes under ``images/``.

    Returns:
        ``{"splits": {...}, "extra": {"classes": [...]}}``.
    """
    image, labels, brain, affine, path = _icbm_2009c()
    cerebellum = labels == list(CEREBRA_GROUPS).index("cerebellum and brainstem") + 1
    return _derive_cls_3d(out, image, cerebellum, brain, affine, _source(path), ["cerebrum", "cerebellum"])


def _hemisphere_split(out: Path, image: np.ndarray, label: np.ndarray, affine: np.ndarray, source: str) -> dict[str, list]:
    """Left hemisphere trains, right anterior validates, right posterior tests: no voxel is shared."""
    mid_x, mid_y = image.shape[0] // 2, image.shape[1] // 2
    regions = {
        "training": (slice(0, mid_x), slice(None)),  # RAS: low x is the left hemisphere
        "validation": (slice(mid_x, None), slice(mid_y, None)),  # right, anterior
        "test": (slice(mid_x, None), slice(0, mid_y)),  # right, posterior
    }
    splits: dict[str, list[dict[str, Any]]] = {}
    for split, (xs, ys) in regions.items():
        window = (xs, ys, slice(None))
        crop_affine = _crop_affine(affine, [w.start or 0 for w in window])
        img, lab = _pad_to(image[window], GRID_3D, float(image.min())), _pad_to(label[window], GRID_3D, 0)
        splits[split] = [{
            "image": _save_nifti(img, crop_affine, out / "images" / f"{split}.nii.gz", np.float32),
            "label": _save_nifti(lab, crop_affine, out / "labels" / f"{split}.nii.gz", np.uint8),
            "source": source,
        }]
    return splits


def derive_mri_seg(out: Path) -> dict[str, Any]:
    """The held-out ICBM 2009c T1 with CerebrA regions grouped as :data:`CEREBRA_GROUPS`, split by hemisphere.

    Args:
        out: the task folder; volumes under ``images/`` and ``labels/``.

    Returns:
        ``{"splits": {...}, "extra": {"classes": [...]}}``.
    """
    image, labels, _, affine, path = _icbm_2009c()
    return {"splits": _hemisphere_split(out, image, labels, affine, _source(path)),
            "extra": {"classes": ["background", *CEREBRA_GROUPS]}}


def derive_mri_tissue_seg(out: Path, threshold: float = 0.5) -> dict[str, Any]:
    """The ICBM 2009a T1 with grey / white matter labels, split by hemisphere and half.

    Labels: 0 background and CSF, 1 grey matter, 2 white matter (the larger tissue probability where
    it reaches ``threshold``). The T1 is normalised as the MRI stage does.

    Args:
        out: the task folder; volumes under ``images/`` and ``labels/``.
        threshold: smallest tissue probability labelled.

    Returns:
        ``{"splits": {...}, "extra": {"classes": [...]}}``.
    """
    item = _held_out("mri", "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    keys = ("image", "gm", "wm")
    d = _load_on_grid({k: item[k] for k in keys}, ["bilinear"] * len(keys))  # tissue maps are probabilities
    gm, wm = (np.asarray(d[k][0], np.float32) / 255.0 for k in ("gm", "wm"))
    label = np.where(np.maximum(gm, wm) >= threshold, np.where(gm >= wm, 1, 2), 0).astype(np.uint8)
    image = _mri_normalise(np.asarray(d["image"][0], np.float32))
    splits = _hemisphere_split(out, image, label, np.asarray(d["image"].affine), _source(item["image"]))
    return {"splits": splits, "extra": {"classes": ["background", "grey matter", "white matter"]}}
