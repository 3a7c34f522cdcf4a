"""Derived task datasets on the real sample data, paper-format loaders and label checks."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medcoss_monai.layout import read_stage_bundle
from medcoss_monai.data.checks import BadInputError
from medcoss_monai.data.folder_datalists import (
    check_task_labels,
    datalist_from_class_folders,
    datalist_from_image_mask_folders,
    datalist_from_labelled_sentences,
)
from medcoss_monai.samples.sample_tasks import GRID_3D, MRI_PERCENTILES, SPACING_3D
from medcoss_monai.samples.tasks import TASKS, load_task_datalist, prepare_task, prepare_tasks, task_datalist_path


@pytest.fixture(scope="module")
def tasks(sample_data):
    prepare_tasks(verbose=False)  # idempotent: a no-op once the cache holds them
    return {t: load_task_datalist(t, prepare=False) for t in TASKS}


def _ids(items, key="image"):
    return {str(it[key]) if key in it else it["id"] for it in items}


def test_splits_fixed_disjoint_and_written(tasks):
    for name, data in tasks.items():
        for split in ("training", "validation", "test"):
            assert data[split], f"{name}: empty {split}"
        key = "text" if name == "text_cls" else "image"
        a, b, c = (_ids(data[s], "id" if key == "text" else key) for s in ("training", "validation", "test"))
        assert not (a & b or a & c or b & c), f"{name}: splits overlap"
        assert data["seed"] == 0


def test_text_cls_labels(tasks, datalist):
    data = tasks["text_cls"]
    assert len(data["classes"]) == 8 and data["classes"][0] == "normal"
    items = data["training"] + data["validation"] + data["test"]
    reports = datalist("report")
    assert len(items) == len(reports["validation"]) + len(reports["test"]) and len(data["test"]) >= 1000
    assert {it["id"] for it in data["test"]} == {it["id"] for it in reports["test"]}
    labels = np.array([it["label"] for it in items])
    assert labels.shape == (len(items), 8) and set(np.unique(labels)) == {0, 1}
    assert labels.sum(0).min() >= 10, "every class has examples"
    check_task_labels(data["training"][:50], 8)


def test_xray_tasks_bone_of_the_tibia_film(tasks):
    cls = tasks["xray_cls"]
    assert data_sources(cls) == {"xray/RG3_J2KI.dcm"}
    assert {it["label"] for it in cls["training"]} == {0, 1} and {it["label"] for it in cls["test"]} == {0, 1}
    with Image.open(cls["training"][0]["image"]) as im:
        assert im.size == (96, 96)
    # bone is brighter than soft tissue on a film: the class means say the labels follow the anatomy
    mean = {c: np.mean([np.asarray(Image.open(it["image"])).mean() for it in cls["training"] if it["label"] == c]) for c in (0, 1)}
    assert mean[1] > mean[0]
    seg = tasks["xray_seg"]
    check_task_labels(seg["training"] + seg["test"], 2, mask_values=[0, 255])
    bone = np.asarray(Image.open(Path(seg["training"][0]["image"]).parents[1] / "tibia_bone_mask.png")) > 0
    assert 0.03 < bone.mean() < 0.2, "tibia and fibula cover a plausible share of the film"


def data_sources(data):
    return {it["source"] for s in ("training", "validation", "test") for it in data[s]}


def test_3d_tasks_align(tasks):
    for name, positive in (("ct_cls", "heart"), ("mri_cls", "cerebellum")):
        data = tasks[name]
        assert data["classes"][1] == positive
        img = nib.load(data["test"][0]["image"])
        assert img.shape == GRID_3D and np.allclose(img.header.get_zooms(), SPACING_3D)
        assert {it["label"] for it in data["training"]} == {0, 1} and {it["label"] for it in data["test"]} == {0, 1}
    ct = tasks["ct_seg"]
    assert ct["classes"] == ["background", "lung", "heart", "liver", "bone"]
    check_task_labels(ct["training"] + ct["test"], 5)
    present = set()
    for it in ct["training"] + ct["validation"] + ct["test"]:
        image, label = nib.load(it["image"]), nib.load(it["label"])
        assert np.allclose(image.affine, label.affine) and image.shape[2] == GRID_3D[2]
        values = np.asarray(label.dataobj)
        present |= set(np.unique(values).tolist())
        # lungs are air-filled: their voxels are far below soft tissue in HU
        lung = np.asarray(image.dataobj)[values == 1]
        assert lung.size == 0 or np.median(lung) < -500
    assert present == {0, 1, 2, 3, 4}
    mri = tasks["mri_seg"]
    assert mri["classes"] == ["background", "cortex", "deep grey matter", "ventricles", "cerebellum and brainstem"]
    check_task_labels(mri["training"] + mri["test"], 5)
    for split in ("training", "test"):
        counts = np.bincount(np.asarray(nib.load(mri[split][0]["label"]).dataobj).ravel(), minlength=5)
        assert (counts[1:] > 0).all(), f"mri_seg {split}: a region class is missing"


def test_3d_grid_is_the_stages_grid():
    """The 3D tasks are cut on the grid the CT and MRI stages train on, with the MRI stage's percentiles."""
    for modality in ("ct", "mri"):
        stage = read_stage_bundle(modality)
        assert tuple(stage.get_parsed_content(f"{modality}_spacing")) == SPACING_3D, modality
        assert tuple(stage.get_parsed_content("img_size_3d")) == GRID_3D, modality
    assert tuple(read_stage_bundle("mri").get_parsed_content("percentiles")) == MRI_PERCENTILES


