"""MUSCLE's data: DRR projection, the sample tasks and step 1's list, balanced sampling, dataset-layout loaders."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medcoss_monai.samples import radiographs as drr
from medcoss_monai.apps.muscle import xray_layouts as xl
from medcoss_monai.apps.muscle.balance import dataset_balance_weights
from medcoss_monai.samples.muscle_sample_tasks import (
    DET_CLASSES,
    IMAGE_SIZE,
    MUSCLE_SOURCES,
    MUSCLE_TASKS,
    load_mdmoco_items,
)
from medcoss_monai.samples.tasks import load_task_datalist, prepare_tasks
from medcoss_monai.errors import BadInputError


@pytest.fixture(scope="module")
def muscle(sample_data):
    prepare_tasks(list(MUSCLE_TASKS), verbose=False)
    return {t: load_task_datalist(t, prepare=False) for t in MUSCLE_TASKS}


@pytest.fixture(scope="module")
def mdmoco(sample_data):
    return load_mdmoco_items()


# ------------------------------------------------------------------------------------------------- DRR


def test_projection_of_a_known_volume():
    """A 10-voxel water cube in air, 2 mm voxels: line integral 0.02 * 10 * 2 = 0.4 over its footprint,
    laid out as a film (superior at the top, the patient's right on the left)."""
    hu = torch.full((30, 20, 40), -1000.0)
    hu[18:28, 5:15, 25:35] = 0.0  # patient's right (high X in RAS), superior (high Z)
    p = drr.project_ap(drr.attenuation_from_hu(hu), step_mm=2.0)
    assert p.shape == (40, 30)
    footprint = p > 0
    rows, cols = np.nonzero(footprint.numpy())
    assert (rows.min(), rows.max()) == (40 - 35, 40 - 26) and (cols.min(), cols.max()) == (30 - 28, 30 - 19)
    assert torch.allclose(p[footprint], torch.full_like(p[footprint], 0.4))
    assert drr.mask_box(footprint) == [2, 5, 12, 15]
    assert torch.equal(drr.project_mask(hu > -500), footprint)
    # a 90-degree turn about the vertical axis makes the AP view a lateral one, on a non-square plane too:
    # a centred 10 x 4 slab (X x Y) is 10 voxels deep after the turn, 4 voxels wide
    slab = torch.full((30, 20, 8), -1000.0)
    slab[10:20, 8:12, :] = 0.0
    lateral = drr.project_ap(drr.rotate_about_si(drr.attenuation_from_hu(slab), 90), 2.0)
    assert torch.allclose(lateral.max(), torch.tensor(0.4), atol=0.02)
    assert int((lateral[4] > 0.2).sum()) == 4


def test_lung_and_lesion_boxes_lie_inside_the_projected_body(sample_data):
    view = drr.chest_views("lung2", (0,), IMAGE_SIZE)[0]
    image, masks = view["image"], view["masks"]
    assert image.shape == (IMAGE_SIZE, IMAGE_SIZE) and 0 <= float(image.min()) and float(image.max()) <= 1
    body = drr.mask_box(image > 0.15)
    for cls in DET_CLASSES:
        box = drr.mask_box(masks[cls])
        assert box is not None, cls
        assert body[0] <= box[0] < box[2] <= body[2] and body[1] <= box[1] < box[3] <= body[3], (cls, box, body)
    right, left = drr.mask_box(masks["right lung"]), drr.mask_box(masks["left lung"])
    assert right[0] < left[0], "the patient's right lung is on the film's left"
    # lungs are air: darker on the film than the rest of the body (mediastinum, spine, abdomen)
    lungs = masks["right lung"] | masks["left lung"]
    assert float(image[lungs].mean()) + 0.05 < float(image[(image > 0.15) & ~lungs].mean())
    lesion = drr.mask_box(masks["lesion"])
    assert right[0] <= (lesion[0] + lesion[2]) / 2 <= left[2]


# -------------------------------------------------------------------------------------- sample tasks


def test_muscle_tasks_items_and_splits_by_file(muscle):
    for name, data in muscle.items():
        for split in ("training", "validation", "test"):
            assert data[split], f"{name}: empty {split}"
            sources = {it["source"] for it in data[split]}
            assert sources <= set(MUSCLE_SOURCES[split]), (name, split, sources)
    cls = muscle["muscle_bodypart_cls"]
    assert cls["classes"] == ["other", "chest"]
    for split in ("training", "validation", "test"):
        assert Counter(it["label"] for it in cls[split]).keys() == {0, 1}
    with Image.open(cls["test"][0]["image"]) as im:
        assert im.size == (IMAGE_SIZE, IMAGE_SIZE) and im.mode == "L"
    seg = muscle["muscle_lung_seg"]
    for it in seg["training"] + seg["test"]:
        mask = np.asarray(Image.open(it["label"]))
        assert set(np.unique(mask)) == {0, 255} and 0.05 < (mask > 0).mean() < 0.6
    det = muscle["muscle_chest_det"]
    assert det["classes"] == DET_CLASSES
    for split in ("training", "validation", "test"):
        for it in det[split]:
            assert len(it["boxes"]) == len(it["labels"]) >= 2
            assert all(0 <= b[0] < b[2] <= IMAGE_SIZE and 0 <= b[1] < b[3] <= IMAGE_SIZE for b in it["boxes"])
    assert any(2 in it["labels"] for it in det["training"]) and not any(2 in it["labels"] for it in det["test"])


def test_mdmoco_list_holds_training_side_files_of_three_datasets(mdmoco):
    assert {it["source"] for it in mdmoco} == set(MUSCLE_SOURCES["training"])
    assert set(Counter(it["dataset"] for it in mdmoco)) == {"film_chest", "drr_chest", "drr_head"}
    assert all(Path(it["image"]).is_file() for it in mdmoco)


def test_balanced_sampler_draws_each_dataset_equally(mdmoco):
    from monai.data import DistributedWeightedRandomSampler

    counts = Counter(it["dataset"] for it in mdmoco)
    assert max(counts.values()) >= 3 * min(counts.values()), "the sample datasets are unbalanced to start with"
    weights = dataset_balance_weights(mdmoco)
    assert np.isclose(sum(weights), 1.0)
    torch.manual_seed(0)
    sampler = DistributedWeightedRandomSampler(mdmoco, weights, num_samples_per_rank=6000, num_replicas=1, rank=0, shuffle=False)
    drawn = Counter(mdmoco[i]["dataset"] for i in sampler)
    assert all(abs(n / 6000 - 1 / 3) < 0.03 for n in drawn.values()), drawn


# ------------------------------------------------------------------------------------------ layouts


@pytest.fixture(scope="module")
def pngs(muscle):
    """Real sample images (film tiles and DRRs) and a real lung mask, to build dataset folders from."""
    cls = muscle["muscle_bodypart_cls"]["training"]
    seg = muscle["muscle_lung_seg"]["training"]
    return [Path(it["image"]) for it in cls[:6]], Path(seg[0]["image"]), Path(seg[0]["label"])


def test_pneumonia_class_folders(pngs, tmp_path):
    images, _, _ = pngs
    for i, (split, cls) in enumerate([("train", "NORMAL"), ("train", "PNEUMONIA"), ("test", "NORMAL"), ("test", "PNEUMONIA")]):
        (tmp_path / split / cls).mkdir(parents=True)
        shutil.copy(images[i], tmp_path / split / cls / f"person{i}.jpeg")
    data = xl.pneumonia_datalist(tmp_path)
    assert data["classes"] == ["NORMAL", "PNEUMONIA"]
    assert sorted(it["label"] for it in data["training"]) == [0, 1] and len(data["test"]) == 2
    assert all(it["dataset"] == "pneumonia" for it in data["training"])


def test_mura_csv_layout(pngs, tmp_path):
    images, _, _ = pngs
    rows = {"train": [], "valid": []}
    for i, (split, part, patient, study) in enumerate([
        ("train", "XR_WRIST", "patient00001", "study1_positive"), ("train", "XR_WRIST", "patient00001", "study2_negative"),
        ("train", "XR_HAND", "patient00002", "study1_negative"), ("valid", "XR_ELBOW", "patient11185", "study1_positive"),
    ]):
        rel = Path("MURA-v1.1") / split / part / patient / study / "image1.png"
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(images[i], tmp_path / rel)
        rows[split].append(str(rel))
    for split, paths in rows.items():
        (tmp_path / "MURA-v1.1" / f"{split}_image_paths.csv").write_text("\n".join(paths) + "\n")
    data = xl.mura_datalist(tmp_path, validation_fraction=0.5)
    train = data["training"] + data["validation"]
    assert len(train) == 3 and len(data["test"]) == 1 and data["test"][0]["label"] == 1
    assert {it["body_part"] for it in train} == {"wrist", "hand"}
    by_group = {it["group"]: {s for s in ("training", "validation") for x in data[s] if x["group"] == it["group"]} for it in train}
    assert all(len(s) == 1 for s in by_group.values()), "a patient lands in one split"
    assert sorted(it["label"] for it in train if it["body_part"] == "wrist") == [0, 1]
    (tmp_path / "MURA-v1.1" / "valid_image_paths.csv").write_text("MURA-v1.1/valid/XR_ELBOW/patient1/nostudy/image1.png\n")
    with pytest.raises(BadInputError, match="valid_image_paths.csv"):
        xl.mura_datalist(tmp_path)


def test_lung_mask_folders_montgomery_merges_left_and_right(pngs, tmp_path):
    _, image, mask = pngs
    full = np.asarray(Image.open(mask)) > 0
    left, right = full.copy(), full.copy()
    left[:, : full.shape[1] // 2], right[:, full.shape[1] // 2 :] = False, False
    for d in ("CXR_png", "ManualMask/leftMask", "ManualMask/rightMask"):
        (tmp_path / d).mkdir(parents=True)
    for i in range(4):
        shutil.copy(image, tmp_path / "CXR_png" / f"MCUCXR_{i:04d}_0.png")
        Image.fromarray(left.astype(np.uint8) * 255).save(tmp_path / "ManualMask/leftMask" / f"MCUCXR_{i:04d}_0.png")
        Image.fromarray(right.astype(np.uint8) * 255).save(tmp_path / "ManualMask/rightMask" / f"MCUCXR_{i:04d}_0.png")
    data = xl.lung_mask_datalist(tmp_path / "CXR_png", [tmp_path / "ManualMask/leftMask", tmp_path / "ManualMask/rightMask"],
                                 merged_dir=tmp_path / "merged", dataset="montgomery")
    items = data["training"] + data["validation"] + data["test"]
    assert len(items) == 4 and all(it["dataset"] == "montgomery" for it in items)
    assert np.array_equal(np.asarray(Image.open(items[0]["label"])) > 0, full)
    # Shenzhen / "Chest X-ray Masks and Labels": one folder, <stem>_mask.png
    (tmp_path / "mask").mkdir()
    for i in range(4):
        shutil.copy(mask, tmp_path / "mask" / f"MCUCXR_{i:04d}_0_mask.png")
    single = xl.lung_mask_datalist(tmp_path / "CXR_png", tmp_path / "mask", dataset="shenzhen")
    assert all(Path(it["label"]).name.endswith("_mask.png") for s in ("training", "test") for it in single[s])
    (tmp_path / "mask" / "MCUCXR_0000_0_mask.png").unlink()
    with pytest.raises(BadInputError, match="MCUCXR_0000_0.png"):
        xl.lung_mask_datalist(tmp_path / "CXR_png", tmp_path / "mask")


def test_tbx11k_coco_boxes(pngs, tmp_path):
    images, _, _ = pngs
    (tmp_path / "imgs" / "tb").mkdir(parents=True)
    (tmp_path / "imgs" / "health").mkdir(parents=True)
    (tmp_path / "annotations" / "json").mkdir(parents=True)
    names = ["tb/tb0001.png", "tb/tb0002.png", "health/h0001.png"]
    for src, name in zip(images, names):
        shutil.copy(src, tmp_path / "imgs" / name)
    coco = {
        "categories": [{"id": 1, "name": "ActiveTuberculosis"}, {"id": 2, "name": "ObsoletePulmonaryTuberculosis"}],
        "images": [{"id": i, "file_name": n} for i, n in enumerate(names)],
        "annotations": [{"image_id": 0, "category_id": 1, "bbox": [10, 20, 30, 40]},
                        {"image_id": 0, "category_id": 2, "bbox": [50, 50, 10, 5]},
                        {"image_id": 1, "category_id": 2, "bbox": [0, 0, 8, 8]}],
    }
    (tmp_path / "annotations/json/TBX11K_train.json").write_text(json.dumps(coco))
    (tmp_path / "annotations/json/TBX11K_val.json").write_text(json.dumps({**coco, "images": coco["images"][:1], "annotations": coco["annotations"][:2]}))
    data = xl.tbx11k_datalist(tmp_path, validation_fraction=0.0)
    assert data["classes"] == ["ActiveTuberculosis", "ObsoletePulmonaryTuberculosis"]
    by_name = {Path(it["image"]).name: it for it in data["training"]}
    assert by_name["tb0001.png"]["boxes"] == [[10, 20, 40, 60], [50, 50, 60, 55]] and by_name["tb0001.png"]["labels"] == [0, 1]
    assert by_name["h0001.png"]["boxes"] == [] and len(data["test"]) == 1
    coco["annotations"][0]["bbox"] = [10, 20, 0, 40]
    (tmp_path / "annotations/json/TBX11K_train.json").write_text(json.dumps(coco))
    with pytest.raises(BadInputError, match="TBX11K_train.json.*annotation 0"):
        xl.tbx11k_datalist(tmp_path)


def test_split_by_group_keeps_each_patient_on_one_side():
    # 40 patients with 1 to 4 images each, and 5 images without a patient (each its own group)
    items = [{"image": f"p{p}_{k}.png", "group": f"p{p}"} for p in range(40) for k in range(p % 4 + 1)]
    items += [{"image": f"loose{k}.png"} for k in range(5)]
    fractions = {"training": 1.0, "validation": 0.1, "test": 0.3}
    split = xl.split_by_group(items, fractions, seed=0)
    groups = {name: {it.get("group", it["image"]) for it in split[name]} for name in split}
    assert len(groups["validation"]) == round(0.1 * 45) and len(groups["test"]) == round(0.3 * 45)
    assert not (groups["training"] & groups["validation"] or groups["training"] & groups["test"]
                or groups["validation"] & groups["test"])
    assert sorted(it["image"] for s in split.values() for it in s) == sorted(it["image"] for it in items)
    assert all(split[name] == [it for it in items if it in split[name]] for name in split)  # order of ``items``
    assert split == xl.split_by_group(items, fractions, seed=0)
    assert split["test"] != xl.split_by_group(items, fractions, seed=1)["test"]


def test_chestxray14_data_entry_csv(pngs, tmp_path):
    images, _, _ = pngs
    (tmp_path / "images_001" / "images").mkdir(parents=True)
    rows = [("00000001_000.png", "Cardiomegaly|Effusion", "1"), ("00000001_001.png", "No Finding", "1"),
            ("00000002_000.png", "Hernia", "2"), ("00000003_000.png", "No Finding", "3")]
    for src, (name, _, _) in zip(images, rows):
        shutil.copy(src, tmp_path / "images_001" / "images" / name)
    with open(tmp_path / "Data_Entry_2017.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Image Index", "Finding Labels", "Follow-up #", "Patient ID"])
        w.writerows([(n, f, "0", p) for n, f, p in rows])
    (tmp_path / "test_list.txt").write_text("00000003_000.png\n")
    data = xl.chestxray14_datalist(tmp_path, validation_fraction=0.0)
    assert [Path(it["image"]).name for it in data["test"]] == ["00000003_000.png"]
    labels = {Path(it["image"]).name: it["label"] for it in data["training"]}
    assert labels["00000001_000.png"] == [int(c in ("Cardiomegaly", "Effusion")) for c in xl.CHESTXRAY14_CLASSES]
    assert sum(labels["00000001_001.png"]) == 0 and labels["00000002_000.png"][-1] == 1
    with open(tmp_path / "Data_Entry_2017.csv", "a", newline="") as f:
        f.write("99999999_000.png,No Finding,0,9\n")
    with pytest.raises(BadInputError, match="Data_Entry_2017.csv: line 6"):
        xl.chestxray14_datalist(tmp_path)


def test_bone_age_csv_and_mdmoco_pooling(pngs, tmp_path):
    images, _, _ = pngs
    (tmp_path / "boneage-training-dataset").mkdir()
    for i, src in enumerate(images[:5]):
        shutil.copy(src, tmp_path / "boneage-training-dataset" / f"{1377 + i}.png")
    lines = ["id,boneage,male"] + [f"{1377 + i},{100 + i},{'True' if i % 2 else 'False'}" for i in range(5)]
    (tmp_path / "boneage-training-dataset.csv").write_text("\n".join(lines) + "\n")
    data = xl.bone_age_datalist(tmp_path)
    items = data["training"] + data["validation"] + data["test"]
    assert sorted(it["label"] for it in items) == [100.0, 101.0, 102.0, 103.0, 104.0]
    assert {it["male"] for it in items} == {0, 1}
    pooled = xl.mdmoco_datalist([data])
    assert len(pooled["training"]) == len(data["training"]) and {it["dataset"] for it in pooled["training"]} == {"bone_age"}
    (tmp_path / "boneage-training-dataset.csv").write_text("id,age\n1377,3\n")
    with pytest.raises(BadInputError, match="boneage-training-dataset.csv: needs columns"):
        xl.bone_age_datalist(tmp_path)


def test_mdmoco_items_refuse_a_bad_datalist(tmp_path):
    bad = tmp_path / "list.json"
    bad.write_text(json.dumps({"training": [{"image": "missing.png"}]}))
    with pytest.raises(BadInputError, match="list.json.*missing.png"):
        load_mdmoco_items(str(bad))


def test_segmentation_masks_are_read_in_the_images_orientation(muscle):
    """Image and mask of a lung-segmentation item come out of the task's chain on the same pixel grid (a mask
    read column-first by MONAI's default PNG reader would be the transpose of its image's)."""
    from PIL import Image

    from medcoss_monai.layout import bundles_dir, read_bundle

    parser = read_bundle(bundles_dir() / "finetune_muscle_seg.json", {"output_dir": "/tmp/unused", "image_size": 128})
    chain = parser.get_parsed_content("eval_transforms#segmentation")
    item = muscle["muscle_lung_seg"]["training"][0]
    out = dict(item)
    for transform in chain:
        out = transform(out)
    mask = np.asarray(Image.open(item["label"])) > 0
    assert mask.shape[0] == mask.shape[1] and not np.array_equal(mask, mask.T)  # a transpose would show
    assert np.array_equal(np.asarray(out["label"][0]) > 0.5, mask)
    film = np.asarray(Image.open(item["image"]).convert("L"), dtype=np.float32)
    assert np.corrcoef(np.asarray(out["image"][0]).ravel(), film.ravel())[0, 1] > 0.99  # the image is not transposed
