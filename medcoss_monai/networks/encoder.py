"""The unified encoder: three tokenizers (text, 2D, 3D) in front of one shared transformer.

Which tokenizer runs is read from the input itself: integer token ids are text, a 4D float tensor
(B, C, H, W) a 2D image, a 5D float tensor (B, C, H, W, D) a 3D image. Images of another size than
the one the model was built for are accepted (their size must be a multiple of the patch): the
position table is interpolated to their grid. MAE random masking happens after tokenization, so
the transformer only sees the kept tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from einops.layers.torch import Rearrange
from monai.utils import ensure_tuple_rep
from torch import nn

from medcoss_monai.networks.blocks import init_mae_weights, key_padding_mask, transformer_stack
from medcoss_monai.networks.pos_embed import PositionEmbedding

__all__ = ["UnifiedEncoder", "random_masking", "patchify", "patch_rows", "unpatchify", "pool_tokens", "KINDS"]

KINDS = ("text", "2d", "3d")


def _patch_axes(n: int) -> tuple[str, str, str]:
    """einops names of an ``n``-D image cut into patches: ``(grid axes, patch axes, image axes)``."""
    if n not in (2, 3):
        raise ValueError(f"patches are cut from 2D or 3D images, got {n} spatial axes.")
    grid, patch = ["h", "w", "d"][:n], [f"p{i}" for i in range(n)]
    return " ".join(grid), " ".join(patch), " ".join(f"({g} {p})" for g, p in zip(grid, patch))


def _patch_lengths(patch_size: Sequence[int]) -> dict[str, int]:
    return {f"p{i}": int(p) for i, p in enumerate(patch_size)}


def patchify(x: torch.Tensor, patch_size: Sequence[int]) -> torch.Tensor:
    """Cut images into flattened patches, in the token order of the patch embedding.

    Args:
        x: (B, C, H, W) or (B, C, H, W, D) images, each spatial size a multiple of the patch.
        patch_size: patch size per spatial axis.

    Returns:
        (B, L, prod(patch_size) * C) patches; each patch is flattened patch-position-major, channel last.
    """
    spatial = x.shape[2:]
    if len(patch_size) != len(spatial) or any(s % int(p) for s, p in zip(spatial, patch_size)):
        raise ValueError(f"image size {tuple(spatial)} is not a multiple of the patch size {tuple(patch_size)}.")
    grid, patch, image = _patch_axes(len(spatial))
    return rearrange(x, f"b c {image} -> b ({grid}) ({patch} c)", **_patch_lengths(patch_size))


def patch_rows(patch_size: Sequence[int]) -> Rearrange:
    """The cut of images into patches in the order of a patch convolution's kernel (channel, then patch axes).

    ``F.linear(patch_rows(p)(x), conv.weight.reshape(hidden, -1), conv.bias)`` equals a convolution with
    kernel and stride ``p``, token for token. A module (einops' layer) rather than a function so that
    TorchScript compiles it: the exported networks use it too.

    Args:
        patch_size: patch size per spatial axis (2 or 3 axes).

    Returns:
        a module mapping (B, C, *spatial) images to (B, L, C * prod(patch_size)) patches, L in the
        convolution's output order.
    """
    grid, patch, image = _patch_axes(len(patch_size))
    return Rearrange(f"b c {image} -> b ({grid}) (c {patch})", **_patch_lengths(patch_size))


def unpatchify(patches: torch.Tensor, grid: Sequence[int], patch_size: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`patchify`.

    Args:
        patches: (B, L, prod(patch_size) * C) with ``L == prod(grid)``.
        grid: tokens per spatial axis.
        patch_size: patch size per spatial axis.

    Returns:
        (B, C, *[g * p]) images.
    """
    _, length, dim = patches.shape
    c = dim // math.prod(patch_size)
    if length != math.prod(grid) or c * math.prod(patch_size) != dim:
        raise ValueError(
            f"patches {tuple(patches.shape)} do not fit grid {list(grid)} with patch size {list(patch_size)}."
        )
    grid_axes, patch, image = _patch_axes(len(grid))
    sizes = dict(zip(grid_axes.split(), (int(g) for g in grid)))
    return rearrange(patches, f"b ({grid_axes}) ({patch} c) -> b c {image}", **sizes, **_patch_lengths(patch_size))


def random_masking(
    tokens: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE per-sample random masking: keep the ``int(L * (1 - mask_ratio))`` tokens of lowest noise.

    Args:
        tokens: (B, L, C).
        mask_ratio: fraction of tokens removed, in [0, 1).
        noise: (B, L) noise; the same noise gives the same mask. Drawn uniformly when None.

    Returns:
        ``(kept tokens (B, L_keep, C), mask (B, L) 1 = removed, ids_restore (B, L), ids_keep (B, L_keep), noise)``.
    """
    b, length, c = tokens.shape
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}.")
    len_keep = int(length * (1 - mask_ratio))
    if len_keep < 1:
        raise ValueError(f"mask_ratio {mask_ratio} keeps no token of {length}.")
    if noise is None:
        noise = torch.rand(b, length, device=tokens.device)
    elif tuple(noise.shape) != (b, length):
        raise ValueError(f"noise must have shape {(b, length)} (batch, tokens), got {tuple(noise.shape)}.")
    noise = noise.to(tokens.device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    kept = torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, c))
    mask = torch.ones(b, length, device=tokens.device, dtype=tokens.dtype)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return kept, mask, ids_restore, ids_keep, noise


def pool_tokens(tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of tokens, over real tokens only when ``attention_mask`` is given.

    Args:
        tokens: (B, L, hidden).
        attention_mask: (B, L) 1 = token, 0 = padding, or None.

    Returns:
        (B, hidden) features.
    """
    if attention_mask is None:
        return tokens.mean(dim=1)
    weight = attention_mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weight).sum(dim=1) / weight.sum(dim=1).clamp_min(1.0)


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection (a strided convolution) of 2D or 3D images to tokens.

    Written here rather than with MONAI's ``PatchEmbeddingBlock`` because that block adds a position
    table of one fixed grid inside its forward, which rules out masking-aware and resizable tables.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        patch_size: patch size per axis.
        hidden_size: token size.
    """

    def __init__(self, spatial_dims: int, in_channels: int, patch_size: Sequence[int], hidden_size: int) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.patch_size = tuple(int(p) for p in patch_size)
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.proj = conv(in_channels, hidden_size, kernel_size=self.patch_size, stride=self.patch_size)
        self.proj._is_patch_projection = True  # for init_mae_weights
        self.to_rows = patch_rows(self.patch_size)

    def grid_of(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """Token grid of an image of spatial size ``spatial``.

        Raises:
            ValueError: the size is not a positive multiple of the patch size.
        """
        spatial = tuple(int(s) for s in spatial)
        if len(spatial) != self.spatial_dims or any(s % p or s < p for s, p in zip(spatial, self.patch_size)):
            raise ValueError(
                f"a {self.spatial_dims}D image of size {spatial} cannot be cut into patches of {self.patch_size}: "
                "each spatial size must be a positive multiple of the patch size (resize or crop the input)."
            )
        return tuple(s // p for s, p in zip(spatial, self.patch_size))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Images -> ((B, L, hidden) tokens, grid)."""
        if x.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} image channel(s), got input of shape {tuple(x.shape)}.")
        grid = self.grid_of(x.shape[2:])
        # the strided convolution as one matrix product over the cut patches: the same weights and result,
        # but oneDNN's 3D convolution with a 16^3 kernel took 8x as long as the product at paper size
        weight = self.proj.weight.reshape(self.proj.out_channels, -1)
        return F.linear(self.to_rows(x), weight, self.proj.bias), grid


