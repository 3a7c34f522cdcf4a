"""Evaluation is held out: no validation or test item, nor the file it is cut from, is trained on.

Checked on the datalists as written by the sample fetch and the task derivation, across modalities
(a file in any stage's training list counts), with identical report texts counted as one report.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from medcoss_monai import MODALITIES
from medcoss_monai.samples.muscle_sample_tasks import MUSCLE_TASKS, load_mdmoco_items
from medcoss_monai.data.reports import text_group
from medcoss_monai.samples.sample_sources import HELD_OUT
from medcoss_monai.samples.tasks import TASKS, load_task_datalist, prepare_tasks

EVALUATION_SPLITS = ("validation", "test")


@pytest.fixture(scope="module")
def stages(sample_data, datalist):
    return {m: datalist(m) for m in MODALITIES}


@pytest.fixture(scope="module")
def tasks(sample_data):
    prepare_tasks(verbose=False)
    return {t: load_task_datalist(t, prepare=False) for t in TASKS}


def _trained_files(stages) -> set[str]:
    return {str(Path(it["image"]).resolve()) for m, d in stages.items() if m != "report" for it in d["training"]}


def _trained_reports(stages) -> tuple[set[str], set[str]]:
    training = stages["report"]["training"]
    return {it["id"] for it in training}, {text_group(it["text"]) for it in training}


def test_every_datalist_has_three_splits(stages):
    for modality, data in stages.items():
        for split in ("training", *EVALUATION_SPLITS):
            assert data[split], f"{modality}: empty '{split}'"


def test_no_held_out_image_file_or_twin_is_trained_on(stages, sample_data):
    trained = _trained_files(stages)
    trained_groups = {it["group"] for m, d in stages.items() if m != "report" for it in d["training"]}
    for modality, data in stages.items():
        if modality == "report":
            continue
        for split in EVALUATION_SPLITS:
            for item in data[split]:
                assert str(Path(item["image"]).resolve()) not in trained, f"{modality} {split}: {item['image']} is trained on"
                assert item["group"] not in trained_groups, f"{modality} {split}: group {item['group']} is trained on"
        held = {str(sample_data / rel) for rel in HELD_OUT[modality]}
        assert held <= {it["image"] for it in data["test"]}, f"{modality}: a file of HELD_OUT is not in 'test'"


def test_no_evaluation_report_or_its_text_is_trained_on(stages):
    ids, texts = _trained_reports(stages)
    for split in EVALUATION_SPLITS:
        for item in stages["report"][split]:
            assert item["id"] not in ids, f"report {item['id']} of '{split}' is trained on"
            assert text_group(item["text"]) not in texts, f"report {item['id']} of '{split}' has a trained-on twin"
    assert len(stages["report"]["test"]) >= 1000


def test_task_items_come_from_held_out_files_only(stages, tasks, sample_data):
    """Every item of every MedCoSS task (its training items too) is cut from a file no stage trains on.

    MUSCLE's tasks are held out of MUSCLE's own pre-training (checked below), not of MedCoSS's stages.
    """
    trained = _trained_files(stages)
    ids, texts = _trained_reports(stages)
    for name, data in tasks.items():
        if name in MUSCLE_TASKS:
            continue
        for split in ("training", *EVALUATION_SPLITS):
            assert data[split], f"{name}: empty '{split}'"
            for item in data[split]:
                if name == "text_cls":
                    assert item["id"] not in ids and text_group(item["text"]) not in texts, f"{name}: {item['id']}"
                    continue
                source = str((sample_data / item["source"]).resolve())
                assert source not in trained, f"{name} {split}: cut from trained-on file {item['source']}"
                assert item["source"] in {r for rels in HELD_OUT.values() for r in rels}, item["source"]


def test_task_splits_share_no_item_or_report_text(tasks):
    for name, data in tasks.items():
        key = "id" if name == "text_cls" else "image"
        seen: dict[str, str] = {}
        for split in ("training", *EVALUATION_SPLITS):
            for item in data[split]:
                ident = text_group(item["text"]) if name == "text_cls" else item[key]
                assert seen.setdefault(ident, split) == split, f"{name}: {ident[:60]} in {seen[ident]} and {split}"


def test_muscle_evaluation_files_are_in_no_muscle_pre_training_list(tasks, sample_data):
    """MUSCLE pre-trains on step 1's list and on the tasks' training splits (step 2): no validation or
    test item of a MUSCLE task, nor the file it is cut from, is in either."""
    pretrain_files = {it["source"] for it in load_mdmoco_items()}
    pretrain_files |= {it["source"] for name in MUSCLE_TASKS for it in tasks[name]["training"]}
    pretrain_images = {it["image"] for name in MUSCLE_TASKS for it in tasks[name]["training"]}
    for name in MUSCLE_TASKS:
        for split in EVALUATION_SPLITS:
            assert tasks[name][split], f"{name}: empty '{split}'"
            for item in tasks[name][split]:
                assert item["source"] not in pretrain_files, f"{name} {split}: cut from pre-trained-on {item['source']}"
                assert item["image"] not in pretrain_images
