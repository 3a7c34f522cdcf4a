"""Building blocks of the MedCoSS reference encoder (:mod:`medcoss_monai.networks.reference_encoder`).

The layer with layer scale and drop path, the split space-time position table of image tokens, the text
embedding and the reference's text attention bias (reference: ``yeerwen/MedCoSS`` ``model/Base_module.py``
and ``model/Unimodel.py``).
"""

from __future__ import annotations

import torch
from monai.networks.blocks import MLPBlock, SABlock
from monai.networks.layers import DropPath
from torch import nn

__all__ = [
    "LayerScaleBlock",
    "SplitPositionTable",
    "ReferenceTextEmbedding",
    "reference_text_attention_bias",
    "TEXT_ATTENTION",
    "TEXT_MASK_LAYOUTS",
    "MASK_FILL",
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
