"""The BrainMVP stage bundle on the sample studies: outputs, falling losses, resume with templates and optimizer state."""

from __future__ import annotations

import copy
import csv

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.bundle import run

from medcoss_monai.layout import read_bundle
from medcoss_monai.networks.checkpoint import load_state
from tests.stage_utils import BUNDLES

STAGE = str(BUNDLES / "stage_brainmvp.json")
TINY = {"roi_size": [16, 16, 16], "crops_per_study": 2, "batch_size": 4, "repeats": 1, "progress_bar": False}


def _trainer(output_dir, **overrides):
    parser = read_bundle(STAGE, {"output_dir": str(output_dir), **TINY, **overrides})
    parser.parse()
    parser.get_parsed_content("initialize")  # seeds, as the bundle's run does
    return parser.get_parsed_content("train#trainer"), parser.get_parsed_content("network"), parser.get_parsed_content("train#optimizer")


@pytest.mark.slow
def test_resume_keeps_templates_and_optimizer_state(tmp_path, sample_data):
    trainer, _, _ = _trainer(tmp_path, **{"train#trainer#max_epochs": 1})
    trainer.run()
    stage = tmp_path / "stage_brainmvp"
    saved = load_state(stage / "checkpoint_epoch=1.pt")
    t1 = saved["network"]["pretext.templates.templates.t1"]
    assert t1.abs().sum() > 0  # trained away from its zero initialisation
    # the two-contrast sample study (b=0 as t2, b=1500 as dwi) trains its templates; no sample study has FLAIR
    assert any(saved["network"][f"pretext.templates.templates.{c}"].abs().sum() > 0 for c in ("t2", "dwi"))
    assert torch.equal(saved["network"]["pretext.templates.templates.flair"], torch.zeros_like(t1))

    trainer, network, optimizer = _trainer(tmp_path, resume=True, **{"train#trainer#max_epochs": 2})
    seen = {}

    @trainer.on(Events.STARTED)
    def capture(engine):  # runs after the checkpoint loader, which registered first
        seen["t1"] = network.pretext.templates.templates["t1"].detach().clone()
        seen["epoch"] = engine.state.epoch
        seen["opt"] = copy.deepcopy(optimizer.state_dict())  # the live state advances in place

    trainer.run()
    assert seen["epoch"] == 1 and torch.equal(seen["t1"], t1)
    assert seen["opt"]["state"] and seen["opt"]["state"].keys() == saved["optimizer"]["state"].keys()
    for k, state in saved["optimizer"]["state"].items():
        assert int(seen["opt"]["state"][k]["step"]) == int(state["step"]) > 0
        assert torch.equal(seen["opt"]["state"][k]["exp_avg"], state["exp_avg"])
    # the model written at the end carries the templates; the NIfTI copy has the template space's affine
    model = load_state(stage / "model.pt")
    assert "pretext.templates.templates.t1" in model and not torch.equal(model["pretext.templates.templates.t1"], t1)
    img = nib.load(stage / "templates" / "t1.nii.gz")
    assert img.shape == tuple(network.pretext.templates.shape)
    np.testing.assert_allclose(img.affine, network.pretext.templates.affine.numpy())
    np.testing.assert_allclose(np.asarray(img.dataobj), model["pretext.templates.templates.t1"].numpy(), rtol=1e-6)


@pytest.mark.slow
def test_stage_bundle_trains_and_losses_fall(tmp_path, sample_data):
    # the demo's own crops: without decoder skips a 16^3 crop is rebuilt from one deepest voxel, too little to learn in a test
    run(config_file=STAGE, output_dir=str(tmp_path), progress_bar=False, **{"train#trainer#max_epochs": 3})
    stage = tmp_path / "stage_brainmvp"
    with open(stage / "loss_history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and {"recon_a_loss", "recon_b_loss", "contrastive_loss"} <= set(rows[0])
    first, last = float(rows[0]["recon_a_loss"]), float(rows[-1]["recon_a_loss"])
    assert last < 0.95 * first  # recorded: 0.226 -> 0.195 in 3 epochs (0.092 by the demo's 4th)
    assert (stage / "model.pt").is_file() and (stage / "recon_0.png").is_file() and (stage / "templates" / "t1ce.nii.gz").is_file()
    from PIL import Image

    picture = np.asarray(Image.open(stage / "recon_0.png"))
    assert picture.shape[1] > 4 * picture.shape[0]  # five panels side by side
