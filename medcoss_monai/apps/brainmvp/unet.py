"""BrainMVP's convolutional alternative to the UniFormer: a residual U-Net with group norms.

The computation of the reference's ``models/Unet.py`` ``RecModel`` (shaohao011/BrainMVP), whose weights the
authors release as ``BrainMVP_unet.pt`` (import: ``medcoss_monai.weights``, format ``brainmvp_unet``):

- a 3^3 convolution to ``C`` channels, then four levels of residual blocks (pre-activation: group norm,
  ReLU, 3^3 convolution, twice, plus the input) with 1, 2, 2 and 4 blocks; between levels a strided 3^3
  convolution halves the size and doubles the channels (to ``8C`` at the third, which the fourth keeps).
  The encoder's outputs are the three down-sampled maps and the deepest level's output (``2C``, ``4C``,
  ``8C`` and ``8C`` channels at 1/2, 1/4, 1/8 and 1/8 of the input size);
- the reconstruction decoder goes back up three times: a 1^3 convolution halving the channels, nearest
  up-sampling by 2 and a residual block; a 1^3 convolution gives the output. As in the reference's
  pre-training it has no skip connections. ``skips=True`` (for segmentation fine-tuning) adds the
  encoder's map of the same size and width after each up-sampling where there is one (1/4 and 1/2) and, at
  full resolution, a MONAI ``UnetrBasicBlock`` of the input (as :class:`UniFormerUNETR`'s ``image_skip``).

Every choice is a constructor argument (``init_channels`` 32 and ``groups`` 8 in the reference).
"""

from __future__ import annotations

from typing import Any

import torch
from monai.networks.blocks import UnetrBasicBlock
from torch import nn

from medcoss_monai.errors import BadInputError

__all__ = ["PreActResBlock", "BrainMVPUNetEncoder", "BrainMVPUNet", "UNET_BLOCKS"]

UNET_BLOCKS = (1, 2, 2, 4)
"""Residual blocks per encoder level in the reference."""


class PreActResBlock(nn.Module):
    """Group norm, ReLU, 3^3 convolution, twice, plus the input (channels kept).

    Args:
        channels: channels in and out.
        groups: groups of the group norms.
    """

    def __init__(self, channels: int, groups: int = 8) -> None:
        super().__init__()
        if channels % groups:
            raise BadInputError(f"unet: {channels} channels cannot be split into {groups} norm groups")
        self.norm1 = nn.GroupNorm(groups, channels)
        self.conv1 = nn.Conv3d(channels, channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, channels)
        self.conv2 = nn.Conv3d(channels, channels, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(self.act(self.norm1(x)))
        return x + self.conv2(self.act(self.norm2(y)))


class BrainMVPUNetEncoder(nn.Module):
    """The U-Net's encoder; returns the four maps the reference's encoder returns (finest first).

    Args:
        in_channels: input channels.
        init_channels: channels of the first level (``C``).
        groups: groups of the group norms.
        blocks: residual blocks per level.
    """

    def __init__(self, in_channels: int = 1, init_channels: int = 32, groups: int = 8, blocks: tuple = UNET_BLOCKS) -> None:
        super().__init__()
        widths = [init_channels * m for m in (1, 2, 4, 8)]
        self.widths = tuple(widths)  # as UniFormer3D's: the deepest is what a classification head reads
        self.stem = nn.Conv3d(in_channels, init_channels, 3, padding=1)
        self.levels = nn.ModuleList(
            nn.Sequential(*(PreActResBlock(w, groups) for _ in range(n))) for w, n in zip(widths, blocks)
        )
        # the third down-sampling keeps 8C (the reference's fourth level is as wide as its input)
        self.downs = nn.ModuleList(nn.Conv3d(widths[k], widths[k + 1], 3, stride=2, padding=1) for k in range(3))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[1/2, 1/4, 1/8 down-sampled maps, deepest map]``."""
        x = self.stem(x)
        features = []
        for k, level in enumerate(self.levels):
            x = level(x)
            if k < len(self.downs):
                x = self.downs[k](x)
            features.append(x)
        return features


class BrainMVPUNet(nn.Module):
    """BrainMVP's residual U-Net: encoder and up-sampling decoder.

    Args:
        in_channels: input channels.
        out_channels: output channels (1 for reconstruction, classes for segmentation).
        init_channels: channels of the first level.
        groups: groups of the group norms.
        skips: decoder skip connections (segmentation); False: the reference's pre-training decoder.
    """

    def __init__(
        self, in_channels: int = 1, out_channels: int = 1, init_channels: int = 32, groups: int = 8, skips: bool = False
    ) -> None:
        super().__init__()
        self.skips = bool(skips)
        self.config: dict[str, Any] = {"in_channels": in_channels, "out_channels": out_channels,
                                       "init_channels": init_channels, "groups": groups, "skips": self.skips}
        self.encoder = BrainMVPUNetEncoder(in_channels, init_channels, groups)
        c = init_channels
        levels = ((8 * c, 4 * c), (4 * c, 2 * c), (2 * c, c))  # (in, out) channels, coarsest first
        self.decoder = nn.ModuleList(
            nn.ModuleDict({"reduce": nn.Conv3d(i, o, 1), "block": PreActResBlock(o, groups)}) for i, o in levels
        )
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.image_skip = UnetrBasicBlock(3, in_channels, c, 3, 1, "instance", res_block=True) if self.skips else None
        self.out = nn.Conv3d(c, out_channels, 1)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Decoder output and the encoder's four maps (finest first).

        Args:
            x: ``(B, in_channels, D, H, W)``, each side a multiple of 8.

        Returns:
            ``(B, out_channels, D, H, W)`` and the encoder's maps.
        """
        bad = [s for s in x.shape[2:] if s % 8]
        if bad:
            raise BadInputError(f"input size {tuple(x.shape[2:])} (roi_size) is not a multiple of 8 (the U-Net's strides)")
        features = self.encoder(x)
        y = features[-1]
        same_size = [features[1], features[0], None]  # encoder maps of each up level's size and width
        for level, skip in zip(self.decoder, same_size):
            y = self.up(level["reduce"](y))
            if self.skips:
                y = y + (skip if skip is not None else self.image_skip(x))
            y = level["block"](y)
        return self.out(y), features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]
