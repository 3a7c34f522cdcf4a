"""3D UniFormer (BrainMVP's backbone) and a UNETR-style decoder on its four stages.

UniFormer stacks convolutional stages (local multi-head relation aggregation: a depth-wise 5^3
convolution between point-wise ones) and then self-attention stages (global relation aggregation),
each block preceded by a depth-wise convolutional position embedding. UniFormer-S has widths
64/128/320/512, depths 3/4/8/3, head dimension 64 and strides 4/2/2/2; every choice is a
constructor argument so a demo can run a small one. The attention blocks are MONAI's
``TransformerBlock``; the decoder is MONAI's ``UnetrBasicBlock`` / ``UnetrUpBlock`` / ``UnetOutBlock``.

Pre-training uses the decoder **without skip connections** (``skips=False``): a skip, above all the one
from the full-resolution input, lets the network copy the visible voxels of a masked view through to
its reconstruction. As in the reference (BrainMVP ``models/Uniformer.py``, ``UniSegDecoder.forward``:
only the ``transp_conv`` of each up block), that decoder is the chain of transposed convolutions and the
output block; its modules carry the names of the fine-tuning decoder's (``decoder.<i>.transp_conv``), so
a fine-tuning network with skips loads them and starts its skip paths fresh.

Three options give the reference's exact computation, which the authors' released weights need
(``medcoss_monai.weights``, format ``brainmvp_uniformer``): a channel-wise layer norm after each patch
embedding (``embed_norm="layer"``, the reference's ``PatchEmbed``), a batch norm on the last stage's output
(``final_norm=True``) and layer norms of eps 1e-6 in the attention blocks (``attention_norm_eps``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.blocks import TransformerBlock, UnetOutBlock, UnetrBasicBlock, UnetrUpBlock
from monai.networks.blocks.dynunet_block import get_conv_layer
from monai.networks.layers.utils import get_norm_layer
from torch import nn

from medcoss_monai.errors import BadInputError

__all__ = ["ChannelLayerNorm", "ConvRelationBlock", "AttentionRelationBlock", "UniFormer3D", "UpsampleOnly", "UniFormerUNETR"]


class ChannelLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` over the channels of a ``(B, C, *spatial)`` feature map (each voxel normalised alone)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


def _norm(name: str | tuple, channels: int) -> nn.Module:
    # "layer" is the channel-wise layer norm of the reference's patch embedding; other names are MONAI's
    return ChannelLayerNorm(channels) if name == "layer" else get_norm_layer(name, spatial_dims=3, channels=channels)


def _mlp(dim: int, mlp_ratio: float) -> nn.Sequential:
    hidden = int(dim * mlp_ratio)
    return nn.Sequential(nn.Conv3d(dim, hidden, 1), nn.GELU(), nn.Conv3d(hidden, dim, 1))


class ConvRelationBlock(nn.Module):
    """UniFormer's convolutional block: position embedding, local relation aggregation, MLP.

    Args:
        dim: channels.
        mlp_ratio: MLP hidden size over ``dim``.
        norm_name: MONAI norm name (UniFormer uses batch norm).
    """

    def __init__(self, dim: int, mlp_ratio: float = 4.0, norm_name: str | tuple = "batch") -> None:
        super().__init__()
        self.pos_embed = nn.Conv3d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = get_norm_layer(norm_name, spatial_dims=3, channels=dim)
        self.aggregate = nn.Sequential(
            nn.Conv3d(dim, dim, 1), nn.Conv3d(dim, dim, 5, padding=2, groups=dim), nn.Conv3d(dim, dim, 1)
        )
        self.norm2 = get_norm_layer(norm_name, spatial_dims=3, channels=dim)
        self.mlp = _mlp(dim, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        x = x + self.aggregate(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class AttentionRelationBlock(nn.Module):
    """UniFormer's attention block: convolutional position embedding, then a MONAI ``TransformerBlock``.

    Args:
        dim: channels (token size).
        head_dim: channels per attention head.
        mlp_ratio: MLP hidden size over ``dim``.
        norm_eps: eps of the block's two layer norms (the reference's: 1e-6).
    """

    def __init__(self, dim: int, head_dim: int = 64, mlp_ratio: float = 4.0, norm_eps: float = 1e-5) -> None:
        super().__init__()
        if dim % head_dim:
            raise BadInputError(f"backbone: width {dim} is not a multiple of head_dim {head_dim}")
        self.pos_embed = nn.Conv3d(dim, dim, 3, padding=1, groups=dim)
        self.transformer = TransformerBlock(dim, int(dim * mlp_ratio), dim // head_dim, qkv_bias=True)
        self.transformer.norm1.eps = self.transformer.norm2.eps = float(norm_eps)  # TransformerBlock has no eps argument

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        b, c, *size = x.shape
        tokens = self.transformer(x.flatten(2).transpose(1, 2))
        return tokens.transpose(1, 2).reshape(b, c, *size)


class UniFormer3D(nn.Module):
    """The UniFormer encoder: four stages, each a strided patch embedding and a stack of blocks.

    Args:
        in_channels: input channels (1 per MRI contrast fed).
        widths: channels of the four stages.
        depths: blocks per stage.
        strides: down-sampling of each stage's patch embedding (product: the input-size divisor).
        block_types: ``"conv"`` or ``"attention"`` per stage.
        head_dim: channels per attention head.
        mlp_ratio: MLP hidden size over the width.
        norm_name: norm of the convolutional blocks (and of the patch embeddings unless ``embed_norm``).
        embed_norm: norm after each patch embedding; None: ``norm_name``; ``"layer"``: a channel-wise
            layer norm (the reference's).
        final_norm: a batch norm on the last stage's output (the reference's).
        attention_norm_eps: eps of the attention blocks' layer norms (the reference's: 1e-6).
    """

    def __init__(
        self,
        in_channels: int = 1,
        widths: Sequence[int] = (64, 128, 320, 512),
        depths: Sequence[int] = (3, 4, 8, 3),
        strides: Sequence[int] = (4, 2, 2, 2),
        block_types: Sequence[str] = ("conv", "conv", "attention", "attention"),
        head_dim: int = 64,
        mlp_ratio: float = 4.0,
        norm_name: str | tuple = "batch",
        embed_norm: str | tuple | None = None,
        final_norm: bool = False,
        attention_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if not len(widths) == len(depths) == len(strides) == len(block_types):
            raise BadInputError("backbone: widths, depths, strides and block_types need one entry per stage")
        self.widths, self.strides = tuple(widths), tuple(strides)
        self.embeddings, self.stages = nn.ModuleList(), nn.ModuleList()
        previous = in_channels
        for width, depth, stride, kind in zip(widths, depths, strides, block_types):
            self.embeddings.append(
                nn.Sequential(
                    nn.Conv3d(previous, width, kernel_size=stride, stride=stride),
                    _norm(norm_name if embed_norm is None else embed_norm, width),
                )
            )
            if kind == "conv":
                blocks = [ConvRelationBlock(width, mlp_ratio, norm_name) for _ in range(depth)]
            elif kind == "attention":
                blocks = [AttentionRelationBlock(width, head_dim, mlp_ratio, attention_norm_eps) for _ in range(depth)]
            else:
                raise BadInputError(f"backbone: block type must be 'conv' or 'attention', got {kind!r}")
            self.stages.append(nn.Sequential(*blocks))
            previous = width
        self.norm = nn.BatchNorm3d(previous) if final_norm else None

    @property
    def divisor(self) -> int:
        """What every input side must be a multiple of."""
        return math.prod(self.strides)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of each stage, finest first.

        Args:
            x: ``(B, C, D, H, W)``, each side a multiple of :attr:`divisor`.

        Returns:
            Four feature maps.
        """
        bad = [s for s in x.shape[2:] if s % self.divisor]
        if bad:
            raise BadInputError(f"input size {tuple(x.shape[2:])} (roi_size) is not a multiple of {self.divisor} (the product of the backbone's strides)")
        features = []
        for embed, stage in zip(self.embeddings, self.stages):
            x = stage(embed(x))
            features.append(x)
        if self.norm is not None:
            features[-1] = self.norm(features[-1])
        return features


