"""Classification fine-tuning from a BrainMVP stage: the backbone's encoder with the reference's head.

The reference (``Fine_tune/classification/models/Uniformer.py``, ``cls_model``) averages the encoder's deepest
feature map over space and applies one linear layer; the decoder is not used. :func:`classification_network`
builds that on the backbone :func:`~medcoss_monai.apps.brainmvp.stage_network.segmentation_network` would build,
so :func:`~medcoss_monai.apps.brainmvp.model.load_pretrained_backbone` fills its ``encoder.*`` tensors from a
stage's ``model.pt`` exactly as for segmentation (and refuses a backbone that does not fit).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from medcoss_monai.apps.brainmvp.stage_network import segmentation_network

__all__ = ["BrainMVPClassifier", "classification_network"]


class BrainMVPClassifier(nn.Module):
    """A BrainMVP encoder, global average pooling of its deepest map, and a linear layer.

    Args:
        encoder: a :class:`~medcoss_monai.apps.brainmvp.uniformer.UniFormer3D` or
            :class:`~medcoss_monai.apps.brainmvp.unet.BrainMVPUNetEncoder` (its ``widths`` name the deepest width).
        num_classes: output logits.
    """

    def __init__(self, encoder: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(int(encoder.widths[-1]), int(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` of ``(B, C, D, H, W)`` volumes (one channel per contrast)."""
        deepest = self.encoder(x)[-1]
        return self.head(deepest.flatten(2).mean(-1))


def classification_network(backbone: Mapping[str, Any], in_channels: int, num_classes: int) -> BrainMVPClassifier:
    """The classification network on the backbone named by ``backbone["architecture"]`` (default the UniFormer).

    Args:
        backbone: sizes (:func:`~medcoss_monai.apps.brainmvp.stage_network.stage_backbone`, or the bundle's).
        in_channels: one per contrast.
        num_classes: classes.

    Returns:
        A :class:`BrainMVPClassifier` whose ``encoder`` is that backbone's encoder.
    """
    return BrainMVPClassifier(segmentation_network(backbone, in_channels, 1).encoder, num_classes)
