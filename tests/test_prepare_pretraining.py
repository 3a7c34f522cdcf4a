"""ADNI and TCGA converters (MedCoSS MRI and pathology pre-training; ADNI's AD-versus-CN classification for BrainMVP):
miniatures of the IDA and GDC download layouts built from a real brain MRI and a real whole-slide image of the sample
data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medcoss_monai.data.prepare import prepare, slides
from medcoss_monai.errors import BadInputError


def _splits(data: dict) -> list[int]:
    return [len(data[s]) for s in ("training", "validation", "test")]


@pytest.fixture
def adni_root(tmp_path: Path, brain_slabs: Path) -> Path:
    t1 = nib.load(str(brain_slabs / "slab0_t1.nii.gz"))
    root = tmp_path / "ida" / "ADNI"  # the IDA download in a folder of its own (a table's root links to it)
    for k in range(10):
        subject = f"{k + 2:03d}_S_{295 + k:04d}"
        for scan in range(2 if k == 0 else 1):
            image_id = f"I{40966 + 10 * k + scan}"
            folder = root / subject / "MPRAGE" / f"2006-04-{18 + scan}_08_20_30.0" / image_id
            folder.mkdir(parents=True)
            block = np.asarray(t1.dataobj)[50 + 6 * k:74 + 6 * k, 90:114, 4:20]  # a different real block each
            nib.save(nib.Nifti1Image(block, t1.affine), str(folder / f"ADNI_{subject}_MR_MPRAGE_br_raw_{image_id}.nii"))
    return root


def test_adni_subjects_split_with_the_seed_and_mri_stage_loading(adni_root: Path, tmp_path: Path):
    from medcoss_monai.bundle.stage import load_stage_datalist

    out = tmp_path / "adni.json"
    data = prepare("adni", adni_root.parent, out, seed=4, progress=False)
    assert sum(_splits(data)) == 11
    assert [len({it["group"] for it in data[s]}) for s in ("training", "validation", "test")] == [8, 1, 1]  # subjects
    where = {it["ida_id"]: s for s in ("training", "validation", "test") for it in data[s]}
    assert where["I40966"] == where["I40967"]  # both scans of one subject in one split
    assert data["split"] == {"seed": 4, "fractions": {"validation": 0.1, "test": 0.1}, "rest": "training", "by": "group"}
    assert len(load_stage_datalist(out, "mri", "training", check=True)) == len(data["training"])


def test_adni_misplaced_and_broken_files_are_listed(adni_root: Path, tmp_path: Path):
    stray = adni_root / "002_S_0295" / "loose.nii"
    shutil.copy(next(adni_root.rglob("*.nii")), stray)
    broken = next((adni_root / "003_S_0296").rglob("*.nii"))
    broken.write_bytes(b"\0" * 10)
    with pytest.raises(BadInputError) as err:
        prepare("adni", adni_root, tmp_path / "a.json", progress=False)
    assert f"{stray}: not at <subject>/<description>/<date>/<image id>/<file>.nii" in str(err.value)
    assert f"{broken}: unreadable NIfTI header" in str(err.value)
    data = prepare("adni", adni_root, tmp_path / "a.json", skip_bad_inputs=True, progress=False)
    assert sum(_splits(data)) == 10
    with pytest.raises(BadInputError, match=r"not found under .*: is this the ADNI folder\?"):
        prepare("adni", adni_root / "002_S_0295", tmp_path / "a.json", progress=False)


ADNI_GROUPS = ("CN", "AD", "CN", "AD", "CN", "AD", "CN", "AD", "MCI", "EMCI")
"""Research group of the miniature's subjects, in order (the first has two scans)."""


@pytest.fixture
def adni_cls_root(adni_root: Path) -> Path:
    """The IDA export with its collection CSV beside the ADNI folder (the IDA writes some image IDs without "I")."""
    rows = ["Image Data ID,Subject,Group,Sex,Age,Visit,Modality,Description,Type,Acq Date,Format,Downloaded"]
    for k, group in enumerate(ADNI_GROUPS):
        subject = f"{k + 2:03d}_S_{295 + k:04d}"
        for scan in range(2 if k == 0 else 1):
            image_id = f"I{40966 + 10 * k + scan}"
            rows.append(f"{image_id if k % 2 else image_id[1:]},{subject},{group},F,75,sc,MRI,MPRAGE,Original,"
                        f"4/18/2006,NiFTI,12/07/2026")
    (adni_root.parent / "ADNI_AD_CN_12_07_2026.csv").write_text("\n".join(rows) + "\n")
    return adni_root.parent