class UnifiedEncoder(nn.Module):
    """One transformer shared by every modality, with a tokenizer per input kind.

    - text: token embedding (times sqrt(hidden), so words weigh as much as positions) + 1D position
      table (``max_text_len`` positions);
    - 2D: patch embedding of ``patch_size_2d`` + 2D position table of the ``img_size_2d`` grid;
    - 3D: patch embedding of ``patch_size_3d`` + 3D position table of the ``img_size_3d`` grid.

    An optional learned modality-kind embedding is added to every token. Text padding is masked out
    of attention (key padding) through ``attention_mask``.

    Args:
        hidden_size: token size.
        num_layers: transformer blocks.
        num_heads: attention heads.
        mlp_ratio: MLP width over ``hidden_size``.
        vocab_size: text vocabulary size.
        max_text_len: text positions.
        img_size_2d: 2D input size the position table is built for.
        patch_size_2d: 2D patch size.
        in_channels_2d: 2D image channels.
        img_size_3d: 3D input size (H, W, D) the position table is built for.
        patch_size_3d: 3D patch size.
        in_channels_3d: 3D image channels.
        dropout_rate: dropout after embedding and in the blocks.
        qkv_bias: bias of the query/key/value projection.
        pos_embed_type: ``"sincos"`` (fixed, MAE) or ``"learnable"``.
        kind_embedding: add a learned embedding of the input kind (text / 2D / 3D) to every token.
        use_flash_attention: fused attention (``scaled_dot_product_attention``) inside MONAI's blocks.
    """

    def __init__(
        self,
        hidden_size: int = 192,
        num_layers: int = 4,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        vocab_size: int = 8192,
        max_text_len: int = 112,
        img_size_2d: Sequence[int] | int = (96, 96),
        patch_size_2d: Sequence[int] | int = (16, 16),
        in_channels_2d: int = 3,
        img_size_3d: Sequence[int] | int = (64, 64, 16),
        patch_size_3d: Sequence[int] | int = (16, 16, 8),
        in_channels_3d: int = 1,
        dropout_rate: float = 0.0,
        qkv_bias: bool = True,
        pos_embed_type: str = "sincos",
        kind_embedding: bool = False,
        use_flash_attention: bool = True,
    ) -> None:
        super().__init__()
        if pos_embed_type not in ("sincos", "learnable"):
            raise ValueError(f"pos_embed_type must be 'sincos' or 'learnable', got {pos_embed_type!r}.")
        learnable = pos_embed_type == "learnable"
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.vocab_size = vocab_size
        self.max_text_len = max_text_len
        self.img_size_2d = tuple(int(s) for s in ensure_tuple_rep(img_size_2d, 2))
        self.img_size_3d = tuple(int(s) for s in ensure_tuple_rep(img_size_3d, 3))
        self.in_channels_2d, self.in_channels_3d = in_channels_2d, in_channels_3d
        self.use_flash_attention = use_flash_attention

        self.text_embed = nn.Embedding(vocab_size, hidden_size)
        self.pos_embed_text = PositionEmbedding((max_text_len,), hidden_size, learnable)
        self.patch_embed_2d = PatchEmbed(2, in_channels_2d, ensure_tuple_rep(patch_size_2d, 2), hidden_size)
        self.pos_embed_2d = PositionEmbedding(self.patch_embed_2d.grid_of(self.img_size_2d), hidden_size, learnable)
        self.patch_embed_3d = PatchEmbed(3, in_channels_3d, ensure_tuple_rep(patch_size_3d, 3), hidden_size)
        self.pos_embed_3d = PositionEmbedding(self.patch_embed_3d.grid_of(self.img_size_3d), hidden_size, learnable)
        self.kind_embed = nn.Embedding(len(KINDS), hidden_size) if kind_embedding else None
        self.embed_dropout = nn.Dropout(dropout_rate)

        self.blocks = transformer_stack(
            hidden_size, num_layers, num_heads, mlp_ratio, dropout_rate, qkv_bias, use_flash_attention
        )
        self.norm = nn.LayerNorm(hidden_size)
        self.apply(init_mae_weights)
        # token embeddings of unit scale after the sqrt(hidden) factor in ``embed``, as large as the
        # sine-cosine positions: at std 0.02 the positions would drown the words (Vaswani et al. 2017)
        self.text_embed_scale = hidden_size**0.5
        nn.init.normal_(self.text_embed.weight, std=hidden_size**-0.5)

    # ----- what an input is and how it is cut

    @staticmethod
    def kind_of(x: torch.Tensor) -> str:
        """``"text"`` for integer (B, L) ids, ``"2d"`` for float (B, C, H, W), ``"3d"`` for float (B, C, H, W, D).

        Raises:
            ValueError: for any other input.
        """
        if not x.is_floating_point():
            if x.ndim == 2:
                return "text"
            raise ValueError(f"integer input is read as token ids and must be (B, L), got shape {tuple(x.shape)}.")
        if x.ndim == 4:
            return "2d"
        if x.ndim == 5:
            return "3d"
        raise ValueError(
            "float input must be a 2D image batch (B, C, H, W) or a 3D one (B, C, H, W, D), "
            f"got shape {tuple(x.shape)}."
        )

    def patch_size(self, kind: str) -> tuple[int, ...]:
        """Patch size of ``"2d"`` or ``"3d"`` inputs."""
        return self._patch_embed(kind).patch_size

    def patch_dim(self, kind: str) -> int:
        """Values per flattened patch (patch voxels x channels) of ``"2d"`` or ``"3d"`` inputs."""
        pe = self._patch_embed(kind)
        return math.prod(pe.patch_size) * pe.in_channels

    def grid_size(self, kind: str) -> tuple[int, ...]:
        """Token grid at the built input size: ``(max_text_len,)`` for text, the patch grid for images."""
        return {"text": self.pos_embed_text, "2d": self.pos_embed_2d, "3d": self.pos_embed_3d}[kind].grid_size

    def grid_size_of(self, x: torch.Tensor) -> tuple[int, ...]:
        """Token grid of this input: ``(L,)`` for text, the patch grid of the image's actual size."""
        kind = self.kind_of(x)
        if kind == "text":
            return (int(x.shape[1]),)
        return self._patch_embed(kind).grid_of(x.shape[2:])

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *spatial) images -> (B, L, patch_dim) patches in token order (see :func:`patchify`)."""
        return patchify(x, self.patch_size(self.kind_of(x)))

    def unpatchify(self, patches: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        """(B, L, patch_dim) patches on ``grid`` (2 or 3 axes) -> images (see :func:`unpatchify`)."""
        return unpatchify(patches, grid, self.patch_size("2d" if len(grid) == 2 else "3d"))

    def _patch_embed(self, kind: str) -> PatchEmbed:
        if kind == "2d":
            return self.patch_embed_2d
        if kind == "3d":
            return self.patch_embed_3d
        raise ValueError(f"input kind {kind!r} has no patches (expected '2d' or '3d').")

    # ----- forward

    def embed(
        self, x: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, str, tuple[int, ...]]:
        """Tokenize: ids or images -> ((B, L, hidden) tokens with position (and kind) embedding, kind, grid)."""
        kind = self.kind_of(x)
        if kind == "text":
            if attention_mask is not None and tuple(attention_mask.shape) != tuple(x.shape):
                raise ValueError(
                    f"attention_mask {tuple(attention_mask.shape)} must match input_ids {tuple(x.shape)}."
                )
            if int(x.max()) >= self.vocab_size or int(x.min()) < 0:
                raise ValueError(f"token ids must be in [0, {self.vocab_size}), got [{int(x.min())}, {int(x.max())}].")
            grid: tuple[int, ...] = (int(x.shape[1]),)
            tokens = self.text_embed(x) * self.text_embed_scale + self.pos_embed_text(grid)
        else:
            tokens, grid = self._patch_embed(kind)(x)
            tokens = tokens + (self.pos_embed_2d if kind == "2d" else self.pos_embed_3d)(grid)
        if self.kind_embed is not None:
            tokens = tokens + self.kind_embed.weight[KINDS.index(kind)]
        return self.embed_dropout(tokens), kind, grid

    def forward(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        mask_ratio: float = 0.0,
        noise: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        """Encode text or images, optionally dropping a random ``mask_ratio`` of the tokens (MAE).

        Args:
            x: (B, L) integer token ids, (B, C, H, W) or (B, C, H, W, D) float images.
            attention_mask: (B, L) 1 = token, 0 = padding, for text.
            mask_ratio: fraction of tokens removed before the transformer (0 keeps every token in order).
            noise: (B, L) masking noise; the same noise gives the same mask.

        Returns:
            dict with ``tokens`` (B, L', hidden) final normed tokens (L' = kept tokens), ``mask`` (B, L)
            1 = removed, ``ids_restore`` (B, L), ``noise`` (B, L) (the given noise, or None, when nothing is masked),
            ``hidden_states`` (list of (B, L', hidden), output of each block before the final norm),
            ``attention_mask`` (B, L') of the kept tokens or None, ``kind`` and ``grid``.
        """
        tokens, kind, grid = self.embed(x, attention_mask)
        b, length, _ = tokens.shape
        if mask_ratio > 0:
            tokens, mask, ids_restore, ids_keep, noise = random_masking(tokens, mask_ratio, noise)
            if attention_mask is not None:
                attention_mask = torch.gather(attention_mask, 1, ids_keep)
        else:
            mask = torch.zeros(b, length, device=tokens.device, dtype=tokens.dtype)
            ids_restore = torch.arange(length, device=tokens.device).expand(b, length)
        attn = key_padding_mask(attention_mask, self.use_flash_attention)
        hidden_states = []
        for block in self.blocks:
            tokens = block(tokens, attn_mask=attn)
            hidden_states.append(tokens)
        return {
            "tokens": self.norm(tokens),
            "mask": mask,
            "ids_restore": ids_restore,
            "noise": noise,
            "hidden_states": hidden_states,
            "attention_mask": attention_mask,
            "kind": kind,
            "grid": grid,
        }

    @staticmethod
    def pool(tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean of tokens, over real tokens only when ``attention_mask`` is given (see :func:`pool_tokens`)."""
        return pool_tokens(tokens, attention_mask)
