"""Masked-image-modelling loss (MAE)."""

from __future__ import annotations

import torch
from torch.nn.modules.loss import _Loss

__all__ = ["MaskedReconstructionLoss"]


class MaskedReconstructionLoss(_Loss):
    """Mean squared error per patch, averaged over the masked patches only (MAE).

    When no patch is masked (``mask_ratio`` 0) every patch counts, so the loss stays an autoencoding loss
    instead of a silent zero.
    """

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """
        Args:
            pred: (B, L, patch_dim) predicted patches.
            target: (B, L, patch_dim) target patches (per-patch normalised by the model when ``norm_pix_loss``).
            mask: (B, L), 1 = masked (counted), 0 = visible.

        Returns:
            Scalar loss.
        """
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape.")
        if tuple(mask.shape) != tuple(pred.shape[:2]):
            raise ValueError(f"mask {tuple(mask.shape)} must be (batch, patches) = {tuple(pred.shape[:2])}.")
        per_patch = ((pred.float() - target.float()) ** 2).mean(dim=-1)
        mask = mask.to(per_patch.dtype)
        if bool(mask.sum() == 0):
            return per_patch.mean()
        return (per_patch * mask).sum() / mask.sum()
