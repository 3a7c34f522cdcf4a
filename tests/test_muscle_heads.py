"""MUSCLE's task heads and multi-task network on real sample batches, read through the step-2 bundle."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import resnet18

from medcoss_monai import layout
from medcoss_monai.bundle.muscle import box_problems, items_by_task
from medcoss_monai.errors import BadInputError
from medcoss_monai.networks.muscle import BACKBONE_PREFIX, MultiTaskResNet, backbone_state, load_backbone
from medcoss_monai.networks.muscle_heads import PooledClassificationHead, RetinaNetDetectionHead, swap_box_axes
from medcoss_monai.utils import atomic_torch_save

TASKS = ("muscle_bodypart_cls", "muscle_lung_seg", "muscle_chest_det")


@pytest.fixture(scope="module")
def step2(sample_data, tmp_path_factory):
    """The step-2 bundle parsed on the sample tasks: network, trainer, a real training batch of each task."""
    out = tmp_path_factory.mktemp("muscle")
    parser = layout.read_bundle(
        "bundles/muscle_multitask.json",
        {"output_dir": str(out), "batch_size": 2, "max_train_items": 8, "max_eval_items": 4, "rounds": 1},
    )
    torch.manual_seed(0)
    trainer = parser.get_parsed_content("train#trainer")
    loaders = parser.get_parsed_content("train#loaders")
    batches = {task: next(iter(loaders[task])) for task in TASKS}
    return parser, trainer, batches


def test_real_batches_have_the_heads_inputs(step2):
    _, _, batches = step2
    cls, seg, det = (batches[t] for t in TASKS)
    assert cls["image"].shape[1:] == (3, 128, 128) and cls["label"].dtype == torch.long
    assert seg["label"].shape[1:] == (1, 128, 128) and set(seg["label"].unique().tolist()) <= {0.0, 1.0}
    assert seg["label"].sum() > 0, "the lung fields are in the masks"
    assert isinstance(det, list) and all(item["image"].shape[0] == 3 for item in det)
    assert any(len(item["boxes"]) for item in det)


@pytest.mark.parametrize("task", TASKS)
def test_each_heads_loss_on_a_real_batch_trains_the_shared_backbone(step2, task):
    _, trainer, batches = step2
    net = trainer.network
    net.train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01 if task != "muscle_lung_seg" else 0.05)
    losses = []
    for _ in range(3):  # a few steps on one real batch: the loss must fall
        optimizer.zero_grad()
        loss = trainer.task_loss(task, batches[task])
        loss.backward()
        if not losses:
            grad = net.backbone.conv1.weight.grad
            assert grad is not None and grad.abs().sum() > 0, "the task's loss reaches the shared backbone"
            other = [t for t in TASKS if t != task and net.kind(t) != "detection"][0]
            assert all(p.grad is None for p in net.heads[other].parameters()), "other heads are untouched"
        optimizer.step()
        losses.append(float(loss))
    assert all(torch.isfinite(torch.tensor(losses))) and losses[0] > 0
    assert losses[-1] < losses[0], f"{task}: {losses}"


def test_detection_head_predicts_boxes_in_image_pixels(step2):
    _, trainer, batches = step2
    net = trainer.network.eval()
    with torch.no_grad():
        out = net([item["image"] for item in batches["muscle_chest_det"]], task="muscle_chest_det")
    net.train()
    assert len(out) == len(batches["muscle_chest_det"])
    for pred, item in zip(out, batches["muscle_chest_det"]):
        assert set(pred) >= {"boxes", "labels", "labels_scores"}
        if len(pred["boxes"]):
            height, width = item["image"].shape[1:]
            assert (pred["boxes"][:, 2:] <= torch.tensor([width, height]) + 1e-3).all()


def test_detection_boxes_are_x_along_columns_on_a_wide_image():
    """Mechanics: MONAI orders box coordinates by tensor axis; the head keeps x = column in and out."""
    torch.manual_seed(0)
    backbone = resnet18(spatial_dims=2, n_input_channels=3, conv1_t_stride=2, feed_forward=False)
    head = RetinaNetDetectionHead(backbone, 2, score_thresh=0.0, detections_per_img=200)
    image = torch.rand(3, 64, 192)  # height 64, width 192
    head.train()
    losses = head([image], [{"boxes": torch.tensor([[100.0, 10.0, 180.0, 50.0]]), "labels": torch.tensor([1])}])
    assert set(losses) == {"classification", "box_regression"} and all(torch.isfinite(v) for v in losses.values())
    head.eval()
    with torch.no_grad():
        boxes = head([image])[0]["boxes"]
    assert len(boxes) > 0
    assert boxes[:, 2].max() > 64 + 1, "x reaches past the image's height: x runs along the width"
    assert boxes[:, 3].max() <= 64 + 1e-3 and boxes[:, 2].max() <= 192 + 1e-3
    assert torch.equal(swap_box_axes(swap_box_axes(boxes)), boxes)


def test_heads_state_is_separate_from_the_shared_backbone(step2):
    _, trainer, _ = step2
    keys = list(trainer.network.state_dict())
    assert not [k for k in keys if k.startswith("heads.") and ".layer4." in k], "the detector does not copy the backbone"
    assert {k.split(".")[1] for k in keys if k.startswith("heads.")} == set(TASKS)
    pyramid = trainer.network.heads["muscle_chest_det"].detector.network.feature_extractor
    assert pyramid.backbone is trainer.network.backbone, "the detector runs on the shared backbone"


def test_load_backbone_takes_the_backbone_only_and_refuses_another_resnet(step2, tmp_path):
    parser, trainer, _ = step2
    source = trainer.network
    path = atomic_torch_save({k: v.clone() + 1.0 if v.is_floating_point() else v for k, v in source.state_dict().items()},
                             tmp_path / "model.pt")
    target = MultiTaskResNet(parser.get_parsed_content("backbone", lazy=False), {"c": PooledClassificationHead(512, 2)})
    head_before = target.heads["c"].fc.weight.clone()
    load_backbone(target, path)
    loaded = backbone_state(target)
    assert loaded and all(torch.equal(v, source.state_dict()[k] + 1.0) for k, v in loaded.items() if v.is_floating_point())
    assert torch.equal(target.heads["c"].fc.weight, head_before), "heads start fresh"
    wrong = {BACKBONE_PREFIX + "conv1.weight": torch.zeros(8, 3, 3, 3)}
    atomic_torch_save(wrong, tmp_path / "other.pt")
    with pytest.raises(BadInputError, match="other.pt"):
        load_backbone(target, tmp_path / "other.pt")


def test_box_problems_name_the_image():
    good = {"image": "a.png", "boxes": [[1, 2, 30, 40]], "labels": [2]}
    assert box_problems(good, 3) == []
    assert box_problems({"image": "a.png", "boxes": [], "labels": []}, 3) == []
    bad = box_problems({"image": "b.png", "boxes": [[30, 2, 10, 40], [1, 1, 2, 2]], "labels": [5]}, 3)
    assert len(bad) == 3 and all(p.startswith("b.png") for p in bad)
    assert box_problems({"image": "c.png", "boxes": [[1, 2, 3]]}, 3)[0].startswith("c.png")


def test_step2_trains_only_on_files_that_no_scored_item_is_cut_from(step2):
    """Held out: step 2's training lists share no source file with the validation (per-visit plot) or test (step 3) items."""
    parser, _, _ = step2
    trained = {item["source"] for items in parser.get_parsed_content("train#items").values() for item in items}
    assert trained, "the training items name their source file"
    scored = {item["source"] for items in parser.get_parsed_content("validate#items").values() for item in items}
    scored |= {item["source"] for items in items_by_task(parser.get_parsed_content("tasks"), "test").values() for item in items}
    assert scored and trained.isdisjoint(scored), trained & scored
