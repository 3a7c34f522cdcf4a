"""Pathology tile sets: NCT-CRC-HE-100K with CRC-VAL-HE-7K (classification) and GlaS (segmentation).

Layouts as published:

- NCT-CRC-HE (Zenodo 1214456): ``NCT-CRC-HE-100K/<class>/<CLASS>-<id>.tif`` and
  ``CRC-VAL-HE-7K/<class>/...``, nine classes ``ADI BACK DEB LYM MUC MUS NORM STR TUM``;
- GlaS (Warwick QU): one folder with ``train_N.bmp`` / ``train_N_anno.bmp``, ``testA_N``, ``testB_N``
  and ``Grade.csv`` (``name, patient ID, grade (GlaS), ...``); annotations number each gland.

Splits follow the reference (``yeerwen/MedCoSS`` ``Downstream/Dim_2``): NCT-CRC-HE trains on the first
80% of each class's sorted files of NCT-CRC-HE-100K, validates on the rest and tests on CRC-VAL-HE-7K;
GlaS trains on the first 80% of the sorted training images of each grade, validates on the rest and
tests on testA + testB. GlaS masks are written binary (gland 1, background 0) into ``--cache_dir``,
as the reference binarises them.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from medcoss_monai.data.prepare.common import PrepareContext, cached_map, class_folders_datalist, find_file, head_tail
from medcoss_monai.utils import atomic_write_bytes

__all__ = ["NCT_CLASSES", "TRAIN_SHARE", "convert_nct_crc_he", "binary_mask", "convert_glas"]

NCT_CLASSES = ("ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM")
"""The tissue classes in the reference's label order."""
TRAIN_SHARE = 0.8
"""Share of each class (NCT-CRC-HE) or grade (GlaS) the reference trains on; the rest validates."""
_IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg")


def convert_nct_crc_he(ctx: PrepareContext) -> dict[str, Any]:
    """NCT-CRC-HE-100K (training, validation) + CRC-VAL-HE-7K (test) -> class items.

    Args:
        ctx: the run's context (``--root`` holds both release folders).

    Returns:
        The datalist with ``classes``; items ``{"image", "label": class index}``.
    """
    train_dir = find_file(ctx.root, "NCT-CRC-HE-100K", ctx.title)
    test_dir = find_file(ctx.root, "CRC-VAL-HE-7K", ctx.title)
    return class_folders_datalist(
        train_dir, test_dir, NCT_CLASSES, ctx, _IMAGE_SUFFIXES, TRAIN_SHARE,
        "first 80% of each class's sorted NCT-CRC-HE-100K files train, the rest "
        "validate; CRC-VAL-HE-7K tests (yeerwen/MedCoSS Downstream/Dim_2/NCT_CRC_HE)",
    )


def binary_mask(anno: str, out: Path) -> None:
    """Write a GlaS annotation (glands numbered 1..N) as an 8-bit PNG of 0 / 1, atomically.

    Args:
        anno: the ``*_anno.bmp`` file.
        out: the PNG to write.
    """
    import io

    from PIL import Image

    with Image.open(anno) as im:
        mask = (np.asarray(im) > 0).astype(np.uint8)
    if mask.ndim == 3:  # an RGB-saved annotation: any non-black pixel is gland
        mask = mask.max(axis=-1)
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, format="PNG")
    atomic_write_bytes(buf.getvalue(), out)


def convert_glas(ctx: PrepareContext) -> dict[str, Any]:
    """GlaS -> image / binary-mask items with the reference's split; masks go to ``<cache_dir>/glas_masks``.

    Args:
        ctx: the run's context (``--root`` holds ``Grade.csv`` and the BMP files, or one folder down).

    Returns:
        The datalist with ``classes``; items ``{"image", "label": mask PNG, "grade"}``.
    """
    grade_csv = find_file(ctx.root, "Grade.csv", ctx.title)
    base = grade_csv.parent
    with open(grade_csv, newline="", encoding="utf-8-sig") as f:
        rows = [[c.strip() for c in r] for r in csv.reader(f) if r]
    grades = {r[0]: r[2] for r in rows[1:] if len(r) > 2}
    masks_dir = ctx.cache() / "glas_masks"
    items, jobs = [], []
    for name in sorted(grades):
        image, anno = base / f"{name}.bmp", base / f"{name}_anno.bmp"
        missing = [p.name for p in (image, anno) if not p.is_file()]
        if missing:
            ctx.bad(base / name, f"{' and '.join(missing)} missing (listed in {grade_csv.name})")
            continue
        out = masks_dir / f"{name}.png"
        jobs.append(((str(anno),), out))
        items.append({"image": str(image), "label": str(out), "grade": grades[name], "id": name})
    failures, _ = cached_map(binary_mask, jobs, ctx.workers, desc="GlaS masks", progress=ctx.progress)
    for out, reason in failures.items():
        ctx.bad(base / f"{out.stem}_anno.bmp", reason)
    items = [it for it in items if Path(it["label"]) not in failures]
    datalist: dict[str, Any] = {"classes": ["background", "gland"], "training": [], "validation": [], "test": []}
    for grade in sorted({it["grade"] for it in items}):
        train = [it for it in items if it["id"].startswith("train") and it["grade"] == grade]
        head, tail = head_tail(train, TRAIN_SHARE)  # names sorted as strings, as the reference sorts them
        datalist["training"] += head
        datalist["validation"] += tail
    datalist["test"] = [it for it in items if it["id"].startswith("test")]
    datalist["split"] = {"reference": "first 80% of each grade's sorted train_* images train, the rest validate; "
                                      "testA and testB test (yeerwen/MedCoSS Downstream/Dim_2/Glas)"}
    return datalist
