"""Optimizer parameter groups: weight decay on weight matrices only, as in the MAE recipe."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from medcoss_monai.networks.checkpoint import unwrap_network

__all__ = ["NO_DECAY_NAMES", "weight_decay_groups"]

NO_DECAY_NAMES = ("pos_embed", "mask_token", "cls_token", "text_embed")
"""Name parts of parameters that are embeddings or tokens: no weight decay (MAE's ``no_weight_decay`` list)."""


def weight_decay_groups(
    network: nn.Module, weight_decay: float, no_decay_names: Sequence[str] = NO_DECAY_NAMES
) -> list[dict[str, Any]]:
    """Two parameter groups: decayed weight matrices, and everything MAE trains without decay.

    Biases, normalisation scales and shifts (every parameter with at most one dimension), position
    embeddings, mask / class tokens and token embeddings get no weight decay; decaying them pulls
    norms and embeddings toward zero for no regularising benefit (He et al., MAE; the ViT recipe).

    Args:
        network: the network (wrappers are removed first; names are the plain module's).
        weight_decay: decay of the first group.
        no_decay_names: parameter-name parts that put a multi-dimensional parameter in the second group.

    Returns:
        ``[{"params": [...], "weight_decay": weight_decay}, {"params": [...], "weight_decay": 0.0}]``,
        for ``torch.optim.AdamW(groups, lr=...)``; frozen parameters are left out; a parameter shared
        by two modules (a tied embedding) appears once.
    """
    decay, no_decay, seen = [], [], set()
    for name, param in unwrap_network(network).named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        if param.ndim <= 1 or any(part in name for part in no_decay_names):
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": float(weight_decay)}, {"params": no_decay, "weight_decay": 0.0}]
