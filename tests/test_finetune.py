"""Fine-tuning bundles (bundles/finetune_<task>.json) on the sample tasks, from stage checkpoints.

Default suite: text_cls, pathology_cls and ct_seg (on a cropped copy of the real CT volumes so the
sliding-window inference stays short), the pretrained-weights checks and the bad-label checks. The
other tasks run under ``-m slow``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from medcoss_monai.bundle.finetune import load_pretrained, task_items
from medcoss_monai.data.checks import BadInputError
from medcoss_monai.networks import EncoderClassifier, MedCoSSModel

torch.set_num_threads(2)

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "bundles"
ENCODER = {"hidden_size": 192, "num_layers": 4, "num_heads": 3, "vocab_size": 8192, "max_text_len": 112,
           "img_size_2d": (96, 96), "patch_size_2d": (16, 16), "img_size_3d": (64, 64, 16), "patch_size_3d": (16, 16, 8),
           "decoder_hidden_size": 128, "decoder_layers": 2, "decoder_heads": 4}
CLS_KEYS = {"ACC", "AUC", "F1"}
SEG_KEYS = {"Dice", "HD95"}


def run_finetune(bundle: str, output_dir: Path, **overrides) -> dict:
    """Run ``bundles/finetune_<bundle>.json`` for one epoch and return its metrics.json."""
    from monai.bundle import run

    run(config_file=str(BUNDLES / f"finetune_{bundle}.json"), output_dir=str(output_dir), **{"train#trainer#max_epochs": 1},
        **overrides)
    return json.loads((output_dir / "metrics.json").read_text())


@pytest.fixture(scope="session")
def tasks_ready(sample_data):
    from medcoss_monai.samples.tasks import prepare_tasks

    prepare_tasks(verbose=False)
    return sample_data


@pytest.fixture(scope="session")
def stage_ckpt(tmp_path_factory, tasks_ready) -> Path:
    """A demo-sized MedCoSS model saved as a stage's model.pt (same layout as StageModelSaver writes)."""
    folder = tmp_path_factory.mktemp("stage_any")
    torch.manual_seed(0)
    torch.save(MedCoSSModel(**ENCODER).state_dict(), folder / "model.pt")
    return folder / "model.pt"


@pytest.fixture(scope="session")
def ct_stage_ckpt(tmp_path_factory, tasks_ready) -> Path:
    """The CT stage bundle run for one short epoch (one volume, no rehearsal)."""
    from monai.bundle import run

    out = tmp_path_factory.mktemp("pretrain")
    run(config_file=str(BUNDLES / "stage_ct.json"), output_dir=str(out), progress_bar=False, max_items=1,
        rehearsal=False, select_buffer=False, **{"train#trainer#max_epochs": 1, "train#repeats": 1})
    ckpt = out / "stage_ct" / "model.pt"
    assert ckpt.is_file()
    return ckpt


