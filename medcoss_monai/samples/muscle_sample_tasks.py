"""MUSCLE's sample data: radiographs projected from the sample CTs, tiles of the real films, and splits.

No registry reachable here ships chest X-rays with lung masks or boxes, so the chest images of the
MUSCLE tasks are digitally reconstructed radiographs (:mod:`medcoss_monai.samples.radiographs`) of the
sample chest CTs, with the lung fields and lesions of the CTs projected into masks and boxes; the
real films (a PA chest, a tibia) give real radiographs, cut into tiles at several scales.

Held out by file. MUSCLE pre-trains on step 1's list (:func:`derive_mdmoco_datalist`) and on the
``training`` splits of the tasks (step 2); both hold only the chest film RG1 and the CTs lung1
(lesion) and cranium. Validation is cut from lung2 (chest CT with a lesion) and the upper half of
the tibia film RG3, test from the contrast chest CT cxr (117 TotalSegmentator classes) and the lower
half of RG3: no scored item, nor the file it is cut from, is in a pre-training list, and fine-tuning's
training and test items never show the same anatomy of one file.

=================== ====================================================================================
task                items
=================== ====================================================================================
muscle_bodypart_cls tiles at several scales, ``{"image", "label"}``, classes ``["other", "chest"]``:
                    training chest = RG1 film tiles (real) and lung1 DRR tiles, other = cranium DRR
                    tiles (AP and lateral); validation / test chest = lung2 / cxr DRR tiles, other =
                    RG3 film tiles (real, upper / lower half)
muscle_lung_seg     whole DRRs at several rotations, ``{"image", "label"}`` (lung-field mask 0/255):
                    lung1 (training), lung2 (validation), cxr (test); lung fields of lung1/lung2 by
                    an air threshold inside the body (derived), of cxr from TotalSegmentator's lobes (real)
muscle_chest_det    the same DRRs, ``{"image", "boxes", "labels"}``: boxes of the right lung, left lung
                    and lesion (lesion masks of lung1 / lung2; cxr has none)
=================== ====================================================================================

Every item names the file it comes from in ``"source"`` (relative to the sample folder).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medcoss_monai.samples import radiographs as drr
from medcoss_monai.data.folder_datalists import SPLIT_SEED

__all__ = [
    "MUSCLE_TASKS",
    "MUSCLE_SOURCES",
    "IMAGE_SIZE",
    "MOCO_IMAGE_SIZE",
    "DET_CLASSES",
    "derive_bodypart_cls",
    "derive_lung_seg",
    "derive_chest_det",
    "derive_mdmoco_datalist",
    "MDMOCO_VERSION",
    "mdmoco_datalist_path",
    "prepare_mdmoco_datalist",
    "load_mdmoco_items",
]

MUSCLE_TASKS = ("muscle_bodypart_cls", "muscle_lung_seg", "muscle_chest_det")
"""Registry names of the MUSCLE sample tasks (:data:`medcoss_monai.samples.tasks.TASKS`)."""

MUSCLE_SOURCES = {
    "training": ("xray/RG1_J2KI.dcm", "ct/lung1_image.nrrd", "ct/cranium_ct.nii.gz"),
    "validation": ("xray/RG3_J2KI.dcm", "ct/lung2_image.nrrd"),
    "test": ("xray/RG3_J2KI.dcm", "ct/cxr.nii.gz"),
}
"""Files each split is cut from (relative to the sample folder); RG3 is split into upper / lower halves."""

IMAGE_SIZE, MOCO_IMAGE_SIZE = 128, 256
MDMOCO_VERSION = 2
"""Bumped when step 1's sample images change, so :func:`prepare_mdmoco_datalist` rewrites older ones."""
DET_CLASSES = ["right lung", "left lung", "lesion"]
ANGLES = {"training": tuple(range(-20, 21, 4)), "validation": (-12, -6, 0, 6, 12), "test": (-12, -6, 0, 6, 12)}
HEAD_ANGLES = (-20, -10, 0, 10, 20, 70, 80, 90, 100, 110)  # AP and near-lateral skull views
CHEST_CT = {"training": "lung1", "validation": "lung2", "test": "cxr"}
TILE_SCALES = (0.3, 0.45, 0.65)  # tile side as a fraction of the image's shorter side


def _root() -> Path:
    from medcoss_monai.samples.sample_data import sample_dir

    return sample_dir()


def _save_png(array: np.ndarray | torch.Tensor, path: Path) -> str:
    """Write a [0, 1] image or a boolean mask (0 / 255) as an 8-bit gray PNG of (rows, columns)."""
    from PIL import Image

    a = np.asarray(array)
    a = (a > 0).astype(np.uint8) * 255 if a.dtype == bool else np.clip(np.round(a * 255.0), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)
    return str(path)


def _film(rel: str) -> np.ndarray:
    """A real film in [0, 1], (rows, columns), longest side at most 1024 pixels."""
    from monai.transforms import Resize

    from medcoss_monai.transforms import LoadXRay

    img = LoadXRay()(str(_root() / rel))
    if max(img.shape[1:]) > 1024:
        img = Resize(1024, size_mode="longest", mode="area")(img)
    return np.asarray(img[0], dtype=np.float32)