def test_adni_classification_labels_ad_and_cn_by_research_group(adni_cls_root: Path, tmp_path: Path):
    data = prepare("adni_cls", adni_cls_root, tmp_path / "adni_cls.json", seed=1, progress=False)
    assert data["classes"] == ["CN", "AD"]
    studies = data["training"] + data["validation"] + data["test"]
    assert len(studies) == 9 and data["filtered"]["scans of other research groups (MCI, EMCI, LMCI, SMC)"] == 2
    for study in studies:
        k = int(study["group"].split("_S_")[1]) - 295
        assert study["label"] == ["CN", "AD"].index(ADNI_GROUPS[k]) and study["diagnosis"] == ADNI_GROUPS[k]
        assert Path(study["image"]["t1"]).is_file() and study["ida_id"] in study["image"]["t1"]
    for split in ("training", "validation", "test"):
        assert {s["label"] for s in data[split]} == {0, 1}, split  # per class: the validation AUC needs both
    where = {s["ida_id"]: split for split in ("training", "validation", "test") for s in data[split]}
    assert where["I40966"] == where["I40967"]  # one subject's scans in one split


def test_adni_classification_needs_the_collection_csv_and_a_row_per_scan(adni_cls_root: Path, tmp_path: Path):
    sheet = next(adni_cls_root.glob("*.csv"))
    lines = sheet.read_text().splitlines()
    sheet.write_text("\n".join(line for line in lines if not line.startswith("I40976")) + "\n")
    with pytest.raises(BadInputError, match=r"I40976/.*: image I40976 has no row in .*ADNI_AD_CN_12_07_2026.csv"):
        prepare("adni_cls", adni_cls_root, tmp_path / "a.json", progress=False)
    sheet.unlink()
    with pytest.raises(BadInputError, match=r"no IDA collection CSV \(columns Image Data ID, Subject, Group\) under "):
        prepare("adni_cls", adni_cls_root, tmp_path / "a.json", progress=False)
    assert not (tmp_path / "a.json").exists()


PATIENTS = ("TCGA-A1-A0SB", "TCGA-A1-A0SD")


@pytest.fixture
def tcga_root(tmp_path: Path, sample_data: Path) -> Path:
    slide = sample_data / "pathology" / "cmu_small_region.svs"
    root = tmp_path / "gdc"
    slides_of = [("TCGA-BRCA", PATIENTS[0]), ("TCGA-BRCA", PATIENTS[1]), ("TCGA-LUAD", "TCGA-05-4244")]
    for k, (project, patient) in enumerate(slides_of):
        uuid = f"0b1c2d3e-{k:04d}-4f5a-8b9c-0d1e2f3a4b5c"
        (root / project / uuid).mkdir(parents=True)
        shutil.copy(slide, root / project / uuid / f"{patient}-01Z-00-DX1.{uuid.upper()}.svs")
    return root


def test_tcga_tissue_tiles_per_patient_other_projects_left_out(tcga_root: Path, tmp_path: Path):
    from medcoss_monai.transforms.tissue import tissue_tile_locations

    expected = tissue_tile_locations(next(tcga_root.rglob("*.svs")), tile_size=224, level=0, min_tissue=0.5)
    assert 0 < len(expected) < slides.TILES_PER_PATIENT
    data = prepare("tcga", tcga_root, tmp_path / "t.json", cache_dir=tmp_path / "cache", progress=False)
    items = data["training"] + data["validation"] + data["test"]
    assert {it["group"] for it in items} == {f"tcga:{p}" for p in PATIENTS}  # the LUAD slide is left out
    assert data["tiling"]["slides_of_other_projects"] == 1
    for patient in PATIENTS:
        mine = [tuple(it["location"]) for it in items if it["group"] == f"tcga:{patient}"]
        assert mine == [tuple(loc) for loc in expected]
    assert items[0]["size"] == [224, 224] and items[0]["level"] == 0 and items[0]["project"] == "TCGA-BRCA"


def test_tcga_caps_tiles_per_patient_and_resumes(tcga_root: Path, tmp_path: Path, monkeypatch):
    calls = []
    real = slides.list_tiles
    monkeypatch.setattr(slides, "list_tiles", lambda s, out: (calls.append(s), real(s, out)))
    monkeypatch.setattr(slides, "TILES_PER_PATIENT", 5)
    cache = tmp_path / "cache"
    a = prepare("tcga", tcga_root, tmp_path / "a.json", cache_dir=cache, progress=False, seed=1)
    assert len(calls) == 2 and sum(_splits(a)) == 10
    b = prepare("tcga", tcga_root, tmp_path / "b.json", cache_dir=cache, progress=False, seed=1)
    assert len(calls) == 2  # the tile lists in the cache are not redone
    assert b["training"] == a["training"]


def test_tcga_unreadable_slide_is_listed(tcga_root: Path, tmp_path: Path):
    broken = next((tcga_root / "TCGA-BRCA").rglob(f"{PATIENTS[1]}*.svs"))
    broken.write_bytes(b"not a slide")
    with pytest.raises(BadInputError, match=f"{broken.name}: "):
        prepare("tcga", tcga_root, tmp_path / "t.json", cache_dir=tmp_path / "cache", progress=False)
    data = prepare("tcga", tcga_root, tmp_path / "t.json", cache_dir=tmp_path / "cache", skip_bad_inputs=True, progress=False)
    assert json.loads((tmp_path / "t.json").read_text())["rejected"][0]["file"] == str(broken)
    assert {it["group"] for s in ("training", "validation", "test") for it in data[s]} == {f"tcga:{PATIENTS[0]}"}
