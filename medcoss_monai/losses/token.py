"""Masked-language-modelling loss and accuracy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

__all__ = ["MaskedTokenLoss", "masked_token_accuracy"]


class MaskedTokenLoss(_Loss):
    """Cross-entropy over the masked tokens; positions labelled ``ignore_index`` (-100) do not count.

    A batch without any masked token gives a zero loss that still belongs to the graph.

    Args:
        ignore_index: label of the positions that are not predicted.
    """

    def __init__(self, ignore_index: int = -100) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """
        Args:
            logits: (B, L, vocab), or (N, vocab) already gathered at the masked positions.
            labels: (B, L) original ids at masked positions, ``ignore_index`` elsewhere; or (N,).

        Returns:
            Scalar loss.
        """
        if tuple(logits.shape[:-1]) != tuple(labels.shape):
            raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not match.")
        if not bool((labels != self.ignore_index).any()):
            return logits.sum() * 0.0
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=self.ignore_index
        )


def masked_token_accuracy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Top-1 accuracy over the masked tokens.

    Args:
        logits: (B, L, vocab).
        labels: (B, L), ``ignore_index`` where not masked.
        ignore_index: label of the positions that do not count.

    Returns:
        Scalar tensor in [0, 1]; NaN when no position is masked.
    """
    valid = labels != ignore_index
    if not bool(valid.any()):
        return torch.tensor(float("nan"), device=logits.device)
    return (logits.argmax(dim=-1)[valid] == labels[valid]).float().mean()
