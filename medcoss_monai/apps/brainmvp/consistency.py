"""Consistency between two template-substituted copies of a batch (BrainMVP fine-tuning).

Each training crop is given twice, each copy with its own random template substitution
(:class:`~medcoss_monai.apps.brainmvp.template_fill.RandTemplateSubstituted`); the batch holds the first
copies then the second ones (:class:`~medcoss_monai.apps.brainmvp.paired_copies.PairedCopiesBatch`). The
segmentation loss is taken on **both** copies, and the mean squared difference of the two copies'
probabilities asks the network to segment the same anatomy alike whichever contrasts were replaced.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ACTIVATIONS", "SubstitutionConsistencyLoss"]

ACTIVATIONS = ("softmax", "sigmoid")
"""How logits become the probabilities that are compared: classes (softmax) or regions (sigmoid)."""


class SubstitutionConsistencyLoss(nn.Module):
    """``seg_loss(pred, target) + weight * MSE(p(pred[:n]), p(pred[n:]))`` for a batch of two copies.

    Args:
        seg_loss: the segmentation loss, taken on the whole batch (both copies).
        weight: weight of the consistency term; 0 turns it off and the batch is taken as it is
            (not paired).
        activation: ``"softmax"`` (classes, over channels) or ``"sigmoid"`` (independent regions).
    """

    def __init__(self, seg_loss: nn.Module, weight: float = 0.0, activation: str = "softmax") -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if float(weight) < 0:
            raise ValueError(f"the consistency weight must be >= 0, got {weight}")
        self.seg_loss, self.weight, self.activation = seg_loss, float(weight), activation

    def consistency(self, pred: torch.Tensor) -> torch.Tensor:
        """Mean squared difference between the probabilities of the first and second half of ``pred``.

        Args:
            pred: ``(2n, C, *spatial)`` logits, copy A of every crop then copy B.

        Returns:
            A scalar.
        """
        if pred.shape[0] % 2:
            raise ValueError(f"a batch of paired copies has an even size, got {pred.shape[0]}")
        prob = torch.softmax(pred, dim=1) if self.activation == "softmax" else torch.sigmoid(pred)
        first, second = prob.chunk(2, dim=0)
        return F.mse_loss(first, second)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of a batch.

        Args:
            pred: ``(B, C, *spatial)`` logits (``B = 2n`` paired copies when ``weight > 0``).
            target: the labels of ``pred`` (each crop's label twice when paired).

        Returns:
            A scalar.
        """
        loss = self.seg_loss(pred, target)
        if self.weight > 0:
            loss = loss + self.weight * self.consistency(pred)
        return loss
