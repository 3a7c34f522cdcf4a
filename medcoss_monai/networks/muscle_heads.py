"""MUSCLE's task heads on a shared ResNet backbone: classification, segmentation, detection.

Each head takes the backbone's feature maps (``layer1`` .. ``layer4``, see :func:`resnet_feature_maps`):

- :class:`PooledClassificationHead`: global average pooling of the last map and one fully connected layer;
- :class:`DeepLabSegmentationHead`: DeepLab-v3's atrous spatial pyramid pooling (MONAI ``SimpleASPP``) on
  the last map, a 3x3 convolution, a 1x1 classifier, upsampled to the input size;
- :class:`RetinaNetDetectionHead`: MONAI's detection stack (``RetinaNet`` + ``RetinaNetDetector``:
  anchors, ATSS matching, focal loss, box regression, NMS) on a feature pyramid (MONAI
  ``FeaturePyramidNetwork``) over ``layer2`` .. ``layer4`` of the shared backbone.

The paper's detector is Faster R-CNN (torchvision). torchvision cannot be imported beside the CPU
build of PyTorch this project installs, so the detection head is MONAI's RetinaNet, a one-stage
detector that also trains on the shared backbone with its own losses.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.apps.detection.networks import retinanet_detector as _retinanet_detector
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.apps.detection.networks.retinanet_network import RetinaNet
from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
from monai.networks.blocks import SimpleASPP
from monai.networks.blocks.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool
from torch import nn

__all__ = [
    "CLASSIFICATION",
    "SEGMENTATION",
    "DETECTION",
    "resnet_feature_maps",
    "resnet_channels",
    "PooledClassificationHead",
    "DeepLabSegmentationHead",
    "SharedResNetPyramid",
    "RetinaNetDetectionHead",
    "swap_box_axes",
]

CLASSIFICATION, SEGMENTATION, DETECTION = "classification", "segmentation", "detection"

if not isinstance(_retinanet_detector.Matcher, type):

    class _NoTorchvisionMatcher:
        """Stands for torchvision's ``Matcher``, which nothing here is an instance of.

        MONAI's detector asks ``isinstance(matcher, torchvision Matcher)`` before trying its own ATSS
        matcher; without torchvision that check raises instead of answering False.
        """

    _retinanet_detector.Matcher = _NoTorchvisionMatcher
LAYERS = ("layer1", "layer2", "layer3", "layer4")


def resnet_feature_maps(backbone: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The feature maps of ``layer1`` .. ``layer4`` of a ResNet (MONAI's or torchvision's attribute names).

    Args:
        backbone: a ResNet with ``conv1``, ``bn1``, ``act`` (MONAI) or ``relu`` (torchvision), ``maxpool``
            and ``layer1`` .. ``layer4``.
        x: images ``(B, C, H, W)``.

    Returns:
        The four maps, strides 4, 8, 16, 32 for a stride-2 stem with max pooling.
    """
    act = getattr(backbone, "act", None) or backbone.relu
    x = act(backbone.bn1(backbone.conv1(x)))
    if not getattr(backbone, "no_max_pool", False):
        x = backbone.maxpool(x)
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
    """DeepLab-v3 head: atrous spatial pyramid pooling, 3x3 conv, 1x1 classifier, upsampled to the image.

    Args:
        in_channels: channels of the last feature map.
        num_classes: number of classes (background included).
        aspp_channels: channels of each ASPP branch (four branches are concatenated).
        dilations: dilation of each ASPP branch (DeepLab-v3 uses 1, 12, 24, 36 at output stride 16; the
            default suits the small maps of stride 32 at a few hundred pixels).
    """

    kind = SEGMENTATION

    def __init__(
        self, in_channels: int, num_classes: int, aspp_channels: int = 64, dilations: Sequence[int] = (1, 2, 4, 6)
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.aspp = SimpleASPP(2, in_channels, aspp_channels, kernel_sizes=(1, 3, 3, 3), dilations=tuple(dilations),
                               acti_type="RELU")
        width = 4 * aspp_channels
        self.project = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, maps: Sequence[torch.Tensor], image_size: Sequence[int]) -> torch.Tensor:
        """Logits ``(B, num_classes, H, W)`` at ``image_size``."""
        logits = self.classifier(self.project(self.aspp(maps[-1])))
        return F.interpolate(logits, size=tuple(image_size), mode="bilinear", align_corners=False)


