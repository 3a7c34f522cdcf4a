"""The encoder of the MedCoSS reference implementation, in this project's terms, for the authors' released weights.

The reference (``yeerwen/MedCoSS``, ``model/Unimodel.py`` and ``model/Base_module.py``, a Uni-Perceiver
encoder) differs from this project's :class:`~medcoss_monai.networks.UnifiedEncoder` in ways that change
every feature, so its weights need an encoder built the same way:

- pre-norm layers (LayerNorm eps 1e-5) whose two branches are scaled by learned per-channel factors
  (layer scale, initialised to 1e-3) and dropped per sample (drop path 0.1 in every layer); one fused
  query/key/value projection; GELU MLP; no final norm after the last layer;
- text: token table (49,411 rows, indexed by Bio_ClinicalBERT's WordPiece ids) + learned position
  table (512) + token-type row 0, then a LayerNorm; no class token is prepended (the tokenizer's
  ``[CLS]`` is the first token); attention is *causal* as well as padding-masked (the reference's
  ``get_extended_attention_mask``), see :func:`reference_text_attention_bias`;
- images: a class token, then 16x16 patches of a 3-channel 2D image or 16^3 patches of a 1-channel
  volume, plus a split position embedding (a spatial row per token, indexed in flat token order, plus
  one of 8 temporal rows), then a LayerNorm shared by 2D and 3D.

The two text-attention quirks are kept by default because the released weights were trained with
them; ``text_attention="padding"`` and ``text_mask_layout="per_sample"`` switch them off.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from medcoss_monai.networks.encoder import KINDS, PatchEmbed, pool_tokens, random_masking
from medcoss_monai.networks.patch_geometry import PatchGeometry
# the building blocks live in reference_blocks; they stay importable from here, where they were first
from medcoss_monai.networks.reference_blocks import (  # noqa: F401
    MASK_FILL,
    TEXT_ATTENTION,
    TEXT_MASK_LAYOUTS,
    LayerScaleBlock,
    ReferenceTextEmbedding,
    SplitPositionTable,
    reference_text_attention_bias,
)

__all__ = ["MedCoSSReferenceEncoder"]


class MedCoSSReferenceEncoder(PatchGeometry, nn.Module):
    """The MedCoSS reference encoder: the architecture of the authors' released weights.

    The defaults are the released model's sizes (reference: ``model/Unimodel.py`` ``Unified_Model`` /
    ``Encoder``, ``model/Base_module.py``; built with ``input_size_2D=(512, 512)`` and
    ``input_size_3D=(256, 256, 256)``, hence 1024 and 4096 spatial position rows). ``model.config`` holds the
    constructor arguments (``MedCoSSReferenceEncoder(**model.config)`` rebuilds it).

    Args:
        hidden_size: token size (768).
        num_layers: transformer layers (12).
        num_heads: attention heads (12).
        mlp_dim: MLP width (3072).
        vocab_size: rows of the text token table (49,411; Bio_ClinicalBERT's ids index it).
        max_text_len: rows of the text position table (512).
        token_types: rows of the text token-type table (2).
        spatial_rows_2d: 2D spatial position rows (1024: a 512x512 image).
        spatial_rows_3d: 3D spatial position rows (4096: a 256^3 volume).
        temporal_rows: temporal position rows (8).
        patch_size: patch side, 2D and 3D (16).
        in_channels_2d: 2D image channels (3).
        in_channels_3d: 3D image channels (1).
        drop_path_rate: drop path of every layer (0.1).
        layer_scale_init: initial layer scale (1e-3).
        norm_eps: LayerNorm epsilon of the embeddings and the layers (1e-5).
        text_attention: one of :data:`TEXT_ATTENTION` (``"causal"``, the reference).
        text_mask_layout: one of :data:`TEXT_MASK_LAYOUTS` (``"reference"``).
        random_temporal_pos: draw the temporal position row in training (reference: True).
    """

    def __init__(
        self,
        hidden_size: int = 768,
        num_layers: int = 12,
        num_heads: int = 12,
        mlp_dim: int = 3072,
        vocab_size: int = 49411,
        max_text_len: int = 512,
        token_types: int = 2,
        spatial_rows_2d: int = 1024,
        spatial_rows_3d: int = 4096,
        temporal_rows: int = 8,
        patch_size: int = 16,
        in_channels_2d: int = 3,
        in_channels_3d: int = 1,
        drop_path_rate: float = 0.1,
        layer_scale_init: float = 1.0e-3,
        norm_eps: float = 1.0e-5,
        text_attention: str = "causal",
        text_mask_layout: str = "reference",
        random_temporal_pos: bool = True,
    ) -> None:
        args = dict(locals())  # the constructor arguments, before any other local exists
        super().__init__()
        if text_attention not in TEXT_ATTENTION:
            raise ValueError(f"text_attention must be one of {TEXT_ATTENTION}, got {text_attention!r}.")
        if text_mask_layout not in TEXT_MASK_LAYOUTS:
            raise ValueError(f"text_mask_layout must be one of {TEXT_MASK_LAYOUTS}, got {text_mask_layout!r}.")
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_heads {num_heads}.")
        self.config: dict[str, Any] = {k: v for k, v in args.items() if k not in ("self", "__class__")}
        self.hidden_size, self.num_heads = hidden_size, num_heads
        self.text_attention, self.text_mask_layout = text_attention, text_mask_layout

        self.text_embed = ReferenceTextEmbedding(vocab_size, max_text_len, hidden_size, token_types, norm_eps)
        self.patch_embed_2d = PatchEmbed(2, in_channels_2d, (patch_size,) * 2, hidden_size)
        self.patch_embed_3d = PatchEmbed(3, in_channels_3d, (patch_size,) * 3, hidden_size)
        self.pos_embed_2d = SplitPositionTable(spatial_rows_2d, temporal_rows, hidden_size, random_temporal_pos)
        self.pos_embed_3d = SplitPositionTable(spatial_rows_3d, temporal_rows, hidden_size, random_temporal_pos)
        self.image_norm = nn.LayerNorm(hidden_size, eps=norm_eps)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.blocks = nn.ModuleList(
            LayerScaleBlock(hidden_size, num_heads, mlp_dim, drop_path_rate, layer_scale_init, norm_eps)
            for _ in range(num_layers)
        )
        self._init_weights()

    def _init_weights(self) -> None:
        """As the reference initialises a new model: xavier-uniform linear layers with zero biases, class
        token normal(0.02); embedding tables and patch projections keep PyTorch's defaults."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.cls_token, std=0.02)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> MedCoSSReferenceEncoder:
        """Build from ``model.config`` (a ``_target_`` key, bundle style, is ignored)."""
        return cls(**{k: v for k, v in config.items() if k != "_target_"})

    # ----- tokenizers

    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids -> (B, L, hidden) embedded tokens (no class token: the tokenizer's ``[CLS]`` leads)."""
        return self.text_embed(ids)

    def embed_patches(self, x: torch.Tensor, kind: str) -> torch.Tensor:
        """Images -> (B, N, hidden) patch tokens with positions, normed (no class token: MAE masks these).

        A 1-channel 2D image is repeated to 3 channels, as the reference reads grey X-rays as RGB.
        """
        patch_embed, pos_embed = (
            (self.patch_embed_2d, self.pos_embed_2d) if kind == "2d" else (self.patch_embed_3d, self.pos_embed_3d)
        )
        tokens, _ = patch_embed(self.as_projected(x) if kind == "2d" else x)
        return self.image_norm(tokens + pos_embed(tokens.shape[1]))

    def with_cls_token(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, hidden) patch tokens -> (B, 1 + N, hidden), the class token first."""
        return torch.cat([self.cls_token.to(tokens.dtype).expand(tokens.shape[0], -1, -1), tokens], dim=1)

    def embed_image(self, x: torch.Tensor, kind: str) -> torch.Tensor:
        """Images -> (B, 1 + N, hidden): the class token, then the N patch tokens with positions, normed."""
        return self.with_cls_token(self.embed_patches(x, kind))

    def text_attention_bias(self, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The (B, H, L, L) text attention bias under this encoder's switches (:func:`reference_text_attention_bias`)."""
        return reference_text_attention_bias(
            attention_mask, self.num_heads, self.text_attention == "causal", self.text_mask_layout, dtype
        )

    # ----- forward

    @staticmethod
    def kind_of(x: torch.Tensor) -> str:
        """``"text"`` for integer ids, ``"2d"`` for a 4D float tensor, ``"3d"`` for a 5D one (else ``"unknown"``)."""
        return "text" if not x.is_floating_point() else {4: "2d", 5: "3d"}.get(x.ndim, "unknown")

    def _run(
        self, x: torch.Tensor, kind: str, attention_mask: torch.Tensor | None
    ) -> tuple[list[torch.Tensor], tuple[int, ...]]:
        """Embed and run every layer: (the output of each layer, the token grid)."""
        expected_ndim = {"text": 2, "2d": 4, "3d": 5}
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
        if x.ndim != expected_ndim[kind] or (kind == "text") == x.is_floating_point():
            want = {"text": "(B, L) integer ids", "2d": "(B, 3, H, W) float images", "3d": "(B, 1, D, H, W) float volumes"}
            raise ValueError(f"kind {kind!r} takes {want[kind]}, got a {x.dtype} tensor of shape {tuple(x.shape)}.")
        bias = None
        if kind == "text":
            if attention_mask is None:
                attention_mask = torch.ones_like(x)
            if tuple(attention_mask.shape) != tuple(x.shape):
                shapes = f"attention_mask {tuple(attention_mask.shape)}, token ids {tuple(x.shape)}"
                raise ValueError(f"the attention mask must have the shape of the token ids ({shapes}).")
            tokens = self.embed_text(x)
            bias = self.text_attention_bias(attention_mask, tokens.dtype)
            grid: tuple[int, ...] = (int(x.shape[1]),)
        else:
            tokens = self.embed_image(x, kind)
            patch_embed = self.patch_embed_2d if kind == "2d" else self.patch_embed_3d
            grid = patch_embed.grid_of(x.shape[2:])
        outputs = []
        for block in self.blocks:
            tokens = block(tokens, attn_bias=bias)
            outputs.append(tokens)
        return outputs or [tokens], grid

    def encode_tokens(self, x: torch.Tensor, kind: str, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Final-layer token features of unmasked inputs.

        Args:
            x: ``"text"``: (B, L) token ids; ``"2d"``: (B, 3, H, W) images (or (B, 1, H, W), repeated to 3
                channels); ``"3d"``: (B, 1, D, H, W) volumes. Image sizes are multiples of the patch.
            kind: ``"text"``, ``"2d"`` or ``"3d"``.
            attention_mask: (B, L) 1 = token, 0 = padding, for text (None: every token is real).

        Returns:
            (B, N, hidden) tokens of the last layer (the reference has no final norm): for images the class
            token first, then the patches; for text the L tokens (the tokenizer's ``[CLS]`` first).

        Raises:
            ValueError: an unknown kind, or an input of the wrong shape for it.
        """
        return self._run(x, kind, attention_mask)[0][-1]

    def forward_features(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> dict[str, Any]:
        """The encoder's outputs in the form of :meth:`UnifiedEncoder.forward`, for heads written for it.

        Args:
            x: (B, L) integer token ids, (B, C, H, W) images or (B, 1, D, H, W) volumes, unmasked.
            attention_mask: (B, L) text padding mask, 1 = token.

        Returns:
            dict with ``tokens`` (B, L, hidden) of the last layer without the class token (the patches on
            ``grid``, or the text tokens), ``cls_token`` (B, hidden) of images (None for text),
            ``hidden_states`` (each layer's tokens, class token left out), ``attention_mask``, ``kind``, ``grid``.
        """
        kind = self.kind_of(x)
        outputs, grid = self._run(x, kind, attention_mask)
        start = 0 if kind == "text" else 1
        return {
            "tokens": outputs[-1][:, start:],
            "cls_token": outputs[-1][:, 0] if start else None,
            "hidden_states": [h[:, start:] for h in outputs],
            "attention_mask": attention_mask,
            "kind": kind,
            "grid": grid,
        }

    def forward_masked(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        mask_ratio: float = 0.0,
        noise: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        """Encode only the visible patches (MAE): as ``Unified_Model.forward`` of the reference, patches are
        embedded (positions, norm), a random ``mask_ratio`` of them removed, the class token put first. Text
        is not masked here (the MLM transforms mask its tokens).

        Args:
            x: (B, L) integer token ids, (B, C, H, W) images or (B, 1, D, H, W) volumes.
            attention_mask: (B, L) text padding mask, 1 = token.
            mask_ratio: fraction of patches removed (images; 0 keeps every patch in order).
            noise: (B, N) masking noise; the same noise gives the same mask.

        Returns:
            the dict of :meth:`UnifiedEncoder.forward`: ``tokens`` (B, L', hidden) of the last layer for the
            kept patches or the text (class token left out), ``cls_token`` (B, hidden) of images (None for text),
            ``mask`` (B, L) 1 = removed, ``ids_restore``, ``noise``, ``attention_mask``, ``kind``, ``grid``.
        """
        kind = self.kind_of(x)
        if kind == "text" or mask_ratio <= 0:
            out = self.forward_features(x, attention_mask)
            b, length = out["tokens"].shape[:2]
            mask = torch.zeros(b, length, device=x.device, dtype=out["tokens"].dtype)
            ids_restore = torch.arange(length, device=x.device).expand(b, length)
            return {**out, "mask": mask, "ids_restore": ids_restore, "noise": noise}
        grid = self._patch_embed(kind).grid_of(x.shape[2:])
        kept, mask, ids_restore, _, noise = random_masking(self.embed_patches(x, kind), mask_ratio, noise)
        tokens = self.with_cls_token(kept)
        for block in self.blocks:
            tokens = block(tokens)
        return {
            "tokens": tokens[:, 1:], "cls_token": tokens[:, 0], "mask": mask, "ids_restore": ids_restore,
            "noise": noise, "attention_mask": None, "kind": kind, "grid": grid,
        }  # fmt: skip

    # mean of tokens, over real tokens only when an attention mask is given, as UnifiedEncoder.pool
    pool = staticmethod(pool_tokens)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled features (B, hidden): mean of the patch tokens of images (class token left out, as the
        reference's downstream heads pool), mean of the real tokens of text.

        Args:
            x: (B, L) integer token ids, (B, C, H, W) images or (B, 1, D, H, W) volumes.
            attention_mask: (B, L) text padding mask, 1 = token.

        Returns:
            (B, hidden) features.
        """
        out = self.forward_features(x, attention_mask)
        return self.pool(out["tokens"], out["attention_mask"])