def test_mri_tissue_seg_labels_and_hemisphere_split(tasks):
    data = tasks["mri_tissue_seg"]
    assert data["classes"] == ["background", "grey matter", "white matter"]
    items = {s: data[s][0] for s in ("training", "validation", "test")}
    check_task_labels(list(items.values()), 3)
    centres = {}
    for split, it in items.items():
        image, label = nib.load(it["image"]), nib.load(it["label"])
        assert np.allclose(image.affine, label.affine) and np.allclose(image.header.get_zooms(), SPACING_3D)
        assert all(s >= g for s, g in zip(image.shape, GRID_3D))
        counts = np.bincount(np.asarray(label.dataobj).ravel(), minlength=3)
        assert counts[1] > 0.05 * counts.sum() and counts[2] > 0.03 * counts.sum(), f"{split}: tissue missing"
        centres[split] = nib.affines.apply_affine(image.affine, (np.asarray(image.shape) - 1) / 2)
    # world coordinates (RAS): training is the left hemisphere, validation anterior to test
    assert centres["training"][0] < centres["validation"][0] and centres["training"][0] < centres["test"][0]
    assert centres["validation"][1] > centres["test"][1]


def test_pathology_tasks_nuclei_of_the_held_out_image(tasks):
    cls = tasks["pathology_cls"]
    assert data_sources(cls) == {"pathology/target_image.png"}
    assert {it["label"] for it in cls["training"]} == {0, 1}
    seg = tasks["pathology_seg"]
    check_task_labels(seg["test"], 2, mask_values=[0, 255])
    nuclei = [np.asarray(Image.open(it["label"])).mean() / 255 for it in seg["training"]]
    assert 0.1 < np.mean(nuclei) < 0.5
    # haematoxylin-stained nuclei are darker than the rest of the tile
    it = seg["training"][0]
    rgb, mask = np.asarray(Image.open(it["image"]), np.float32), np.asarray(Image.open(it["label"])) > 0
    assert rgb[mask].mean() < rgb[~mask].mean()


def test_prepare_is_idempotent(tasks):
    path = task_datalist_path("xray_seg")
    before = path.stat().st_mtime_ns
    assert prepare_task("xray_seg") == path
    assert path.stat().st_mtime_ns == before


