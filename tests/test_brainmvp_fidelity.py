"""BrainMVP against the reference (shaohao011/BrainMVP): the pre-training decoder without skips, the paper overlays' values."""

from __future__ import annotations

import logging

import pytest
import torch

from medcoss_monai.apps.brainmvp.model import load_pretrained_backbone
from medcoss_monai.apps.brainmvp.uniformer import UniFormer3D, UniFormerUNETR
from medcoss_monai.bundle import flag
from medcoss_monai.layout import read_bundle
from medcoss_monai.utils import atomic_torch_save
from tests.stage_utils import BUNDLES

STAGE = BUNDLES / "stage_brainmvp.json"
FINETUNE = BUNDLES / "finetune_brainmvp_seg.json"
PAPER = BUNDLES / "brainmvp_paper_scale.json"
FINETUNE_PAPER = BUNDLES / "brainmvp_finetune_paper_scale.json"


def _stage_network(tmp_path, **overrides):
    parser = read_bundle(STAGE, {"output_dir": str(tmp_path), **overrides})
    return parser.get_parsed_content("network_def")


def _with_deepest(network: torch.nn.Module, x: torch.Tensor, deepest: torch.Tensor) -> torch.Tensor:
    """The reconstruction of ``x`` with the encoder's deepest features replaced by ``deepest``."""
    handle = network.backbone.encoder.register_forward_hook(lambda module, args, out: [*out[:-1], deepest])
    try:
        return network(x)[0]
    finally:
        handle.remove()


def test_the_stage_network_reconstructs_from_the_deepest_features_only(tmp_path):
    torch.manual_seed(0)
    network = _stage_network(tmp_path).eval()
    assert not network.backbone.skips and not hasattr(network.backbone, "image_skip")
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        deepest = network.backbone.encoder(x)[-1]
        changed = x.clone()
        changed[..., 8:24, 8:24, 8:24] = torch.rand(1, 1, 16, 16, 16)  # the visible voxels of another view
        # no path from the input (or a shallow stage) to the output but the deepest features
        torch.testing.assert_close(_with_deepest(network, changed, deepest), _with_deepest(network, x, deepest))
        # the switch gives the UNETR decoder back, and with it the copy path
        skipped = _stage_network(tmp_path, pretrain_skips=True).eval()
        assert skipped.backbone.skips
        deepest = skipped.backbone.encoder(x)[-1]
        assert not torch.allclose(_with_deepest(skipped, changed, deepest), _with_deepest(skipped, x, deepest))


def test_finetuning_loads_a_backbone_pre_trained_without_skips(tmp_path, caplog):
    network = _stage_network(tmp_path)
    path = tmp_path / "model.pt"
    atomic_torch_save(network.state_dict(), path)
    saved = network.state_dict()
    assert not any(k.startswith("backbone.image_skip.") or ".conv_block." in k for k in saved)
    backbone = read_bundle(FINETUNE, {"output_dir": str(tmp_path)}).get_parsed_content("backbone")
    seg = UniFormerUNETR(in_channels=2, out_channels=5, **backbone)
    assert seg.skips  # fine-tuning keeps the UNETR skips
    with caplog.at_level(logging.INFO, logger="medcoss_monai.apps.brainmvp.model"):
        load_pretrained_backbone(seg, path)
    state = seg.state_dict()
    for key, value in state.items():
        source = saved.get("backbone." + key)
        if key.startswith("encoder.") and key != "encoder.embeddings.0.0.weight":
            torch.testing.assert_close(value, source)
        elif ".transp_conv." in key:  # the up-sampling of the pre-training decoder carries over
            torch.testing.assert_close(value, source)
    torch.testing.assert_close(state["encoder.embeddings.0.0.weight"], saved["backbone.encoder.embeddings.0.0.weight"].repeat(1, 2, 1, 1, 1) / 2)
    fresh = sum(1 for k in state if k.startswith("image_skip.") or ".conv_block." in k)
    assert fresh > 0 and f"{fresh} of the decoder's skip paths" in caplog.text


