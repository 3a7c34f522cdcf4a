"""ADHD-200 converter: INDI's raw per-site layout of real T1 scans with each site's ``<Site>_phenotypic.csv`` (its
real columns and DX codes, an undisclosed test-release diagnosis included), converted into labelled BrainMVP studies."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from medcoss_monai.data.prepare import prepare
from medcoss_monai.data.prepare.indi import ADHD200_CLASSES
from medcoss_monai.errors import BadInputError

T1 = ["KmeansTest_T1UCharRaw.nii.gz", "ch2.nii.gz", "MNI152_T1_1mm_brain.nii.gz",
      "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"]
HEADER = "ScanDir ID,Site,Gender,Age,Handedness,DX,Secondary Dx ,ADHD Measure,ADHD Index,QC_Anatomical_1"
# site folder -> (ScanDir ID, DX): 0 typically developing, 1-3 ADHD subtypes, "pending" undisclosed
SITES = {"KKI": [(1018959, "0"), (1019436, "1"), (1043241, "3")],
         "Peking_1": [(1050345, "0"), (1050975, "2"), (1056121, "pending")],
         "NYU": [(10001, "1"), (10002, "0")]}


@pytest.fixture
def adhd_root(tmp_path: Path, sample_data: Path) -> Path:
    root, k = tmp_path / "ADHD200", 0
    for site, subjects in SITES.items():
        (root / site).mkdir(parents=True)
        rows = [HEADER] + [f"{sid},{k + 1},1,{9 + j},1,{dx},,1,50,1" for j, (sid, dx) in enumerate(subjects)]
        (root / site / f"{site}_phenotypic.csv").write_text("\n".join(rows) + "\n")
        for sid, _ in subjects:
            anat = root / site / f"{sid:07d}" / "session_1" / "anat_1"
            anat.mkdir(parents=True)
            shutil.copy(sample_data / "mri" / T1[k % len(T1)], anat / "mprage.nii.gz")
            k += 1
    return root


def test_scans_become_studies_labelled_adhd_or_not(adhd_root: Path, tmp_path: Path):
    from medcoss_monai.apps.brainmvp.studies import study_datalist

    out = tmp_path / "adhd200.json"
    data = prepare("adhd200", adhd_root, out, progress=False)
    studies = {s["study"]: s for split in ("training", "validation", "test") for s in data[split]}
    assert {name: (s["label"], s["dx"]) for name, s in studies.items()} == {
        "adhd200_1018959": (0, 0), "adhd200_1019436": (1, 1), "adhd200_1043241": (1, 3), "adhd200_1050345": (0, 0),
        "adhd200_1050975": (1, 2), "adhd200_0010001": (1, 1), "adhd200_0010002": (0, 0)}
    assert [len(data[s]) for s in ("training", "validation", "test")] == [3, 2, 2]  # per class: 1 validates, 1 tests
    assert all(sorted(st["label"] for st in data[s]) == [0, 1] for s in ("validation", "test"))
    assert data["filtered"] == {"labelled subjects without an anatomical scan": 0, "subjects without a disclosed diagnosis": 1}
    assert data["classes"] == ADHD200_CLASSES and studies["adhd200_0010001"]["site"] == "NYU"
    assert len(study_datalist(out, "training")) == 3


def test_bad_dx_listed_and_wrong_root_refused(adhd_root: Path, tmp_path: Path):
    sheet = adhd_root / "KKI" / "KKI_phenotypic.csv"
    sheet.write_text(sheet.read_text().replace("1043241,1,1,11,1,3,", "1043241,1,1,11,1,7,"))
    with pytest.raises(BadInputError) as err:
        prepare("adhd200", adhd_root, tmp_path / "o.json", progress=False)
    assert "KKI_phenotypic.csv: ScanDir ID 1043241: DX '7' is not 0..3" in str(err.value)
    assert "KKI/1043241: no row for this subject in the phenotypic sheet" in str(err.value)
    with pytest.raises(BadInputError, match=r"\*/\*_phenotypic.csv not found under .*: is this the ADHD-200 folder\?"):
        prepare("adhd200", adhd_root / "KKI" / "1018959", tmp_path / "o.json", progress=False)