def test_label_checks_name_the_file(tasks, tmp_path):
    item = dict(tasks["xray_cls"]["training"][0], label=5)
    with pytest.raises(BadInputError, match=Path(item["image"]).name + r".*outside the class list"):
        check_task_labels([item], 2)
    with pytest.raises(BadInputError, match="multi-label"):
        check_task_labels([{"text": "x", "id": "r1", "label": [0, 1, 2]}], 3)
    # a 2D mask of the wrong shape
    seg = tasks["xray_seg"]["training"][0]
    bad_mask = tmp_path / "bad_mask.png"
    Image.fromarray(np.zeros((64, 128), np.uint8)).save(bad_mask)
    with pytest.raises(BadInputError, match=r"bad_mask\.png: mask shape"):
        check_task_labels([{"image": seg["image"], "label": str(bad_mask)}], 2, mask_values=[0, 255])
    # a 3D mask with the right shape but another spacing
    vol = tasks["ct_seg"]["training"][0]
    label = nib.load(vol["label"])
    affine = label.affine.copy()
    affine[0, 0] *= 2
    wrong = tmp_path / "wrong_spacing.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(label.dataobj), affine), wrong)
    with pytest.raises(BadInputError, match=r"wrong_spacing\.nii\.gz: mask spacing"):
        check_task_labels([{"image": vol["image"], "label": str(wrong)}], 5)
    # mask values outside the class list
    many = tmp_path / "values.nii.gz"
    nib.save(nib.Nifti1Image((np.asarray(label.dataobj) > 0).astype(np.uint8) * 7, label.affine), many)
    with pytest.raises(BadInputError, match=r"values\.nii\.gz: mask values \[7\]"):
        check_task_labels([{"image": vol["image"], "label": str(many)}], 5)


def test_class_folders_and_image_mask_folders(tasks, tmp_path):
    cls = tasks["xray_cls"]["training"]
    root = tmp_path / "chestxr"
    for it in cls[:12]:
        folder = root / ("bone" if it["label"] == 1 else "soft tissue")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(it["image"], folder)
    data = datalist_from_class_folders(root)
    assert data["classes"] == sorted({"bone" if it["label"] == 1 else "soft tissue" for it in cls[:12]})
    items = data["training"] + data["validation"] + data["test"]
    assert len(items) == 12 and all(Path(it["image"]).parent.name == data["classes"][it["label"]] for it in items)
    with pytest.raises(BadInputError, match="not in the class list"):
        datalist_from_class_folders(root, classes=["bone"])

    seg = tasks["xray_seg"]["training"][:5]
    images, masks = tmp_path / "Images", tmp_path / "Ground-truths"
    images.mkdir(), masks.mkdir()
    for it in seg:
        shutil.copy(it["image"], images / Path(it["image"]).name)
        shutil.copy(it["label"], masks / ("mask_" + Path(it["label"]).name))  # QaTa-COV19 naming
    data = datalist_from_image_mask_folders(images, masks, validation_fraction=0.2, test_fraction=0.2)
    pairs = data["training"] + data["validation"] + data["test"]
    assert len(pairs) == 5 and all(Path(p["label"]).name == "mask_" + Path(p["image"]).name for p in pairs)
    check_task_labels(pairs, 2, mask_values=[0, 255])
    (masks / ("mask_" + Path(seg[0]["image"]).name)).unlink()
    with pytest.raises(BadInputError, match=Path(seg[0]["image"]).name):
        datalist_from_image_mask_folders(images, masks)


def test_labelled_sentences(tmp_path):
    corpus = tmp_path / "pubmed"
    corpus.mkdir()
    (corpus / "train.txt").write_text(
        "###24491034\nBACKGROUND\tThe emergence of resistance is a concern .\nMETHODS\tWe randomised 40 patients .\n\n"
        "###24854809\nRESULTS\tMortality fell .\nCONCLUSIONS\tIt works .\n"
    )
    (corpus / "test.txt").write_text("###1\nMETHODS\tA trial .\n")
    data = datalist_from_labelled_sentences(corpus)
    assert data["classes"] == ["BACKGROUND", "CONCLUSIONS", "METHODS", "RESULTS"]
    assert len(data["training"]) == 4 and len(data["test"]) == 1 and data["validation"] == []
    assert data["training"][1] == {"text": "We randomised 40 patients .", "label": 2, "abstract_id": "24491034"}
    (corpus / "test.txt").write_text("###1\nno tab on this line\n")
    with pytest.raises(BadInputError, match=r"test\.txt:2"):
        datalist_from_labelled_sentences(corpus)
    with pytest.raises(BadInputError, match="OTHER"):
        (corpus / "test.txt").write_text("OTHER\tx\n")
        datalist_from_labelled_sentences(corpus, classes=["BACKGROUND", "CONCLUSIONS", "METHODS", "RESULTS"])
