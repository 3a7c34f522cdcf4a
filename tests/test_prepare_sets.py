"""Converters of the downstream and BrainMVP sets, and the registry: miniatures of each published layout
built from real sample files (H&E tiles and masks, CT slabs with labels, brain-MRI slabs with labels)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medcoss_monai.data.prepare import DATASETS, catalogue, prepare
from medcoss_monai.data.prepare.registry import converter_of
from medcoss_monai.data.prepare.tiles import NCT_CLASSES
from medcoss_monai.data.prepare.volumes import LITS_TEST
from medcoss_monai.errors import BadInputError

ISSUE_NAMES = ["mimic_cxr_reports", "mimic_cxr_jpg", "deeplesion", "adni", "tcga", "pudmed20k", "chestxr", "qata_cov19",
               "ricord", "lits", "vs", "la", "nct_crc_he", "glas", "brats2021", "brats2023_ssa", "brats2023_men", "ucsf_pdgm"]


def _splits(data: dict) -> list[int]:
    return [len(data[s]) for s in ("training", "validation", "test")]


# ----------------------------------------------------------------------------------------- registry


def test_list_prints_every_data_set_with_source_and_licence():
    out = subprocess.run([sys.executable, "-m", "medcoss_monai.data.prepare", "--list"], capture_output=True, text=True,
                         check=True).stdout
    for name in ISSUE_NAMES:
        assert f"\n{name}" in "\n" + out, name
    assert out.count("source:") == out.count("licence:") == out.count("download:") == len(DATASETS)
    assert "brain_atlas  [not implemented yet]" in out and "deeplesion  [" not in out
    assert catalogue() + "\n" == out


def test_every_catalogue_converter_is_a_function_of_the_package():
    """A typo in datasets.yaml's ``converter`` would only show when a user prepares that data set."""
    with_converter = [s for s in DATASETS.values() if s.converter]
    assert len(with_converter) == len(DATASETS) - 1  # brain_atlas has none
    for spec in with_converter:
        assert callable(converter_of(spec)), spec.name


def test_not_implemented_set_is_refused_clearly(tmp_path: Path):
    with pytest.raises(BadInputError, match="brain_atlas .* not implemented yet"):
        prepare("brain_atlas", tmp_path, tmp_path / "o.json")
    with pytest.raises(BadInputError, match="Unknown data set 'nope'"):
        prepare("nope", tmp_path, tmp_path / "o.json")
    assert not (tmp_path / "o.json").exists()


# ------------------------------------------------------------------------------------ NCT-CRC-HE


@pytest.fixture
def nct_root(tmp_path: Path, tasks_ready: Path) -> Path:
    tiles = sorted((tasks_ready / "tasks" / "pathology_cls" / "images").glob("*.png"))
    root, k = tmp_path / "nct", 0
    for release, per_class in (("NCT-CRC-HE-100K", 5), ("CRC-VAL-HE-7K", 1)):
        for cls in NCT_CLASSES:
            (root / release / cls).mkdir(parents=True)
            for _ in range(per_class):
                Image.open(tiles[k]).convert("RGB").save(root / release / cls / f"{cls}-{k:08d}.tif")
                k += 1
    return root


def test_nct_crc_he_reference_split(nct_root: Path, tmp_path: Path):
    out = tmp_path / "nct.json"
    data = prepare("nct_crc_he", nct_root, out, progress=False)
    assert _splits(data) == [9 * 4, 9, 9] and data["classes"] == list(NCT_CLASSES)
    # per class: the first 4 sorted files train, the 5th validates; CRC-VAL-HE-7K tests
    tum = sorted((nct_root / "NCT-CRC-HE-100K" / "TUM").iterdir())
    assert [it["image"] for it in data["validation"] if it["label"] == 8] == [str(tum[-1])]
    assert all("CRC-VAL-HE-7K" in it["image"] for it in data["test"])


def test_nct_crc_he_tiles_pass_the_task_checks(nct_root: Path, tmp_path: Path):
    from medcoss_monai.bundle.finetune import checked_items, load_task

    out = tmp_path / "nct.json"
    prepare("nct_crc_he", nct_root, out, progress=False)
    task = load_task(out, "nct_crc_he")
    assert len(checked_items(task["training"], len(NCT_CLASSES), modality="pathology")) == 36


