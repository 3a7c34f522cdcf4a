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
from monai.networks.blocks import MLPBlock, SABlock
from monai.networks.layers import DropPath
from torch import nn

from medcoss_monai.networks.encoder import KINDS, PatchEmbed, pool_tokens

__all__ = [
    "MedCoSSReferenceEncoder",
    "LayerScaleBlock",
    "SplitPositionTable",
    "ReferenceTextEmbedding",
    "reference_text_attention_bias",
    "TEXT_ATTENTION",
    "TEXT_MASK_LAYOUTS",
]

TEXT_ATTENTION = ("causal", "padding")
"""``"causal"``: a token attends to the real tokens at or before it (reference); ``"padding"``: to every real token."""

TEXT_MASK_LAYOUTS = ("reference", "per_sample")
"""How the (B, L, L) masks meet the heads: ``"reference"`` as the reference's ``mask.repeat(num_heads, 1, 1)``
is read by ``nn.MultiheadAttention`` (head h of sample b gets the mask of sample ``(b * H + h) % B``), or
``"per_sample"`` (every head of a sample gets its own mask)."""

MASK_FILL = -10000.0
"""The additive bias of a masked position (reference: ``(1.0 - mask) * -10000.0``)."""


def reference_text_attention_bias(
    attention_mask: torch.Tensor,
    num_heads: int,
    causal: bool = True,
    layout: str = "reference",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The additive attention bias the reference builds for text from its padding mask.

    ``get_extended_attention_mask`` of the reference (``model/Unimodel.py``) multiplies the padding
    mask by a causal mask (query i sees keys j <= i), turns it into 0 / -10000 and repeats it
    ``num_heads`` times along the batch axis. ``nn.MultiheadAttention`` reads a (B * H, L, L) mask
    sample-major (row ``b * H + h``) while ``repeat`` tiles it head-major, so with ``layout="reference"``
    head h of sample b gets the mask of sample ``(b * H + h) % B``: a text's features then depend on
    the padding of the other texts in its batch (not when every mask is the same, or B = 1).

    Args:
        attention_mask: (B, L) 1 = token, 0 = padding.
        num_heads: attention heads.
        causal: combine with the causal mask (reference); False keeps the padding mask only.
        layout: one of :data:`TEXT_MASK_LAYOUTS`.
        dtype: of the returned bias.

    Returns:
        (B, H, L, L) bias added to the attention scores (0 attend, -10000 masked).
    """
    if layout not in TEXT_MASK_LAYOUTS:
        raise ValueError(f"text mask layout must be one of {TEXT_MASK_LAYOUTS}, got {layout!r}.")
    b, length = attention_mask.shape
    allowed = attention_mask.to(dtype)[:, None, :].expand(b, length, length)
    if causal:
        allowed = allowed * torch.ones(length, length, dtype=dtype, device=allowed.device).tril()
    bias = (1.0 - allowed) * MASK_FILL
    if layout == "per_sample":
        return bias[:, None].expand(b, num_heads, length, length)
    rows = torch.arange(b, device=bias.device)[:, None] * num_heads + torch.arange(num_heads, device=bias.device)
    return bias[rows % b]


class LayerScaleBlock(nn.Module):
    """A pre-norm transformer layer with layer scale and drop path on both branches.

    ``x + drop_path(gamma_1 * attn(norm1(x)))``, then ``x + drop_path(gamma_2 * mlp(norm2(x)))``
    (reference: ``model/Base_module.py`` ``TransformerEncoderLayer`` with ``norm_first=True``,
    ``layer_scale=True``). Attention is MONAI's ``SABlock`` on the fused path, with one fused qkv
    projection laid out as ``nn.MultiheadAttention``'s ``in_proj`` (query, key, value; heads inside each).

    Args:
        hidden_size: token size.
        num_heads: attention heads.
        mlp_dim: MLP width.
        drop_path_rate: probability of dropping a branch per sample in training.
        layer_scale_init: initial value of the per-channel scales.
        norm_eps: LayerNorm epsilon.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        mlp_dim: int,
        drop_path_rate: float = 0.1,
        layer_scale_init: float = 1.0e-3,
        norm_eps: float = 1.0e-5,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, eps=norm_eps)
        # the fused path is the one of MONAI's two that adds a float (B, H, L, L) bias to the scores
        self.attn = SABlock(hidden_size, num_heads, qkv_bias=True, use_flash_attention=True)
        self.norm2 = nn.LayerNorm(hidden_size, eps=norm_eps)
        self.mlp = MLPBlock(hidden_size, mlp_dim, dropout_rate=0.0, act="GELU")
        self.gamma_1 = nn.Parameter(torch.full((hidden_size,), float(layer_scale_init)))
        self.gamma_2 = nn.Parameter(torch.full((hidden_size,), float(layer_scale_init)))
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L, C) tokens -> (B, L, C); ``attn_bias`` (B, H, L, L) is added to the attention scores."""
        x = x + self.drop_path(self.gamma_1 * self.attn(self.norm1(x), attn_mask=attn_bias))
        return x + self.drop_path(self.gamma_2 * self.mlp(self.norm2(x)))


class SplitPositionTable(nn.Module):
    """Uni-Perceiver's divided space-time position embedding of image tokens, for one frame.

    Token ``n`` gets ``spatial[n] + temporal[t]``: the spatial rows are taken in flat token order
    (the first ``N`` rows for ``N`` tokens, whatever the grid), ``t`` is 0, or in training a random
    row (reference: ``model/Base_module.py`` ``Divide_ST_POS`` with ``random_temporal_pos=True``).

    Args:
        spatial_rows: tokens the table holds (the most an image may have).
        temporal_rows: frames the temporal table holds.
        hidden_size: token size.
        random_temporal: draw the temporal row in training.
    """

    def __init__(self, spatial_rows: int, temporal_rows: int, hidden_size: int, random_temporal: bool = True) -> None:
        super().__init__()
        self.spatial = nn.Embedding(spatial_rows, hidden_size)
        self.temporal = nn.Embedding(temporal_rows, hidden_size)
        self.random_temporal = random_temporal

    def forward(self, num_tokens: int) -> torch.Tensor:
        """The (num_tokens, hidden) position embedding of an image cut into ``num_tokens`` patches."""
        if num_tokens > self.spatial.num_embeddings:
            raise ValueError(
                f"the image gives {num_tokens} patches but the position table holds {self.spatial.num_embeddings}: "
                "use a smaller image (the reference architecture indexes its table in flat token order)."
            )
        t = 0
        if self.training and self.random_temporal:
            t = int(torch.randint(0, self.temporal.num_embeddings, (1,)))
        return self.temporal.weight[t] + self.spatial.weight[:num_tokens]


class ReferenceTextEmbedding(nn.Module):
    """Token + learned position + token-type row 0, then LayerNorm (reference: ``TokenBaseEmbedding``).

    Args:
        vocab_size: rows of the token table.
        max_len: rows of the position table (the longest text).
        hidden_size: token size.
        token_types: rows of the token-type table (row 0 is the one used).
        norm_eps: LayerNorm epsilon.
    """

    def __init__(self, vocab_size: int, max_len: int, hidden_size: int, token_types: int = 2, norm_eps: float = 1.0e-5):
        super().__init__()
        self.token = nn.Embedding(vocab_size, hidden_size)
        self.position = nn.Embedding(max_len, hidden_size)
        self.token_type = nn.Embedding(token_types, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=norm_eps)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids -> (B, L, hidden)."""
        length = ids.shape[1]
        if length > self.position.num_embeddings:
            raise ValueError(f"text of {length} tokens is longer than the {self.position.num_embeddings} positions.")
        if int(ids.min()) < 0 or int(ids.max()) >= self.token.num_embeddings:
            rows, low, high = self.token.num_embeddings, int(ids.min()), int(ids.max())
            raise ValueError(f"token ids must be in [0, {rows}), got [{low}, {high}].")
        tokens = self.token(ids) + self.position.weight[:length] + self.token_type.weight[0]
        return self.norm(tokens)


class MedCoSSReferenceEncoder(nn.Module):
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

    def embed_image(self, x: torch.Tensor, kind: str) -> torch.Tensor:
        """Images -> (B, 1 + N, hidden): the class token, then the N patch tokens with positions, normed.

        A 1-channel 2D image is repeated to 3 channels, as the reference reads grey X-rays as RGB.
        """
        patch_embed, pos_embed = (
            (self.patch_embed_2d, self.pos_embed_2d) if kind == "2d" else (self.patch_embed_3d, self.pos_embed_3d)
        )
        if kind == "2d" and x.shape[1] == 1 and patch_embed.in_channels == 3:
            x = x.expand(-1, 3, -1, -1)
        tokens, _ = patch_embed(x)
        tokens = self.image_norm(tokens + pos_embed(tokens.shape[1]))
        return torch.cat([self.cls_token.to(tokens.dtype).expand(tokens.shape[0], -1, -1), tokens], dim=1)

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
