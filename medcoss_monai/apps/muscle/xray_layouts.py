"""Datalists from the layouts of MUSCLE's X-ray datasets, as they are downloaded.

Each loader returns a decathlon-style dict (``training`` / ``validation`` / ``test``; ``classes``
where there are classes) whose items carry ``"dataset"`` (the name balanced sampling groups by) and,
where the dataset knows patients, ``"group"`` (so a split never puts one patient on both sides):

========================== ===================================================== ==========================
loader                     layout                                                items
========================== ===================================================== ==========================
:func:`pneumonia_datalist` ``chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/``    ``image``, ``label``
:func:`mura_datalist`      ``MURA-v1.1/{train,valid}_image_paths.csv`` + images  ``image``, ``label``, ``body_part``
:func:`lung_mask_datalist` image folder + one or more mask folders (Montgomery    ``image``, ``label`` (mask)
                           left/right masks are merged; Shenzhen, "Chest X-ray
                           Masks and Labels" ``<stem>_mask.png``)
:func:`tbx11k_datalist`    ``TBX11K/imgs/`` + COCO ``annotations/json/*.json``    ``image``, ``boxes``, ``labels``
:func:`chestxray14_datalist` ``Data_Entry_2017.csv`` + ``images*/`` (+ lists)      ``image``, ``label`` (14 ints)
:func:`bone_age_datalist`  ``boneage-training-dataset.csv`` + ``<id>.png``        ``image``, ``label`` (months)
========================== ===================================================== ==========================

Boxes are ``[x1, y1, x2, y2]`` in pixels (x = column); labels of boxes index ``classes`` from 0.
:func:`mdmoco_datalist` pools the images of several such datalists for MUSCLE's step 1. A file that
is missing or malformed raises :class:`~medcoss_monai.errors.BadInputError` naming it and the problem.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import GroupShuffleSplit

from medcoss_monai.data.folder_datalists import (
    SPLIT_SEED,
    TEST_FRACTION,
    VALIDATION_FRACTION,
    datalist_from_class_folders,
    datalist_from_image_mask_folders,
)
from medcoss_monai.errors import BadInputError

__all__ = [
    "CHESTXRAY14_CLASSES",
    "split_by_group",
    "pneumonia_datalist",
    "mura_datalist",
    "lung_mask_datalist",
    "tbx11k_datalist",
    "chestxray14_datalist",
    "bone_age_datalist",
    "mdmoco_datalist",
]

CHESTXRAY14_CLASSES = [
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
    "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
]


def split_by_group(items: Sequence[dict[str, Any]], fractions: Mapping[str, float], seed: int = SPLIT_SEED) -> dict[str, list]:
    """Seeded split of items into named splits by their ``group`` (patient): a group lands in one split.

    Each split after the first takes ``round(fraction * number of groups)`` groups, drawn in turn from
    the groups left by scikit-learn's ``GroupShuffleSplit``; the first split takes the remainder.

    Args:
        items: items with ``"group"`` (items without one are their own group).
        fractions: split name -> share of groups; the first split takes the remainder.
        seed: shuffling seed.

    Returns:
        split name -> items, each in the order of ``items``.
    """
    names = list(fractions)
    out: dict[str, list] = {name: [] for name in names}
    rest = list(items)
    rng = np.random.RandomState(seed)
    n_groups = len({_group(it) for it in items})
    for name in names[1:]:
        n, groups = round(fractions[name] * n_groups), [_group(it) for it in rest]
        if n >= len(set(groups)):  # GroupShuffleSplit keeps at least one group: take what is left
            out[name], rest = rest, []
        elif n > 0:
            keep, take = next(GroupShuffleSplit(n_splits=1, test_size=n, random_state=rng).split(rest, groups=groups))
            out[name], rest = [rest[i] for i in take], [rest[i] for i in keep]
    out[names[0]] = rest
    return out


def _group(item: Mapping[str, Any]) -> str:
    return str(item.get("group", item["image"]))


def _tag(datalist: dict[str, Any], dataset: str) -> dict[str, Any]:
    for split in ("training", "validation", "test"):
        datalist[split] = [{**it, "dataset": dataset} for it in datalist.get(split, [])]
    return datalist


def _read_csv(path: Path, header: bool = True, columns: Sequence[str] = ()) -> list[Any]:
    """Rows of a CSV (dicts with ``header``, else lists); a header must hold ``columns``."""
    if not path.is_file():
        raise BadInputError(f"{path}: file not found.")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f)) if header else [row for row in csv.reader(f) if row]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise BadInputError(f"{path}: cannot be read as CSV ({e}).") from e
    if rows and not set(columns) <= set(rows[0]):
        raise BadInputError(f"{path}: needs columns {', '.join(repr(c) for c in columns)}; has {list(rows[0])}.")
    return rows


def _existing(path: Path, listed_in: Path, row: int) -> str:
    if not path.is_file():
        raise BadInputError(f"{listed_in}: row {row} names {path}, which does not exist.")
    return str(path)


def pneumonia_datalist(root: str | os.PathLike, seed: int = SPLIT_SEED) -> dict[str, Any]:
    """Pediatric pneumonia (Kermany et al.): ``root/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg``.

    Args:
        root: the ``chest_xray`` folder (split folders) or a folder of the two class folders.
        seed: split seed when the folder is not split.

    Returns:
        Datalist with ``classes == ["NORMAL", "PNEUMONIA"]``; items ``{"image", "label", "dataset"}``.
    """
    return _tag(datalist_from_class_folders(root, classes=["NORMAL", "PNEUMONIA"], seed=seed), "pneumonia")


def mura_datalist(root: str | os.PathLike, validation_fraction: float = VALIDATION_FRACTION, seed: int = SPLIT_SEED) -> dict[str, Any]:
    """MURA v1.1: ``{train,valid}_image_paths.csv`` list images ``MURA-v1.1/<split>/XR_<PART>/patientN/studyM_<positive|negative>/imageK.png``.

    The label is the study's (``positive`` = abnormal, 1), as in ``*_labeled_studies.csv``. MURA's
    ``valid`` set (its public test) is ``test``; ``validation`` is cut from ``train`` by patient.

    Args:
        root: the folder holding ``MURA-v1.1`` (or ``MURA-v1.1`` itself).
        validation_fraction: share of training patients moved to ``validation``.
        seed: split seed.

    Returns:
        Datalist with ``classes == ["normal", "abnormal"]``; items ``{"image", "label", "body_part", "group"}``.
    """
    root = Path(root).absolute()
    base = root.parent if (root / "train_image_paths.csv").is_file() else root  # paths in the CSV start with MURA-v1.1/
    folder = base / "MURA-v1.1"
    splits: dict[str, list] = {}
    for name, csv_name in (("training", "train_image_paths.csv"), ("test", "valid_image_paths.csv")):
        path = folder / csv_name
        items = []
        for i, row in enumerate(_read_csv(path, header=False), start=1):
            rel = Path(row[0].strip())
            parts = rel.parts
            study = next((p for p in parts if p.startswith("study")), None)
            part = next((p for p in parts if p.startswith("XR_")), None)
            patient = next((p for p in parts if p.startswith("patient")), None)
            if study is None or part is None or patient is None or not study.endswith(("_positive", "_negative")):
                raise BadInputError(f"{path}: row {i} '{row[0]}' is not a MURA image path (XR_<PART>/patient*/study*_<positive|negative>/).")
            items.append({
                "image": _existing(base / rel, path, i),
                "label": int(study.endswith("_positive")),
                "body_part": part[3:].lower(),
                "group": f"{part}/{patient}",
            })
        splits[name] = items
    train = split_by_group(splits["training"], {"training": 1.0, "validation": validation_fraction}, seed)
    return _tag({"classes": ["normal", "abnormal"], **train, "test": splits["test"]}, "mura")


def _mask_union(masks: Sequence[Path], out: Path) -> str:
    from PIL import Image

    arrays = [np.asarray(Image.open(m).convert("L")) > 0 for m in masks]
    if len({a.shape for a in arrays}) != 1:
        raise BadInputError(f"masks {[str(m) for m in masks]} differ in size; they cannot be merged.")
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.logical_or.reduce(arrays).astype(np.uint8) * 255).save(out)
    return str(out)


def lung_mask_datalist(
    images_dir: str | os.PathLike,
    masks_dirs: str | os.PathLike | Sequence[str | os.PathLike],
    merged_dir: str | os.PathLike | None = None,
    dataset: str = "lung_masks",
    seed: int = SPLIT_SEED,
) -> dict[str, Any]:
    """Lung segmentation sets with image and mask folders: Montgomery, Shenzhen, "Chest X-ray Masks and Labels".

    One mask folder: masks pair with images by name (``x.png`` / ``x_mask.png``...; see
    :func:`~medcoss_monai.data.folder_datalists.datalist_from_image_mask_folders`). Several (Montgomery's
    ``ManualMask/leftMask`` and ``rightMask``): an image's masks are merged into one 0/255 PNG in
    ``merged_dir``.

    Args:
        images_dir: folder of images (``CXR_png``).
        masks_dirs: one mask folder or several to merge.
        merged_dir: where merged masks are written (required with several mask folders).
        dataset: the ``dataset`` name of the items.
        seed: split seed.

    Returns:
        Datalist; items ``{"image", "label" (mask path), "dataset"}``.
    """
    dirs = [masks_dirs] if isinstance(masks_dirs, (str, os.PathLike)) else list(masks_dirs)
    if len(dirs) == 1:
        return _tag(datalist_from_image_mask_folders(images_dir, dirs[0], seed=seed), dataset)
    if merged_dir is None:
        raise BadInputError(f"{len(dirs)} mask folders {[str(d) for d in dirs]}: give merged_dir to write their union into.")
    per_folder = [datalist_from_image_mask_folders(images_dir, d, seed=seed) for d in dirs]
    masks = {it["image"]: [it["label"]] for s in ("training", "validation", "test") for it in per_folder[0][s]}
    for other in per_folder[1:]:
        for s in ("training", "validation", "test"):
            for it in other[s]:
                masks[it["image"]].append(it["label"])
    out: dict[str, list] = {}
    for s in ("training", "validation", "test"):  # the same seed gives the same split in every folder
        out[s] = [{"image": it["image"], "label": _mask_union([Path(m) for m in masks[it["image"]]],
                                                             Path(merged_dir) / Path(it["image"]).with_suffix(".png").name)}
                  for it in per_folder[0][s]]
    return _tag(out, dataset)


def _coco_items(path: Path, images_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    try:
        with open(path, encoding="utf-8") as f:
            coco = json.load(f)
        categories = sorted(coco["categories"], key=lambda c: c["id"])
        images = {im["id"]: im["file_name"] for im in coco["images"]}
        annotations = coco.get("annotations", [])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BadInputError(f"{path}: not a COCO annotation file with 'images' and 'categories' ({e}).") from e
    index = {c["id"]: i for i, c in enumerate(categories)}
    items = {i: {"image": _existing(images_dir / name, path, n), "boxes": [], "labels": []}
             for n, (i, name) in enumerate(images.items())}
    for n, ann in enumerate(annotations):
        if ann.get("image_id") not in items or ann.get("category_id") not in index or len(ann.get("bbox", [])) != 4:
            raise BadInputError(f"{path}: annotation {n} names an unknown image or category, or has no 4-value bbox.")
        x, y, w, h = (float(v) for v in ann["bbox"])
        if w <= 0 or h <= 0:
            raise BadInputError(f"{path}: annotation {n} has an empty box {ann['bbox']} (COCO boxes are x, y, w, h).")
        items[ann["image_id"]]["boxes"].append([x, y, x + w, y + h])
        items[ann["image_id"]]["labels"].append(index[ann["category_id"]])
    return list(items.values()), [c["name"] for c in categories]


def tbx11k_datalist(
    root: str | os.PathLike,
    train_json: str = "annotations/json/TBX11K_train.json",
    test_json: str = "annotations/json/TBX11K_val.json",
    validation_fraction: float = VALIDATION_FRACTION,
    seed: int = SPLIT_SEED,
) -> dict[str, Any]:
    """TBX11K tuberculosis boxes: ``root/imgs/<file_name>`` and COCO-style JSON annotations.

    TBX11K's public ``val`` set (its test labels are not public) is ``test``; ``validation`` is cut from train.
    Images without a box (healthy, sick but not TB) keep empty ``boxes`` / ``labels``.

    Args:
        root: the ``TBX11K`` folder.
        train_json: training annotations, relative to ``root``.
        test_json: test annotations, relative to ``root``.
        validation_fraction: share of training images moved to ``validation``.
        seed: split seed.

    Returns:
        Datalist with ``classes`` (the COCO category names in id order); items ``{"image", "boxes", "labels"}``.
    """
    root = Path(root).absolute()
    train, classes = _coco_items(root / train_json, root / "imgs")
    test, test_classes = _coco_items(root / test_json, root / "imgs")
    if test_classes != classes:
        raise BadInputError(f"{root / test_json}: categories {test_classes} differ from {root / train_json}'s {classes}.")
    split = split_by_group(train, {"training": 1.0, "validation": validation_fraction}, seed)
    return _tag({"classes": classes, **split, "test": test}, "tbx11k")


def _find_images(root: Path) -> dict[str, Path]:
    """File name -> path of every PNG under ``root`` (ChestX-ray14 ships ``images_001/images/`` ... ``images_012/``)."""
    return {p.name: p for p in root.rglob("*.png")}


def chestxray14_datalist(root: str | os.PathLike, validation_fraction: float = VALIDATION_FRACTION, seed: int = SPLIT_SEED) -> dict[str, Any]:
    """NIH ChestX-ray14: ``Data_Entry_2017.csv`` (``Image Index``, ``Finding Labels`` joined by ``|``, ``Patient ID``).

    With ``test_list.txt`` in ``root`` its images are ``test`` (the official patient-wise split),
    otherwise patients are split at random; ``validation`` is cut from the rest by patient.

    Args:
        root: folder of the CSV, the lists and the image folders.
        validation_fraction: share of non-test patients in ``validation``.
        seed: split seed.

    Returns:
        Datalist with ``classes`` = :data:`CHESTXRAY14_CLASSES`; items ``{"image", "label" (14 ints), "group"}``.
    """
    root = Path(root).absolute()
    csv_path = root / "Data_Entry_2017.csv"
    rows = _read_csv(csv_path, columns=("Image Index", "Finding Labels", "Patient ID"))
    files = _find_images(root)
    items = []
    for i, row in enumerate(rows, start=2):
        findings = [f.strip() for f in row["Finding Labels"].split("|") if f.strip() and f.strip() != "No Finding"]
        unknown = sorted(set(findings) - set(CHESTXRAY14_CLASSES))
        if unknown:
            raise BadInputError(f"{csv_path}: line {i} has unknown findings {unknown}.")
        if row["Image Index"] not in files:
            raise BadInputError(f"{csv_path}: line {i} names {row['Image Index']}, not found under {root}.")
        items.append({"image": str(files[row["Image Index"]]), "group": f"patient{row['Patient ID']}",
                      "label": [int(c in findings) for c in CHESTXRAY14_CLASSES]})
    test_list = root / "test_list.txt"
    if test_list.is_file():
        names = set(test_list.read_text(encoding="utf-8").split())
        test = [it for it in items if Path(it["image"]).name in names]
        rest = [it for it in items if Path(it["image"]).name not in names]
        split = {**split_by_group(rest, {"training": 1.0, "validation": validation_fraction}, seed), "test": test}
    else:
        split = split_by_group(items, {"training": 1.0, "validation": validation_fraction, "test": TEST_FRACTION}, seed)
    return _tag({"classes": list(CHESTXRAY14_CLASSES), **split}, "chestxray14")


def bone_age_datalist(root: str | os.PathLike, csv_name: str = "boneage-training-dataset.csv", seed: int = SPLIT_SEED) -> dict[str, Any]:
    """RSNA Bone Age: a CSV with ``id``, ``boneage`` (months), ``male`` and images ``<id>.png`` under ``root``.

    Args:
        root: folder of the CSV and the image folder(s).
        csv_name: the CSV's file name.
        seed: split seed (random, one image per child).

    Returns:
        Datalist; items ``{"image", "label" (bone age, months, float), "male" (0/1)}``.
    """
    root = Path(root).absolute()
    csv_path = root / csv_name
    rows = _read_csv(csv_path, columns=("id", "boneage", "male"))
    files = _find_images(root)
    items = []
    for i, row in enumerate(rows, start=2):
        name = f"{row['id'].strip()}.png"
        if name not in files:
            raise BadInputError(f"{csv_path}: line {i} names image {name}, not found under {root}.")
        try:
            age = float(row["boneage"])
        except ValueError as e:
            raise BadInputError(f"{csv_path}: line {i} has bone age '{row['boneage']}', not a number.") from e
        male = str(row["male"]).strip().lower() in ("true", "1", "yes")
        items.append({"image": str(files[name]), "label": age, "male": int(male)})
    split = split_by_group(items, {"training": 1.0, "validation": VALIDATION_FRACTION, "test": TEST_FRACTION}, seed)
    return _tag(split, "bone_age")


def mdmoco_datalist(datalists: Sequence[Mapping[str, Any]], splits: Sequence[str] = ("training",)) -> dict[str, Any]:
    """Pool the images of several datalists for MD-MoCo (step 1), keeping each item's ``dataset``.

    Only ``splits`` (default the training split) are pooled, so no evaluation image is pre-trained on.

    Args:
        datalists: datalists written by the loaders of this module.
        splits: which splits to take.

    Returns:
        ``{"training": [{"image", "dataset"}, ...]}``.
    """
    items = [{"image": it["image"], "dataset": it.get("dataset", "unnamed")} for d in datalists for s in splits for it in d.get(s, [])]
    if not items:
        raise BadInputError("no training image in the given datalists.")
    return {"training": items}
