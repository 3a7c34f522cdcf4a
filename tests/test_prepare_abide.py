"""ABIDE-I converter: INDI's raw layout (``<SITE>/<SUB_ID>/session_1/anat_1/mprage.nii.gz``) of real T1 scans with
``Phenotypic_V1_0b.csv`` (its real columns and diagnosis codes), converted into labelled BrainMVP studies."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from medcoss_monai.data.prepare import prepare
from medcoss_monai.data.prepare.indi import ABIDE_CLASSES
from medcoss_monai.errors import BadInputError

T1 = ["KmeansTest_T1UCharRaw.nii.gz", "ch2.nii.gz", "MNI152_T1_1mm_brain.nii.gz",
      "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"]
# (site, SUB_ID, DX_GROUP): 1 autism, 2 control; the last one has no scan in the download
SUBJECTS = [("CALTECH", 51456, 1), ("CALTECH", 51457, 2), ("NYU", 50952, 1), ("NYU", 50953, 2), ("NYU", 50954, 2),
            ("PITT", 50002, 1), ("PITT", 50003, 2)]


@pytest.fixture
def abide_root(tmp_path: Path, sample_data: Path) -> Path:
    root = tmp_path / "ABIDE_Initiative" / "RawData"
    rows = ["SITE_ID,SUB_ID,DX_GROUP,DSM_IV_TR,AGE_AT_SCAN,SEX"]
    for k, (site, sid, dx) in enumerate(SUBJECTS):
        rows.append(f"{site},{sid},{dx},{dx % 2},{10 + k},1")
        if k == len(SUBJECTS) - 1:
            continue
        anat = root / site.capitalize() / f"{sid:07d}" / "session_1" / "anat_1"
        anat.mkdir(parents=True)
        shutil.copy(sample_data / "mri" / T1[k % len(T1)], anat / "mprage.nii.gz")
        (anat.parent / "rest_1").mkdir()  # the functional run, not used
    (root / "Phenotypic_V1_0b.csv").write_text("\n".join(rows) + "\n")
    return root


def test_scans_become_studies_labelled_by_dx_group(abide_root: Path, tmp_path: Path):
    from medcoss_monai.apps.brainmvp.studies import study_datalist

    out = tmp_path / "abide.json"
    data = prepare("abide", abide_root.parent, out, progress=False)
    studies = {s["study"]: s for split in ("training", "validation", "test") for s in data[split]}
    # three subjects per class: one of each validates, one of each tests (split per class, at least one each)
    assert [len(data[s]) for s in ("training", "validation", "test")] == [2, 2, 2]
    assert all(sorted(st["label"] for st in data[s]) == [0, 1] for s in ("training", "validation", "test"))
    assert data["split"]["stratified"] is True
    assert {name: s["label"] for name, s in studies.items()} == {
        "abide_0051456": 1, "abide_0051457": 0, "abide_0050952": 1, "abide_0050953": 0, "abide_0050954": 0,
        "abide_0050002": 1}
    assert data["classes"] == ABIDE_CLASSES and data["filtered"] == {"labelled subjects without an anatomical scan": 1}
    s = studies["abide_0050952"]
    assert s["image"] == {"t1": str(abide_root / "Nyu" / "0050952" / "session_1" / "anat_1" / "mprage.nii.gz")}
    assert s["site"] == "Nyu" and s["dx_group"] == 1 and "BrainMVP" in data["split"]["reference"]
    assert len(study_datalist(out, "training")) == 2  # what the BrainMVP bundles read


def test_unknown_subject_and_bad_code_are_listed_and_wrong_root_refused(abide_root: Path, tmp_path: Path):
    extra = abide_root / "Nyu" / "0059999" / "session_1" / "anat_1"
    extra.mkdir(parents=True)
    shutil.copy(next((abide_root / "Nyu").rglob("mprage.nii.gz")), extra / "mprage.nii.gz")
    sheet = abide_root / "Phenotypic_V1_0b.csv"
    sheet.write_text(sheet.read_text().replace("PITT,50003,2", "PITT,50003,-9999"))
    with pytest.raises(BadInputError) as err:
        prepare("abide", abide_root, tmp_path / "o.json", progress=False)
    assert "Nyu/0059999: no row for this subject in the phenotypic sheet" in str(err.value)
    assert "SUB_ID 50003: DX_GROUP '-9999' is neither 1 (autism) nor 2 (control)" in str(err.value)
    with pytest.raises(BadInputError, match=r"Phenotypic_V1_0b.csv or .* not found under .*: is this the ABIDE-I folder\?"):
        prepare("abide", abide_root / "Nyu", tmp_path / "o.json", progress=False)
