"""3D sets distributed as NIfTI files: LiTS (segmentation) and ADNI (MedCoSS MRI pre-training).

LiTS as published (CodaLab, the two training batches): ``volume-N.nii`` and ``segmentation-N.nii``
(N = 0..130; labels 0 background, 1 liver, 2 tumour), in ``Training Batch 1/`` and ``Training Batch 2/``
or all in one folder (``.nii.gz`` accepted too). The test split is the reference's
(``yeerwen/MedCoSS`` ``Downstream/Dim_3/MOTS/data_list/0Liver/0Liver_test.txt``: ``liver_N`` is
``volume-N``); a seeded share of the other volumes validates, the rest trains.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from medcoss_monai.data.prepare.common import DEFAULT_FRACTIONS, PrepareContext, find_file, seeded_split

__all__ = ["LITS_TEST", "LITS_CLASSES", "convert_lits", "convert_adni"]

LITS_TEST = (0, 4, 9, 13, 17, 21, 26, 30, 35, 44, 49, 53, 58, 62, 67, 71, 76, 80, 85, 94, 99, 102, 107, 111, 116, 120, 125)
"""LiTS volumes the reference tests on (the 27 ``liver_N`` of its MOTS test list)."""
LITS_CLASSES = ("background", "liver", "tumour")
LITS_VALIDATION = 0.1
"""Share of the non-test volumes, drawn with the seed, that validates (the reference has no validation set)."""
_NAME = re.compile(r"^(volume|segmentation)-(\d+)\.nii(\.gz)?$")


def _header_shape(path: Path) -> tuple[int, ...]:
    import nibabel as nib

    return tuple(int(s) for s in nib.load(str(path)).shape[:3])


def convert_lits(ctx: PrepareContext) -> dict[str, Any]:
    """LiTS -> image / label items; the headers of each pair are checked to agree.

    Args:
        ctx: the run's context.

    Returns:
        The datalist with ``classes``; items ``{"image", "label", "id": "volume-N"}``.
    """
    find_file(ctx.root, ["volume-*.nii", "volume-*.nii.gz"], ctx.title, depth=2)
    files: dict[str, dict[int, Path]] = {"volume": {}, "segmentation": {}}
    for path in sorted(ctx.root.rglob("*.nii*")):
        m = _NAME.match(path.name)
        if m:
            files[m.group(1)].setdefault(int(m.group(2)), path)
    items = []
    for n, volume in sorted(files["volume"].items()):
        seg = files["segmentation"].get(n)
        if seg is None:
            ctx.bad(volume, f"no segmentation-{n}.nii beside it")
            continue
        try:
            shapes = _header_shape(volume), _header_shape(seg)
        except Exception as e:  # nibabel raises several types for broken headers
            ctx.bad(volume, f"unreadable NIfTI header ({e.__class__.__name__}: {e})")
            continue
        if shapes[0] != shapes[1]:
            ctx.bad(seg, f"shape {shapes[1]} differs from volume-{n} shape {shapes[0]}")
            continue
        items.append({"image": str(volume), "label": str(seg), "id": f"volume-{n}"})
    test_ids = {f"volume-{n}" for n in LITS_TEST}
    rest = [it for it in items if it["id"] not in test_ids]
    splits, record = seeded_split(rest, {"validation": LITS_VALIDATION}, ctx.seed)
    record["test"] = "reference: yeerwen/MedCoSS Downstream/Dim_3/MOTS/data_list/0Liver/0Liver_test.txt"
    return {"classes": list(LITS_CLASSES), "training": splits["training"], "validation": splits["validation"],
            "test": [it for it in items if it["id"] in test_ids], "split": record}


ADNI_IMAGE_ID = re.compile(r"^I\d+$")


def convert_adni(ctx: PrepareContext) -> dict[str, Any]:
    """ADNI NIfTI as the LONI IDA exports it -> MRI items, split by subject with the seed.

    Layout: ``ADNI/<subject>/<description>/<date>/<image id>/ADNI_<subject>_MR_..._<image id>.nii``
    (``002_S_0295/MPRAGE/2006-04-18_08_20_30.0/I40966/...``). ADNI has no official split, so subjects are
    drawn with the seed (all scans of one subject in one split). Each file's header is read, so a
    truncated download is listed. MedCoSS then resizes and cuts sub-volumes; here that is left to the
    MRI stage's transforms.

    Args:
        ctx: the run's context (``--root``: the ``ADNI`` folder or the one holding it).

    Returns:
        The datalist; items ``{"image", "group": "adni:<subject>", "description", "date", "ida_id"}``
        (the IDA image ID; not ``image_id``: MONAI's ``Spacingd`` takes ``image_*`` entries for the image's meta data).
    """
    first = find_file(ctx.root, ["*_S_*/*/*/I*/*.nii", "*_S_*/*/*/I*/*.nii.gz"], ctx.title)
    base = first.parents[4]
    items = []
    for path in sorted(p for p in base.rglob("*.nii*") if p.name.endswith((".nii", ".nii.gz"))):
        parts = path.relative_to(base).parts
        if len(parts) != 5 or "_S_" not in parts[0] or not ADNI_IMAGE_ID.match(parts[3]):
            ctx.bad(path, "not at <subject>/<description>/<date>/<image id>/<file>.nii")
            continue
        try:
            _header_shape(path)
        except Exception as e:  # nibabel raises several types for broken headers
            ctx.bad(path, f"unreadable NIfTI header ({e.__class__.__name__}: {e})")
            continue
        items.append({"image": str(path), "group": f"adni:{parts[0]}", "description": parts[1], "date": parts[2],
                      "ida_id": parts[3]})
    splits, record = seeded_split(items, DEFAULT_FRACTIONS, ctx.seed, group=lambda it: it["group"])
    return {**splits, "split": record}