def test_nct_crc_he_wrong_root(tmp_path: Path):
    (tmp_path / "NCT-CRC-HE-100K").mkdir()
    expected = r"CRC-VAL-HE-7K not found under .*: is this the NCT-CRC-HE-100K \+ CRC-VAL-HE-7K folder\?"
    with pytest.raises(BadInputError, match=expected):
        prepare("nct_crc_he", tmp_path, tmp_path / "o.json", progress=False)


# ------------------------------------------------------------------------------------------- GlaS


@pytest.fixture
def glas_root(tmp_path: Path, tasks_ready: Path) -> Path:
    from scipy import ndimage

    task = tasks_ready / "tasks" / "pathology_seg"
    pairs = sorted(zip(sorted((task / "images").glob("*.png")), sorted((task / "masks").glob("*.png"))))
    root = tmp_path / "Warwick_QU_Dataset"
    root.mkdir()
    names = [f"train_{i}" for i in range(1, 11)] + ["testA_1", "testA_2", "testB_1"]
    rows = ["name,Patient ID,grade (GlaS),grade (Sirinukunwattana et al. 2015)"]
    for k, (name, (image, mask)) in enumerate(zip(names, pairs)):
        Image.open(image).convert("RGB").save(root / f"{name}.bmp")
        glands, _ = ndimage.label(np.asarray(Image.open(mask)) > 0)  # GlaS numbers each gland
        Image.fromarray(glands.astype(np.uint8)).save(root / f"{name}_anno.bmp")
        rows.append(f"{name},{k},{' benign' if k % 2 else ' malignant'},{'adenomatous' if k % 2 else 'healthy'}")
    (root / "Grade.csv").write_text("\n".join(rows) + "\n")
    return root


def test_glas_reference_split_binary_masks_and_task_loading(glas_root: Path, tmp_path: Path):
    from medcoss_monai.bundle.finetune import checked_items

    data = prepare("glas", glas_root.parent, tmp_path / "glas.json", cache_dir=tmp_path / "cache", progress=False)
    assert _splits(data) == [8, 2, 3]
    # per grade, names sorted as strings, the last 20% validate: benign train_10, _2, _4, _6, _8 -> train_8;
    # malignant train_1, _3, _5, _7, _9 -> train_9
    assert sorted(it["id"] for it in data["validation"]) == ["train_8", "train_9"]
    for it in data["training"] + data["validation"] + data["test"]:
        anno = np.asarray(Image.open(Path(it["image"]).with_name(it["id"] + "_anno.bmp")))
        np.testing.assert_array_equal(np.asarray(Image.open(it["label"])), (anno > 0).astype(np.uint8))
    assert len(checked_items(data["training"], 2, modality="pathology")) == 8


def test_glas_missing_annotation_is_listed(glas_root: Path, tmp_path: Path):
    (glas_root / "train_3_anno.bmp").unlink()
    with pytest.raises(BadInputError, match=r"train_3: train_3_anno.bmp missing \(listed in Grade.csv\)"):
        prepare("glas", glas_root, tmp_path / "o.json", cache_dir=tmp_path / "cache", progress=False)
    data = prepare("glas", glas_root, tmp_path / "o.json", cache_dir=tmp_path / "cache", skip_bad_inputs=True, progress=False)
    assert sum(_splits(data)) == 12


# ------------------------------------------------------------------------------------------- LiTS


@pytest.fixture
def lits_root(tmp_path: Path, tasks_ready: Path) -> Path:
    task = tasks_ready / "tasks" / "ct_seg"
    root = tmp_path / "LiTS"
    numbers = [0, 1, 2, 3, 4, 5]  # 0 and 4 are reference test volumes
    for n, image in zip(numbers, sorted((task / "images").glob("*.nii.gz"))):
        folder = root / ("Training Batch 1" if n < 3 else "Training Batch 2")
        folder.mkdir(parents=True, exist_ok=True)
        img, lab = nib.load(str(image)), nib.load(str(task / "labels" / image.name))
        labels = np.searchsorted([0, 3, 4], np.asarray(lab.dataobj).astype(np.int64))  # to LiTS's 0 / 1 / 2
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj).astype(np.int16), img.affine), str(folder / f"volume-{n}.nii"))
        nib.save(nib.Nifti1Image(labels.astype(np.uint8), lab.affine), str(folder / f"segmentation-{n}.nii"))
    return root


