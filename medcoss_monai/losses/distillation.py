"""Feature distillation from a frozen teacher."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

__all__ = ["FeatureDistillationLoss"]


class FeatureDistillationLoss(_Loss):
    """Mean squared error between student and teacher features; the teacher gets no gradient."""

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """
        Args:
            student: (B, L, hidden) or (B, hidden) student features.
            teacher: the teacher's features on the same input, same shape.

        Returns:
            Scalar loss.
        """
        if student.shape != teacher.shape:
            raise ValueError(
                f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} features differ in shape: "
                "they must come from the same input with the same masking noise."
            )
        return F.mse_loss(student.float(), teacher.detach().float())
