"""The optimisation step shared by every trainer: autocast, scaled backward, accumulation, clipping, update.

A trainer's ``_iteration`` prepares its batch and computes its loss inside :meth:`OptimizationStep.autocast`;
:meth:`OptimizationStep.backward_and_step` does the rest, so the pretext, MoCo and multi-task engines
share one implementation of gradient accumulation and clipping.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from monai.engines.utils import IterationEvents

__all__ = ["OptimizationStep", "autocast_of", "average_gradients", "optimizer_parameters"]


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


def optimizer_parameters(optimizer: torch.optim.Optimizer) -> list[torch.nn.Parameter]:
    """Every parameter the optimizer trains (all its groups: the network, pretext heads, templates...).

    Args:
        optimizer: the optimizer.

    Returns:
        The parameters, in group order.
    """
    return [p for group in optimizer.param_groups for p in group["params"]]


def average_gradients(parameters: Iterable[torch.nn.Parameter], fill_missing: bool = False) -> None:
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


class OptimizationStep:
    """Backward pass, gradient accumulation, clipping and optimizer update of one micro-batch.

    Every micro-batch advances the accumulation window, also one whose loss carries no gradient (it
    adds none); the optimizer steps when the window is full and at the epoch's last iteration, so no
    gradient crosses an epoch end, and only when the window holds a gradient. Clipping covers every
    parameter of the optimizer's groups, not only the engine's ``network``. An ``lr_scheduler`` given
    here is stepped after each optimizer step, so its warm-up and length count optimizer steps.

    Args:
        accumulation_steps: micro-batches whose gradients are summed before one optimizer step (each
            loss is divided by it, so a step sees the mean over ``accumulation_steps * batch`` samples).
        grad_clip_norm: clip the total gradient norm to this value when given.
        lr_scheduler: a scheduler stepped once per optimizer step.

    Raises:
        ValueError: ``accumulation_steps`` below 1.
    """

    def __init__(self, accumulation_steps: int = 1, grad_clip_norm: float | None = None, lr_scheduler=None) -> None:
        if int(accumulation_steps) < 1:
            raise ValueError(f"accumulation_steps must be at least 1, got {accumulation_steps}.")
        self.accumulation_steps = int(accumulation_steps)
        self.grad_clip_norm = grad_clip_norm
        self.lr_scheduler = lr_scheduler
        self.micro_batches = 0  # micro-batches of the open window
        self.pending = False  # whether the open window holds a gradient
        self.optimizer_steps = 0

    @staticmethod
    def autocast(engine) -> torch.autocast:
        """The engine's mixed-precision context (see :func:`autocast_of`)."""
        return autocast_of(engine)

    def zero_grad(self, engine) -> None:
        """Clear the gradients when a new window opens (call before the forward pass).

        Args:
            engine: a MONAI ``SupervisedTrainer``.
        """
        if self.micro_batches == 0:
            engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)

    def backward_and_step(self, engine, loss: torch.Tensor, average: Iterable[torch.nn.Parameter] = ()) -> bool:
        """Back-propagate one micro-batch's loss and step the optimizer when its window closes.

        Fires MONAI's ``BACKWARD_COMPLETED`` after the backward pass (not for a loss without gradient).

        Args:
            engine: a MONAI ``SupervisedTrainer`` (``amp``, ``scaler``, ``optimizer``, ``state``).
            loss: the micro-batch's scalar loss (the unscaled one: it is divided here).
            average: parameters outside any DDP wrapper whose gradients are averaged over processes
                after the backward pass (see :func:`average_gradients`).

        Returns:
            Whether the optimizer stepped.
        """
        scaler = engine.scaler if engine.amp else None
        self.micro_batches += 1
        if loss.requires_grad:
            if self.accumulation_steps > 1:
                loss = loss / self.accumulation_steps
            (scaler.scale(loss) if scaler is not None else loss).backward()
            average_gradients(average, fill_missing=True)
            self.pending = True
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        epoch_end = engine.state.iteration % engine.state.epoch_length == 0
        if self.micro_batches < self.accumulation_steps and not epoch_end:
            return False
        stepped, self.micro_batches = self.pending, 0
        if self.pending:
            self.pending = False
            if self.grad_clip_norm:
                if scaler is not None:
                    scaler.unscale_(engine.optimizer)
                torch.nn.utils.clip_grad_norm_(optimizer_parameters(engine.optimizer), self.grad_clip_norm)
            if scaler is not None:
                scaler.step(engine.optimizer)
                scaler.update()
            else:
                engine.optimizer.step()
            self.optimizer_steps += 1
            if self.lr_scheduler is not None:
                self.lr_scheduler.step()
        return stepped