class UpsampleOnly(nn.Module):
    """The transposed convolution of a MONAI ``UnetrUpBlock`` alone: a decoder level without a skip.

    Its one submodule has the name and shape of ``UnetrUpBlock.transp_conv``, so its weights load into
    the fine-tuning decoder's up block.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: up-sampling factor (kernel size and stride of the transposed convolution).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.transp_conv = get_conv_layer(3, in_channels, out_channels, kernel_size=stride, stride=stride,
                                          conv_only=True, is_transposed=True)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        return self.transp_conv(x)


class UniFormerUNETR(nn.Module):
    """UniFormer encoder with a UNETR-style decoder: each stage's features (and the input) a skip connection.

    Used for BrainMVP's reconstruction (``out_channels=1``, ``skips=False``) and for segmentation
    fine-tuning (``skips=True``).

    Args:
        in_channels: input channels.
        out_channels: output channels (1 for reconstruction, classes for segmentation).
        feature_size: channels of the full-resolution decoder level.
        norm_name: norm of the decoder blocks.
        skips: decoder with skip connections from every encoder stage and from the input (UNETR);
            False: only the deepest features reach the output, through transposed convolutions
            (:class:`UpsampleOnly`), the reference's pre-training decoder.
        encoder_kwargs: :class:`UniFormer3D` arguments (``widths``, ``depths``, ``strides``...).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        feature_size: int = 16,
        norm_name: str | tuple = "instance",
        skips: bool = True,
        **encoder_kwargs: Any,
    ) -> None:
        super().__init__()
        self.skips = bool(skips)
        self.config = {"in_channels": in_channels, "out_channels": out_channels, "feature_size": feature_size,
                       "norm_name": norm_name, "skips": self.skips, **encoder_kwargs}
        self.encoder = UniFormer3D(in_channels=in_channels, **encoder_kwargs)
        widths, strides = self.encoder.widths, self.encoder.strides
        levels = [(widths[k], widths[k - 1], strides[k]) for k in range(len(widths) - 1, 0, -1)]  # coarsest first
        levels.append((widths[0], feature_size, strides[0]))
        if self.skips:
            self.image_skip = UnetrBasicBlock(3, in_channels, feature_size, 3, 1, norm_name, res_block=True)
            ups = [UnetrUpBlock(3, i, o, 3, s, norm_name, res_block=True) for i, o, s in levels]
        else:
            ups = [UpsampleOnly(i, o, s) for i, o, s in levels]
        self.decoder = nn.ModuleList(ups)
        self.out = UnetOutBlock(3, feature_size, out_channels)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Decoder output and the encoder's stage features.

        Args:
            x: ``(B, in_channels, D, H, W)``.

        Returns:
            ``(B, out_channels, D, H, W)`` and the four stage features (finest first).
        """
        features = self.encoder(x)
        y = features[-1]
        if not self.skips:
            for up in self.decoder:
                y = up(y)
            return self.out(y), features
        skips = [self.image_skip(x)] + features[:-1]
        for up, skip in zip(self.decoder, reversed(skips)):
            y = up(y, skip)
        return self.out(y), features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]
