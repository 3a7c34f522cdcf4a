"""MUSCLE at the paper's settings: L2-SP anchored at the step's starting weights on a real multi-task run,
DeepLab-v3's dilated backbone, and the overlay ``bundles/muscle_paper_scale.json``."""

from __future__ import annotations

import pytest
import torch
import torchvision
from ignite.engine import Events

from medcoss_monai import layout
from medcoss_monai.apps.muscle.l2sp import L2SPPenalty
from medcoss_monai.apps.muscle.moco import resnet_backbone
from medcoss_monai.apps.muscle.task_heads import resnet_feature_maps
from medcoss_monai.errors import BadInputError

PAPER = "bundles/muscle_paper_scale.json"


def _backbone_weights(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in network.backbone.named_parameters()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


TWO_TASKS = ("muscle_bodypart_cls", "muscle_lung_seg")  # the detector would only make the run slower


def _tiny_multitask_run(tmp_path, anchor: str) -> tuple[dict, list[dict], list[dict]]:
    """Step 2 on two sample tasks, one round of two one-step visits; returns the starting backbone weights, the
    weights at the start of each visit, and the L2-SP anchor at the end of each visit."""
    common = "%bundles/common/muscle_tasks.json"
    overrides = {"output_dir": str(tmp_path), "batch_size": 2, "eval_batch_size": 2, "max_train_items": 4,
                 "max_eval_items": 2, "rounds": 1, "steps_per_visit": 1, "replay_size": 2, "l2sp_anchor": anchor,
                 "tasks": {t: f"{common}#tasks#{t}" for t in TWO_TASKS}, "heads": {t: f"{common}#heads#{t}" for t in TWO_TASKS}}
    parser = layout.read_bundle("bundles/muscle_multitask.json", overrides)
    torch.manual_seed(0)
    trainer = parser.get_parsed_content("train#trainer")
    network = parser.get_parsed_content("network")
    penalty = next(h for h in parser.get_parsed_content("train#handlers") if isinstance(h, L2SPPenalty))
    start = _backbone_weights(network)
    at_visit_start, anchors = [], []
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: at_visit_start.append(_backbone_weights(network)))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: anchors.append({k: v.clone() for k, v in penalty.anchor.items()}))
    trainer.run()
    return start, at_visit_start, anchors


@pytest.mark.slow
@pytest.mark.parametrize("anchor", ["start", "visit"])
def test_l2sp_anchor_on_a_real_multitask_run(sample_data, tmp_path, anchor):
    """The default anchors L2-SP at the weights the step started from for every visit; ``l2sp_anchor visit``
    (the earlier behaviour) re-anchors at the start of each visit."""
    start, at_visit_start, anchors = _tiny_multitask_run(tmp_path, anchor)
    assert len(at_visit_start) == len(anchors) == 2
    assert not _same(at_visit_start[1], start), "the first visit trained the backbone"
    if anchor == "start":
        assert all(_same(a, start) for a in anchors)
        assert not _same(anchors[1], at_visit_start[1])
    else:
        assert all(_same(a, w) for a, w in zip(anchors, at_visit_start))
        assert not _same(anchors[1], start)


def test_multitask_bundle_anchors_at_the_start_by_default():
    parser = layout.read_bundle("bundles/muscle_multitask.json")
    assert parser["l2sp_anchor"] == "start"
    handler = next(h for h in parser["train"]["handlers"] if isinstance(h, dict) and h.get("_target_", "").endswith("L2SPPenalty"))
    assert handler["anchor"] == "@l2sp_anchor"


@pytest.mark.parametrize("output_stride, dilated", [(16, [False, False, True]), (8, [False, True, True])])
def test_dilated_backbone_is_torchvisions_for_bottlenecks(output_stride, dilated):
    """ResNet-50 dilated by :func:`dilate_resnet` has the strides, dilations and paddings of torchvision's own
    ``resnet50(replace_stride_with_dilation=...)`` (the backbone of torchvision's ``deeplabv3_resnet50`` at 8)."""
    ours = resnet_backbone("resnet50", output_stride=output_stride)
    theirs = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=dilated)
    convs = lambda net: {n: (m.stride, m.dilation, m.padding) for n, m in net.named_modules() if isinstance(m, torch.nn.Conv2d)}  # noqa: E731
    assert convs(ours) == convs(theirs)
    assert convs(ours) != convs(resnet_backbone("resnet50"))


def test_dilated_resnet18_keeps_stride_8_and_loads_plain_weights():
    plain, dilated = resnet_backbone("resnet18"), resnet_backbone("resnet18", output_stride=8)
    x = torch.rand(2, 3, 128, 128)
    assert [m.shape[-1] for m in resnet_feature_maps(plain.eval(), x)] == [32, 16, 8, 4]
    assert [m.shape[-1] for m in resnet_feature_maps(dilated.eval(), x)] == [32, 16, 16, 16]
    assert [m.shape[-1] for m in resnet_feature_maps(resnet_backbone("resnet18", output_stride=16).eval(), x)] == [32, 16, 8, 8]
    # the same weights: an MD-MoCo backbone loads into the dilated one as it is
    dilated.load_state_dict(plain.state_dict())
    assert dilated.layer4[1].conv2.dilation == (4, 4) and dilated.layer3[0].conv1.stride == (1, 1)
    with pytest.raises(BadInputError, match="output_stride 4"):
        resnet_backbone("resnet18", output_stride=4)


def test_paper_overlay_settings():
    seg = layout.read_bundle(["bundles/finetune_muscle_seg.json", PAPER])
    assert seg.get_parsed_content("backbone_output_stride") == 8
    assert seg.get_parsed_content("seg_atrous_rates") == [12, 24, 36]
    assert layout.read_bundle(["bundles/muscle_multitask.json", PAPER])["l2sp_anchor"] == "start"
    moco = layout.read_bundle(["bundles/muscle_mdmoco.json", PAPER])
    assert moco["shuffle_bn"] is True and moco.get_parsed_content("network_def").shuffle_bn
    demo = layout.read_bundle("bundles/finetune_muscle_seg.json")
    assert demo["backbone_output_stride"] == 32 and demo["seg_atrous_rates"] == [2, 4, 6]


def test_paper_segmentation_head_on_a_real_sample_image(sample_data, tmp_path):
    """DeepLab-v3 at paper size on a lung view of the sample task: a stride-8 map, rates 12, 24, 36, full-size logits."""
    parser = layout.read_bundle(["bundles/finetune_muscle_seg.json", PAPER],
                                {"output_dir": str(tmp_path), "max_train_items": 2, "max_eval_items": 2, "eval_batch_size": 2})
    network = parser.get_parsed_content("network").eval()
    batch = next(iter(parser.get_parsed_content("validate#loaders")["muscle_lung_seg"]))
    image = batch["image"]
    assert image.shape[1:] == (3, 128, 128)
    aspp = network.heads["muscle_lung_seg"].head[0]
    assert [branch[0].dilation for branch in list(aspp.convs)[1:4]] == [(12, 12), (24, 24), (36, 36)]
    with torch.no_grad():
        assert resnet_feature_maps(network.backbone, image)[-1].shape[-2:] == (16, 16)
        logits = network(image)
    assert logits.shape == (image.shape[0], 2, 128, 128) and torch.isfinite(logits).all()
