"""3D sets distributed as NIfTI files: LiTS (segmentation) and ADNI (MedCoSS MRI pre-training; BrainMVP's
AD-versus-CN classification with the IDA collection's CSV).

LiTS as published (CodaLab, the two training batches): ``volume-N.nii`` and ``segmentation-N.nii``
(N = 0..130; labels 0 background, 1 liver, 2 tumour), in ``Training Batch 1/`` and ``Training Batch 2/``
or all in one folder (``.nii.gz`` accepted too). The test split is the reference's
(``yeerwen/MedCoSS`` ``Downstream/Dim_3/MOTS/data_list/0Liver/0Liver_test.txt``: ``liver_N`` is
``volume-N``); a seeded share of the other volumes validates, the rest trains.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

from medcoss_monai.data.prepare.common import DEFAULT_FRACTIONS, PrepareContext, find_file, paired_item, seeded_split
from medcoss_monai.errors import BadInputError

__all__ = ["ADNI_CLASSES", "LITS_TEST", "LITS_CLASSES", "convert_lits", "convert_adni", "convert_adni_cls"]

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
        item = paired_item(ctx, volume, seg, _header_shape, f"volume-{n}", unit="shape")
        if item is not None:
            items.append(item)
    test_ids = {f"volume-{n}" for n in LITS_TEST}
    rest = [it for it in items if it["id"] not in test_ids]
    splits, record = seeded_split(rest, {"validation": LITS_VALIDATION}, ctx.seed)
    record["test"] = "reference: yeerwen/MedCoSS Downstream/Dim_3/MOTS/data_list/0Liver/0Liver_test.txt"
    return {"classes": list(LITS_CLASSES), "training": splits["training"], "validation": splits["validation"],
            "test": [it for it in items if it["id"] in test_ids], "split": record}


ADNI_IMAGE_ID = re.compile(r"^I\d+$")


ADNI_CLASSES = ["CN", "AD"]
"""BrainMVP's ADNI classes: cognitively normal (0) and Alzheimer's disease (1), by the subject's research group."""
_ADNI_SHEET_COLUMNS = ("Image Data ID", "Subject", "Group")


def _adni_scans(ctx: PrepareContext) -> list[dict[str, Any]]:
    """Every NIfTI at ``<subject>/<description>/<date>/<image id>/`` whose header reads; others are reported."""
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
    return items


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
    splits, record = seeded_split(_adni_scans(ctx), DEFAULT_FRACTIONS, ctx.seed, group=lambda it: it["group"])
    return {**splits, "split": record}


def _adni_groups(ctx: PrepareContext) -> tuple[Path, dict[str, str]]:
    """The IDA collection CSV under ``--root`` (at most one folder down) and its image ID -> research group."""
    sheets = sorted(ctx.root.glob("*.csv")) + sorted(ctx.root.glob("*/*.csv"))
    for sheet in sheets:
        with open(sheet, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if not set(_ADNI_SHEET_COLUMNS) <= set(reader.fieldnames or ()):
                continue
            # the IDA writes image IDs with or without their "I"
            return sheet, {"I" + row["Image Data ID"].strip().lstrip("I"): row["Group"].strip() for row in reader}
    raise BadInputError(f"no IDA collection CSV (columns {', '.join(_ADNI_SHEET_COLUMNS)}) under {ctx.root}: download "
                        "it from the collection's page of the LONI IDA (CSV button) and put it beside the ADNI folder.")


def convert_adni_cls(ctx: PrepareContext) -> dict[str, Any]:
    """ADNI scans labelled by their subject's research group for BrainMVP's classification: CN (0) against AD (1).

    The scans are found as for :func:`convert_adni`; the group of each comes from the IDA collection's CSV
    (``Image Data ID``, ``Subject``, ``Group``) beside the ``ADNI`` folder. Scans of the other groups (MCI, EMCI,
    LMCI, SMC) are counted under ``filtered``; a scan missing from the CSV is reported. Every scan of a subject
    is kept, and subjects are split with the seed, per class (BrainMVP publishes no ADNI selection or split).

    Args:
        ctx: the run's context (``--root``: the folder holding ``ADNI/`` and the collection CSV).

    Returns:
        The datalist of studies ``{"image": {"t1": scan}, "label", "study", "group": "adni:<subject>", "diagnosis",
        "ida_id"}`` with ``classes``.
    """
    sheet, groups = _adni_groups(ctx)
    studies, other = [], 0
    for scan in _adni_scans(ctx):
        diagnosis = groups.get(scan["ida_id"])
        if diagnosis is None:
            ctx.bad(scan["image"], f"image {scan['ida_id']} has no row in {sheet}")
        elif diagnosis not in ADNI_CLASSES:
            other += 1
        else:
            studies.append({"image": {"t1": scan["image"]}, "label": ADNI_CLASSES.index(diagnosis),
                            "study": f"adni_{scan['ida_id']}", "group": scan["group"], "diagnosis": diagnosis,
                            "ida_id": scan["ida_id"]})
    splits, record = seeded_split(studies, DEFAULT_FRACTIONS, ctx.seed, group=lambda s: s["group"], stratify=lambda s: s["label"])
    record["reference"] = "none published: BrainMVP's ADNI selection and split are not in its repository"
    return {"classes": list(ADNI_CLASSES), **splits, "split": record,
            "filtered": {"scans of other research groups (MCI, EMCI, LMCI, SMC)": other}}
