"""Datalists from the layouts users' datasets come in, and label checks before fine-tuning.

Loaders for the formats of the paper datasets: :func:`datalist_from_class_folders` (ChestXR,
NCT-CRC-HE), :func:`datalist_from_image_mask_folders` (QaTa-COV19, GlaS) and
:func:`datalist_from_labelled_sentences` (PubMed 20k RCT); :func:`split_items` splits items at random
with a seed; :func:`check_task_labels` checks labels and masks before training.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import partition_dataset

from medcoss_monai.data.checks import BadInputError

__all__ = [
    "IMAGE_SUFFIXES",
    "split_items",
    "datalist_from_class_folders",
    "datalist_from_image_mask_folders",
    "datalist_from_labelled_sentences",
    "check_task_labels",
    "label_problems",
]

SPLIT_SEED = 0
VALIDATION_FRACTION, TEST_FRACTION = 0.1, 0.3
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_MASK_MARKERS = ("mask_", "_mask", "_anno", "_label", "_seg", "_gt")


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
    n_test = int(round(test_fraction * len(items)))
    n_val = int(round(validation_fraction * len(items)))
    if not items:
        return {"training": [], "validation": [], "test": []}
    # ratios given as counts, so partition_dataset's own rounding keeps them exact
    test, validation, training = partition_dataset(
        list(items), ratios=[n_test, n_val, len(items) - n_test - n_val], shuffle=True, seed=seed
    )
    return {"training": training, "validation": validation, "test": test}


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


def label_problems(
    item: dict[str, Any],
    num_classes: int,
    image_key: str = "image",
    label_key: str = "label",
    mask_values: Sequence[int] | None = None,
    spacing_tol: float = 1e-3,
) -> list[str]:
    """What is wrong with one task item's label (empty when nothing is).

    - class labels (an int, or a list of ``num_classes`` 0/1 for multi-label) must lie in
      ``[0, num_classes)``;
    - a mask file must have its image's spatial shape and spacing (read from the headers) and hold only
      values in ``[0, num_classes)`` (or in ``mask_values``, e.g. ``[0, 255]`` for 8-bit PNG masks).

    Args:
        item: a datalist item.
        num_classes: the number of classes (segmentation: including background).
        image_key: key of the image path (used for masks).
        label_key: key of the label.
        mask_values: allowed mask values, default ``range(num_classes)``.
        spacing_tol: relative spacing tolerance.

    Returns:
        One message per problem, naming the file or item.
    """
    allowed = set(int(v) for v in (mask_values if mask_values is not None else range(num_classes)))
    where = item.get(image_key, item.get("id", "item"))
    if label_key not in item:
        return [f"{where}: no '{label_key}'"]
    label = item[label_key]
    if isinstance(label, bool) or isinstance(label, (int, np.integer)):
        if not 0 <= int(label) < num_classes:
            return [f"{where}: label {label} is outside the class list (0..{num_classes - 1})"]
        return []
    if isinstance(label, (list, tuple)):
        if len(label) != num_classes or any(v not in (0, 1) for v in label):
            return [f"{where}: multi-label {list(label)} is not {num_classes} values of 0/1"]
        return []
    if not isinstance(label, (str, os.PathLike)):
        return [f"{where}: label of type {type(label).__name__} is not a class index, list or mask path"]
    mask = str(label)
    if not os.path.isfile(mask):
        return [f"{mask}: mask file not found"]
    if image_key not in item:
        return [f"{mask}: the item has no '{image_key}' to check the mask against"]
    try:
        m_shape, m_spacing = _header(mask)
        i_shape, i_spacing = _header(str(item[image_key]))
    except Exception as e:  # any header reader failure: name the file
        return [f"{mask}: cannot read header ({e.__class__.__name__}: {e})"]
    if m_shape != i_shape:
        return [f"{mask}: mask shape {m_shape} differs from image {item[image_key]} shape {i_shape}"]
    if m_spacing and i_spacing and not np.allclose(m_spacing, i_spacing, rtol=spacing_tol):
        return [f"{mask}: mask spacing {m_spacing} differs from image {item[image_key]} spacing {i_spacing}"]
    bad = sorted(set(int(v) for v in _mask_values(mask)) - allowed)
    if bad:
        return [f"{mask}: mask values {bad[:10]} are outside the allowed values {sorted(allowed)[:10]}"]
    return []


def check_task_labels(
    items: Sequence[dict[str, Any]],
    num_classes: int,
    image_key: str = "image",
    label_key: str = "label",
    mask_values: Sequence[int] | None = None,
    spacing_tol: float = 1e-3,
) -> None:
    """Check the labels of a task datalist before training; all problems are reported together.

    See :func:`label_problems` for what is checked.

    Args:
        items: datalist items.
        num_classes, image_key, label_key, mask_values, spacing_tol: see :func:`label_problems`.

    Raises:
        BadInputError: naming each bad file or item and the problem.
    """
    problems = [
        p for item in items for p in label_problems(item, num_classes, image_key, label_key, mask_values, spacing_tol)
    ]
    if problems:
        raise BadInputError(f"{len(problems)} label problem(s):\n" + "\n".join(f"  {p}" for p in problems))
