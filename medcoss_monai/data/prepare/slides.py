"""TCGA whole-slide images (MedCoSS pathology pre-training) -> lists of tissue tiles.

Layout as the GDC client downloads it: ``<file uuid>/<slide>.svs`` (``TCGA-XX-XXXX-01Z-00-DX1.<uuid>.svs``;
the first 12 characters are the patient). The project (the reference uses TCGA-THYM, -THCA, -BRCA,
-UCEC, -UVM, -OV and -MESO) is read from a folder named after it above the slide, or from a GDC sample
sheet (``gdc_sample_sheet*.tsv``: ``File Name``, ``Project ID``) in ``--root``; slides of other projects
are left out.

Each slide's tissue tiles (:func:`medcoss_monai.transforms.tissue.tissue_tile_locations`) are listed once,
in parallel, into ``<cache_dir>/tcga_tiles/<slide>.json`` (resumable); then, as the reference, at most
100 tiles per patient are drawn with the seed. Patients are split with the seed.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from medcoss_monai.data.prepare.common import DEFAULT_FRACTIONS, PrepareContext, cached_map, find_file, seeded_split
from medcoss_monai.utils import atomic_write_json

__all__ = ["TCGA_PROJECTS", "TILE_SIZE", "TILE_LEVEL", "MIN_TISSUE", "TILES_PER_PATIENT", "list_tiles", "convert_tcga"]

TCGA_PROJECTS = ("TCGA-THYM", "TCGA-THCA", "TCGA-BRCA", "TCGA-UCEC", "TCGA-UVM", "TCGA-OV", "TCGA-MESO")
"""The seven projects MedCoSS pre-trains on."""
TILE_SIZE, TILE_LEVEL, MIN_TISSUE = 224, 0, 0.5
"""Tile side (pixels of the level), level, and the tissue share a tile needs."""
TILES_PER_PATIENT = 100
"""The reference keeps at most this many tiles of each patient, drawn at random."""


def list_tiles(slide: str, out: Path) -> None:
    """Write the tissue-tile locations of one slide as JSON, atomically.

    Args:
        slide: the slide file.
        out: the JSON to write (``{"slide", "locations": [[y, x], ...]}``).
    """
    from medcoss_monai.transforms.tissue import tissue_tile_locations

    locations = tissue_tile_locations(slide, tile_size=TILE_SIZE, level=TILE_LEVEL, min_tissue=MIN_TISSUE)
    atomic_write_json({"slide": slide, "locations": [list(map(int, loc)) for loc in locations]}, out, indent=0)


def _projects(root: Path) -> dict[str, str]:
    """Slide file name -> project, from the GDC sample sheets in ``root``."""
    out = {}
    for sheet in sorted(root.glob("gdc_sample_sheet*.tsv")):
        with open(sheet, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                if row.get("File Name") and row.get("Project ID"):
                    out[row["File Name"]] = row["Project ID"]
    return out


def _project_of(slide: Path, root: Path, sheet: dict[str, str]) -> str:
    folders = [p for p in slide.relative_to(root).parts[:-1] if p.startswith("TCGA-") and p.count("-") == 1]
    return folders[0] if folders else sheet.get(slide.name, "")


def convert_tcga(ctx: PrepareContext) -> dict[str, Any]:
    """TCGA slides -> tile items ``{"image", "location", "size", "level", "group": "tcga:<patient>", "project"}``.

    Args:
        ctx: the run's context (``--root``: the download folder; ``--cache_dir`` is needed).

    Returns:
        The datalist, split by patient with the seed.
    """
    find_file(ctx.root, ["*.svs", "*/*.svs"], ctx.title, depth=2)
    sheet = _projects(ctx.root)
    slides, left_out = [], 0
    for slide in sorted(ctx.root.rglob("*.svs")):
        project = _project_of(slide, ctx.root, sheet)
        if project and project not in TCGA_PROJECTS:
            left_out += 1
            continue
        slides.append((slide, project))
    cache = ctx.cache() / "tcga_tiles"
    jobs = [((str(s),), cache / f"{s.stem}.json") for s, _ in slides]
    failures, _ = cached_map(list_tiles, jobs, ctx.workers, desc="TCGA tiles", progress=ctx.progress)
    by_patient: dict[str, list[dict[str, Any]]] = {}
    for (slide, project), (_, out) in zip(slides, jobs):
        if out in failures:
            ctx.bad(slide, failures[out])
            continue
        patient = slide.name[:12]
        for y, x in json.loads(out.read_text())["locations"]:
            by_patient.setdefault(patient, []).append({
                "image": str(slide), "location": [y, x], "size": [TILE_SIZE, TILE_SIZE], "level": TILE_LEVEL,
                "group": f"tcga:{patient}", "project": project})
    rng = np.random.default_rng(ctx.seed)
    items = []
    for patient in sorted(by_patient):
        tiles = by_patient[patient]
        keep = np.sort(rng.choice(len(tiles), min(TILES_PER_PATIENT, len(tiles)), replace=False))
        items += [tiles[i] for i in keep]
    splits, record = seeded_split(items, DEFAULT_FRACTIONS, ctx.seed, group=lambda it: it["group"])
    tiling = {"tile_size": TILE_SIZE, "level": TILE_LEVEL, "min_tissue": MIN_TISSUE, "per_patient": TILES_PER_PATIENT,
              "slides_of_other_projects": left_out}
    return {**splits, "split": record, "tiling": tiling}
