"""BrainMVP with MONAI's SwinUNETR or UNet in place of the UniFormer, by overriding the stage's ``network_def``."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from monai.networks.nets import SwinUNETR, UNet

from medcoss_monai.layout import read_bundle
from medcoss_monai.apps.brainmvp.model import BrainMVPModel, load_pretrained_backbone
from medcoss_monai.apps.brainmvp.pretext import BrainMVPPretext
from medcoss_monai.networks.checkpoint import load_state
from tests.stage_utils import BUNDLES

STAGE = str(BUNDLES / "stage_brainmvp.json")
NETWORKS = {
    "swinunetr": ({"_target_": "monai.networks.nets.SwinUNETR", "in_channels": 1, "out_channels": 1, "feature_size": 12,
                   "depths": [1, 1, 1, 1]},  # one Swin block per stage: the same mechanism, 95 s instead of 137 s
                  "encoder10", 192, lambda c, k: SwinUNETR(in_channels=c, out_channels=k, feature_size=12, depths=(1, 1, 1, 1)), 64),
    "unet": ({"_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 1,
              "channels": [8, 16, 32], "strides": [2, 2]},
             "model.1.submodule.1.submodule", 32,
             lambda c, k: UNet(spatial_dims=3, in_channels=c, out_channels=k, channels=[8, 16, 32], strides=[2, 2]), 32),
}


@pytest.mark.parametrize("name", ["unet", pytest.param("swinunetr", marks=[pytest.mark.slow, pytest.mark.long])])  # SwinUNETR at 64^3
def test_stage_trains_a_monai_network_and_fine_tuning_loads_it(tmp_path, sample_data, name):
    net_def, feature_module, channels, finetune_net, side = NETWORKS[name]  # SwinUNETR's instance norms need 64^3 (2^3 at the bottom)
    overrides = {"output_dir": str(tmp_path), "roi_size": [side] * 3, "crops_per_study": 2, "batch_size": 4, "repeats": 1,
                 "progress_bar": False, "train#trainer#max_epochs": 1, "network_def#network": net_def,
                 "network_def#feature_module": feature_module, "pretext_def#feature_channels": channels}
    parser = read_bundle(STAGE, overrides)
    parser.parse()
    parser.get_parsed_content("initialize")
    network = parser.get_parsed_content("network")
    assert type(network.backbone).__name__ == type(finetune_net(1, 1)).__name__
    parser.get_parsed_content("train#trainer").run()
    stage = tmp_path / "stage_brainmvp"
    with open(stage / "loss_history.csv", newline="") as f:
        row = next(csv.DictReader(f))
    assert math.isfinite(float(row["loss"])) and float(row["recon_a_loss"]) > 0 and float(row["contrastive_loss"]) > 0
    state = load_state(stage / "model.pt")
    assert any(k.startswith("backbone.") for k in state) and any(k.startswith("pretext.templates.templates.") for k in state)
    # fine-tuning: the same network with two input contrasts and five classes takes the pre-trained weights
    target = finetune_net(2, 5)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    load_pretrained_backbone(target, stage / "model.pt")
    changed = [k for k, v in target.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) > 0.8 * len([k for k, v in before.items() if v.is_floating_point()])


def test_a_monai_network_needs_its_feature_module():
    with pytest.raises(ValueError, match="feature_module"):
        BrainMVPModel(BrainMVPPretext(["t1"], (8, 8, 8), 16), network=UNet(3, 1, 1, (8, 16), (2,)))
    with pytest.raises(ValueError, match="no submodule 'bottleneck'"):
        BrainMVPModel(BrainMVPPretext(["t1"], (8, 8, 8), 16), network=UNet(3, 1, 1, (8, 16), (2,)), feature_module="bottleneck")
