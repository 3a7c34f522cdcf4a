"""DeepLesion (NIH Clinical Center): 16-bit PNG slices stacked into NIfTI volumes.

Layout as published: ``Images_png/<patient>_<study>_<series>/<slice>.png`` (``000001_01_01/109.png``)
and ``DL_info.csv``, one row per lesion with ``File_name`` (``000001_01_01_109.png``),
``Patient_index``, ``Spacing_mm_px_`` (``"0.488281, 0.488281, 5"``: column, row, slice spacing in mm)
and ``Train_Val_Test`` (1 / 2 / 3: the official split, by patient). A PNG holds ``HU + 32768``.

A series folder holds only the slices around its lesions, so its slices are grouped into runs of
consecutive indices and each run becomes one volume ``<series>_<first>-<last>.nii.gz`` (int16 HU), the
way the data set's own ``DL_save_nifti.py`` cuts them. MedCoSS then resamples to 1 mm and crops
sub-volumes; here that is left to the CT stage's transforms.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from medcoss_monai.data.prepare.common import PrepareContext, cached_map, find_file, save_nifti_atomic
from medcoss_monai.errors import BadInputError

__all__ = ["HU_OFFSET", "SPLIT_CODES", "slice_runs", "deeplesion_affine", "write_volume", "convert"]

HU_OFFSET = 32768
"""A DeepLesion PNG value minus this is the Hounsfield unit."""
SPLIT_CODES = {"1": "training", "2": "validation", "3": "test"}
"""``Train_Val_Test`` of DL_info.csv -> datalist split."""
_COLUMNS = ("File_name", "Patient_index", "Spacing_mm_px_", "Train_Val_Test")


def slice_runs(indices: list[int]) -> list[list[int]]:
    """Group sorted slice indices into runs of consecutive ones: ``[1, 2, 3, 7, 8] -> [[1, 2, 3], [7, 8]]``."""
    runs: list[list[int]] = []
    for i in sorted(indices):
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def deeplesion_affine(spacing: tuple[float, float, float]) -> np.ndarray:
    """Voxel-to-world matrix of a volume whose axes are (image row, image column, slice).

    Rows run posterior and columns to the patient's left (axial images as displayed), slices as the
    series numbers them (head to foot), so the volume opens upright in viewers.

    Args:
        spacing: DL_info.csv's ``Spacing_mm_px_``: column, row and slice spacing (mm).

    Returns:
        The 4 x 4 affine; its column norms are (row, column, slice) spacing.
    """
    sx, sy, sz = spacing
    return np.array([[0, -sx, 0, 0], [-sy, 0, 0, 0], [0, 0, -sz, 0], [0, 0, 0, 1]], dtype=float)


def write_volume(pngs: list[str], spacing: tuple[float, float, float], out: Path) -> None:
    """Read 16-bit PNG slices, subtract the offset, stack them and save one int16 NIfTI atomically.

    Args:
        pngs: the slice files, in slice order.
        spacing: column, row, slice spacing (mm).
        out: the ``.nii.gz`` to write.

    Raises:
        ValueError: a slice is not a 16-bit greyscale image, or slices differ in size.
    """
    from PIL import Image

    slices = []
    for png in pngs:
        with Image.open(png) as im:
            if im.mode not in ("I;16", "I;16B", "I"):
                raise ValueError(f"{png} is a {im.mode} image, not a 16-bit greyscale DeepLesion slice")
            arr = np.asarray(im).astype(np.int32) - HU_OFFSET
        if slices and arr.shape != slices[0].shape:
            raise ValueError(f"{png} is {arr.shape[0]}x{arr.shape[1]}, the series' first slice "
                             f"{slices[0].shape[0]}x{slices[0].shape[1]}")
        slices.append(arr.astype(np.int16))
    save_nifti_atomic(np.stack(slices, axis=-1), deeplesion_affine(spacing), out)


def _read_info(info: Path, ctx: PrepareContext) -> tuple[dict[str, dict[str, Any]], set[str]]:
    """Series folder -> patient, spacing and split from DL_info.csv (inconsistent series are reported), and
    every series the file names."""
    rows: dict[str, list[dict[str, str]]] = defaultdict(list)
    with open(info, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in _COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise BadInputError(f"{info} has no column {missing}: is it DeepLesion's DL_info.csv?")
        for row in reader:
            rows[row["File_name"].rsplit("_", 1)[0]].append(row)
    series: dict[str, dict[str, Any]] = {}
    for name, lesions in rows.items():
        try:
            spacings = {tuple(float(v) for v in r["Spacing_mm_px_"].split(",")) for r in lesions}
        except ValueError:
            ctx.bad(info, f"series {name}: Spacing_mm_px_ is not three numbers")
            continue
        splits = {r["Train_Val_Test"].strip() for r in lesions}
        if len(spacings) != 1 or len(next(iter(spacings))) != 3:
            ctx.bad(info, f"series {name}: rows disagree on Spacing_mm_px_ ({sorted(spacings)})")
        elif len(splits) != 1 or not splits <= set(SPLIT_CODES):
            ctx.bad(info, f"series {name}: Train_Val_Test is {sorted(splits)}, expected one of 1, 2, 3")
        else:
            series[name] = {"patient": int(lesions[0]["Patient_index"]), "spacing": next(iter(spacings)),
                            "split": SPLIT_CODES[splits.pop()]}
    return series, set(rows)


def convert(ctx: PrepareContext) -> dict[str, Any]:
    """DeepLesion -> int16 NIfTI sub-volumes in ``<cache_dir>/Images_nifti`` and a datalist with the official split.

    Args:
        ctx: the run's context (``--root`` holds ``DL_info.csv`` and ``Images_png/``).

    Returns:
        The datalist: items ``{"image", "group": "deeplesion:<patient>", "series", "slices": [first, last]}``.
    """
    info = find_file(ctx.root, "DL_info.csv", ctx.title)
    images = find_file(ctx.root, "Images_png", ctx.title)
    series, named = _read_info(info, ctx)
    out_dir = ctx.cache() / "Images_nifti"
    jobs, items = [], {}
    for folder in sorted(p for p in images.iterdir() if p.is_dir()):
        meta = series.get(folder.name)
        if meta is None:
            if folder.name not in named:  # a named but inconsistent series is already reported
                ctx.bad(folder, "no row of DL_info.csv names this series")
            continue
        by_index: dict[int, Path] = {}
        for png in folder.glob("*.png"):
            if png.stem.isdigit():
                by_index[int(png.stem)] = png
            else:
                ctx.bad(png, "not a <slice index>.png file")
        for run in slice_runs(list(by_index)):
            out = out_dir / f"{folder.name}_{run[0]:03d}-{run[-1]:03d}.nii.gz"
            jobs.append(((([str(by_index[i]) for i in run]), meta["spacing"]), out))
            items[out] = (meta["split"], {"image": str(out), "group": f"deeplesion:{meta['patient']}",
                                          "series": folder.name, "slices": [run[0], run[-1]]})
    # looked up at call time, so a test can count the conversions
    failures, _ = cached_map(_write, jobs, ctx.workers, desc="DeepLesion volumes", progress=ctx.progress)
    for out, reason in failures.items():
        first, last = items[out][1]["slices"]
        ctx.bad(f"{images / items[out][1]['series']} (slices {first}-{last})", reason)
    datalist: dict[str, Any] = {"training": [], "validation": [], "test": []}
    for out, (split, item) in items.items():
        if out not in failures:
            datalist[split].append(item)
    datalist["split"] = {"official": "DL_info.csv Train_Val_Test (1 training, 2 validation, 3 test)"}
    # series of DL_info.csv whose Images_png zip was not downloaded (the release comes in 56 zips)
    datalist["missing_series"] = len(set(series) - {p.name for p in images.iterdir()})
    return datalist


def _write(pngs: list[str], spacing: tuple[float, float, float], out: Path) -> None:
    write_volume(pngs, spacing, out)
