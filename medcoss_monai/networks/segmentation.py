"""UNETR-style segmentation: a convolutional decoder on intermediate tokens of a ViT encoder.

The encoder is this project's :class:`~medcoss_monai.networks.UnifiedEncoder` or the MedCoSS reference
encoder of an imported stage (:class:`~medcoss_monai.networks.MedCoSSReferenceEncoder`, a ViT whose
``forward_features`` gives every block's tokens without the class token, as UNETR taps them).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock
from torch import nn

from medcoss_monai.networks.heads import as_encoder, encoder_outputs

__all__ = ["UNETRStyleSegmenter", "encoder_geometry"]


def encoder_geometry(encoder: nn.Module, kind: str) -> tuple[tuple[int, ...], int, int]:
    """Patch size, number of blocks and image channels of an encoder for ``kind`` (``"2d"`` / ``"3d"``).

    Read from ``patch_size(kind)`` / ``num_layers`` / ``in_channels_<kind>`` where the encoder has them
    (:class:`~medcoss_monai.networks.UnifiedEncoder`), else from its ``patch_embed_<kind>`` and ``blocks``
    (the reference encoder).

    Raises:
        TypeError: the encoder has no patch embedding of that kind or no blocks.
    """
    patch_embed = getattr(encoder, f"patch_embed_{kind}", None)
    blocks = getattr(encoder, "blocks", None)
    size_of = getattr(encoder, "patch_size", None)
    if callable(size_of):
        patch = tuple(int(p) for p in size_of(kind))
    elif patch_embed is not None:
        patch = tuple(int(p) for p in patch_embed.patch_size)
    else:
        raise TypeError(f"{type(encoder).__name__} has no {kind} patch embedding: it cannot feed a {kind} segmenter.")
    layers = getattr(encoder, "num_layers", None)
    if not isinstance(layers, int):
        if blocks is None:
            raise TypeError(f"{type(encoder).__name__} has no blocks whose outputs a UNETR decoder can tap.")
        layers = len(blocks)
    channels = getattr(encoder, f"in_channels_{kind}", None)
    if not isinstance(channels, int):
        channels = int(patch_embed.in_channels)
    return patch, layers, channels


def _upsampling_plan(patch_size: Sequence[int]) -> tuple[tuple[int, ...], bool]:
    """Factor of the last up-sampling step per axis, and whether the patch is handled natively.

    UNETR climbs from the token grid to full resolution in four x2 steps (patch 16). The first three
    steps feed the skip branches, which MONAI builds with one kernel for all their layers, so they
    stay x2 on every axis; an axis with patch 8 does x1 at the last step. Other patch sizes are run as
    if the patch were 16 and the result is interpolated (see :class:`UNETRStyleSegmenter`).
    """
    native = all(p in (8, 16) for p in patch_size)
    last = tuple(p // 8 for p in patch_size) if native else (2,) * len(patch_size)
    return last, native


class UNETRStyleSegmenter(nn.Module):
    """UNETR decoder (MONAI ``UnetrBasicBlock``/``UnetrPrUpBlock``/``UnetrUpBlock``/``UnetOutBlock``)
    on the unified encoder, for 2D or 3D inputs.

    Three intermediate hidden states (``hidden_layers``) and the final normed tokens are reshaped to
    the token grid and brought up to full resolution; a convolutional branch on the raw image gives
    the full-resolution skip. Anisotropic patches of 8 or 16 per axis (e.g. (16, 16, 8)) are handled
    inside the blocks (the last up-sampling is x1 along an axis with patch 8). For other patch sizes
    MONAI's blocks cannot reach the input size in UNETR's four x2 steps, so the image skip branch sees the
    input interpolated to ``grid * 16`` and the logits are interpolated back to the input size.

    Args:
        encoder: a :class:`~medcoss_monai.networks.UnifiedEncoder`, a network holding one as ``.encoder``, or an
            encoder whose ``forward_features(x)`` gives ``tokens``, ``hidden_states`` (one per block) and ``grid``
            with no class token (``MedCoSSReferenceEncoder``; it reads 2D images as 3 channels).
        out_channels: segmentation classes (logit channels).
        spatial_dims: 2 (2D tokenizer) or 3 (3D tokenizer).
        feature_size: channels of the finest decoder level (UNETR's ``feature_size``).
        hidden_layers: indices (into the encoder's per-block outputs) of the three blocks whose outputs
            feed the skips; default ``k * num_layers // 4`` for k = 1, 2, 3, which is MONAI UNETR's
            3, 6, 9 for 12 blocks, at any depth.
        in_channels: image channels; default the encoder's for ``spatial_dims``.
        norm_name: normalisation of the conv blocks.
        res_block: residual conv blocks.
        freeze_encoder: keep the encoder frozen and in ``eval()`` mode.
    """

    def __init__(
        self,
        encoder: nn.Module,
        out_channels: int,
        spatial_dims: int = 3,
        feature_size: int = 16,
        hidden_layers: Sequence[int] | None = None,
        in_channels: int | None = None,
        norm_name: tuple | str = "instance",
        res_block: bool = True,
        freeze_encoder: bool = False,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        self.encoder = as_encoder(encoder)
        self.spatial_dims = spatial_dims
        kind = f"{spatial_dims}d"
        self.patch_size, n, encoder_channels = encoder_geometry(self.encoder, kind)
        if hidden_layers is None:
            hidden_layers = tuple(min(n - 1, k * n // 4) for k in (1, 2, 3))
        self.hidden_layers = tuple(int(i) for i in hidden_layers)
        if len(self.hidden_layers) != 3 or not all(0 <= i < n for i in self.hidden_layers):
            raise ValueError(f"hidden_layers must be 3 block indices in [0, {n}), got {hidden_layers}.")
        if in_channels is None:
            in_channels = encoder_channels
        self.freeze_encoder = freeze_encoder
        if freeze_encoder:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

        last_up, self.native = _upsampling_plan(self.patch_size)
        hidden, fs, dims = self.encoder.hidden_size, feature_size, spatial_dims
        common = {"spatial_dims": dims, "norm_name": norm_name}
        self.encoder1 = UnetrBasicBlock(
            in_channels=in_channels, out_channels=fs, kernel_size=3, stride=1, res_block=res_block, **common
        )
        self.encoder2 = UnetrPrUpBlock(
            in_channels=hidden, out_channels=fs * 2, num_layer=2, kernel_size=3, stride=1,
            upsample_kernel_size=2, conv_block=True, res_block=res_block, **common,
        )
        self.encoder3 = UnetrPrUpBlock(
            in_channels=hidden, out_channels=fs * 4, num_layer=1, kernel_size=3, stride=1,
            upsample_kernel_size=2, conv_block=True, res_block=res_block, **common,
        )
        self.encoder4 = UnetrPrUpBlock(
            in_channels=hidden, out_channels=fs * 8, num_layer=0, kernel_size=3, stride=1,
            upsample_kernel_size=2, conv_block=True, res_block=res_block, **common,
        )
        up = {"kernel_size": 3, "res_block": res_block, **common}
        self.decoder5 = UnetrUpBlock(in_channels=hidden, out_channels=fs * 8, upsample_kernel_size=2, **up)
        self.decoder4 = UnetrUpBlock(in_channels=fs * 8, out_channels=fs * 4, upsample_kernel_size=2, **up)
        self.decoder3 = UnetrUpBlock(in_channels=fs * 4, out_channels=fs * 2, upsample_kernel_size=2, **up)
        # the last step does x1 along axes with patch 8 (anisotropic patches)
        self.decoder2 = UnetrUpBlock(in_channels=fs * 2, out_channels=fs, upsample_kernel_size=last_up, **up)
        self.out = UnetOutBlock(spatial_dims=dims, in_channels=fs, out_channels=out_channels)

    def train(self, mode: bool = True) -> UNETRStyleSegmenter:
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    @staticmethod
    def _to_grid(tokens: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        """(B, L, C) tokens -> (B, C, *grid) feature map."""
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *spatial) images -> (B, out_channels, *spatial) logits.

        Raises:
            ValueError: an input of the other dimensionality, or a size that is not a multiple of the patch.
        """
        if x.ndim != self.spatial_dims + 2 or not x.is_floating_point():
            axes = "H, W" if self.spatial_dims == 2 else "H, W, D"
            raise ValueError(f"expected a float (B, C, {axes}) image batch, got {tuple(x.shape)}.")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
            out = encoder_outputs(self.encoder, x)
        grid = out["grid"]
        hs = out["hidden_states"]
        image = x
        mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
        if not self.native:  # the decoder reaches grid * 16, not the input size
            image = F.interpolate(x, size=[g * 16 for g in grid], mode=mode)
        enc1 = self.encoder1(image)
        enc2 = self.encoder2(self._to_grid(hs[self.hidden_layers[0]], grid))
        enc3 = self.encoder3(self._to_grid(hs[self.hidden_layers[1]], grid))
        enc4 = self.encoder4(self._to_grid(hs[self.hidden_layers[2]], grid))
        dec4 = self.decoder5(self._to_grid(out["tokens"], grid), enc4)
        dec3 = self.decoder4(dec4, enc3)
        dec2 = self.decoder3(dec3, enc2)
        dec1 = self.decoder2(dec2, enc1)
        logits = self.out(dec1)
        if not self.native:
            logits = F.interpolate(logits, size=x.shape[2:], mode=mode)
        return logits
