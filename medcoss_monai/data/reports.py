"""Report-corpus helpers: Indiana University chest X-ray XML reports, plain text and CSV corpora.

A report item is a dict with at least ``"text"``; items parsed from Indiana XML also carry ``"id"``
(e.g. ``"CXR1"``), ``"findings"``, ``"impression"``, ``"mesh"`` (major MeSH headings, lower-cased,
e.g. ``["cardiomegaly", "pulmonary artery"]``) and ``"normal"``.
"""

from __future__ import annotations

import csv
import os
import re
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from medcoss_monai.transforms.text import clean_report_text as _clean
from medcoss_monai.transforms.text import report_text

__all__ = ["parse_indiana_report", "load_report_corpus", "report_text", "text_group", "split_by_text"]

_TAR_SUFFIXES = (".tgz", ".tar.gz", ".tar")
_CSV_TEXT_COLUMNS = ("text", "report")


def _mesh_heading(term: str) -> str:
    """Main heading of a MeSH term: the part before the first '/' (qualifiers dropped), lower-cased."""
    return _clean(term.split("/", 1)[0]).lower()


def _parse_indiana_xml(source: str | os.PathLike | IO[bytes], name: str) -> dict[str, Any]:
    """Parse one Indiana report from a path or a binary file object; ``name`` is used in errors."""
    try:
        root = ET.parse(source).getroot()
    except ET.ParseError as e:
        raise ValueError(f"Cannot parse Indiana report XML '{name}': {e}.") from e
    sections = {str(a.get("Label", "")).upper(): _clean(a.text) for a in root.iter("AbstractText")}
    uid = root.find("uId")
    if uid is not None and uid.get("id"):
        report_id = str(uid.get("id"))
    else:  # not an Indiana eCitation: fall back on the file name so the item stays traceable
        report_id = Path(name).stem
    mesh: list[str] = []
    for major in root.iter("major"):
        heading = _mesh_heading(major.text or "")
        if heading and heading not in mesh:
            mesh.append(heading)
    findings, impression = sections.get("FINDINGS", ""), sections.get("IMPRESSION", "")
    return {
        "id": report_id,
        "findings": findings,
        "impression": impression,
        "text": " ".join(t for t in (findings, impression) if t),
        "mesh": mesh,
        "normal": mesh == ["normal"],
    }


