"""MRBrainS13 converter: the release's ``TrainingData/<n>/`` folders written from the real ICBM T1 / T2 slabs with
their real grouped CerebrA labels, converted into BrainMVP studies."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medcoss_monai.data.prepare import prepare
from medcoss_monai.data.prepare.brain import MRBRAINS13_CLASSES
from medcoss_monai.errors import BadInputError


@pytest.fixture
def mrbrains_root(tmp_path: Path, brain_slabs: Path) -> Path:
    """Five subjects, one real slab each: T1 (also as T1_IR), T2 as T2_FLAIR, the labels as both label files."""
    task = brain_slabs
    root = tmp_path / "MRBrainS13DataNii" / "TrainingData"
    for n in range(1, 6):
        (root / str(n)).mkdir(parents=True)
        t1, t2, seg = (nib.load(str(task / f"slab{n - 1}_{c}.nii.gz")) for c in ("t1", "t2", "seg"))
        labels = np.asarray(seg.dataobj).astype(np.uint8)
        for name, img in (("T1", t1), ("T1_IR", t1), ("T2_FLAIR", t2)):
            nib.save(nib.Nifti1Image(np.asarray(img.dataobj).astype(np.float32), img.affine), str(root / str(n) / f"{name}.nii"))
        nib.save(nib.Nifti1Image(labels, seg.affine), str(root / str(n) / "LabelsForTraining.nii"))
        # the evaluated labels: three tissues (the sample's fourth group folded into the third)
        nib.save(nib.Nifti1Image(np.minimum(labels, 3), seg.affine), str(root / str(n) / "LabelsForTesting.nii"))
    return root


def test_subjects_become_studies_with_the_three_tissue_labels(mrbrains_root: Path, tmp_path: Path):
    from medcoss_monai.apps.brainmvp.studies import study_datalist

    out = tmp_path / "mrbrains13.json"
    data = prepare("mrbrains13", mrbrains_root.parent, out, progress=False)
    assert [len(data[s]) for s in ("training", "validation", "test")] == [3, 1, 1]
    assert data["classes"] == MRBRAINS13_CLASSES and "BrainMVP" in data["split"]["reference"]
    studies = data["training"] + data["validation"] + data["test"]
    assert sorted(s["study"] for s in studies) == [f"mrbrains13_{n}" for n in range(1, 6)]
    study = studies[0]
    assert sorted(study["image"]) == ["flair", "t1"] and study["image"]["flair"].endswith("T2_FLAIR.nii")
    assert study["label"].endswith("LabelsForTesting.nii") and study["t1ir"].endswith("T1_IR.nii")
    assert study["structures"].endswith("LabelsForTraining.nii")
    assert set(np.unique(np.asarray(nib.load(study["label"]).dataobj))) <= {0, 1, 2, 3}
    assert len(study_datalist(out, "training")) == 3  # what the BrainMVP bundles call


def test_subject_without_labels_is_listed_and_wrong_root_refused(mrbrains_root: Path, tmp_path: Path):
    (mrbrains_root / "4" / "LabelsForTesting.nii").unlink()
    with pytest.raises(BadInputError, match=r"TrainingData/4: no LabelsForTesting.nii"):
        prepare("mrbrains13", mrbrains_root, tmp_path / "o.json", progress=False)
    expected = r"\*/LabelsForTesting.nii not found under .*: is this the MRBrainS13 folder\?"
    with pytest.raises(BadInputError, match=expected):
        prepare("mrbrains13", mrbrains_root / "1", tmp_path / "o.json", progress=False)


@pytest.mark.slow
def test_converted_datalist_fine_tunes_one_epoch_through_the_brainmvp_bundle(mrbrains_root: Path, tmp_path: Path):
    """Issue 26: the converted datalist trains for one epoch through BrainMVP's segmentation bundle (its table's row)."""
    import json

    from monai.bundle import run

    from medcoss_monai.evaluation.downstream_suites import BRAINMVP

    datalist = tmp_path / "mrbrains13.json"
    prepare("mrbrains13", mrbrains_root, datalist, progress=False)
    row = BRAINMVP["mrbrains13"]
    out = tmp_path / "ft"
    run(config_file=str(Path("bundles") / row.bundle), output_dir=str(out), dataset_dir=str(datalist), **row.overrides,
        **{"train#trainer#max_epochs": 1, "repeats": 1, "crops_per_study": 1})
    metrics = json.loads((out / "metrics.json").read_text())
    assert [len(metrics["studies"][s]) for s in ("training", "validation", "test")] == [3, 1, 1]
    assert metrics["channel_names"] == ["1", "2", "3"] and 0.0 <= metrics["metrics"]["mean_dice"] <= 1.0