class SharedResNetPyramid(nn.Module):
    """A feature pyramid over ``layer2`` .. ``layer4`` of a backbone that this module uses but does not own.

    The backbone is kept outside the module's registered children, so its weights appear once in the
    multi-task network's state dict (under ``backbone.``), not again under the detection head.

    Args:
        backbone: the shared ResNet.
        out_channels: channels of every pyramid level.
    """

    def __init__(self, backbone: nn.Module, out_channels: int = 64) -> None:
        super().__init__()
        object.__setattr__(self, "_shared", [backbone])  # a plain list: not registered as a child
        self.fpn = FeaturePyramidNetwork(2, resnet_channels(backbone)[1:], out_channels, LastLevelMaxPool(2))
        self.out_channels = out_channels

    @property
    def backbone(self) -> nn.Module:
        """The shared backbone."""
        return self._shared[0]

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """Pyramid levels (strides 8, 16, 32, 64)."""
        maps = resnet_feature_maps(self.backbone, images)[1:]
        return self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps)))


class RetinaNetDetectionHead(nn.Module):
    """MONAI RetinaNet on the shared backbone, with MONAI's detector for anchors, losses and post-processing.

    In training mode ``forward(images, targets)`` returns the detector's losses (classification focal
    loss and box regression); in eval mode ``forward(images)`` returns one dict per image with
    ``boxes``, ``labels`` and ``labels_scores``.

    Boxes, in and out, are ``[x1, y1, x2, y2]`` in pixels with ``x`` along the image's columns (the
    last tensor axis of a ``(C, H, W)`` image, as the datalists and torchvision have them). MONAI's
    detector orders box coordinates by tensor axis (first spatial axis first), so the head swaps them
    on the way in and out.

    Args:
        backbone: the shared ResNet.
        num_classes: number of object classes (no background class).
        anchor_sizes: base anchor side lengths in pixels at the first pyramid level (stride 8); level
            ``i`` scales them by ``2**i``.
        aspect_ratios: height / width ratios of the anchors.
        pyramid_channels: channels of the feature pyramid.
        score_thresh: minimum score of a kept detection.
        nms_thresh: IoU of non-maximum suppression.
        detections_per_img: most detections kept per image.
    """

    kind = DETECTION

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        anchor_sizes: Sequence[float] = (16.0, 32.0),
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        pyramid_channels: int = 64,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.3,
        detections_per_img: int = 20,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        shapes = [(s / r**0.5, s * r**0.5) for s in anchor_sizes for r in aspect_ratios]
        anchors = AnchorGeneratorWithAnchorShape(feature_map_scales=(1, 2, 4, 8), base_anchor_shapes=shapes)
        features = SharedResNetPyramid(backbone, pyramid_channels)
        # the pyramid's coarsest level has stride 64: inputs are padded to a multiple of it
        network = RetinaNet(2, num_classes, len(shapes), features, size_divisible=64)
        self.detector = RetinaNetDetector(network, anchors)
        self.detector.set_atss_matcher(num_candidates=4, center_in_gt=False)
        self.detector.set_hard_negative_sampler(batch_size_per_image=64, positive_fraction=0.3, pool_size=20, min_neg=16)
        self.detector.set_target_keys(box_key="boxes", label_key="labels")
        self.detector.set_box_selector_parameters(
            score_thresh=score_thresh, topk_candidates_per_level=200, nms_thresh=nms_thresh,
            detections_per_img=detections_per_img,
        )

    def forward(self, images: torch.Tensor | list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None):
        """Losses (training) or detections (eval); see the class docstring."""
        self.detector.train(self.training)
        if targets is not None:
            targets = [{**t, "boxes": swap_box_axes(t["boxes"])} for t in targets]
        out = self.detector(images, targets)
        if self.training:
            return out
        return [{**d, "boxes": swap_box_axes(d["boxes"])} for d in out]


def swap_box_axes(boxes: torch.Tensor) -> torch.Tensor:
    """``[x1, y1, x2, y2]`` (x = column) <-> ``[r1, c1, r2, c2]`` (tensor-axis order of a ``(C, H, W)`` image)."""
    return boxes[..., [1, 0, 3, 2]]