@pytest.fixture(scope="session")
def small_ct_seg(tmp_path_factory, tasks_ready) -> Path:
    """A ct_seg datalist of the real volumes cropped around their lesions (96 x 96 x 32), for fast inference."""
    import nibabel as nib

    out = tmp_path_factory.mktemp("ct_seg_small")
    data = json.loads((tasks_ready / "tasks" / "ct_seg" / "datalist.json").read_text())
    crops = {}
    for split in ("training", "validation", "test"):
        data[split] = [dict(i) for i in data[split]]
        for item in data[split]:
            if item["image"] not in crops:
                img, lab = nib.load(item["image"]), nib.load(item["label"])
                mask = np.asarray(lab.dataobj)
                centre = np.round(np.argwhere(mask > 0).mean(axis=0)).astype(int)
                start = [int(np.clip(c - s // 2, 0, max(0, n - s))) for c, s, n in zip(centre, (96, 96, 32), mask.shape)]
                sl = tuple(slice(a, a + s) for a, s in zip(start, (96, 96, 32)))
                affine = img.affine.copy()
                affine[:3, 3] = img.affine[:3, :3] @ np.asarray(start) + img.affine[:3, 3]
                name = Path(item["image"]).name
                nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[sl].astype(np.float32), affine), out / f"image_{name}")
                nib.save(nib.Nifti1Image(mask[sl].astype(np.uint8), affine), out / f"label_{name}")
                crops[item["image"]] = (str(out / f"image_{name}"), str(out / f"label_{name}"))
            item["image"], item["label"] = crops[item["image"]]
    (out / "datalist.json").write_text(json.dumps(data))
    return out / "datalist.json"


def bundle_error(excinfo) -> BaseException:
    """The root error behind MONAI's "Failed to instantiate" wrapper (what the user's traceback ends with)."""
    err = excinfo.value
    while err.__cause__ is not None:
        err = err.__cause__
    return err


def check_metrics(metrics: dict, task: str, keys: set, pretrained: bool) -> None:
    assert metrics["task"] == task and metrics["split"] == "test"
    assert metrics["pretrained"] is pretrained
    assert set(metrics["split_sizes"]) == {"training", "validation", "test"} and all(metrics["split_sizes"].values())
    assert keys <= set(metrics["metrics"])
    for k in keys - {"HD95", "AUC", "per_label_ACC"}:  # HD95 / AUC may be undefined (None) on a tiny split
        assert 0.0 <= metrics["metrics"][k] <= 1.0


# ------------------------------------------------------------------------------------- default suite


def test_text_cls_from_stage(tmp_path, stage_ckpt):
    m = run_finetune("text_cls", tmp_path, pretrained_ckpt=str(stage_ckpt), max_train_items=64, max_eval_items=64)
    check_metrics(m, "text_cls", CLS_KEYS | {"exact_match_ACC", "per_label_ACC"}, True)
    assert len(m["metrics"]["per_label_ACC"]) == 8
    assert (tmp_path / "model_best.pt").is_file()
    # no tokenizer next to the checkpoint: one is trained on the task's texts into output_dir
    assert (tmp_path / "tokenizer" / "tokenizer.json").is_file()


def test_pathology_cls_from_scratch_and_stage(tmp_path, stage_ckpt):
    scratch = run_finetune("pathology_cls", tmp_path / "scratch")
    check_metrics(scratch, "pathology_cls", CLS_KEYS, False)
    pre = run_finetune("pathology_cls", tmp_path / "pre", pretrained_ckpt=str(stage_ckpt))
    check_metrics(pre, "pathology_cls", CLS_KEYS, True)
    assert pre["split_sizes"] == scratch["split_sizes"]  # fixed split


@pytest.mark.slow
def test_ct_seg_from_ct_stage_bundle(tmp_path, ct_stage_ckpt, small_ct_seg):
    m = run_finetune("ct_seg", tmp_path, pretrained_ckpt=str(ct_stage_ckpt), dataset_dir=str(small_ct_seg))
    check_metrics(m, "ct_seg", SEG_KEYS, True)
    assert (tmp_path / "model_best.pt").is_file()


def _classifier() -> EncoderClassifier:
    return EncoderClassifier(MedCoSSModel(**ENCODER), num_classes=2)


def test_pretrained_loads_encoder_and_reports_extra_keys(tmp_path, stage_ckpt, caplog):
    state = torch.load(stage_ckpt, weights_only=True)
    state["unrelated.weight"] = torch.zeros(3)
    path = tmp_path / "model.pt"
    torch.save({"network": state}, path)  # nested, as some savers write it
    net = _classifier()
    with caplog.at_level(logging.INFO, logger="medcoss_monai.bundle.finetune"):
        load_pretrained(net, str(path))
    report = net.pretrained_report
    assert "unrelated.weight" in report.unexpected
    assert any(k.startswith("mae_decoder") or k.startswith("mlm") for k in report.unexpected)  # pretext heads dropped
    assert not [k for k in report.missing if k.startswith("encoder.")]
    assert str(path) in caplog.text and "unexpected" in caplog.text
    key = next(k for k in state if k.startswith("encoder.") and state[k].ndim == 2)
    assert torch.equal(net.state_dict()[key], state[key])


def test_pretrained_from_other_architecture_names_file(tmp_path):
    path = tmp_path / "hidden64.pt"
    torch.save(MedCoSSModel(**{**ENCODER, "hidden_size": 64, "num_heads": 2}).state_dict(), path)
    with pytest.raises(BadInputError, match="another architecture") as err:
        load_pretrained(_classifier(), str(path))
    assert str(path) in str(err.value) and "192" in str(err.value)
    other = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(4, 3, 3, 3)}, other)
    with pytest.raises(BadInputError, match="no encoder tensor fits") as err:
        load_pretrained(_classifier(), str(other))
    assert str(other) in str(err.value)


