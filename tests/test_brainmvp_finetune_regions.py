"""BrainMVP fine-tuning with BraTS regions (TC / WT / ET, sigmoid, Dice + BCE) on a BraTS-like label map.

No sample file is a multi-contrast tumour study, so the label maps here are the sample task's real
CerebrA region groups **relabelled to BraTS values** (anatomy, not a tumour): deep grey matter -> 1
(necrotic core), cortex and cerebellum/brainstem -> 2 (oedema), ventricles -> 4 (enhancing). The
regions are then TC = deep grey matter + ventricles, WT = every labelled voxel, ET = ventricles.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import run
from monai.losses import DiceLoss
from monai.transforms import Compose

from medcoss_monai.apps.brainmvp.studies import sample_task_datalist
from medcoss_monai.apps.brainmvp.brain_tasks import SPLITS
from medcoss_monai.layout import read_bundle
from tests.stage_utils import BUNDLES

FINETUNE = BUNDLES / "finetune_brainmvp_seg.json"
BRATS_OF_GROUP = np.array([0, 2, 1, 4, 2], dtype=np.uint8)
"""CerebrA group (0 background, 1 cortex, 2 deep GM, 3 ventricles, 4 cerebellum + brainstem) -> BraTS value."""


def brats_like_task(folder: Path) -> Path:
    """The sample slab task with its labels relabelled to BraTS values, as a study datalist JSON."""
    task = json.loads(Path(sample_task_datalist()).read_text())
    folder.mkdir(parents=True, exist_ok=True)
    for key in SPLITS:
        for study in task[key]:
            seg = nib.load(study["label"])
            out = folder / f"{study['study']}_seg.nii.gz"
            nib.save(nib.Nifti1Image(BRATS_OF_GROUP[np.asarray(seg.dataobj)], seg.affine), str(out))
            study["label"] = str(out)
    path = folder / "datalist.json"
    path.write_text(json.dumps({key: task[key] for key in SPLITS}))
    return path


def _first_study(dataset_dir: str, label_mode: str, tmp_path: Path) -> dict:
    parser = read_bundle(FINETUNE, {"output_dir": str(tmp_path / "unused"), "dataset_dir": dataset_dir, "label_mode": label_mode})
    parser.parse()
    study = parser.get_parsed_content("train#datalist")[0]
    return Compose(parser.get_parsed_content("validate#transforms"))(study), parser


def test_brats_labels_become_tc_wt_et_channels(tmp_path, sample_data):
    path = brats_like_task(tmp_path / "brats_like")
    regions, parser = _first_study(str(path), "brats_regions", tmp_path)
    groups, _ = _first_study("", "classes", tmp_path)
    g = groups["label"][0]
    label = regions["label"]
    assert label.shape == (3, *g.shape)
    torch.testing.assert_close(regions["image"], groups["image"])  # the same chain for the images
    torch.testing.assert_close(label[0], ((g == 2) | (g == 3)).float())  # TC: core + enhancing
    torch.testing.assert_close(label[1], (g > 0).float())  # WT: every labelled voxel
    torch.testing.assert_close(label[2], (g == 3).float())  # ET: enhancing
    with torch.no_grad():
        assert parser.get_parsed_content("network")(regions["image"][None, :, :48, :48, :16]).shape[1] == 3
    assert parser.get_parsed_content("labels")["channel_names"] == ["TC", "WT", "ET"]


def test_region_loss_is_dice_plus_bce_and_predictions_are_thresholded_sigmoids(tmp_path):
    # the segmentation loss alone: the consistency term (on by default) needs a batch of paired copies
    parser = read_bundle(FINETUNE, {"output_dir": str(tmp_path), "label_mode": "brats_regions", "consistency_weight": 0.0})
    parser.parse()
    loss = parser.get_parsed_content("loss")
    logits = torch.tensor([-2.0, -0.5, 0.5, 3.0]).reshape(1, 1, 4, 1, 1).repeat(1, 3, 1, 1, 1)
    target = torch.tensor([0.0, 1.0, 1.0, 1.0]).reshape(1, 1, 4, 1, 1).repeat(1, 3, 1, 1, 1)
    expected = DiceLoss(sigmoid=True)(logits, target) + torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    torch.testing.assert_close(loss(logits, target), expected)
    post = parser.get_parsed_content("labels")["postprocessing"]
    pred = post({"pred": logits[0], "label": target[0]})["pred"]
    torch.testing.assert_close(torch.as_tensor(pred)[0, :, 0, 0], torch.tensor([0.0, 0.0, 1.0, 1.0]))


@pytest.mark.slow
def test_brats_region_finetuning_writes_per_region_dice(tmp_path, sample_data):
    path = brats_like_task(tmp_path / "brats_like")
    out = tmp_path / "regions"
    run(config_file=str(FINETUNE), output_dir=str(out), dataset_dir=str(path), label_mode="brats_regions",
        repeats=1, crops_per_study=2, batch_size=2, **{"train#trainer#max_epochs": 2})
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["label_mode"] == "brats_regions" and metrics["channel_names"] == ["TC", "WT", "ET"]
    dice = metrics["metrics"]["channel_dice"]
    assert len(dice) == 3 and all(d is None or 0.0 <= d <= 1.0 for d in dice)
    known = [d for d in dice if d is not None]
    assert min(known) - 1e-6 <= metrics["metrics"]["mean_dice"] <= max(known) + 1e-6  # a mean over slabs and regions
    hd95 = metrics["metrics"]["channel_hd95"]  # the paper's second metric, per region as Dice is
    assert len(hd95) == 3 and all(d is None or d >= 0.0 for d in hd95) and "hd95" in metrics["metrics"]
    assert metrics["best_validation"]["epoch"] in (1, 2) and (out / "model_best.pt").is_file()


def test_test_metrics_include_hd95_per_channel_on_a_real_label_map(tmp_path, sample_data):
    """The evaluator's HD95 (95th percentile, like Dice per channel and meaned): 0 for a perfect prediction
    of a real test slab's CerebrA regions, at most the shift for the same map moved by 2 voxels."""
    from ignite.engine import Engine

    parser = read_bundle(FINETUNE, {"output_dir": str(tmp_path / "unused")})
    parser.parse()
    study = Compose(parser.get_parsed_content("validate#transforms"))(parser.get_parsed_content("evaluate#datalist")[0])
    post = parser.get_parsed_content("labels")["postprocessing"]
    num_classes = int(parser.get_parsed_content("num_classes"))
    label = torch.as_tensor(study["label"]).long()

    def scores(shift: int) -> dict:
        logits = torch.nn.functional.one_hot(torch.roll(label[0], shift, dims=0), num_classes).permute(3, 0, 1, 2).float()
        out = post({"pred": logits, "label": label.clone()})
        engine = Engine(lambda e, b: {"pred": out["pred"][None], "label": out["label"][None]})
        for name in ("hd95", "channel_hd95"):
            parser.get_parsed_content(f"evaluate#evaluator#additional_metrics#{name}").attach(engine, name)
        return engine.run([0], max_epochs=1).metrics

    perfect, shifted = scores(0), scores(2)
    assert perfect["hd95"] == 0.0 and len(perfect["channel_hd95"]) == num_classes - 1  # background left out
    assert 0.0 < shifted["hd95"] <= 2.0 + 1e-6 and all(0.0 < float(d) <= 2.0 + 1e-6 for d in shifted["channel_hd95"])
