"""MIMIC-CXR (PhysioNet): free-text reports and the JPG images, with the official split.

Layouts as published:

- reports (``mimic-cxr-reports.zip``): ``files/pXX/pNNNNNNNN/sNNNNNNNN.txt``, one report per study, with
  upper-case section headers (``FINDINGS:``, ``IMPRESSION:``...);
- images (MIMIC-CXR-JPG 2.0.0): ``files/pXX/pNNNNNNNN/sNNNNNNNN/<dicom_id>.jpg`` beside
  ``mimic-cxr-2.0.0-split.csv.gz`` (``dicom_id, study_id, subject_id, split``: train / validate /
  test) and ``mimic-cxr-2.0.0-metadata.csv.gz`` (``ViewPosition``...).

What the reference keeps (``yeerwen/MedCoSS``): for reports, MGCA's procedure, i.e. the impression and
the findings of studies with a frontal (PA or AP) image, reports with at least 3 word tokens; for
images, every JPG (``Preprocess/MIMIC_CXR_JPG_Preprocess.py`` walks all of them; the view is kept on
each item so a user can filter).
"""

from __future__ import annotations

import csv
import gzip
import re
from pathlib import Path
from typing import Any

from medcoss_monai.data.prepare.common import DEFAULT_FRACTIONS, PrepareContext, find_file, seeded_split
from medcoss_monai.errors import BadInputError
from medcoss_monai.transforms.text import clean_report_text

__all__ = ["SPLIT_CSV", "METADATA_CSV", "FRONTAL_VIEWS", "report_sections", "convert_reports", "convert_jpg"]

SPLIT_CSV = ("mimic-cxr-2.0.0-split.csv.gz", "mimic-cxr-2.0.0-split.csv")
METADATA_CSV = ("mimic-cxr-2.0.0-metadata.csv.gz", "mimic-cxr-2.0.0-metadata.csv")
FRONTAL_VIEWS = ("PA", "AP")
"""Views of the studies whose reports MGCA (and so MedCoSS) keeps."""
MIN_TOKENS = 3
"""A report needs this many word tokens (MGCA's filter)."""
_SPLIT_NAMES = {"train": "training", "validate": "validation", "test": "test"}
_HEADER = re.compile(r"^[ \t]*([A-Z][A-Z /&,()-]*[A-Z)])[ \t]*:", re.MULTILINE)


def report_sections(text: str) -> dict[str, str]:
    """The sections of a MIMIC-CXR report: upper-case header -> its text, whitespace collapsed.

    Args:
        text: the report file's content.

    Returns:
        e.g. ``{"EXAMINATION": "CHEST (PA AND LAT)", "FINDINGS": "...", "IMPRESSION": "..."}``.
    """
    headers = list(_HEADER.finditer(text))
    sections = {}
    for h, nxt in zip(headers, headers[1:] + [None]):
        body = text[h.end(): nxt.start() if nxt else len(text)]
        sections[h.group(1).strip()] = clean_report_text(body)
    return sections


def _read_csv(path: Path | None) -> list[dict[str, str]]:
    if path is None:
        return []
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _optional(root: Path, names: tuple[str, ...]) -> Path | None:
    hits = [p for n in names for p in sorted(root.glob(n)) + sorted(root.glob(f"*/{n}"))]
    return hits[0] if hits else None


def _splits_from_csv(path: Path, key: str) -> dict[str, str]:
    rows = _read_csv(path)
    if rows and (key not in rows[0] or "split" not in rows[0]):
        raise BadInputError(f"{path} has no '{key}' and 'split' columns: is it MIMIC-CXR-JPG's split file?")
    return {r[key]: _SPLIT_NAMES.get(r["split"], r["split"]) for r in rows}