def test_lits_reference_test_split_and_task_loading(lits_root: Path, tmp_path: Path):
    from medcoss_monai.bundle.finetune import checked_items

    assert {0, 4} <= set(LITS_TEST) and not {1, 2, 3, 5} & set(LITS_TEST)
    data = prepare("lits", lits_root, tmp_path / "lits.json", progress=False)
    assert sorted(it["id"] for it in data["test"]) == ["volume-0", "volume-4"]
    assert sorted(it["id"] for it in data["training"] + data["validation"]) == ["volume-1", "volume-2", "volume-3", "volume-5"]
    assert data["split"]["fractions"] == {"validation": 0.1}
    again = prepare("lits", lits_root, tmp_path / "lits2.json", progress=False)
    assert again["validation"] == data["validation"]
    assert len(checked_items(data["test"], 3, modality="ct")) == 2  # masks on the image grid, values 0..2


def test_lits_unpaired_and_mismatched_volumes_are_listed(lits_root: Path, tmp_path: Path):
    (lits_root / "Training Batch 2" / "segmentation-5.nii").unlink()
    seg3 = lits_root / "Training Batch 2" / "segmentation-3.nii"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), str(seg3))
    with pytest.raises(BadInputError) as err:
        prepare("lits", lits_root, tmp_path / "o.json", progress=False)
    assert "volume-5.nii: no segmentation-5.nii beside it" in str(err.value)
    assert f"{seg3}: shape (4, 4, 4) differs from the image's shape" in str(err.value)
    data = prepare("lits", lits_root, tmp_path / "o.json", skip_bad_inputs=True, progress=False)
    assert sum(_splits(data)) == 4 and len(data["rejected"]) == 2


def test_lits_wrong_root(tmp_path: Path):
    with pytest.raises(BadInputError, match=r"volume-\*.nii or volume-\*.nii.gz not found under .*: is this the LiTS folder\?"):
        prepare("lits", tmp_path, tmp_path / "o.json", progress=False)


# ----------------------------------------------------------------------------------- brain MRI sets


@pytest.fixture(scope="module")
def brain(brain_slabs: Path) -> dict[str, nib.Nifti1Image]:
    return {k: nib.load(str(brain_slabs / f"slab0_{k}.nii.gz")) for k in ("t1", "t2", "seg")}


def _crop(img: nib.Nifti1Image, k: int) -> nib.Nifti1Image:
    x0 = 60 + 8 * k  # a different real block for each case
    data = np.asarray(img.dataobj)[x0:x0 + 24, 80:104, 4:20]
    return nib.Nifti1Image(data, img.affine)


def make_cases(root: Path, brain: dict, names: list[str], files: dict[str, str], sep: str) -> None:
    """One folder per case, each file named ``<case><sep><suffix>.nii.gz`` from a real T1 / T2 / label block."""
    for k, case in enumerate(names):
        (root / case).mkdir(parents=True)
        for suffix, source in files.items():
            nib.save(_crop(brain[source], k), str(root / case / f"{case}{sep}{suffix}.nii.gz"))


def test_brats2021_studies_split_and_brainmvp_loading(tmp_path: Path, brain):
    from medcoss_monai.apps.brainmvp.studies import study_datalist

    root = tmp_path / "BraTS2021" / "BraTS2021_Training_Data"
    names = [f"BraTS2021_{i:05d}" for i in range(10)]
    make_cases(root, brain, names, {"t1": "t1", "t1ce": "t1", "t2": "t2", "flair": "t2", "seg": "seg"}, "_")
    out = tmp_path / "brats.json"
    data = prepare("brats2021", tmp_path / "BraTS2021", out, seed=1, progress=False)
    assert _splits(data) == [8, 1, 1] and data["split"]["seed"] == 1
    study = data["training"][0]
    assert sorted(study["image"]) == ["flair", "t1", "t1ce", "t2"] and study["label"].endswith("_seg.nii.gz")
    assert len(study_datalist(out, "training")) == 8  # what the BrainMVP bundles call


def test_brats2021_incomplete_case_is_listed(tmp_path: Path, brain):
    names = [f"BraTS2021_{i:05d}" for i in range(3)]
    make_cases(tmp_path, brain, names, {"t1": "t1", "t1ce": "t1", "t2": "t2", "flair": "t2"}, "_")
    (tmp_path / names[1] / f"{names[1]}_flair.nii.gz").unlink()
    with pytest.raises(BadInputError, match=r"BraTS2021_00001: no flair file"):
        prepare("brats2021", tmp_path, tmp_path / "o.json", progress=False)
    expected = r"BraTS2021_\*/BraTS2021_\*_t1.nii.gz not found under .*: is this the BraTS 2021 folder\?"
    with pytest.raises(BadInputError, match=expected):
        prepare("brats2021", tmp_path / names[0], tmp_path / "o.json", progress=False)