def parse_indiana_report(path: str | os.PathLike) -> dict[str, Any]:
    """Parse one Indiana University chest X-ray report (an ``ecgen-radiology/<n>.xml`` file).

    Args:
        path: the XML file.

    Returns:
        dict with ``id`` (the ``uId``, e.g. ``"CXR1"``), ``findings``, ``impression``, ``text``
        (findings then impression, joined by a space; empty when both are missing), ``mesh`` (major
        MeSH main headings, lower-cased, de-duplicated, in file order) and ``normal`` (True when the
        only major heading is ``"normal"``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not well-formed XML (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Report file '{path}' does not exist.")
    return _parse_indiana_xml(path, str(path))


def _numeric_key(name: str) -> tuple[int, str]:
    """Sort ``10.xml`` after ``9.xml`` (and ``CXR10`` after ``CXR9``) so corpora come out in id order."""
    stem = Path(name).stem
    digits = re.sub(r"\D", "", stem)
    return (int(digits), stem) if digits else (1 << 62, stem)


def _load_xml_folder(folder: Path) -> list[dict[str, Any]]:
    files = sorted(folder.rglob("*.xml"), key=lambda p: _numeric_key(p.name))
    if not files:
        raise ValueError(f"Report folder '{folder}' contains no .xml files.")
    return [parse_indiana_report(f) for f in files]


def _load_xml_tar(archive: Path) -> list[dict[str, Any]]:
    items = []
    try:
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".xml")]
            for member in sorted(members, key=lambda m: _numeric_key(m.name)):
                f = tar.extractfile(member)
                if f is not None:  # read in memory: nothing is written next to the archive
                    items.append(_parse_indiana_xml(f, f"{archive}:{member.name}"))
    except tarfile.TarError as e:
        raise ValueError(f"Cannot read report archive '{archive}': {e}.") from e
    if not items:
        raise ValueError(f"Report archive '{archive}' contains no .xml files.")
    return items


def _load_txt(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"Cannot read report text file '{path}': not UTF-8 ({e}).") from e
    return [{"id": f"{path.stem}:{i + 1}", "text": _clean(line)} for i, line in enumerate(lines) if line.strip()]


def _load_csv(path: Path) -> list[dict[str, Any]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = {c.strip().lower(): c for c in (reader.fieldnames or []) if c}
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"Cannot read report CSV '{path}': {e}.") from e
    text_col = next((columns[c] for c in _CSV_TEXT_COLUMNS if c in columns), None)
    parts = [columns[c] for c in ("findings", "impression") if c in columns]
    if text_col is None and not parts:
        raise ValueError(
            f"Report CSV '{path}' has no column named 'text', 'report', 'findings' or 'impression' "
            f"(columns: {list(columns.values())})."
        )
    id_col = columns.get("id")
    items = []
    for i, row in enumerate(rows):
        if text_col is not None:
            text = _clean(row.get(text_col))
        else:
            text = " ".join(t for t in (_clean(row.get(c)) for c in parts) if t)
        if text:
            items.append({"id": _clean(row.get(id_col)) if id_col else f"{path.stem}:{i + 1}", "text": text})
    return items


def load_report_corpus(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Load a report corpus, keeping only reports with some text.

    Accepted inputs:

    - a folder of Indiana XML reports (searched recursively for ``*.xml``);
    - the Indiana archive (``.tgz``, ``.tar.gz`` or ``.tar`` of XML files), read in memory;
    - a ``.txt`` file: one report per non-empty line;
    - a ``.csv`` file with a column ``text`` or ``report``, or ``findings`` and/or ``impression``
      (joined), and optionally ``id`` (column names are matched case-insensitively).

    Args:
        path: the folder or file.

    Returns:
        list of report items, each with ``"id"`` and ``"text"`` (and, for XML, the other fields of
        :func:`parse_indiana_report`), in id order for XML and file order otherwise.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the format is not supported or a file cannot be parsed (the message names it).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Report corpus '{path}' does not exist.")
    name = path.name.lower()
    if path.is_dir():
        items = _load_xml_folder(path)
    elif name.endswith(_TAR_SUFFIXES):
        items = _load_xml_tar(path)
    elif name.endswith(".xml"):
        items = [parse_indiana_report(path)]
    elif name.endswith(".txt"):
        items = _load_txt(path)
    elif name.endswith(".csv"):
        items = _load_csv(path)
    else:
        raise ValueError(
            f"Unsupported report corpus '{path}': expected a folder of XML, a .tgz/.tar of XML, a .txt or a .csv."
        )
    return [item for item in items if item["text"]]


def text_group(text: str) -> str:
    """The key under which identical reports are one item: lower-cased, whitespace collapsed.

    Hundreds of Indiana reports read word for word "no acute cardiopulmonary abnormality"; a split
    that puts one copy in training and another in test leaks the test item.

    Args:
        text: a report text.

    Returns:
        the normalised text.
    """
    return _clean(text).lower()


def split_by_text(
    items: list[dict[str, Any]], sizes: Mapping[str, int], seed: int, rest: str = "training"
) -> dict[str, list[dict[str, Any]]]:
    """Split report items by :func:`text_group`: the groups, shuffled with ``seed``, fill the named
    splits in order until each holds at least its size; the remaining groups go to ``rest``.

    Args:
        items: report items with ``"text"`` (and ``"id"``: each split is sorted by it).
        sizes: split name -> minimum number of items, filled in this order.
        seed: the shuffling seed.
        rest: the split of the remaining groups.

    Returns:
        split name -> items (every name of ``sizes`` and ``rest``).
    """
    import numpy as np

    groups: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        groups.setdefault(text_group(item["text"]), []).append(item)
    keys = sorted(groups)
    splits: dict[str, list[dict[str, Any]]] = {name: [] for name in [*sizes, rest]}
    for i in np.random.default_rng(seed).permutation(len(keys)):
        target = next((name for name, n in sizes.items() if len(splits[name]) < n), rest)
        splits[target].extend(groups[keys[i]])
    for split in splits.values():
        split.sort(key=lambda it: _numeric_key(str(it.get("id", ""))))
    return splits