def _tiles(image: np.ndarray | torch.Tensor, count: int, rng: np.random.Generator, size: int = IMAGE_SIZE,
           min_std: float = 0.04) -> list[np.ndarray]:
    """``count`` square crops at the :data:`TILE_SCALES`, resized to ``size``; near-flat crops are skipped."""
    image = torch.as_tensor(np.asarray(image), dtype=torch.float32)
    rows, cols = image.shape
    tiles: list[np.ndarray] = []
    for attempt in range(count * 20):
        if len(tiles) == count:
            break
        side = int(TILE_SCALES[attempt % len(TILE_SCALES)] * min(rows, cols))
        r, c = int(rng.integers(0, rows - side + 1)), int(rng.integers(0, cols - side + 1))
        crop = image[r : r + side, c : c + side]
        if float(crop.std()) < min_std or float((crop > 0.02).float().mean()) < 0.5 or float((crop > 0.99).float().mean()) > 0.3:
            continue  # mostly air, or the unexposed (saturated) border outside the collimator
        tiles.append(drr.square_resize(crop, (1.0, 1.0), size).numpy())
    return tiles


def _halves(film: np.ndarray) -> dict[str, np.ndarray]:
    """The tibia film's upper half (validation) and lower half (test): disjoint anatomy."""
    half = film.shape[0] // 2
    return {"validation": film[:half], "test": film[half:]}