def test_brats2023_time_points_of_one_patient_stay_together(tmp_path: Path, brain):
    names = [f"BraTS-MEN-{p:05d}-{t:03d}" for p in range(6) for t in range(2)]
    make_cases(tmp_path, brain, names, {"t1n": "t1", "t1c": "t1", "t2w": "t2", "t2f": "t2", "seg": "seg"}, "-")
    data = prepare("brats2023_men", tmp_path, tmp_path / "o.json", seed=0, progress=False)
    where = {s["study"]: split for split in ("training", "validation", "test") for s in data[split]}
    for p in range(6):
        assert where[f"BraTS-MEN-{p:05d}-000"] == where[f"BraTS-MEN-{p:05d}-001"]
    assert _splits(data) == [8, 2, 2]


def test_ucsf_pdgm_contrasts(tmp_path: Path, brain):
    names = ["UCSF-PDGM-0004_nifti", "UCSF-PDGM-0005_nifti"]
    files = {"T1": "t1", "T1c": "t1", "T2": "t2", "FLAIR": "t2", "ADC": "t2", "SWI": "t2", "tumor_segmentation": "seg"}
    make_cases(tmp_path, brain, [n for n in names], {}, "_")
    for k, name in enumerate(names):
        for suffix, source in files.items():
            nib.save(_crop(brain[source], k), str(tmp_path / name / f"{name[:-6]}_{suffix}.nii.gz"))
    data = prepare("ucsf_pdgm", tmp_path, tmp_path / "o.json", progress=False)
    study = (data["training"] + data["validation"] + data["test"])[0]
    assert sorted(study["image"]) == ["adc", "flair", "t1", "t1ce", "t2"]
    assert study["label"].endswith("_tumor_segmentation.nii.gz")
    assert json.loads((tmp_path / "o.json").read_text())["numTraining"] == len(data["training"])


# ------------------------------------------------------------------------- ChestXR, QaTa, PubMed 20k


def test_chestxr_reference_split_and_task_loading(tmp_path: Path, sample_data: Path):
    from medcoss_monai.bundle.finetune import checked_items

    pngs = sorted((sample_data / "muscle_mdmoco" / "images").glob("drr_*.png"))
    root, k = tmp_path / "ChestXR", 0
    for release, per_class in (("train", 5), ("validation", 1)):
        for cls in ("covid", "normal", "pneumonia"):
            (root / release / cls).mkdir(parents=True)
            for _ in range(per_class):
                Image.open(pngs[k]).save(root / release / cls / f"{cls}_{k:03d}.png")
                k += 1
    data = prepare("chestxr", root, tmp_path / "c.json", progress=False)
    assert _splits(data) == [12, 3, 3] and data["classes"] == ["covid", "normal", "pneumonia"]
    assert [Path(it["image"]).name for it in data["validation"]] == ["covid_004.png", "normal_009.png", "pneumonia_014.png"]
    assert len(checked_items(data["training"], 3, modality="xray")) == 12
    (root / "validation").rename(root / "val")
    with pytest.raises(BadInputError, match=r"validation not found under .*ChestXR: is this the ChestXR \(COVID-19\) folder\?"):
        prepare("chestxr", root, tmp_path / "c.json", progress=False)


@pytest.fixture
def qata_root(tmp_path: Path, tasks_ready: Path) -> Path:
    task = tasks_ready / "tasks" / "xray_seg"
    pairs = list(zip(sorted((task / "images").glob("*.png")), sorted((task / "masks").glob("*.png"))))[:13]
    root = tmp_path / "QaTa-COV19-v2"
    for k, (image, mask) in enumerate(pairs):
        release = root / ("Train Set" if k < 10 else "Test Set")
        (release / "Images").mkdir(parents=True, exist_ok=True)
        (release / "Ground-truths").mkdir(parents=True, exist_ok=True)
        Image.open(image).save(release / "Images" / f"covid_{k}.png")
        Image.fromarray(((np.asarray(Image.open(mask)) > 0) * 255).astype(np.uint8)).save(
            release / "Ground-truths" / f"mask_covid_{k}.png")
    return root


