"""Tensor-in, tensor-out networks of BrainMVP and MUSCLE models, as an exported bundle's ``models/model.ts`` holds them.

Each one shares the modules (and so the weights) of the trained network; it is what the export turns
into TorchScript, so the exported bundle needs no ``medcoss_monai`` to run it. The ResNet ones script
(``torch.jit.script``); the UniFormer ones are traced at the bundle's input size (the exported
inference feeds exactly that size: a sliding window of the training crop, or one centred crop).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MuscleClassifier", "MuscleDetector", "MuscleSegmenter", "ResNetMaps", "ResNetPyramid", "UniFormerFeatures"]


class ResNetMaps(nn.Module):
    """The four feature maps (``layer1`` .. ``layer4``) of a torchvision ResNet, scriptable.

    Args:
        backbone: the trained ResNet (its stem and layers are shared, its ``fc`` is not used).
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Sequential(backbone.conv1, backbone.bn1, backbone.relu, backbone.maxpool)
        self.layers = nn.ModuleList([backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        maps: list[torch.Tensor] = []
        for layer in self.layers:
            x = layer(x)
            maps.append(x)
        return maps


class MuscleClassifier(nn.Module):
    """Logits ``(B, classes)`` of a MUSCLE classification head on its backbone.

    Args:
        backbone: the trained ResNet.
        fc: the head's linear layer (on the globally averaged last map).
    """

    def __init__(self, backbone: nn.Module, fc: nn.Linear) -> None:
        super().__init__()
        self.maps = ResNetMaps(backbone)
        self.fc = fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.maps(x)[-1], 1), 1))


class MuscleSegmenter(nn.Module):
    """Logits ``(B, classes, H, W)`` of a MUSCLE DeepLab-v3 head, upsampled to the input as in training.

    Args:
        backbone: the trained ResNet.
        head: the torchvision ``DeepLabHead`` of the task.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.maps = ResNetMaps(backbone)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = [int(x.shape[2]), int(x.shape[3])]
        return F.interpolate(self.head(self.maps(x)[-1]), size=size, mode="bilinear", align_corners=False)


class ResNetPyramid(nn.Module):
    """The detector's feature pyramid over ``layer2`` .. ``layer4``, scriptable (torchvision's ``FeaturePyramidNetwork``).

    Args:
        backbone: the trained ResNet.
        fpn: the trained pyramid.
        out_channels: channels of every level (what ``FasterRCNN`` reads).
    """

    def __init__(self, backbone: nn.Module, fpn: nn.Module, out_channels: int) -> None:
        super().__init__()
        self.maps = ResNetMaps(backbone)
        self.fpn = fpn
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = self.maps(x)
        levels: dict[str, torch.Tensor] = OrderedDict()
        levels["0"], levels["1"], levels["2"] = maps[1], maps[2], maps[3]
        return self.fpn(levels)


class MuscleDetector(nn.Module):
    """Detections of the first image of a batch as one tensor ``(N, 6)``: ``x1, y1, x2, y2, score, label``.

    Boxes are in the input's pixels (``x`` along columns); labels are the datalist's ``0 .. classes - 1``
    (torchvision's background class 0 is removed, as the training head does).

    Args:
        detector: the trained torchvision ``FasterRCNN`` whose ``backbone`` is a :class:`ResNetPyramid`.
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images = [x[i] for i in range(x.shape[0])]
        out = self.detector(images)
        # scripted torchvision detectors return (losses, detections); eager ones the detections only
        dets = out[1] if isinstance(out, tuple) else out
        d = dets[0]
        labels = (d["labels"] - 1).to(d["boxes"].dtype)
        return torch.cat([d["boxes"], d["scores"][:, None], labels[:, None]], dim=1)


class UniFormerFeatures(nn.Module):
    """Pooled deepest features ``(B, C)`` of a BrainMVP encoder (mean over the last stage's voxels).

    Args:
        encoder: the trained ``UniFormer3D`` (or the U-Net encoder of an imported BrainMVP U-Net: both return their
            feature maps, deepest last).
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)[-1].mean(dim=(2, 3, 4))
