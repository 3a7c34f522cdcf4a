"""Masked-language-modelling head: final text tokens -> vocabulary logits (BERT style)."""

from __future__ import annotations

import torch
from torch import nn

from medcoss_monai.networks.blocks import init_mae_weights

__all__ = ["MLMHead", "MLM_IGNORE_INDEX"]

MLM_IGNORE_INDEX = -100
"""MLM label of the positions that are not predicted (PyTorch's cross-entropy default)."""


class MLMHead(nn.Module):
    """Dense -> GELU -> LayerNorm -> linear to the vocabulary.

    Args:
        hidden_size: encoder token size.
        vocab_size: vocabulary size.
        layer_norm_eps: LayerNorm epsilon.
    """

    def __init__(self, hidden_size: int, vocab_size: int, layer_norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.act = nn.GELU()
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.decoder = nn.Linear(hidden_size, vocab_size)
        self.apply(init_mae_weights)

    def tie_to(self, embedding: nn.Embedding) -> MLMHead:
        """Share the output weights with the input token embedding (BERT's weight tying).

        Args:
            embedding: the text token embedding of the encoder.

        Returns:
            self.
        """
        if embedding.weight.shape != self.decoder.weight.shape:
            raise ValueError(
                f"cannot tie MLM weights {tuple(self.decoder.weight.shape)} "
                f"to embedding {tuple(embedding.weight.shape)}."
            )
        self.decoder.weight = embedding.weight
        return self

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L, hidden) tokens -> (B, L, vocab) logits."""
        return self.decoder(self.norm(self.act(self.dense(tokens))))
