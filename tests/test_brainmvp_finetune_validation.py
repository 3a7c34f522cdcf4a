"""BrainMVP fine-tuning: the validation slabs of the sample task, checked splits and labels, best-model selection."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow, run

from medcoss_monai.apps.brainmvp.studies import sample_task_datalist, study_datalist
from medcoss_monai.apps.brainmvp.brain_tasks import SPLITS, checked_task, main, task_datalist
from medcoss_monai.errors import BadInputError
from medcoss_monai.networks.checkpoint import load_state
from tests.stage_utils import BUNDLES
from tests.test_brainmvp_finetune import stage_model  # noqa: F401  (fixture)

FINETUNE = BUNDLES / "finetune_brainmvp_seg.json"
SMALL = {"repeats": 1, "crops_per_study": 2, "batch_size": 2}


def _z_range(study: dict) -> tuple[float, float]:
    img = nib.load(study["image"]["t1"])
    z0 = float(img.affine[2, 3])
    return z0, z0 + float(img.affine[2, 2]) * (img.shape[2] - 1)


def _sample_task() -> dict:
    return json.loads(Path(sample_task_datalist()).read_text())


def test_sample_task_has_separate_training_validation_and_test_slabs(sample_data):
    task = _sample_task()
    assert all(task[key] for key in SPLITS)
    slabs = sorted((_z_range(s), key) for key in SPLITS for s in task[key])
    for ((_, hi), _), ((lo, _), _) in zip(slabs, slabs[1:]):
        assert lo - hi > 8.0  # no shared voxel: 8 mm dropped between any two slabs
    assert len({s["study"] for key in SPLITS for s in task[key]}) == len(slabs)
    # training and test both hold every foreground class; validation is a slab of its own
    for key in ("training", "test"):
        values = set().union(*(np.unique(np.asarray(nib.load(s["label"]).dataobj)).tolist() for s in task[key]))
        assert values == {0, 1, 2, 3, 4}, key


def _datalist(tmp_path: Path, task: dict, **changes) -> Path:
    data = {key: task[key] for key in SPLITS} | changes
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps(data))
    return path


def test_checked_task_refuses_bad_labels_and_empty_splits(tmp_path, sample_data):
    task = _sample_task()
    assert {k: len(v) for k, v in checked_task("", ["t1", "t2"], "classes", 5).items()} == {"training": 2, "validation": 1, "test": 2}

    # a real slab label with a value the task does not have
    seg = nib.load(task["validation"][0]["label"])
    data = np.asarray(seg.dataobj).copy()
    data[:3, :3, :3] = 7
    bad = tmp_path / "bad_seg.nii.gz"
    nib.save(nib.Nifti1Image(data, seg.affine), str(bad))
    broken = dict(task["validation"][0], label=str(bad))
    with pytest.raises(BadInputError, match=r"bad_seg\.nii\.gz: label values \[7\]"):
        checked_task(_datalist(tmp_path, task, validation=[broken]), ["t1", "t2"], "classes", 5)
    # CerebrA groups are not BraTS values: 3 is neither 1, 2 nor the enhancing label 4
    with pytest.raises(BadInputError, match=r"slab\d_seg\.nii\.gz: label values \[3\]"):
        checked_task("", ["t1", "t2"], "brats_regions", et_label=4)
    with pytest.raises(BadInputError, match="no validation studies"):
        checked_task(_datalist(tmp_path, task, validation=[]), ["t1", "t2"], "classes", 5)
    with pytest.raises(BadInputError, match="--label_mode 'tumour'"):
        checked_task("", ["t1", "t2"], "tumour", 5)


def test_folder_layout_is_split_by_study_name(tmp_path, sample_data):
    study = _sample_task()["training"][0]
    root = tmp_path / "studies"

    def add(name: str) -> None:
        (root / name).mkdir(parents=True)
        shutil.copy(study["image"]["t1"], root / name / "t1.nii.gz")

    for k in range(20):
        add(f"subject{k:02d}")
    splits = {key: [s["study"] for s in task_datalist(root, key, ["t1"])] for key in SPLITS}
    names = sorted(sum(splits.values(), []))
    assert names == [f"subject{k:02d}" for k in range(20)]  # each study in exactly one split
    assert splits["training"] and splits["validation"] and splits["test"]
    add("subject99")  # a new study leaves the others where they were
    again = {key: [s["study"] for s in task_datalist(root, key, ["t1"])] for key in SPLITS}
    assert all(set(splits[key]) <= set(again[key]) for key in SPLITS)
    # written once as a datalist: what the pre-training stage reads of it is the training split only
    out = tmp_path / "splits.json"
    main(["--dataset_dir", str(root), "--out", str(out)])
    assert [s["study"] for s in study_datalist(out, "training", ["t1"])] == again["training"]
    assert {key: [s["study"] for s in task_datalist(out, key, ["t1"])] for key in SPLITS} == again


@pytest.mark.slow
def test_the_best_validation_epoch_is_tested_and_a_missing_contrast_is_filled(stage_model, tmp_path, sample_data):  # noqa: F811
    path, _ = stage_model
    out = tmp_path / "ft"
    workflow = ConfigWorkflow(
        config_file=str(FINETUNE), output_dir=str(out), pretrained_ckpt=str(path), **SMALL, **{"train#trainer#max_epochs": 2}
    )
    workflow.initialize()
    network = workflow.parser.get_parsed_content("network")
    validator = workflow.parser.get_parsed_content("validate#evaluator")
    trainer = workflow.parser.get_parsed_content("train#trainer")
    seen: dict[int, tuple[float, dict]] = {}

    @validator.on(Events.EPOCH_COMPLETED)
    def _snapshot(engine):
        seen[engine.state.epoch] = (engine.state.metrics["val_mean_dice"], {k: v.clone() for k, v in network.state_dict().items()})

    @trainer.on(Events.COMPLETED)
    def _spoil(engine):  # what training leaves behind must not be what is tested
        with torch.no_grad():
            for p in network.parameters():
                p.add_(1.0)

    workflow.run()
    assert sorted(seen) == [1, 2]
    best = max(seen, key=lambda e: seen[e][0])
    best_state = seen[best][1]
    saved = load_state(out / "model_best.pt")
    for k, v in best_state.items():
        torch.testing.assert_close(saved[k], v)
        torch.testing.assert_close(network.state_dict()[k], v)  # the test ran with the best epoch's weights
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["best_validation"]["epoch"] == best
    assert metrics["best_validation"]["val_mean_dice"] == pytest.approx(seen[best][0])
    assert 0.0 <= metrics["metrics"]["mean_dice"] <= 1.0 and len(metrics["metrics"]["channel_dice"]) == 4
    assert metrics["studies"]["validation"] == ["icbm2009c_slab3"]

    # the selected model re-tested without T2: its channel filled by the (all-zero) T2 template
    run(config_file=str(FINETUNE), output_dir=str(tmp_path / "missing"), templates_ckpt=str(path),
        finetuned_ckpt=str(out / "model_best.pt"), missing="t2", fill="template", **SMALL)
    missing = json.loads((tmp_path / "missing" / "metrics.json").read_text())
    assert missing["missing"] == "t2" and missing["best_validation"] is None
    assert missing["metrics"]["mean_dice"] != metrics["metrics"]["mean_dice"]
