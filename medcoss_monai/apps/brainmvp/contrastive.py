"""Modality-aware InfoNCE of BrainMVP: the two views of a sample attract, the global batch repels.

The two views of one sample show the same anatomy in the same contrast, with 80% of its blocks
filled from the contrast's template (view A) or from another contrast of the study (view B). Their
pooled, projected features are the positive pair; every other sample of the **global** batch
(gathered from all ranks under DDP, with gradients) is a negative.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = ["gather_with_grad", "ModalityAwareInfoNCE"]


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All ranks' ``x`` concatenated along dim 0, differentiable; the rank's own rows start at the offset.

    Args:
        x: ``(B, ...)`` on this rank (every rank must pass the same ``B``).

    Returns:
        ``(world * B, ...)`` and this rank's offset into it (``x`` and 0 outside DDP).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0), dist.get_rank() * x.shape[0]


class ModalityAwareInfoNCE(nn.Module):
    """Symmetric InfoNCE between the projected features of view A and view B.

    For L2-normalised features ``a_i`` and ``b_j`` the logits are ``a_i . b_j / temperature``; the
    target of row ``i`` is column ``i`` (its other view). The loss is the mean of the A->B and B->A
    cross-entropies, with the columns taken from the global batch.

    Args:
        temperature: softmax temperature (the reference's 1.0 gives a weak signal; 0.1-0.2 is usual).
        gather: use the other ranks' samples as negatives under DDP.
    """

    def __init__(self, temperature: float = 0.2, gather: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)
        self.gather = gather

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        """The loss of one batch.

        Args:
            z_a: ``(B, C)`` features of view A.
            z_b: ``(B, C)`` features of view B, same samples in the same order.

        Returns:
            A scalar.
        """
        if z_a.shape != z_b.shape or z_a.dim() != 2:
            raise ValueError(f"expected two (B, C) feature tensors of one shape, got {tuple(z_a.shape)} and {tuple(z_b.shape)}")
        z_a, z_b = F.normalize(z_a, dim=1), F.normalize(z_b, dim=1)
        all_a, offset = gather_with_grad(z_a) if self.gather else (z_a, 0)
        all_b, _ = gather_with_grad(z_b) if self.gather else (z_b, 0)
        target = torch.arange(z_a.shape[0], device=z_a.device) + offset
        loss_ab = F.cross_entropy(z_a @ all_b.T / self.temperature, target)
        loss_ba = F.cross_entropy(z_b @ all_a.T / self.temperature, target)
        return 0.5 * (loss_ab + loss_ba)
