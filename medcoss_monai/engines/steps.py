"""Pieces of an iteration shared by the trainers whose step is one forward, one backward, one update."""

from __future__ import annotations

import torch
from monai.engines.utils import IterationEvents

__all__ = ["autocast_of", "backward_and_step", "average_gradients"]


def autocast_of(engine) -> torch.autocast:
    """The engine's mixed-precision context: CUDA autocast when AMP is on, a disabled context otherwise.

    Args:
        engine: a MONAI ``SupervisedTrainer`` (``amp``, ``scaler``, ``amp_kwargs``).

    Returns:
        A ``torch.autocast`` context manager.
    """
    if engine.amp and engine.scaler is not None:
        return torch.autocast("cuda", **engine.amp_kwargs)
    return torch.autocast("cpu", enabled=False)


def backward_and_step(engine, loss: torch.Tensor) -> None:
    """Backward pass and optimizer step of one iteration, through the AMP scaler when there is one.

    Fires MONAI's ``BACKWARD_COMPLETED`` between the two, as ``SupervisedTrainer`` does.

    Args:
        engine: a MONAI ``SupervisedTrainer`` (``amp``, ``scaler``, ``optimizer``).
        loss: the iteration's scalar loss.
    """
    if engine.amp and engine.scaler is not None:
        engine.scaler.scale(loss).backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        engine.scaler.step(engine.optimizer)
        engine.scaler.update()
    else:
        loss.backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        engine.optimizer.step()


def average_gradients(parameters, fill_missing: bool = False) -> None:
    """Average gradients over the processes of the default group (nothing in a single process).

    Args:
        parameters: the parameters whose ``.grad`` is averaged.
        fill_missing: give a trainable parameter without a gradient a zero one, so every process joins
            the same reductions even when its batch did not use that parameter.
    """
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return
    world = dist.get_world_size()
    for p in parameters:
        if p.grad is None and fill_missing and p.requires_grad:
            p.grad = torch.zeros_like(p)
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(world)