def test_qata_official_test_seeded_validation_and_task_loading(qata_root: Path, tmp_path: Path):
    from medcoss_monai.bundle.finetune import checked_items

    data = prepare("qata_cov19", qata_root.parent, tmp_path / "q.json", seed=2, progress=False)
    assert _splits(data) == [8, 2, 3] and data["split"]["seed"] == 2
    assert all("Test Set" in it["image"] for it in data["test"])
    assert data["validation"] == prepare("qata_cov19", qata_root, tmp_path / "q2.json", seed=2, progress=False)["validation"]
    assert len(checked_items(data["training"], 2, mask_values=data["mask_values"], modality="xray")) == 8


def test_qata_missing_or_mismatched_masks_are_listed(qata_root: Path, tmp_path: Path):
    (qata_root / "Train Set" / "Ground-truths" / "mask_covid_1.png").unlink()
    Image.new("L", (5, 5)).save(qata_root / "Test Set" / "Ground-truths" / "mask_covid_11.png")
    with pytest.raises(BadInputError) as err:
        prepare("qata_cov19", qata_root, tmp_path / "q.json", progress=False)
    assert "covid_1.png: no Ground-truths/mask_covid_1.png" in str(err.value)
    assert "mask_covid_11.png: size (5, 5) differs" in str(err.value)


def pudmed20k_root(tmp_path: Path, sample_data: Path) -> tuple[Path, list[dict]]:
    """``pubmed-rct/PubMed_20k_RCT/{train,dev,test}.txt`` of nine real reports (sentences labelled by position)."""
    from medcoss_monai.data.reports import load_report_corpus

    reports = load_report_corpus(sample_data / "report" / "NLMCXR_reports.tgz")[:9]
    root = tmp_path / "pubmed-rct" / "PubMed_20k_RCT"
    root.mkdir(parents=True)
    roles = ["BACKGROUND", "OBJECTIVE", "METHODS", "RESULTS", "CONCLUSIONS"]
    for k, name in enumerate(("train", "dev", "test")):
        lines = []
        for r in reports[3 * k:3 * k + 3]:
            lines.append(f"###{r['id']}")
            # PubMed sentences all have words; the anonymised reports' placeholders ("XXXX/XXXX") are left out
            sentences = [t for t in r["text"].split(". ") if re.search(r"[A-Za-z0-9]", re.sub(r"X{2,}", "", t))]
            lines += [f"{roles[i % 5]}\t{t}" for i, t in enumerate(sentences)]
            lines.append("")
        (root / f"{name}.txt").write_text("\n".join(lines))
    return root, reports


def test_pudmed20k_official_files(tmp_path: Path, sample_data: Path):
    root, reports = pudmed20k_root(tmp_path, sample_data)
    roles = ["BACKGROUND", "OBJECTIVE", "METHODS", "RESULTS", "CONCLUSIONS"]
    data = prepare("pudmed20k", root.parent, tmp_path / "p.json", progress=False)
    assert data["classes"] == sorted(roles)
    assert {it["abstract_id"] for it in data["test"]} == {r["id"] for r in reports[6:9]}
    first = data["training"][0]
    assert first["label"] == sorted(roles).index("BACKGROUND") and first["text"] == reports[0]["text"].split(". ")[0]
    (root / "dev.txt").unlink()
    with pytest.raises(BadInputError, match=r"dev.txt not found under .*PubMed_20k_RCT: is this the PubMed 20k RCT folder\?"):
        prepare("pudmed20k", root, tmp_path / "p.json", progress=False)


def test_brats2018_grades_as_class_labels(tmp_path: Path, brain):
    base = tmp_path / "MICCAI_BraTS_2018_Data_Training"
    files = {"t1": "t1", "t1ce": "t1", "t2": "t2", "flair": "t2", "seg": "seg"}
    make_cases(base / "HGG", brain, [f"Brats18_CBICA_A{i:02d}_1" for i in range(6)], files, "_")
    make_cases(base / "LGG", brain, [f"Brats18_TCIA10_{i:03d}_1" for i in range(4)], files, "_")
    data = prepare("brats2018", tmp_path, tmp_path / "o.json", progress=False)
    studies = data["training"] + data["validation"] + data["test"]
    assert data["classes"] == ["LGG", "HGG"] and len(studies) == 10
    assert {s["study"]: s["label"] for s in studies}["Brats18_TCIA10_002_1"] == 0
    assert sum(s["label"] for s in studies) == 6 and all(s["seg"].endswith("_seg.nii.gz") for s in studies)
    # split per grade: the validation AUC that picks the epoch has both grades
    assert [sorted(s["label"] for s in data[k]) for k in ("training", "validation", "test")] == [[0, 0, 1, 1, 1, 1], [0, 1], [0, 1]]