def test_bundle_rejects_other_architecture(tmp_path, tasks_ready):
    path = tmp_path / "hidden64.pt"
    torch.save(MedCoSSModel(**{**ENCODER, "hidden_size": 64, "num_heads": 2}).state_dict(), path)
    with pytest.raises(Exception) as excinfo:
        run_finetune("pathology_cls", tmp_path / "out", pretrained_ckpt=str(path))
    err = bundle_error(excinfo)
    assert isinstance(err, BadInputError) and str(path) in str(err)
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_bad_labels_rejected(tmp_path, tasks_ready):
    data = json.loads((tasks_ready / "tasks" / "pathology_cls" / "datalist.json").read_text())
    bad = dict(data["training"][0], label=5)
    data["training"] = [bad] + data["training"][1:]
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps(data))
    with pytest.raises(Exception) as excinfo:
        run_finetune("pathology_cls", tmp_path / "out", dataset_dir=str(path))
    err = bundle_error(excinfo)
    assert isinstance(err, BadInputError) and "outside the class list" in str(err) and bad["image"] in str(err)


def test_mask_shape_mismatch_rejected(tmp_path, tasks_ready):
    from PIL import Image

    data = json.loads((tasks_ready / "tasks" / "pathology_seg" / "datalist.json").read_text())
    mask = tmp_path / "small_mask.png"
    Image.open(data["training"][0]["label"]).resize((100, 100)).save(mask)
    data["training"][0] = dict(data["training"][0], label=str(mask))
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps(data))
    with pytest.raises(Exception) as excinfo:
        run_finetune("pathology_seg", tmp_path / "out", dataset_dir=str(path))
    err = bundle_error(excinfo)
    assert isinstance(err, BadInputError) and "differs from image" in str(err) and str(mask) in str(err)


@pytest.mark.slow
def test_skip_bad_inputs_drops_bad_task_items(tmp_path, tasks_ready):
    from PIL import Image

    data = json.loads((tasks_ready / "tasks" / "pathology_seg" / "datalist.json").read_text())
    mask = tmp_path / "small_mask.png"
    Image.open(data["training"][0]["label"]).resize((100, 100)).save(mask)
    blank = tmp_path / "blank_tile.png"
    Image.new("RGB", (96, 96), (255, 255, 255)).save(blank)  # a tile of empty glass: constant
    data["training"][0] = dict(data["training"][0], label=str(mask))
    data["training"][1] = dict(data["training"][1], image=str(blank))
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps(data))
    metrics = run_finetune("pathology_seg", tmp_path / "out", dataset_dir=str(path), skip_bad_inputs=True)
    rejected = json.loads((tmp_path / "out" / "rejected_inputs_training.json").read_text())["rejected"]
    assert [r["index"] for r in rejected] == [0, 1]
    assert "differs from image" in rejected[0]["reasons"][0] and "image is constant" in rejected[1]["reasons"][0]
    assert metrics["split_sizes"]["training"] == len(data["training"]) - 2


def test_task_items_subset_is_fixed(tasks_ready):
    a = task_items("", "text_cls", "training", max_items=20, seed=0)
    b = task_items("", "text_cls", "training", max_items=20, seed=0)
    assert len(a) == 20 and [i["id"] for i in a] == [i["id"] for i in b]


# ------------------------------------------------------------------------------------------------ slow


@pytest.mark.slow
@pytest.mark.parametrize(
    "task,keys",
    [("xray_cls", CLS_KEYS), ("xray_seg", SEG_KEYS), ("ct_cls", CLS_KEYS), ("pathology_seg", SEG_KEYS), ("mri_seg", SEG_KEYS)],
)
def test_finetune_task_from_stage(task, keys, tmp_path, stage_ckpt):
    m = run_finetune(task, tmp_path, pretrained_ckpt=str(stage_ckpt))
    check_metrics(m, task, keys, True)
    assert (tmp_path / "model_best.pt").is_file()


@pytest.mark.slow
def test_mri_seg_bundle_on_tissue_labels(tmp_path, stage_ckpt):
    """The mri_seg bundle, by override, on the three-class grey / white matter task of the MNI template."""
    m = run_finetune("mri_seg", tmp_path, pretrained_ckpt=str(stage_ckpt), task="mri_tissue_seg", num_classes=3)
    check_metrics(m, "mri_tissue_seg", SEG_KEYS, True)
