"""MIDRC-RICORD-1A + 1B (TCIA): chest CT DICOM series -> NIfTI volumes with the reference's split.

Layout as TCIA's downloader writes it (descriptive folder names)::

    MIDRC-RICORD-1A/<patient>/<MM-DD-YYYY>-<study description>-<uid5>/<series number>.000000-<series description>-<uid5>/*.dcm

The reference (``yeerwen/MedCoSS``) names each converted series ``<patient>_date<MM-DD-YYYY>_<series folder>``
and lists which of them train, validate and test (``ricord_split.txt`` beside this module);
1A (COVID-19 positive) is label 1, 1B (negative) label 0. Only the listed series are converted (in
parallel, resumably, into ``<cache_dir>/RICORD_nii/<collection>/<name>.nii.gz``); MedCoSS then resizes to
192 x 192 x 64, which is left to the task's transforms.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medcoss_monai.data.prepare.common import PrepareContext, cached_map, find_file, write_itk_atomic

__all__ = ["COLLECTIONS", "reference_split", "series_name", "dicom_series_to_nifti", "convert"]

COLLECTIONS = {"1A": 1, "1B": 0}
"""Collection -> label (1A COVID-19 positive, 1B negative)."""
_SPLITS = {"train": "training", "val": "validation", "test": "test"}
SPLIT_FILE = Path(__file__).with_name("ricord_split.txt")
"""The reference's lists, one series a line: ``<split> <collection> <series name>`` (``#`` comments)."""


def reference_split() -> dict[tuple[str, str], str]:
    """``(collection, series name) -> split`` of the reference's lists."""
    out = {}
    for line in SPLIT_FILE.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            split, collection, name = line.split(" ", 2)
            out[(collection, name)] = _SPLITS[split]
    return out


def series_name(patient: str, study_folder: str, series_folder: str) -> str:
    """The reference's name of a series: ``<patient>_date<MM-DD-YYYY>_<series folder>``."""
    return f"{patient}_date{study_folder[:10]}_{series_folder}"


def dicom_series_to_nifti(folder: str, out: Path) -> None:
    """Read a DICOM series folder with ITK (slices ordered by position) and write it as NIfTI atomically.

    Args:
        folder: the series folder.
        out: the ``.nii.gz`` to write.

    Raises:
        ValueError: the folder holds no series, or more than one.
    """
    import itk

    names = itk.GDCMSeriesFileNames.New(Directory=folder)
    uids = names.GetSeriesUIDs()
    if len(uids) != 1:
        raise ValueError(f"holds {len(uids)} DICOM series, expected one")
    write_itk_atomic(itk.imread(list(names.GetFileNames(uids[0])), itk.SS), out)


def convert(ctx: PrepareContext) -> dict[str, Any]:
    """RICORD 1A + 1B -> ``{"image", "label", "group": "ricord:<patient>", "series"}`` with the reference's split.

    Args:
        ctx: the run's context (``--root`` holds ``MIDRC-RICORD-1A/`` and ``MIDRC-RICORD-1B/``).

    Returns:
        The datalist with ``classes``; series of the download outside the reference's lists are counted
        under ``filtered``, listed series absent from the download under ``missing``.
    """
    collections = {c: find_file(ctx.root, f"MIDRC-RICORD-{c}", ctx.title) for c in COLLECTIONS}
    wanted = reference_split()
    out_dir = ctx.cache() / "RICORD_nii"
    jobs, items, found, unlisted = [], {}, set(), 0
    for collection, base in collections.items():
        for series in sorted(p for p in base.glob("*/*/*") if p.is_dir()):
            patient, study = series.parent.parent.name, series.parent.name
            name = series_name(patient, study, series.name)
            if (collection, name) not in wanted:
                unlisted += 1
                continue
            found.add((collection, name))
            out = out_dir / f"MIDRC-RICORD-{collection}" / f"{name}.nii.gz"
            jobs.append(((str(series),), out))
            items[out] = (wanted[(collection, name)], {"image": str(out), "label": COLLECTIONS[collection],
                                                       "group": f"ricord:{patient}", "series": name}, series)
    failures, _ = cached_map(dicom_series_to_nifti, jobs, ctx.workers, desc="RICORD series", progress=ctx.progress)
    datalist: dict[str, Any] = {"classes": ["COVID-19 negative (1B)", "COVID-19 positive (1A)"],
                                "training": [], "validation": [], "test": []}
    for out, (split, item, series) in items.items():
        if out in failures:
            ctx.bad(series, failures[out])
        else:
            datalist[split].append(item)
    datalist["split"] = {"reference": "yeerwen/MedCoSS Downstream/Dim_3/RICORD/data_split"}
    datalist["filtered"] = {"series not in the reference split": unlisted}
    datalist["missing"] = sorted(f"{c}/{n}" for c, n in set(wanted) - found)
    return datalist
