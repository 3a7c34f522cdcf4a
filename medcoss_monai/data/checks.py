"""Checks a stage's datalist before training, so bad files fail in seconds, not hours in."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from medcoss_monai.errors import BadInputError
from medcoss_monai.transforms.tissue import is_slide
from medcoss_monai.utils import atomic_write_json, is_rank0

__all__ = ["BadInputError", "check_datalist", "item_problems", "EXPECTED_SPATIAL_DIMS"]

EXPECTED_SPATIAL_DIMS = {"xray": 2, "pathology": 2, "ct": 3, "mri": 3}
"""Spatial dimensionality each image modality must have."""



VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
"""Formats whose third axis is spatial, however short."""


def _spatial_dims_of(path: str, problems: list[str] | None = None) -> int:
    """Load an image the way the stage will and return its spatial dimensionality.

    Content problems a reader does not raise for (a constant image) are appended to ``problems``.
    """
    from monai.transforms import LoadImage

    lower = path.lower()
    if is_slide(path):
        from monai.data import WSIReader

        reader = WSIReader(backend="openslide")
        wsi = reader.read(path)
        # a slide is 2D; reading its smallest level decodes real pixels, catching broken files
        level = reader.get_level_count(wsi) - 1
        patch, _ = reader.get_data(wsi, level=level)
        if np.asarray(patch).size == 0:
            raise ValueError("slide has no pixels")
        return 2
    if os.path.isdir(path):
        img = LoadImage(image_only=True, reader="ITKReader")(path)  # a DICOM series folder
    elif lower.endswith((".dcm", ".dicom")) or _is_dicom(path):
        img = LoadImage(image_only=True, reader="PydicomReader")(path)
    else:
        img = LoadImage(image_only=True)(path)
    shape = [s for s in img.shape]
    values = np.asarray(img, dtype=np.float32)
    if values.size == 0:
        raise ValueError("image has no pixels")
    if not np.isfinite(values).all():
        raise ValueError("image holds NaN or infinite values")
    if problems is not None and values.min() == values.max():
        # normalised to patch-wise zero variance, a constant image gives the pretext nothing to learn
        problems.append(f"{path}: image is constant (every value is {float(values.flat[0]):g})")
    if lower.endswith((".png", ".jpg", ".jpeg", ".bmp")):
        return 2
    # drop singleton trailing dims (single-frame DICOM, NIfTI with a time axis of 1) and RGB channels
    while len(shape) > 2 and shape[-1] == 1:
        shape = shape[:-1]
    # an RGB(A) tile (TIFF...) has 3 or 4 trailing channels; a volume of 3 or 4 slices does not
    if len(shape) == 3 and shape[-1] in (3, 4) and min(shape[:2]) > 4 and not lower.endswith(VOLUME_SUFFIXES):
        shape = shape[:-1]
    return len(shape)


def _is_dicom(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _text_problems(text: Any, where: str) -> list[str]:
    if not isinstance(text, str) or not text.strip():
        return [f"{where} is empty"]
    # anonymised reports can be placeholders only ("XXXX."): no word left to mask and predict
    if not re.search(r"[A-Za-z0-9]", re.sub(r"X{2,}", "", text)):
        return [f"{where} has no words ({text.strip()[:40]!r})"]
    return []


def item_problems(
    item: dict, image_keys: Sequence[str] = ("image",), expected_dims: int | None = None, text_key: str = "text"
) -> list[str]:
    """What is wrong with one datalist item (empty when nothing is).

    A report item needs non-empty text (``text``, or a readable ``text_file``); an image item needs its
    first image key, and every file it names must open with the stage's reader, hold finite values and
    have the stage's dimensionality; the image must not be constant.

    Args:
        item: the datalist item.
        image_keys: keys holding file paths; the first is the image (required, dimensionality checked).
        expected_dims: spatial dimensionality the image must have, or None for any.
        text_key: key holding inline report text.

    Returns:
        One message per problem, naming the file or the key.
    """
    if not isinstance(item, dict):
        return [f"item is a {type(item).__name__}, not a dict of keys"]
    if text_key in item:
        return _text_problems(item[text_key], f"'{text_key}'")
    if "text_file" in item:
        p = Path(item["text_file"])
        if not p.is_file():
            return [f"{p}: file not found"]
        try:
            return _text_problems(p.read_text(encoding="utf-8", errors="strict"), f"{p}: report file")
        except (OSError, UnicodeDecodeError) as e:
            return [f"{p}: unreadable ({e.__class__.__name__}: {e})"]
    if image_keys[0] not in item:
        return [f"item has no '{image_keys[0]}' key (nor '{text_key}' / 'text_file'); its keys: {sorted(map(str, item))}"]
    problems: list[str] = []
    for key in [k for k in image_keys if k in item]:
        path = str(item[key])
        if not os.path.exists(path):
            problems.append(f"{path}: file not found ('{key}')")
            continue
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            problems.append(f"{path}: file is empty")
            continue
        is_image = key == image_keys[0]
        try:
            dims = _spatial_dims_of(path, problems if is_image else None)
        except Exception as e:  # any reader failure means the stage could not read it either
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            problems.append(f"{path}: unreadable or corrupt ({e.__class__.__name__}: {msg[:200]})")
            continue
        if expected_dims is not None and is_image and dims != expected_dims:
            problems.append(f"{path}: has {dims} spatial dimensions, this stage needs {expected_dims}")
    return problems


def check_datalist(
    items: Sequence[dict[str, Any]],
    modality: str,
    datalist_path: str | os.PathLike | None = None,
    skip_bad_inputs: bool = False,
    rejected_path: str | os.PathLike | None = None,
    image_keys: Sequence[str] = ("image", "label"),
    text_key: str = "text",
    num_workers: int = 2,
    check: Callable[[dict], list[str]] | None = None,
) -> list[dict[str, Any]]:
    """Check every item of a datalist and stop, or drop the bad ones, before training.

    Each file is opened with the reader the stage will use, so missing, empty, unreadable and corrupt
    files and the wrong dimensionality (a 3D volume in a 2D stage...) are all found, and reported
    together, one line per file with its reason.

    Args:
        items: the datalist items.
        modality: the stage's modality (sets the expected dimensionality).
        datalist_path: where the items came from, named in messages.
        skip_bad_inputs: drop bad items instead of stopping; they are written to ``rejected_path``.
        rejected_path: JSON file listing rejected items with reasons (``rejected_inputs.json``).
        image_keys: keys holding file paths; the first is the image whose dimensionality is checked.
        text_key: key holding inline report text.
        num_workers: threads reading files.
        check: optional replacement of the per-item check (returns a list of problems).

    Returns:
        The good items, in their original order.

    Raises:
        BadInputError: when the datalist is empty, or when items are bad and ``skip_bad_inputs`` is False,
            or when no item is left after dropping.
    """
    source = f" in {datalist_path}" if datalist_path else ""
    if len(items) == 0:
        raise BadInputError(
            f"The '{modality}' datalist{source} has no items: add items under its 'training' key "
            "or point --dataset_dir at another datalist."
        )
    expected = EXPECTED_SPATIAL_DIMS.get(modality)
    check_fn = check or (lambda it: item_problems(it, tuple(image_keys), expected, text_key))
    # report datalists are thousands of inline texts: checking them in-thread is faster than a pool
    if all(isinstance(it, dict) and text_key in it for it in items):
        results = [check_fn(it) for it in items]
    else:
        with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
            results = list(pool.map(check_fn, items))
    bad = [(i, it, probs) for i, (it, probs) in enumerate(zip(items, results)) if probs]
    if not bad:
        return list(items)
    lines = [f"  item {i}: {p}" for i, _, probs in bad for p in probs]
    summary = f"{len(bad)} of {len(items)} '{modality}' datalist items{source} cannot be used:\n" + "\n".join(lines)
    if not skip_bad_inputs:
        raise BadInputError(summary + "\nFix or remove them, or rerun with --skip_bad_inputs true to drop them.")
    good = [it for it, probs in zip(items, results) if not probs]
    if rejected_path is not None and is_rank0():
        atomic_write_json(
            {"datalist": str(datalist_path) if datalist_path else None, "modality": modality,
             "rejected": [{"index": i, "item": it, "reasons": probs} for i, it, probs in bad]},
            rejected_path,
        )
    logging.getLogger(__name__).warning(summary + f"\nDropped them (--skip_bad_inputs); list in {rejected_path}.")
    if not good:
        raise BadInputError(f"No usable item is left in the '{modality}' datalist{source} after dropping bad ones.")
    return good