def convert_reports(ctx: PrepareContext) -> dict[str, Any]:
    """MIMIC-CXR reports -> report items with ``text`` (impression then findings, as MGCA joins them).

    The split is the official one when ``mimic-cxr-2.0.0-split.csv(.gz)`` lies in ``--root`` (or one
    folder down), else seeded by patient; with the metadata CSV, only studies with a frontal image are kept.

    Args:
        ctx: the run's context.

    Returns:
        The datalist; items ``{"text", "findings", "impression", "id": "s...", "group": "mimic:p..."}``.
    """
    first = find_file(ctx.root, "files/p*/p*/s*.txt", ctx.title, depth=1)
    files_dir = first.parents[2]
    split_csv, meta_csv = _optional(ctx.root, SPLIT_CSV), _optional(ctx.root, METADATA_CSV)
    study_split = {f"s{k}": v for k, v in _splits_from_csv(split_csv, "study_id").items()} if split_csv else {}
    frontal = {f"s{r['study_id']}" for r in _read_csv(meta_csv) if r.get("ViewPosition") in FRONTAL_VIEWS} if meta_csv else None
    from tqdm.auto import tqdm

    items, filtered = [], {"no findings or impression": 0, "no frontal image": 0, "not in the split file": 0}
    for path in tqdm(sorted(files_dir.glob("p*/p*/s*.txt")), desc="MIMIC-CXR reports", disable=not ctx.progress):
        try:
            sections = report_sections(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            ctx.bad(path, f"unreadable ({e.__class__.__name__}: {e})")
            continue
        findings, impression = sections.get("FINDINGS", ""), sections.get("IMPRESSION", "")
        text = " ".join(t for t in (impression, findings) if t)
        if len(re.findall(r"\w+", text)) < MIN_TOKENS:
            filtered["no findings or impression"] += 1
        elif frontal is not None and path.stem not in frontal:
            filtered["no frontal image"] += 1
        elif study_split and path.stem not in study_split:
            filtered["not in the split file"] += 1
        else:
            items.append({"text": text, "findings": findings, "impression": impression, "id": path.stem,
                          "group": f"mimic:{path.parent.name}"})
    datalist = _split(items, study_split, ctx, split_csv)
    datalist["filtered"] = filtered
    return datalist


def _split(items: list[dict[str, Any]], split_of: dict[str, str], ctx: PrepareContext, split_csv: Path | None) -> dict[str, Any]:
    """Official split by the item's key in ``split_of`` when given, else seeded by patient."""
    if split_of:
        datalist: dict[str, Any] = {"training": [], "validation": [], "test": []}
        for it in items:
            datalist[split_of[it["id"]]].append(it)
        datalist["split"] = {"official": split_csv.name if split_csv else ""}
        return datalist
    splits, record = seeded_split(items, DEFAULT_FRACTIONS, ctx.seed, group=lambda it: it["group"])
    return {**splits, "split": record}


def convert_jpg(ctx: PrepareContext) -> dict[str, Any]:
    """MIMIC-CXR-JPG -> image items, every view, with the official split of ``mimic-cxr-2.0.0-split.csv.gz``.

    Args:
        ctx: the run's context.

    Returns:
        The datalist; items ``{"image", "id": dicom_id, "study", "view", "group": "mimic:p..."}``.
    """
    split_csv = find_file(ctx.root, SPLIT_CSV, ctx.title)
    base = split_csv.parent
    first = find_file(base, "files/p*/p*/s*/*.jpg", ctx.title, depth=0)
    meta_csv = _optional(base, METADATA_CSV)
    split_of = _splits_from_csv(split_csv, "dicom_id")
    view_of = {r["dicom_id"]: r.get("ViewPosition", "") for r in _read_csv(meta_csv)}
    from PIL import Image
    from tqdm.auto import tqdm

    items = []
    for path in tqdm(sorted(first.parents[3].glob("p*/p*/s*/*.jpg")), desc="MIMIC-CXR-JPG", disable=not ctx.progress):
        if path.stem not in split_of:
            ctx.bad(path, f"its dicom_id is not in {split_csv.name}")
            continue
        try:
            with Image.open(path) as im:  # the header only: a truncated or non-JPEG file is caught here
                if im.format != "JPEG":
                    raise ValueError(f"a {im.format} file, not a JPEG")
        except Exception as e:  # PIL raises several types for unreadable files
            ctx.bad(path, f"unreadable ({e.__class__.__name__}: {e})")
            continue
        items.append({"image": str(path), "id": path.stem, "study": path.parent.name, "view": view_of.get(path.stem, ""),
                      "group": f"mimic:{path.parents[1].name}"})
    return _split(items, split_of, ctx, split_csv)