def test_upenn_gbm_manual_else_automated_segmentation(tmp_path: Path, brain):
    nifti = tmp_path / "NIfTI-files"
    names = ["UPENN-GBM-00001_11", "UPENN-GBM-00002_11"]
    make_cases(nifti / "images_structural", brain, names, {"T1": "t1", "T1GD": "t1", "T2": "t2", "FLAIR": "t2"}, "_")
    (nifti / "images_segm").mkdir()
    (nifti / "automated_segm").mkdir()
    nib.save(_crop(brain["seg"], 0), str(nifti / "images_segm" / f"{names[0]}_segm.nii.gz"))
    for name in names:
        nib.save(_crop(brain["seg"], 0), str(nifti / "automated_segm" / f"{name}_automated_approx_segm.nii.gz"))
    data = prepare("upenn_gbm", tmp_path, tmp_path / "o.json", progress=False)
    studies = {s["study"]: s for s in data["training"] + data["validation"] + data["test"]}
    assert studies[names[0]]["segmentation_source"] == "manual" and studies[names[1]]["segmentation_source"] == "automated"
    assert sorted(studies[names[0]]["image"]) == ["flair", "t1", "t1ce", "t2"]


def test_isles22_bids_layout(tmp_path: Path, brain):
    from medcoss_monai.apps.brainmvp.studies import study_datalist

    for k in range(3):
        case = f"sub-strokecase{k + 1:04d}"
        session = tmp_path / "ISLES-2022" / "rawdata" / case / "ses-0001"
        (session / "dwi").mkdir(parents=True)
        (session / "anat").mkdir()
        nib.save(_crop(brain["t2"], k), str(session / "dwi" / f"{case}_ses-0001_adc.nii.gz"))
        nib.save(_crop(brain["t1"], k), str(session / "dwi" / f"{case}_ses-0001_dwi.nii.gz"))
        nib.save(_crop(brain["t2"], k), str(session / "anat" / f"{case}_ses-0001_FLAIR.nii.gz"))
        masks = tmp_path / "ISLES-2022" / "derivatives" / case / "ses-0001"
        masks.mkdir(parents=True)
        if k != 2:
            nib.save(_crop(brain["seg"], k), str(masks / f"{case}_ses-0001_msk.nii.gz"))
    with pytest.raises(BadInputError, match=r"sub-strokecase0003/ses-0001: no msk file"):
        prepare("isles22", tmp_path, tmp_path / "o.json", progress=False)
    out = tmp_path / "o.json"
    data = prepare("isles22", tmp_path, out, skip_bad_inputs=True, progress=False)
    assert sum(_splits(data)) == 2 and sorted(data["training"][0]["image"]) == ["adc", "dwi", "flair"]
    assert len(study_datalist(out, "training")) == len(data["training"])


def test_seeded_split_gives_a_small_set_a_validation_item():
    from medcoss_monai.data.prepare.common import seeded_split

    def sizes(n: int) -> list[int]:
        splits, _ = seeded_split([{"k": i} for i in range(n)], {"validation": 0.1}, seed=0)
        return [len(splits["training"]), len(splits["validation"])]

    # 10% of 3 rounds to none; one case validates while another is left to train; big sets keep their share
    assert [sizes(1), sizes(2), sizes(3), sizes(20)] == [[1, 0], [1, 1], [2, 1], [18, 2]]
    # per class: 18 of class 0 and 2 of class 1 give a validation split with both classes (2 + 1)
    items = [{"k": i, "label": int(i >= 18)} for i in range(20)]
    splits, record = seeded_split(items, {"validation": 0.1}, seed=0, stratify=lambda it: it["label"])
    assert sorted(it["label"] for it in splits["validation"]) == [0, 0, 1] and record["stratified"] is True
    assert seeded_split(items, {"validation": 0.1}, seed=0)[0]["validation"] != splits["validation"]


def test_a_converter_field_that_monai_reads_as_meta_data_is_a_bug(tmp_path: Path):
    from medcoss_monai.data.prepare.common import PrepareContext, finish

    ctx = PrepareContext(name="adni", title="ADNI", root=tmp_path)
    # Spacingd would call "I40966".update(meta) on such an item: refused before any datalist is written
    with pytest.raises(RuntimeError, match=r"adni converter writes item fields \['image_id'\]"):
        finish({"training": [{"image": "a.nii", "image_id": "I40966"}]}, ctx, tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists()
