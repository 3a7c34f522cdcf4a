"""BrainMVP study datalists: BraTS and folder-per-study converters on real files, held-out sample studies, the slab task."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medcoss_monai.data.brain_studies import (
    brats_studies,
    folder_studies,
    icbm_slab_task,
    sample_studies,
    study_datalist,
)
from medcoss_monai.errors import BadInputError


def _mri(sample_data: Path, name: str) -> Path:
    return sample_data / "mri" / name


def _brats_folder(tmp_path: Path, sample_data: Path) -> Path:
    """Two BraTS cases from real sample files: 2018-2021 names and the 2023 names."""
    root = tmp_path / "brats"
    for case, names in (("BraTS_001", ("t1", "t1ce", "seg")), ("BraTS-GLI-002", ("t1n", "t2w"))):
        (root / case).mkdir(parents=True)
        for name, src in zip(names, ("ch2.nii.gz", "ch2.nii.gz", "ch2.nii.gz")):
            sep = "-" if case.startswith("BraTS-") else "_"
            shutil.copy(_mri(sample_data, src), root / case / f"{case}{sep}{name}.nii.gz")
    return root


def test_brats_converter_on_a_folder_of_sample_files(tmp_path, sample_data):
    root = _brats_folder(tmp_path, sample_data)
    studies = brats_studies(root)
    assert [s["study"] for s in studies] == ["BraTS-GLI-002", "BraTS_001"]
    assert sorted(studies[1]["image"]) == ["t1", "t1ce"] and studies[1]["label"].endswith("BraTS_001_seg.nii.gz")
    assert sorted(studies[0]["image"]) == ["t1", "t2"] and "label" not in studies[0]
    # the bundles' entry point recognises the layout
    assert study_datalist(root) == studies

    # the stage's loading chain stacks a BraTS case into one channel per contrast
    from monai.transforms import Compose

    from tests.stage_utils import bundle_section

    d = Compose(bundle_section("brainmvp", "train#deterministic_transforms"))(studies[1])
    assert d["image"].shape[0] == 2 and d["contrasts"] == ["t1", "t1ce"]
    assert float(d["image"].min()) >= 0.0 and float(d["image"].max()) <= 1.0


def test_brats_converter_names_the_bad_file(tmp_path, sample_data):
    root = _brats_folder(tmp_path, sample_data)
    shutil.copy(_mri(sample_data, "ch2.nii.gz"), root / "BraTS_001" / "BraTS_001_dti.nii.gz")
    with pytest.raises(BadInputError, match=r"BraTS_001_dti\.nii\.gz: unknown BraTS suffix 'dti'"):
        brats_studies(root)


def test_folder_per_study_converter(tmp_path, sample_data):
    root = tmp_path / "studies"
    (root / "subj1").mkdir(parents=True)
    shutil.copy(_mri(sample_data, "ch2.nii.gz"), root / "subj1" / "T1.nii.gz")
    shutil.copy(_mri(sample_data, "mean_reg2mean.nii.gz"), root / "subj1" / "pd.nii.gz")
    studies = study_datalist(root)
    assert studies == [{"image": {"t1": str(root / "subj1" / "T1.nii.gz"), "pd": str(root / "subj1" / "pd.nii.gz")}, "study": "subj1"}]
    shutil.copy(_mri(sample_data, "ch2.nii.gz"), root / "subj1" / "notes.nii.gz")
    with pytest.raises(BadInputError, match="notes.nii.gz: name it after its contrast"):
        folder_studies(root)


def test_study_datalist_json_refuses_missing_files_and_unknown_contrasts(tmp_path, sample_data):
    path = tmp_path / "studies.json"
    path.write_text(json.dumps({"training": [
        {"image": {"t1": str(_mri(sample_data, "ch2.nii.gz"))}, "study": "ok"},
        {"image": {"t1": "gone.nii.gz", "swi": str(_mri(sample_data, "ch2.nii.gz"))}, "study": "bad"},
    ]}))
    with pytest.raises(BadInputError) as err:
        study_datalist(path)
    assert "gone.nii.gz does not exist" in str(err.value) and "unknown contrast 'swi'" in str(err.value)
    assert str(path) in str(err.value)


def test_sample_studies_leave_the_evaluation_files_out(datalist):
    studies = sample_studies()["training"]
    files = {f for s in studies for f in s["image"].values()}
    mri = datalist("mri")
    held = {it[k] for split in ("validation", "test") for it in mri[split] for k in ("image", "t2", "mask", "regions", "gm", "wm", "label") if k in it}
    assert files and not files & held
    assert all("icbm" not in Path(f).name.lower() and "mni" not in Path(f).name.lower() for f in files)
    assert {c for s in studies for c in s["image"]} == {"t1", "t1ce"}  # no T2 is trained: the only one is held out


def test_slab_task_splits_the_volume_with_gaps(tmp_path, sample_data):
    import nibabel as nib

    task = icbm_slab_task(tmp_path / "slabs")
    assert len(task["training"]) >= 2 and len(task["test"]) >= 2

    def z_range(study):
        img = nib.load(study["image"]["t1"])
        z0 = img.affine[2, 3]
        return z0, z0 + img.affine[2, 2] * (img.shape[2] - 1)

    ranges = sorted((z_range(s), split) for split in ("training", "test") for s in task[split])
    for ((_, hi), a), ((lo, _), b) in zip(ranges, ranges[1:]):
        assert lo - hi >= 8.0 and a != b  # neighbours alternate between the splits, 8 mm apart
    labels = np.asarray(nib.load(task["test"][0]["label"]).dataobj)
    assert set(np.unique(labels)) <= set(range(5)) and len(np.unique(labels)) >= 3
