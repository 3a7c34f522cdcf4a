"""Shuffle-BN for MoCo's key encoder (He et al., CVPR 2020, Sec. 3.3 "Shuffling BN").

With BatchNorm, a query and its positive key normalised over the same group of samples can share a
signature of that group, which the network can learn to match instead of the image content (the
positive key is the only key of the current batch; the queue holds older ones). MoCo breaks this by
computing the keys on a shuffled batch: the key images of all processes are gathered, permuted with
one permutation drawn on rank 0 and broadcast, each process encodes its shard of the permuted batch
(so a key's BatchNorm group differs from its query's), and the keys are put back in order
(reference: ``facebookresearch/moco``, ``moco/builder.py``, ``_batch_shuffle_ddp`` /
``_batch_unshuffle_ddp``). ``SyncBatchNorm`` does the opposite: queries and keys are each normalised
over the whole global batch, the same group for both.

On one process there is nothing to shuffle between, so, as MoCo's single-GPU ports do ("split BN"),
each process's batch is cut into ``groups`` BatchNorm groups (each normalised over itself alone):
queries in their order, keys after the shuffle. One process with ``groups`` groups then behaves as
``groups`` processes of MoCo.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

from medcoss_monai.errors import BadInputError

__all__ = ["distributed_world", "gather_from_all_ranks", "grouped_forward", "shuffle_for_keys", "unshuffle_keys"]


def distributed_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group; ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def gather_from_all_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor over all processes (rank order); the tensor itself when not distributed.

    Args:
        tensor: same shape on every rank.

    Returns:
        ``(world_size * B, ...)`` under an initialised process group, else ``tensor``.
    """
    _, world = distributed_world()
    if world == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def grouped_forward(module: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, groups: int) -> torch.Tensor:
    """``module`` on ``groups`` consecutive equal parts of ``x``, concatenated: each part has its own BatchNorm statistics.

    Args:
        module: the encoder (in training mode it normalises each call over that call's samples).
        x: ``(B, ...)`` with ``B`` a multiple of ``groups``.
        groups: number of BatchNorm groups (1: one call on the whole batch).

    Returns:
        ``module`` outputs for all of ``x``, in its order.

    Raises:
        BadInputError: ``B`` is no multiple of ``groups``.
    """
    if groups == 1:
        return module(x)
    if x.shape[0] % groups:
        raise BadInputError(
            f"A batch of {x.shape[0]} per process cannot be cut into bn_splits={groups} equal BatchNorm groups: "
            "set batch_size to a multiple of bn_splits."
        )
    return torch.cat([module(part) for part in x.chunk(groups)], dim=0)


@torch.no_grad()
def shuffle_for_keys(images: torch.Tensor, permutation: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's shard of the key images of all processes, after one shared permutation.

    Args:
        images: ``(B, ...)`` this process's key images (the same ``B`` on every process).
        permutation: a permutation of ``world_size * B`` indices; default ``torch.randperm`` on rank 0
            (the global RNG), which is broadcast so every process uses rank 0's.

    Returns:
        ``(shard, unshuffle)``: ``shard`` is ``(B, ...)``, rows ``rank * B ... (rank + 1) * B`` of the
        permuted global batch; ``unshuffle`` is the inverse permutation, for :func:`unshuffle_keys`.
    """
    rank, world = distributed_world()
    gathered = gather_from_all_ranks(images)
    n = gathered.shape[0]
    perm = torch.randperm(n, device=images.device) if permutation is None else permutation.to(images.device).clone()
    if perm.shape != (n,):
        raise ValueError(f"A permutation of {n} indices is needed, got shape {tuple(perm.shape)}.")
    if world > 1:
        dist.broadcast(perm, src=0)  # one permutation for all processes
    return gathered[perm.view(world, -1)[rank]], torch.argsort(perm)


@torch.no_grad()
def unshuffle_keys(keys: torch.Tensor, unshuffle: torch.Tensor) -> torch.Tensor:
    """This process's keys in the order of its own batch, from every process's shuffled-shard keys.

    Args:
        keys: ``(B, ...)`` the keys of this process's shard.
        unshuffle: the inverse permutation returned by :func:`shuffle_for_keys`.

    Returns:
        ``(B, ...)``: row ``i`` is the key of row ``i`` of this process's key images.
    """
    rank, world = distributed_world()
    return gather_from_all_ranks(keys)[unshuffle.to(keys.device).view(world, -1)[rank]]
