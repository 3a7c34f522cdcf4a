"""Downstream X-ray sets of MedCoSS: ChestXR (classification) and QaTa-COV19 v2 (segmentation).

Layouts as published:

- ChestXR (cxr-covid19 grand challenge): ``train/{covid,normal,pneumonia}/`` and
  ``validation/{covid,normal,pneumonia}/`` (the challenge's validation release, which the reference tests on);
- QaTa-COV19 v2 (Kaggle): ``QaTa-COV19-v2/{Train Set,Test Set}/Images/<name>.png`` with
  ``Ground-truths/mask_<name>.png`` (0 / 255).

Splits follow the reference (``yeerwen/MedCoSS`` ``Downstream/Dim_2``, ``Preprocess/QaTav2.py``): ChestXR
trains on the first 80% of each class's sorted ``train`` files and validates on the rest; QaTa keeps its
Test Set and draws 20% of the Train Set to validate (the reference shuffles a directory listing; here the
draw is seeded and recorded).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medcoss_monai.data.prepare.common import (
    PrepareContext,
    class_folders_datalist,
    find_file,
    paired_item,
    seeded_split,
)

__all__ = ["CHESTXR_CLASSES", "convert_chestxr", "convert_qata_cov19"]

CHESTXR_CLASSES = ("covid", "normal", "pneumonia")
"""ChestXR classes in the reference's label order."""
TRAIN_SHARE = 0.8
QATA_VALIDATION = 0.2
"""Share of QaTa's Train Set that validates (the reference's 80 / 20)."""
_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def convert_chestxr(ctx: PrepareContext) -> dict[str, Any]:
    """ChestXR -> class items: ``train`` split per class 80 / 20, the challenge's ``validation`` release tests.

    Args:
        ctx: the run's context (``--root`` holds ``train/`` and ``validation/``).

    Returns:
        The datalist with ``classes``; items ``{"image", "label": class index}``.
    """
    train_dir = find_file(ctx.root, "train", ctx.title)
    test_dir = find_file(train_dir.parent, "validation", ctx.title, depth=0)
    return class_folders_datalist(
        train_dir, test_dir, CHESTXR_CLASSES, ctx, _SUFFIXES, TRAIN_SHARE,
        "first 80% of each class's sorted train/ files train, the rest validate; "
        "validation/ tests (yeerwen/MedCoSS Downstream/Dim_2/Chest_XR)",
    )


def _picture_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header."""
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def _qata_pairs(release: Path, ctx: PrepareContext) -> list[dict[str, Any]]:
    """Image / mask items of one QaTa release folder; a missing or differently sized mask is reported."""
    items = []
    for image in sorted((release / "Images").glob("*")):
        if image.suffix.lower() not in _SUFFIXES:
            continue
        mask = release / "Ground-truths" / f"mask_{image.name}"
        if not mask.is_file():
            ctx.bad(image, f"no Ground-truths/{mask.name}")
            continue
        item = paired_item(ctx, image, mask, _picture_size, image.stem)
        if item is not None:
            items.append(item)
    return items


def convert_qata_cov19(ctx: PrepareContext) -> dict[str, Any]:
    """QaTa-COV19 v2 -> image / mask items (masks 0 / 255: ``mask_values`` ``[0, 255]``).

    Args:
        ctx: the run's context (``--root`` holds ``Train Set/`` and ``Test Set/``, or one folder down).

    Returns:
        The datalist with ``classes`` and ``mask_values``.
    """
    train = find_file(ctx.root, "Train Set", ctx.title)
    test = find_file(train.parent, "Test Set", ctx.title, depth=0)
    splits, record = seeded_split(_qata_pairs(train, ctx), {"validation": QATA_VALIDATION}, ctx.seed)
    record["test"] = "Test Set (official)"
    return {"classes": ["background", "infection"], "mask_values": [0, 255], "training": splits["training"],
            "validation": splits["validation"], "test": _qata_pairs(test, ctx), "split": record}
