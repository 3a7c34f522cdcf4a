"""Issue 26's "done when" for the pre-training sets: each converted miniature (its publisher's layout, real sample
files) trains its stage for one epoch through the stage bundle, as a user runs it with ``--dataset_dir``.

The converters' own tests check the datalists item by item; here the datalist goes through the whole stage:
reading, the stage's transforms, a training epoch and the stage's outputs.
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import nibabel as nib
import pytest

sys.path.insert(0, str(Path(__file__).parent))
# the miniatures of the converters' tests (fixtures imported here become this module's fixtures)
from stage_utils import BUNDLES, run_stage  # noqa: E402
from test_prepare_deeplesion import ct, dl_root  # noqa: E402,F401
from test_prepare_mimic import jpg_root, reports, reports_root  # noqa: E402,F401
from test_prepare_pretraining import adni_root, tcga_root  # noqa: E402,F401
from test_prepare_sets import _crop as crop, brain, make_cases  # noqa: E402,F401

from medcoss_monai.data.prepare import prepare  # noqa: E402

STAGE_OF = {"mimic_cxr_reports": "report", "mimic_cxr_jpg": "xray", "deeplesion": "ct", "adni": "mri", "tcga": "pathology"}
"""MedCoSS pre-training set -> the stage it trains."""


def _one_epoch_trained(stage_dir: Path) -> list[dict]:
    """The stage's loss history, checked: one epoch, a finite loss, the stage's weights written."""
    assert (stage_dir / "model.pt").is_file() and (stage_dir / "stage.json").is_file()
    with open(stage_dir / "loss_history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and math.isfinite(float(rows[0]["loss"])), rows
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("dataset", list(STAGE_OF))
def test_a_converted_pretraining_set_trains_its_stage_for_one_epoch(dataset: str, request, tmp_path: Path):
    root = {"mimic_cxr_reports": "reports_root", "mimic_cxr_jpg": "jpg_root", "deeplesion": "dl_root",
            "adni": "adni_root", "tcga": "tcga_root"}[dataset]
    datalist = tmp_path / f"{dataset}.json"
    data = prepare(dataset, request.getfixturevalue(root), datalist, cache_dir=tmp_path / "cache", progress=False)
    stage = run_stage(STAGE_OF[dataset], tmp_path / "run", dataset_dir=str(datalist), rehearsal=False, select_buffer=False)
    _one_epoch_trained(stage)
    assert len(data["training"]) >= 2


BRATS_2023 = {"t1n": "t1", "t1c": "t1", "t2w": "t2", "t2f": "t2", "seg": "seg"}


def _brain_set(dataset: str, root: Path, brain: dict) -> Path:
    """Six cases of ``dataset`` in its publisher's layout under ``root`` (real T1 / T2 / label blocks); the ``--root``."""
    if dataset == "brats2021":
        make_cases(root / "BraTS2021_Training_Data", brain, [f"BraTS2021_{i:05d}" for i in range(6)],
                   {"t1": "t1", "t1ce": "t1", "t2": "t2", "flair": "t2", "seg": "seg"}, "_")
    elif dataset in ("brats2023_ssa", "brats2023_men"):
        code = dataset[-3:].upper()
        make_cases(root, brain, [f"BraTS-{code}-{p:05d}-000" for p in range(6)], BRATS_2023, "-")
    else:  # ucsf_pdgm: <case>_nifti/<case>_<contrast>.nii.gz
        files = {"T1": "t1", "T1c": "t1", "T2": "t2", "FLAIR": "t2", "ADC": "t2", "tumor_segmentation": "seg"}
        for k in range(6):
            case = f"UCSF-PDGM-{k + 4:04d}"
            (root / f"{case}_nifti").mkdir(parents=True)
            for suffix, source in files.items():
                nib.save(crop(brain[source], k), str(root / f"{case}_nifti" / f"{case}_{suffix}.nii.gz"))
    return root


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["brats2021", "brats2023_ssa", "brats2023_men", "ucsf_pdgm"])
def test_a_converted_brain_set_trains_the_brainmvp_stage_for_one_epoch(dataset: str, tmp_path: Path, brain):
    from monai.bundle import run

    datalist = tmp_path / f"{dataset}.json"
    prepare(dataset, _brain_set(dataset, tmp_path / dataset, brain), datalist, progress=False)
    run(config_file=str(BUNDLES / "stage_brainmvp.json"), output_dir=str(tmp_path / "run"), dataset_dir=str(datalist),
        roi_size=[16, 16, 16], crops_per_study=2, batch_size=4, repeats=1, progress_bar=False, logging_file=False,
        **{"train#trainer#max_epochs": 1})
    _one_epoch_trained(tmp_path / "run" / "stage_brainmvp")
