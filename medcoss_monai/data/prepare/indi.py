"""The INDI (fcon_1000) brain-MRI classification sets of BrainMVP's downstream table: ABIDE-I and ADHD-200.

Both releases lay out the raw scans per site and subject, as INDI (NITRC, and its S3 mirror
``fcp-indi/data/Projects/<project>/RawData``) distributes them::

    <Site>/<subject id, 7 digits>/session_1/anat_1/mprage.nii.gz   (and rest_1/rest.nii.gz, not used)

- ABIDE-I: ``Phenotypic_V1_0b.csv`` beside the site folders (``SUB_ID``, ``SITE_ID``, ``DX_GROUP``:
  1 autism, 2 control);
- ADHD-200: one ``<Site>_phenotypic.csv`` in each site folder (``ScanDir ID``, ``Site``, ``DX``: 0 typically
  developing, 1 ADHD combined, 2 hyperactive / impulsive, 3 inattentive; the test release's undisclosed
  diagnoses are not numbers).

Items are studies as the other BrainMVP sets (``{"image": {"t1": scan}, "label": 0 / 1, "study", "group"}``)
with the site (its folder) and the raw diagnosis. BrainMVP's repository publishes neither its selection of scans, its
preprocessing nor its split: every labelled subject with an anatomical scan is kept and split at random by
subject with the seed (recorded under ``split``).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from medcoss_monai.data.prepare.common import DEFAULT_FRACTIONS, PrepareContext, find_file, seeded_split

__all__ = ["ABIDE_CLASSES", "ADHD200_CLASSES", "anatomical_scan", "convert_abide", "convert_adhd200"]

ABIDE_CLASSES = ["control", "autism"]
ADHD200_CLASSES = ["typically developing", "ADHD"]
_NO_SPLIT = "none published: BrainMVP's scan selection and split are not in its repository"


def anatomical_scan(subject: Path) -> Path | None:
    """The subject's first anatomical scan: ``session_1/anat_1/mprage.nii.gz``, else the first NIfTI of an
    ``anat_*`` folder of its first session that has one (some sites name the file otherwise)."""
    preferred = subject / "session_1" / "anat_1" / "mprage.nii.gz"
    if preferred.is_file():
        return preferred
    found = sorted(subject.glob("session_*/anat_*/*.nii.gz")) + sorted(subject.glob("session_*/anat_*/*.nii"))
    return found[0] if found else None


def _read_rows(path: Path) -> list[dict[str, str]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:  # some INDI sheets are Latin-1
        text = path.read_text(encoding="latin-1")
    return [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in csv.DictReader(text.splitlines())]


def _as_int(value: str) -> int | None:
    try:
        return int(float(value))
    except ValueError:
        return None


def _studies(
    ctx: PrepareContext, base: Path, labels: dict[int, tuple[int, dict[str, Any]]], tag: str, unlabelled: set[int]
) -> dict[str, Any]:
    """Studies of the subject folders under ``base/<site>/`` labelled from ``labels`` (id -> (label, extra keys));
    subjects of ``unlabelled`` are left out silently, others without a label are reported."""
    studies, seen = [], set()
    for subject in sorted(p for p in base.glob("*/*") if p.is_dir() and p.name.isdigit()):
        sid = int(subject.name)
        scan = anatomical_scan(subject)
        if scan is None:
            continue  # a functional-only subject: nothing to classify from
        if sid in unlabelled:
            continue
        if sid not in labels:
            ctx.bad(subject, "no row for this subject in the phenotypic sheet")
            continue
        label, extra = labels[sid]
        seen.add(sid)
        studies.append({"image": {"t1": str(scan)}, "label": label, "study": f"{tag}_{subject.name}",
                        "group": f"{tag}:{sid}", "site": subject.parent.name, **extra})
    # per class: each split holds both diagnoses (the validation AUC that picks the epoch needs two)
    splits, record = seeded_split(studies, DEFAULT_FRACTIONS, ctx.seed, group=lambda s: s["group"], stratify=lambda s: s["label"])
    record["reference"] = _NO_SPLIT
    return {**splits, "split": record, "filtered": {"labelled subjects without an anatomical scan": len(set(labels) - seen)}}


def convert_abide(ctx: PrepareContext) -> dict[str, Any]:
    """ABIDE-I raw anatomical scans labelled autism (1) / control (0) from ``Phenotypic_V1_0b.csv``.

    Args:
        ctx: the run's context (``--root``: the folder holding the sheet and the site folders).

    Returns:
        The datalist of studies with ``classes``, split by subject with the seed.
    """
    sheet = find_file(ctx.root, ["Phenotypic_V1_0b.csv", "Phenotypic_V1_0b_preprocessed1.csv"], ctx.title)
    labels = {}
    for row in _read_rows(sheet):
        sid, dx = _as_int(row.get("SUB_ID", "")), _as_int(row.get("DX_GROUP", ""))
        if sid is None:
            continue
        if dx not in (1, 2):
            ctx.bad(f"{sheet}: SUB_ID {sid}", f"DX_GROUP {row.get('DX_GROUP')!r} is neither 1 (autism) nor 2 (control)")
            continue
        labels[sid] = (1 if dx == 1 else 0, {"dx_group": dx})
    if not labels:
        ctx.bad(sheet, "no row with SUB_ID and DX_GROUP (is this ABIDE-I's phenotypic sheet?)")
    return {"classes": ABIDE_CLASSES, **_studies(ctx, sheet.parent, labels, "abide", set())}


def convert_adhd200(ctx: PrepareContext) -> dict[str, Any]:
    """ADHD-200 raw anatomical scans labelled ADHD (1, any subtype) / typically developing (0) from the sites'
    ``*_phenotypic.csv``; subjects whose diagnosis is not disclosed (the test release) are counted, not kept.

    Args:
        ctx: the run's context (``--root``: the folder holding the site folders).

    Returns:
        The datalist of studies with ``classes`` (the subtype under ``dx``), split by subject with the seed.
    """
    first = find_file(ctx.root, "*/*_phenotypic.csv", ctx.title, depth=1)
    base = first.parents[1]
    labels, undisclosed = {}, set()
    for sheet in sorted(base.glob("*/*_phenotypic.csv")):
        for row in _read_rows(sheet):
            sid = _as_int(row.get("ScanDir ID", ""))
            if sid is None:
                continue
            dx = _as_int(row.get("DX", ""))
            if dx is None:
                undisclosed.add(sid)
                continue
            if dx not in (0, 1, 2, 3):
                ctx.bad(f"{sheet}: ScanDir ID {sid}", f"DX {row.get('DX')!r} is not 0..3")
                continue
            labels[sid] = (int(dx > 0), {"dx": dx})
    datalist = {"classes": ADHD200_CLASSES, **_studies(ctx, base, labels, "adhd200", undisclosed)}
    datalist["filtered"]["subjects without a disclosed diagnosis"] = len(undisclosed)
    return datalist
