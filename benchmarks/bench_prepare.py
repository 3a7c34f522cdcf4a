"""Throughput of the two long conversions of ``python -m medcoss_monai.data.prepare``.

1. DeepLesion: 1,000 slices of the real sample chest CT (``ct/cxr.nii.gz``, 512 x 512, as DeepLesion's
   slices) written in the published layout (16-bit PNG, HU + 32768; 8 series of 125 slices) and stacked
   into NIfTI volumes, with one worker and with every core (a fresh cache each time).
2. TCGA: the tissue tiles of the real sample slide (``pathology/cmu_small_region.svs``) listed once.

Figures are slices/s and tiles listed per second; they depend on the disk and the cores.

Usage::

    python benchmarks/bench_prepare.py [--work /tmp/bench_prepare] [--workers N]
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from medcoss_monai.data.prepare import prepare
from medcoss_monai.data.prepare.slides import MIN_TISSUE, TILE_LEVEL, TILE_SIZE
from medcoss_monai.samples.sample_data import fetch

SERIES, SLICES = 8, 125


def write_deeplesion(root: Path, sample: Path) -> int:
    """The miniature DeepLesion folder of SERIES x SLICES slices; returns the number of slices."""
    img = nib.load(str(sample / "ct" / "cxr.nii.gz"))
    vol = np.rint(img.get_fdata()).astype(np.int32)
    zx, zy, zz = (float(z) for z in img.header.get_zooms()[:3])
    rows = []
    for s in range(SERIES):
        folder = root / "Images_png" / f"{s + 1:06d}_01_01"
        folder.mkdir(parents=True)
        for z in range(SLICES):
            Image.fromarray((vol[:, :, z % vol.shape[2]] + 32768).astype(np.uint16)).save(folder / f"{z + 1:03d}.png")
        rows.append({"File_name": f"{folder.name}_060.png", "Patient_index": s + 1, "Spacing_mm_px_": f"{zy}, {zx}, {zz}",
                     "Train_Val_Test": 1 + s % 3})
    with open(root / "DL_info.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return SERIES * SLICES


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default="/tmp/bench_prepare")
    p.add_argument("--workers", type=int, default=os.cpu_count())
    args = p.parse_args()
    sample, work = fetch(verbose=False), Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    n = write_deeplesion(work / "DeepLesion", sample)
    for workers in sorted({1, args.workers}):
        cache = work / f"cache_{workers}"
        t0 = time.perf_counter()
        prepare("deeplesion", work / "DeepLesion", work / "dl.json", cache_dir=cache, workers=workers, progress=False)
        dt = time.perf_counter() - t0
        print(f"DeepLesion: {n} slices -> {SERIES} volumes, {workers} worker(s): {dt:.1f} s, {n / dt:.0f} slices/s")
    from medcoss_monai.transforms.tissue import tissue_tile_locations

    slide = sample / "pathology" / "cmu_small_region.svs"
    t0 = time.perf_counter()
    tiles = tissue_tile_locations(slide, tile_size=TILE_SIZE, level=TILE_LEVEL, min_tissue=MIN_TISSUE)
    dt = time.perf_counter() - t0
    print(f"TCGA tiling: {slide.name}: {len(tiles)} tiles of {TILE_SIZE} px in {dt:.2f} s ({len(tiles) / dt:.0f} tiles/s)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
