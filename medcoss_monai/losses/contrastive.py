"""InfoNCE contrastive loss (MoCo, with a queue of negatives, or in-batch negatives)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

__all__ = ["InfoNCELoss"]


class InfoNCELoss(_Loss):
    """InfoNCE on L2-normalised embeddings.

    With a ``queue`` (MoCo): each query's positive is its own key, negatives are the queue entries.
    Without one: in-batch negatives, the other keys of the batch.

    Args:
        temperature: softmax temperature.
    """

    def __init__(self, temperature: float = 0.07) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}.")
        self.temperature = temperature

    def forward(self, query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            query: (B, C) query embeddings.
            key: (B, C) key embeddings (positives, no gradient needed).
            queue: (K, C) negative embeddings, or None for in-batch negatives.

        Returns:
            Scalar loss.
        """
        if query.shape != key.shape or query.ndim != 2:
            raise ValueError(f"query {tuple(query.shape)} and key {tuple(key.shape)} must both be (B, C).")
        q = F.normalize(query.float(), dim=1)
        k = F.normalize(key.float(), dim=1)
        if queue is None:
            logits = q @ k.t()
            labels = torch.arange(q.shape[0], device=q.device)
        else:
            negatives = F.normalize(queue.float(), dim=1)
            logits = torch.cat([(q * k).sum(dim=1, keepdim=True), q @ negatives.t()], dim=1)
            labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        return F.cross_entropy(logits / self.temperature, labels)
