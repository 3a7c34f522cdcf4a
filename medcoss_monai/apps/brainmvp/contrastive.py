"""Modality-aware InfoNCE of BrainMVP: the two views of a sample attract, the global batch repels.

The two views of one sample show the same anatomy in the same contrast, with 80% of its blocks
filled from the contrast's template (view A) or from another contrast of the study (view B). Their
features are the positive pair; every other sample of the **global** batch (gathered from all ranks
under DDP, with gradients) is a negative, except the other crops of the same study: they are taken
out of the softmax's denominator (the reference draws one crop per study into a batch, so it never
meets them; here several crops of a study may share a batch).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from medcoss_monai.errors import BadInputError

__all__ = ["gather_with_grad", "gather_ids", "ModalityAwareInfoNCE"]


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


def gather_ids(ids: torch.Tensor) -> torch.Tensor:
    """All ranks' ``ids`` concatenated along dim 0 (no gradient: labels, not features).

    Args:
        ids: ``(B,)`` on this rank (every rank must pass the same ``B``).

    Returns:
        ``(world * B,)`` (``ids`` outside DDP).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return ids
    out = [torch.empty_like(ids) for _ in range(dist.get_world_size())]
    dist.all_gather(out, ids.contiguous())
    return torch.cat(out)


class ModalityAwareInfoNCE(nn.Module):
    """Symmetric InfoNCE between the projected features of view A and view B.

    For L2-normalised features ``a_i`` and ``b_j`` the logits are ``a_i . b_j / temperature``; the
    target of row ``i`` is column ``i`` (its other view). The loss is the mean of the A->B and B->A
    cross-entropies, with the columns taken from the global batch. Given ``groups`` (one study id per
    sample), the columns of the row's other crops of its study are masked out (logit ``-inf``): two
    crops of one brain are not a negative pair.

    Args:
        temperature: softmax temperature (reference: 1.0, BrainMVP ``models/Uniformer.py``
            ``Contrast_Loss(temperature=1.0)``).
        gather: use the other ranks' samples as negatives under DDP.
    """

    def __init__(self, temperature: float = 0.2, gather: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise BadInputError(f"--temperature must be positive, got {temperature}")
        self.temperature = float(temperature)
        self.gather = gather

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        """The loss of one batch.

        Args:
            z_a: ``(B, C)`` features of view A.
            z_b: ``(B, C)`` features of view B, same samples in the same order.
            groups: ``(B,)`` integer study id of each sample; samples of one study are not each other's
                negatives. None: every other sample is a negative.

        Returns:
            A scalar.
        """
        if z_a.shape != z_b.shape or z_a.dim() != 2:
            raise ValueError(f"expected two (B, C) feature tensors of one shape, got {tuple(z_a.shape)} and {tuple(z_b.shape)}")
        z_a, z_b = F.normalize(z_a, dim=1), F.normalize(z_b, dim=1)
        all_a, offset = gather_with_grad(z_a) if self.gather else (z_a, 0)
        all_b, _ = gather_with_grad(z_b) if self.gather else (z_b, 0)
        target = torch.arange(z_a.shape[0], device=z_a.device) + offset
        logits_ab, logits_ba = z_a @ all_b.T / self.temperature, z_b @ all_a.T / self.temperature
        if groups is not None:
            groups = groups.reshape(-1).to(z_a.device)
            all_groups = gather_ids(groups) if self.gather else groups
            same = groups[:, None] == all_groups[None, :]
            same[torch.arange(len(groups), device=same.device), target] = False  # the positive stays
            logits_ab = logits_ab.masked_fill(same, float("-inf"))
            logits_ba = logits_ba.masked_fill(same, float("-inf"))
        loss_ab = F.cross_entropy(logits_ab, target)
        loss_ba = F.cross_entropy(logits_ba, target)
        return 0.5 * (loss_ab + loss_ba)