def derive_bodypart_cls(out: Path, per_class: int = 36) -> dict[str, Any]:
    """Body part of a tile, chest (1) or other (0); see the module table."""
    rng = np.random.default_rng(SPLIT_SEED)
    splits: dict[str, list] = {s: [] for s in ("training", "validation", "test")}

    def add(split: str, tiles: list[np.ndarray], label: int, source: str, tag: str) -> None:
        for i, tile in enumerate(tiles):
            path = _save_png(tile, out / split / f"{tag}_{i:03d}.png")
            splits[split].append({"image": path, "label": label, "source": source})

    film = _film("xray/RG1_J2KI.dcm")
    add("training", _tiles(film, per_class // 2, rng), 1, "xray/RG1_J2KI.dcm", "chest_film")
    views = drr.chest_views("lung1", ANGLES["training"], MOCO_IMAGE_SIZE)
    add("training", [t for v in views for t in _tiles(v["image"], 2, rng)][: per_class // 2], 1, views[0]["source"], "chest_drr")
    heads = drr.head_views(HEAD_ANGLES, MOCO_IMAGE_SIZE)
    add("training", [t for v in heads for t in _tiles(v["image"], 4, rng)][:per_class], 0, heads[0]["source"], "head_drr")
    tibia = _halves(_film("xray/RG3_J2KI.dcm"))
    for split in ("validation", "test"):
        views = drr.chest_views(CHEST_CT[split], ANGLES[split], MOCO_IMAGE_SIZE)
        n = per_class // 2
        add(split, [t for v in views for t in _tiles(v["image"], -(-n // len(views)), rng)][:n], 1, views[0]["source"], "chest_drr")
        add(split, _tiles(tibia[split], n, rng), 0, "xray/RG3_J2KI.dcm", "tibia_film")
    return {"splits": splits, "extra": {"classes": ["other", "chest"]}}


def _chest_drrs(out: Path, size: int, item_of: Callable[[dict[str, Any], Path, str], dict[str, Any]]) -> dict[str, list]:
    """Every split's chest DRRs (:data:`CHEST_CT` at :data:`ANGLES`), each made an item by ``item_of(view, folder, stem)``."""
    splits: dict[str, list] = {}
    for split, name in CHEST_CT.items():
        splits[split] = [
            item_of(v, out / split, f"{name}_{v['angle']:+03d}") for v in drr.chest_views(name, ANGLES[split], size)
        ]
    return splits


def derive_lung_seg(out: Path) -> dict[str, Any]:
    """Whole chest DRRs and their lung-field masks (0/255); see the module table."""

    def item(v: dict[str, Any], folder: Path, stem: str) -> dict[str, Any]:
        lungs = v["masks"]["right lung"] | v["masks"]["left lung"]
        return {
            "image": _save_png(v["image"], folder / f"{stem}.png"),
            "label": _save_png(lungs.numpy(), folder / f"{stem}_lungs.png"),
            "source": v["source"],
        }

    return {"splits": _chest_drrs(out, IMAGE_SIZE, item), "extra": {"classes": ["background", "lung"]}}


def derive_chest_det(out: Path) -> dict[str, Any]:
    """Whole chest DRRs with boxes of the lungs and lesions; labels index :data:`DET_CLASSES`."""

    def item(v: dict[str, Any], folder: Path, stem: str) -> dict[str, Any]:
        boxes, labels = [], []
        for label, cls in enumerate(DET_CLASSES):
            box = drr.mask_box(v["masks"][cls])
            if box is not None:
                boxes.append(box)
                labels.append(label)
        return {"image": _save_png(v["image"], folder / f"{stem}.png"), "boxes": boxes, "labels": labels, "source": v["source"]}

    return {"splits": _chest_drrs(out, IMAGE_SIZE, item), "extra": {"classes": DET_CLASSES}}


def derive_mdmoco_datalist(out: Path, film_tiles: int = 48) -> dict[str, Any]:
    """Step 1's unlabelled images, each with the ``dataset`` it stands for (balanced sampling draws per dataset).

    ``film_chest``: the RG1 film and ``film_tiles`` tiles of it (real); ``drr_chest``: lung1 DRRs;
    ``drr_head``: cranium DRRs, AP and lateral. Only training-side files (:data:`MUSCLE_SOURCES`).

    Args:
        out: folder for the images.
        film_tiles: number of film tiles.

    Returns:
        ``{"splits": {"training": [...]}}``.
    """
    rng = np.random.default_rng(SPLIT_SEED + 1)
    items = [{"image": str(_root() / "xray/RG1_J2KI.dcm"), "dataset": "film_chest", "source": "xray/RG1_J2KI.dcm"}]
    for i, tile in enumerate(_tiles(_film("xray/RG1_J2KI.dcm"), film_tiles, rng, size=MOCO_IMAGE_SIZE)):
        items.append({"image": _save_png(tile, out / f"film_chest_{i:03d}.png"), "dataset": "film_chest",
                       "source": "xray/RG1_J2KI.dcm"})
    for v in drr.chest_views("lung1", ANGLES["training"], MOCO_IMAGE_SIZE):
        items.append({"image": _save_png(v["image"], out / f"drr_chest_{v['angle']:+03d}.png"), "dataset": "drr_chest",
                       "source": v["source"]})
    for v in drr.head_views(HEAD_ANGLES, MOCO_IMAGE_SIZE):
        items.append({"image": _save_png(v["image"], out / f"drr_head_{v['angle']:+04d}.png"), "dataset": "drr_head",
                       "source": v["source"]})
    return {"splits": {"training": items}}


def mdmoco_datalist_path() -> Path:
    """``sample_dir()/muscle_mdmoco/datalist.json``: step 1's sample datalist."""
    return _root() / "muscle_mdmoco" / "datalist.json"


def prepare_mdmoco_datalist(force: bool = False) -> Path:
    """Write step 1's sample images and datalist (skipped when this version already wrote them).

    Args:
        force: rewrite even when up to date.

    Returns:
        The datalist path.
    """
    import json
    import shutil

    from medcoss_monai.samples.sample_data import fetch
    from medcoss_monai.utils import atomic_write_json

    path = mdmoco_datalist_path()
    if not force and path.is_file():
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if data.get("version") == MDMOCO_VERSION and data.get("root") == str(_root()):
            return path
    fetch(verbose=False)
    if path.parent.exists():
        shutil.rmtree(path.parent)
    path.parent.mkdir(parents=True)
    items = derive_mdmoco_datalist(path.parent / "images")["splits"]["training"]
    data = {
        "name": "medcoss_monai MUSCLE step 1 (MD-MoCo) sample images",
        "description": "Training-side files only (RG1 chest film and its tiles, DRRs of lung1 and cranium); "
        "'dataset' names the dataset each image stands for.",
        "version": MDMOCO_VERSION,
        "root": str(_root()),
        "numTraining": len(items),
        "training": items,
    }
    return atomic_write_json(data, path)


def load_mdmoco_items(datalist_file: str = "", max_items: int | None = None) -> list[dict[str, Any]]:
    """Step 1's training items: the sample list (prepared on first use) or a user's decathlon datalist.

    Args:
        datalist_file: a JSON datalist whose ``training`` items have ``image`` (and optionally
            ``dataset``; items without one count as one dataset named after their folder); "" for the sample list.
        max_items: keep only the first this many items (demo runs); None keeps all.

    Returns:
        The items, each with ``image`` and ``dataset``.

    Raises:
        BadInputError: the file is missing, unreadable, or lists no training item with an existing image.
    """
    import json

    from medcoss_monai.errors import BadInputError

    path = Path(datalist_file) if datalist_file else prepare_mdmoco_datalist()
    try:
        with open(path, encoding="utf-8") as f:
            items = json.load(f)["training"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BadInputError(f"{path}: cannot read a datalist with a 'training' list ({e}).") from e
    if not isinstance(items, list) or not items:
        raise BadInputError(f"{path}: 'training' lists no image.")
    out = []
    for i, item in enumerate(items):
        image = item.get("image") if isinstance(item, dict) else None
        if not image:
            raise BadInputError(f"{path}: training item {i} has no 'image'.")
        image = str(image if Path(image).is_absolute() else path.parent / image)
        if not Path(image).is_file():
            raise BadInputError(f"{path}: training item {i}: image file {image} does not exist.")
        out.append({**item, "image": image, "dataset": str(item.get("dataset") or Path(image).parent.name)})
    return out[:max_items] if max_items else out
