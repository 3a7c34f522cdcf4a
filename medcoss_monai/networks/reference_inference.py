"""The encoder of an imported MedCoSS stage (:class:`~medcoss_monai.networks.MedCoSSReferenceEncoder`, the
authors' released architecture) in tensor-only form: :class:`ReferenceInferenceEncoder`, the counterpart of
:class:`~medcoss_monai.networks.inference.InferenceEncoder` (same outputs, the encoder's state dict keys).
"""

from __future__ import annotations

import torch
from torch import nn

from medcoss_monai.networks.inference_base import KindEncoder, PatchTokens
from medcoss_monai.networks.reference_blocks import MASK_FILL, LayerScaleBlock, ReferenceTextEmbedding, SplitPositionTable
from medcoss_monai.networks.reference_encoder import MedCoSSReferenceEncoder

__all__ = ["ReferenceInferenceEncoder"]


class _ReferenceText(nn.Module):
    """The tables of a :class:`~medcoss_monai.networks.reference_blocks.ReferenceTextEmbedding` (same keys),
    applied as it applies them: token + position + token-type row 0, then LayerNorm."""

    def __init__(self, embedding: ReferenceTextEmbedding) -> None:
        super().__init__()
        self.token, self.position = embedding.token, embedding.position
        self.token_type, self.norm = embedding.token_type, embedding.norm

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids (checked by the encoder) -> (B, L, hidden)."""
        length = ids.shape[1]
        if length > self.position.num_embeddings:
            raise ValueError("the text is longer than the {} positions of the model".format(self.position.num_embeddings))  # noqa: UP032
        return self.norm(self.token(ids) + self.position.weight[:length] + self.token_type.weight[0])


class _ReferencePositions(nn.Module):
    """A :class:`~medcoss_monai.networks.reference_blocks.SplitPositionTable` (same keys) as it runs in eval
    mode: the first ``N`` spatial rows plus temporal row 0."""

    def __init__(self, table: SplitPositionTable) -> None:
        super().__init__()
        self.spatial, self.temporal = table.spatial, table.temporal

    def forward(self, num_tokens: int) -> torch.Tensor:
        """The (num_tokens, hidden) positions of an image of ``num_tokens`` patches."""
        if num_tokens > self.spatial.num_embeddings:
            raise ValueError(
                "the image gives {} patches but the position table holds {}: use a smaller image".format(  # noqa: UP032
                    num_tokens, self.spatial.num_embeddings
                )
            )
        return self.temporal.weight[0] + self.spatial.weight[:num_tokens]


class _ReferenceLayer(nn.Module):
    """A :class:`~medcoss_monai.networks.reference_blocks.LayerScaleBlock` (same keys) as it runs in eval mode
    (drop path is the identity there)."""

    def __init__(self, block: LayerScaleBlock) -> None:
        super().__init__()
        self.norm1, self.attn, self.norm2, self.mlp = block.norm1, block.attn, block.norm2, block.mlp
        self.gamma_1, self.gamma_2 = block.gamma_1, block.gamma_2

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.gamma_1 * self.attn(self.norm1(x), attn_mask=attn_bias)
        return x + self.gamma_2 * self.mlp(self.norm2(x))


class ReferenceInferenceEncoder(KindEncoder):
    """The :class:`~medcoss_monai.networks.MedCoSSReferenceEncoder` (an imported MedCoSS stage) run on one input
    kind, in eval mode, in the form of :class:`InferenceEncoder`.

    The computation is the encoder's ``forward_features``: images get the class token and the split positions,
    a grey 2D image is read as 3 equal channels (as the reference reads films), text gets the reference's causal
    and padding attention bias; there is no final norm. Its state dict keys are the encoder's.

    Args:
        encoder: the trained reference encoder.
        kind: ``"text"`` ((B, L) token ids), ``"2d"`` ((B, C, H, W)) or ``"3d"`` ((B, C, H, W, D)).
    """

    def __init__(self, encoder: MedCoSSReferenceEncoder, kind: str) -> None:
        super().__init__(encoder, kind, encoder.text_embed.token.num_embeddings)
        self.num_heads = int(encoder.num_heads)
        self.causal = encoder.text_attention == "causal"
        self.per_sample = encoder.text_mask_layout == "per_sample"
        self.mask_fill = float(MASK_FILL)  # an attribute: TorchScript reads no global float
        self.text_embed = _ReferenceText(encoder.text_embed)
        self.pos_embed_2d = _ReferencePositions(encoder.pos_embed_2d)
        self.pos_embed_3d = _ReferencePositions(encoder.pos_embed_3d)
        self.image_norm = encoder.image_norm
        self.cls_token = encoder.cls_token
        self.blocks = nn.ModuleList(_ReferenceLayer(b) for b in encoder.blocks)

    def _text_bias(self, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The (B, H, L, L) bias of :func:`~medcoss_monai.networks.reference_blocks.reference_text_attention_bias`."""
        b, length = attention_mask.shape[0], attention_mask.shape[1]
        allowed = attention_mask.to(dtype)[:, None, :].expand(b, length, length)
        if self.causal:
            allowed = allowed * torch.ones(length, length, dtype=dtype, device=allowed.device).tril()
        bias = (1.0 - allowed) * self.mask_fill
        if self.per_sample:
            return bias[:, None].expand(b, self.num_heads, length, length)
        # the reference's mask.repeat(num_heads, 1, 1) read sample-major: head h of sample b gets mask (b * H + h) % B
        rows = torch.arange(b, device=bias.device)[:, None] * self.num_heads + torch.arange(self.num_heads, device=bias.device)
        return bias[rows % b]

    def encode(
        self, x: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[int]]:
        """``(last layer's tokens (B, L, hidden), output of every layer, token grid)`` of checked input, the class
        token left out."""
        bias: torch.Tensor | None = None
        start = 1
        if self.kind == "text":
            mask = torch.ones_like(x) if attention_mask is None else attention_mask
            tokens = self.text_embed(x)
            bias = self._text_bias(mask, tokens.dtype)
            grid = [x.shape[1]]
            start = 0
        else:
            if self.kind == "2d":
                if x.dim() == 4 and x.shape[1] == 1 and self.patch_embed_2d.in_channels == 3:
                    x = x.expand(-1, 3, -1, -1)  # a grey film read as RGB, as the reference reads it
                tokens, grid = self.patch_embed_2d(x)
                tokens = self.image_norm(tokens + self.pos_embed_2d(tokens.shape[1]))
            else:
                tokens, grid = self.patch_embed_3d(x)
                tokens = self.image_norm(tokens + self.pos_embed_3d(tokens.shape[1]))
            tokens = torch.cat([self.cls_token.to(tokens.dtype).expand(tokens.shape[0], -1, -1), tokens], dim=1)
        hidden_states: list[torch.Tensor] = []
        for block in self.blocks:
            tokens = block(tokens, bias)
            hidden_states.append(tokens[:, start:])
        return tokens[:, start:], hidden_states, grid
