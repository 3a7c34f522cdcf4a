"""BrainMVP fine-tuning: pre-trained backbone loading, missing contrasts filled by templates, the bundle end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.transforms import Compose

from medcoss_monai.errors import CheckpointError
from medcoss_monai.layout import read_bundle
from medcoss_monai.apps.brainmvp.model import BrainMVPModel, load_pretrained_backbone
from medcoss_monai.apps.brainmvp.pretext import BrainMVPPretext
from medcoss_monai.apps.brainmvp.uniformer import UniFormerUNETR
from medcoss_monai.utils import atomic_torch_save
from tests.stage_utils import BUNDLES

FINETUNE = BUNDLES / "finetune_brainmvp_seg.json"
TINY = {"widths": [8, 16, 32, 32], "depths": [1, 1, 1, 1], "strides": [2, 2, 2, 2], "head_dim": 16, "feature_size": 8}


@pytest.fixture
def stage_model(tmp_path):
    """A BrainMVP model.pt with the demo's template space and a T1 template of known values (a ramp along z)."""
    common = json.loads((BUNDLES / "common" / "brainmvp.json").read_text())
    pretext = BrainMVPPretext(common["contrasts"], common["template_shape"], common["backbone"]["widths"][-1],
                              common["template_spacing"], common["template_origin"])
    model = BrainMVPModel(pretext, backbone=common["backbone"])
    with torch.no_grad():
        ramp = torch.linspace(0.1, 0.9, common["template_shape"][2])
        model.pretext.templates.templates["t1"].copy_(ramp.expand(*common["template_shape"]))
    path = tmp_path / "model.pt"
    atomic_torch_save(model.state_dict(), path)
    return path, model


def test_pretrained_backbone_fills_every_input_channel(stage_model):
    path, model = stage_model
    net = UniFormerUNETR(in_channels=2, out_channels=5, **json.loads((BUNDLES / "common" / "brainmvp.json").read_text())["backbone"])
    load_pretrained_backbone(net, path)
    w1 = model.backbone.encoder.embeddings[0][0].weight
    w2 = net.encoder.embeddings[0][0].weight
    torch.testing.assert_close(w2, w1.repeat(1, 2, 1, 1, 1) / 2)  # the one-channel kernel shared by both contrasts
    torch.testing.assert_close(net.encoder.stages[2][0].transformer.attn.qkv.weight, model.backbone.encoder.stages[2][0].transformer.attn.qkv.weight)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_pretrained_backbone(UniFormerUNETR(in_channels=2, out_channels=5, **TINY), path)


@pytest.mark.parametrize("fill", ["template", "zero"])
def test_missing_contrast_is_filled_at_its_physical_position(stage_model, fill, sample_data):
    path, model = stage_model
    parser = read_bundle(FINETUNE, {"output_dir": "/tmp/unused", "templates_ckpt": str(path), "missing": "t1", "fill": fill})
    parser.parse()
    study = parser.get_parsed_content("evaluate#datalist")[0]
    d = Compose(parser.get_parsed_content("evaluate#transforms")[:-2])(study)  # up to the fill, affine kept
    image = d["image"]
    assert d["contrasts"] == ["t1", "t2"] and d["present"].tolist() == [False, True]
    if fill == "zero":
        assert torch.count_nonzero(image[0]) == 0
    else:
        # the template is a ramp along z: each axial plane of the filled channel reads the template at its world z
        affine = np.asarray(image.affine)
        templates = model.pretext.templates
        z_world = affine[2, 3] + affine[2, 2] * np.arange(image.shape[3])
        z_vox = (z_world - templates.affine[2, 3].item()) / templates.affine[2, 2].item()
        ramp = np.interp(z_vox, np.arange(templates.shape[2]), np.linspace(0.1, 0.9, templates.shape[2]))
        centre = image[0, image.shape[1] // 2, image.shape[2] // 2].numpy()
        np.testing.assert_allclose(centre, ramp, atol=1e-4)
    assert torch.count_nonzero(image[1]) > 0  # the T2 is the study's own