def test_paper_overlay_has_the_reference_pre_training(tmp_path):
    parser = read_bundle([STAGE, PAPER], {"output_dir": str(tmp_path)})
    value = parser.get_parsed_content
    # reference do_pretrain.sh: --max_epochs=1500 --start_epoch 1000 --accumulation_steps 2 --batch_size=3 --lr 3e-4
    # (cosine annealing, no warm-up); main.py: --decay 1e-5, --sw_batch_size 1 (one crop per study)
    assert value("train#trainer#max_epochs") == 1500
    assert value("pretext_def#contrastive_start_epoch") == 1001  # cur_epoch >= 1000, counted from 0
    assert value("pretext_def#other_contrast_start_epoch") == 302  # template for cur_epoch <= 300 (models/Uniformer.py)
    assert value("accumulation_steps") == 2 and value("batch_size") == 3 and value("crops_per_study") == 1
    assert value("lr") == pytest.approx(3e-4) and value("warmup_epochs") == 0
    assert value("weight_decay") == pytest.approx(1e-5) and value("template_lr") == pytest.approx(3e-4)
    # models/Uniformer.py: Contrast_Loss(temperature=1.0) on feature_x4.flatten(1); loss = 10 rec_a + rec_b + cons
    assert value("pretext_def#temperature") == 1.0 and value("pretext_def#weight_contrastive") == 1.0
    assert value("pretext_def#weight_a") == 10.0 and value("pretext_def#weight_b") == 1.0
    assert value("pretext_def#contrastive_features") == "flattened"
    assert value("mask_ratio") == 0.8 and value("block_size") == 8 and value("roi_size") == [96, 96, 96]
    assert flag(value("independent_masks")) and not flag(value("pretrain_skips"))
    assert value("network_def#backbone")["skips"] is False
    # models/uniformer_blocks.py: every PatchEmbed has patch_size 2, so a 96^3 crop ends as a 512 x 6^3 map
    backbone = value("backbone")
    assert backbone["strides"] == [2, 2, 2, 2] and backbone["widths"] == [64, 128, 320, 512] and backbone["depths"] == [3, 4, 8, 3]
    assert backbone["feature_size"] == 64  # the reference decoder's last level (UniSegDecoder.decoder2: 64)
    encoder = UniFormer3D(**{k: v for k, v in backbone.items() if k != "feature_size"})
    assert [s // encoder.divisor for s in value("roi_size")] == [6, 6, 6]


def test_finetuning_paper_overlay_has_the_reference_downstream(tmp_path):
    parser = read_bundle([FINETUNE, FINETUNE_PAPER], {"output_dir": str(tmp_path)})
    value = parser.get_parsed_content
    # Downstream/do_train.sh: --max_epochs 300 --batch_size 2 --patch_shape 96 --lr 0.0003 --wd 0.0001 --use_cl True
    assert value("train#trainer#max_epochs") == 300 and value("batch_size") == 2 and value("crops_per_study") == 1
    assert value("lr") == pytest.approx(3e-4) and value("weight_decay") == pytest.approx(1e-4) and value("roi_size") == [96] * 3
    assert value("consistency_weight") == pytest.approx(0.1) and value("consistency_on") == "features"  # trainer.py
    assert value("substitute_max") == 3 and value("substitute_prob") == pytest.approx(0.75)  # num_mix 3
    paper = read_bundle([STAGE, PAPER], {"output_dir": str(tmp_path)})
    assert value("backbone") == paper.get_parsed_content("backbone")  # the pre-trained network's sizes
    assert value("template_shape") == paper.get_parsed_content("template_shape")


def test_the_demo_finetuning_takes_the_reference_consistency_term(tmp_path):
    parser = read_bundle(FINETUNE, {"output_dir": str(tmp_path)})
    assert parser.get_parsed_content("consistency_weight") == pytest.approx(0.1)
    assert parser.get_parsed_content("loss#on") == "features"
