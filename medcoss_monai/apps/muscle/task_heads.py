"""MUSCLE's task heads on a shared ResNet backbone: classification, segmentation, detection.

Each head takes the backbone's feature maps (``layer1`` .. ``layer4``, see :func:`resnet_feature_maps`):

- :class:`PooledClassificationHead`: global average pooling of the last map and one fully connected layer;
- :class:`DeepLabSegmentationHead`: torchvision's DeepLab-v3 head (``DeepLabHead``: atrous spatial pyramid
  pooling with an image-pooling branch, 3x3 conv, 1x1 classifier) on the last map, upsampled to the input;
- :class:`FasterRCNNDetectionHead`: torchvision's ``FasterRCNN`` (region proposal network, RoI align,
  box head, their losses and post-processing) on a torchvision feature pyramid over ``layer2`` ..
  ``layer4`` of the shared backbone.

torchvision is imported through ``monai.utils.optional_import``: this module (and the MUSCLE engines
that name its constants) imports without it; building a head or backbone without it raises
``OptionalImportError`` naming torchvision.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.utils import optional_import
from torch import nn

DeepLabHead, _ = optional_import("torchvision.models.segmentation.deeplabv3", name="DeepLabHead")
FasterRCNN, _ = optional_import("torchvision.models.detection.faster_rcnn", name="FasterRCNN")
AnchorGenerator, _ = optional_import("torchvision.models.detection.anchor_utils", name="AnchorGenerator")
tv_ops, _ = optional_import("torchvision.ops")
LastLevelMaxPool, _ = optional_import("torchvision.ops.feature_pyramid_network", name="LastLevelMaxPool")

__all__ = [
    "CLASSIFICATION",
    "SEGMENTATION",
    "DETECTION",
    "resnet_feature_maps",
    "resnet_channels",
    "PooledClassificationHead",
    "DeepLabSegmentationHead",
    "SharedResNetPyramid",
    "FasterRCNNDetectionHead",
]

CLASSIFICATION, SEGMENTATION, DETECTION = "classification", "segmentation", "detection"
LAYERS = ("layer1", "layer2", "layer3", "layer4")


def resnet_feature_maps(backbone: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The feature maps of ``layer1`` .. ``layer4`` of a torchvision ResNet.

    Args:
        backbone: a torchvision ResNet (``conv1``, ``bn1``, ``relu``, ``maxpool``, ``layer1`` .. ``layer4``).
        x: images ``(B, C, H, W)``.

    Returns:
        The four maps, strides 4, 8, 16, 32 (4, 8, 16, 16 or 4, 8, 8, 8 for a backbone dilated to output
        stride 16 or 8, see :func:`~medcoss_monai.apps.muscle.dilation.dilate_resnet`).
    """
    x = backbone.maxpool(backbone.relu(backbone.bn1(backbone.conv1(x))))
    maps = []
    for name in LAYERS:
        x = getattr(backbone, name)(x)
        maps.append(x)
    return maps


def resnet_channels(backbone: nn.Module) -> list[int]:
    """The channel counts of ``layer1`` .. ``layer4`` (64..512 for ResNet-18, 256..2048 for ResNet-50)."""
    return [[m for m in getattr(backbone, n).modules() if isinstance(m, nn.BatchNorm2d)][-1].num_features for n in LAYERS]


class PooledClassificationHead(nn.Module):
    """Fully connected layer on the globally averaged last feature map.

    Args:
        in_channels: channels of the last feature map (512 for ResNet-18).
        num_classes: number of classes.
        dropout: dropout before the fully connected layer.
    """

    kind = CLASSIFICATION

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, maps: Sequence[torch.Tensor], image_size: Sequence[int] | None = None) -> torch.Tensor:
        """Logits ``(B, num_classes)`` from the feature maps (``image_size`` is unused)."""
        return self.fc(self.dropout(torch.flatten(F.adaptive_avg_pool2d(maps[-1], 1), 1)))


class DeepLabSegmentationHead(nn.Module):
    """torchvision's DeepLab-v3 head on the last feature map, logits upsampled to the image (as ``DeepLabV3`` does).

    The head sees the backbone's last map: stride 32 for a plain ResNet, 8 for DeepLab-v3's dilated
    backbone (``resnet_backbone(name, output_stride=8)``), the size torchvision's rates 12, 24, 36 are for.
    The ASPP's image-pooling branch normalises a 1x1 map over the batch: in training a batch needs two
    or more images (the training loaders of :func:`medcoss_monai.apps.muscle.task_data.task_loaders` drop a
    last batch of one).

    Args:
        in_channels: channels of the last feature map.
        num_classes: number of classes (background included).
        atrous_rates: dilations of the three atrous branches (torchvision and DeepLab-v3: 12, 24, 36, for
            output stride 8; the demo bundles set 2, 4, 6 for the small stride-32 maps).
    """

    kind = SEGMENTATION

    def __init__(self, in_channels: int, num_classes: int, atrous_rates: Sequence[int] = (12, 24, 36)) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.head = DeepLabHead(in_channels, num_classes, tuple(int(r) for r in atrous_rates))

    def forward(self, maps: Sequence[torch.Tensor], image_size: Sequence[int]) -> torch.Tensor:
        """Logits ``(B, num_classes, H, W)`` at ``image_size``."""
        return F.interpolate(self.head(maps[-1]), size=tuple(image_size), mode="bilinear", align_corners=False)


