"""MUSCLE's task heads (torchvision's DeepLab-v3 head and Faster R-CNN) and multi-task network on real sample batches."""

from __future__ import annotations

import pytest
import torch
import torchvision

from medcoss_monai import layout
from medcoss_monai.apps.muscle.task_data import box_problems, items_by_task, task_loaders
from medcoss_monai.errors import BadInputError
from medcoss_monai.apps.muscle.moco import resnet_backbone
from medcoss_monai.apps.muscle.multitask_network import BACKBONE_PREFIX, MultiTaskResNet, backbone_state, load_backbone
from medcoss_monai.apps.muscle.task_heads import FasterRCNNDetectionHead, PooledClassificationHead
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


def test_heads_are_torchvisions_on_the_shared_backbone(step2):
    _, trainer, _ = step2
    net = trainer.network
    assert isinstance(net.backbone, torchvision.models.ResNet)
    assert isinstance(net.heads["muscle_lung_seg"].head, torchvision.models.segmentation.deeplabv3.DeepLabHead)
    detector = net.heads["muscle_chest_det"].detector
    assert isinstance(detector, torchvision.models.detection.FasterRCNN)
    assert detector.backbone.backbone is net.backbone, "the detector runs on the shared backbone"
    keys = list(net.state_dict())
    assert not [k for k in keys if k.startswith("heads.") and ".layer4." in k], "the detector does not copy the backbone"
    assert {k.split(".")[1] for k in keys if k.startswith("heads.")} == set(TASKS)


def test_detection_head_predicts_boxes_in_image_pixels(step2):
    _, trainer, batches = step2
    net = trainer.network.eval()
    with torch.no_grad():
        out = net([item["image"] for item in batches["muscle_chest_det"]], task="muscle_chest_det")
    net.train()
    assert len(out) == len(batches["muscle_chest_det"])
    for pred, item in zip(out, batches["muscle_chest_det"]):
        assert set(pred) >= {"boxes", "labels", "scores"}
        if len(pred["boxes"]):
            height, width = item["image"].shape[1:]
            assert (pred["boxes"][:, 2:] <= torch.tensor([width, height]) + 1e-3).all()
            assert ((pred["labels"] >= 0) & (pred["labels"] < 3)).all()


def test_detection_head_keeps_datalist_labels_and_x_along_columns():
    """Mechanics: torchvision's class 0 is the background; the head's labels are the datalist's 0..n-1."""
    torch.manual_seed(0)
    head = FasterRCNNDetectionHead(resnet_backbone("resnet18"), 1, anchor_sizes=(16.0,), pyramid_channels=32,
                                   min_size=64, max_size=192, score_thresh=0.0, detections_per_img=300)
    image = torch.rand(3, 64, 192)  # height 64, width 192
    seen = []  # the targets the RoI heads get: (features, proposals, image_shapes, targets)
    head.detector.roi_heads.register_forward_pre_hook(lambda module, args: seen.append(args[3]))
    head.train()
    losses = head([image], [{"boxes": torch.tensor([[100.0, 10.0, 180.0, 50.0]]), "labels": torch.tensor([0])}])
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert seen[0][0]["labels"].tolist() == [1], "datalist class 0 is torchvision's class 1, not the background"
    head.eval()
    with torch.no_grad():
        pred = head([image])[0]
    assert len(pred["boxes"]) > 0 and set(pred["labels"].tolist()) == {0}, "the one class is 0 again (torchvision's 1)"
    assert pred["boxes"][:, 2].max() > 64 + 1, "x reaches past the image's height: x runs along the width"
    assert pred["boxes"][:, 3].max() <= 64 + 1e-3 and pred["boxes"][:, 2].max() <= 192 + 1e-3


def test_a_checkpoint_of_the_earlier_monai_built_backbone_loads_into_torchvisions(tmp_path):
    """model.pt files of MUSCLE runs made before the switch (MONAI's ResNet laid out as torchvision's) still load."""
    from monai.networks.nets import resnet18

    torch.manual_seed(0)
    old = resnet18(spatial_dims=2, n_input_channels=3, conv1_t_size=7, conv1_t_stride=2, shortcut_type="B",
                   bias_downsample=False, feed_forward=False)
    path = atomic_torch_save({BACKBONE_PREFIX + k: v for k, v in old.state_dict().items()}, tmp_path / "model.pt")
    net = load_backbone(MultiTaskResNet(resnet_backbone("resnet18"), {"c": PooledClassificationHead(512, 2)}), path)
    assert all(torch.equal(v, net.backbone.state_dict()[k]) for k, v in old.state_dict().items())
    old.eval(), net.eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(old(x), net.backbone(x), atol=1e-5), "same network, same features"


def test_training_loaders_never_end_with_a_batch_of_one(step2):
    """DeepLab-v3's image-pooling branch normalises 1x1 maps over the batch: a batch of one cannot train."""
    parser, _, _ = step2
    tasks = parser.get_parsed_content("tasks")
    items = {"muscle_lung_seg": items_by_task(tasks, "training")["muscle_lung_seg"][:5]}
    loader = task_loaders(items, tasks, parser.get_parsed_content("train_transforms"), 2, shuffle=True)["muscle_lung_seg"]
    assert [len(b["image"]) for b in loader] == [2, 2]
    evaluation = task_loaders(items, tasks, parser.get_parsed_content("eval_transforms"), 2, shuffle=False)["muscle_lung_seg"]
    assert [len(b["image"]) for b in evaluation] == [2, 2, 1], "evaluation keeps every item"


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