class SharedResNetPyramid(nn.Module):
    """torchvision's feature pyramid over ``layer2`` .. ``layer4`` of a backbone that this module uses but does not own.

    The backbone is kept outside the module's registered children, so its weights appear once in the
    multi-task network's state dict (under ``backbone.``), not again under the detection head.

    Args:
        backbone: the shared ResNet.
        out_channels: channels of every pyramid level (``out_channels`` is what ``FasterRCNN`` reads).
    """

    def __init__(self, backbone: nn.Module, out_channels: int = 256) -> None:
        super().__init__()
        object.__setattr__(self, "_shared", [backbone])  # a plain list: not registered as a child
        self.fpn = tv_ops.FeaturePyramidNetwork(resnet_channels(backbone)[1:], out_channels, LastLevelMaxPool())
        self.out_channels = out_channels

    @property
    def backbone(self) -> nn.Module:
        """The shared backbone."""
        return self._shared[0]

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """Pyramid levels ``"0"``, ``"1"``, ``"2"``, ``"pool"`` (strides 8, 16, 32, 64)."""
        maps = resnet_feature_maps(self.backbone, images)[1:]
        return self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps)))


class FasterRCNNDetectionHead(nn.Module):
    """torchvision's Faster R-CNN on the shared backbone (through :class:`SharedResNetPyramid`).

    In training mode ``forward(images, targets)`` returns the detector's losses (``loss_objectness``,
    ``loss_rpn_box_reg``, ``loss_classifier``, ``loss_box_reg``); in eval mode ``forward(images)``
    returns one dict per image with ``boxes``, ``labels`` and ``scores``.

    Boxes, in and out, are ``[x1, y1, x2, y2]`` in the image's pixels, ``x`` along its columns
    (torchvision's convention). Labels, in and out, are ``0 .. num_classes - 1`` as in the datalists;
    the head shifts them by one because torchvision's class 0 is the background.

    Args:
        backbone: the shared ResNet.
        num_classes: number of object classes (no background class).
        anchor_sizes: anchor side lengths in pixels at the first pyramid level (stride 8); level ``i``
            scales them by ``2**i``.
        aspect_ratios: height / width ratios of the anchors.
        pyramid_channels: channels of the feature pyramid (torchvision: 256).
        min_size: the detector resizes each image so its shorter side is ``min_size`` ...
        max_size: ... unless its longer side would pass ``max_size``; boxes come back in the input's pixels.
        image_mean: per-channel mean the detector subtracts. Default 0: the MUSCLE preprocessing gives
            [0, 1] images, and the backbone should see what the other heads' inputs look like.
        image_std: per-channel divisor (default 1, see ``image_mean``).
        score_thresh: minimum score of a kept detection.
        nms_thresh: IoU of the per-class non-maximum suppression.
        detections_per_img: most detections kept per image.
        detector_kwargs: any other ``torchvision.models.detection.FasterRCNN`` argument
            (``rpn_batch_size_per_image``, ``box_batch_size_per_image``, ...).
    """

    kind = DETECTION

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        anchor_sizes: Sequence[float] = (32.0,),
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        pyramid_channels: int = 256,
        min_size: int = 800,
        max_size: int = 1333,
        image_mean: Sequence[float] = (0.0, 0.0, 0.0),
        image_std: Sequence[float] = (1.0, 1.0, 1.0),
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        detector_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        features = SharedResNetPyramid(backbone, pyramid_channels)
        levels = 4  # "0", "1", "2", "pool"
        anchors = AnchorGenerator(
            sizes=tuple(tuple(float(s) * 2**i for s in anchor_sizes) for i in range(levels)),
            aspect_ratios=(tuple(float(r) for r in aspect_ratios),) * levels,
        )
        self.detector = FasterRCNN(
            features,
            num_classes=num_classes + 1,  # + torchvision's background class 0
            min_size=min_size,
            max_size=max_size,
            image_mean=list(image_mean),
            image_std=list(image_std),
            rpn_anchor_generator=anchors,
            box_roi_pool=tv_ops.MultiScaleRoIAlign(featmap_names=["0", "1", "2"], output_size=7, sampling_ratio=2),
            box_score_thresh=score_thresh,
            box_nms_thresh=nms_thresh,
            box_detections_per_img=detections_per_img,
            **dict(detector_kwargs or {}),
        )

    def forward(self, images: torch.Tensor | list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None):
        """Losses (training) or detections (eval); see the class docstring."""
        images = list(images)
        if targets is not None:
            targets = [{**t, "labels": t["labels"].long() + 1} for t in targets]
        out = self.detector(images, targets if self.training else None)
        if self.training:
            return out
        return [{**d, "labels": d["labels"] - 1} for d in out]
