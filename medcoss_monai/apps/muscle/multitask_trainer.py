"""MUSCLE's multi-task engine: one epoch is one visit to one task, one iteration one step on its batch.

Which task an epoch visits is set by a schedule handler
(:class:`~medcoss_monai.apps.muscle.task_schedule.CyclicTaskSchedule`) at ``EPOCH_STARTED``: it puts the
task in ``engine.state.task`` and the task's loader in the engine. Each iteration computes that
task's loss with its head (:meth:`MultiTaskTrainer.task_loss`): cross-entropy for classification,
Dice + cross-entropy for segmentation (losses from the bundle), the detector's own losses for
detection. Cross-task memorisation is added by handlers listening to ``LOSS_COMPLETED``
(:class:`~medcoss_monai.apps.muscle.l2sp.L2SPPenalty`,
:class:`~medcoss_monai.apps.muscle.replay.TaskReplay`), which add named terms to
``engine.state.output[LOSS_TERMS]`` and to ``engine.state.output[LOSS]`` before the backward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys
from torch.optim import Optimizer

from medcoss_monai.engines.steps import OptimizationStep
from medcoss_monai.errors import BadInputError
from medcoss_monai.networks.checkpoint import unwrap_network
from medcoss_monai.apps.muscle.task_heads import DETECTION

__all__ = ["MultiTaskKeys", "MultiTaskTrainer", "detection_inputs"]


class MultiTaskKeys:
    """Keys of :class:`MultiTaskTrainer`'s ``engine.state.output``.

    ``TASK`` is the visited task, ``BATCH`` the batch (on the device), ``LOSS_TERMS`` the named loss
    terms (``TASK_LOSS`` and whatever handlers add; floats after the step), ``LOSS`` their sum.
    """

    IMAGE = CommonKeys.IMAGE
    LABEL = CommonKeys.LABEL
    LOSS = CommonKeys.LOSS
    TASK = "task"
    BATCH = "batch"
    LOSS_TERMS = "loss_terms"
    TASK_LOSS = "task_loss"
    BOXES = "boxes"
    BOX_LABELS = "labels"


def detection_inputs(
    batch: Sequence[Mapping[str, Any]], device: torch.device, non_blocking: bool = False
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Images and targets of a detection batch (a list of items, MONAI ``no_collation``).

    Images keep their own sizes (boxes are in their pixels); the detector pads them to a common size.

    Args:
        batch: items with ``image`` ``(C, H, W)``, ``boxes`` ``(N, 4)`` and ``labels`` ``(N,)``.
        device: where the tensors go.
        non_blocking: non-blocking copies.

    Returns:
        ``([image (C, H, W), ...], [{"boxes", "labels"}, ...])``.
    """
    k = MultiTaskKeys
    images = [torch.as_tensor(item[k.IMAGE]).to(device, non_blocking=non_blocking) for item in batch]
    targets = [
        {
            k.BOXES: torch.as_tensor(item[k.BOXES], dtype=torch.float32).reshape(-1, 4).to(device),
            k.BOX_LABELS: torch.as_tensor(item[k.BOX_LABELS], dtype=torch.long).reshape(-1).to(device),
        }
        for item in batch
    ]
    return images, targets


class MultiTaskTrainer(SupervisedTrainer):
    """A MONAI ``SupervisedTrainer`` over several tasks sharing one backbone (MUSCLE step 2, and step 3).

    Args:
        device: device to train on.
        max_epochs: number of visits (the schedule's length).
        train_data_loader: the loader the engine starts with; the schedule replaces it at each visit.
        network: a :class:`~medcoss_monai.apps.muscle.multitask_network.MultiTaskResNet` (or DDP wrapping one).
        optimizer: the optimizer (over the backbone and every head).
        task_losses: task -> loss function ``(logits, label) -> scalar``; detection tasks need none
            (the detector's losses are summed).
        accumulation_steps: micro-batches per optimizer step (see :class:`~medcoss_monai.engines.steps.OptimizationStep`).
        grad_clip_norm: clip the gradient norm of every trained parameter to this value when given.
        kwargs: other ``SupervisedTrainer`` arguments (``epoch_length``: iterations per visit, the visit's
            budget; ``train_handlers``, the schedule among them; ``amp``...).
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: torch.nn.Module,
        optimizer: Optimizer,
        task_losses: Mapping[str, Callable | None],
        accumulation_steps: int = 1,
        grad_clip_norm: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            device=device, max_epochs=max_epochs, train_data_loader=train_data_loader, network=network,
            optimizer=optimizer, loss_function=None, decollate=False, **kwargs,
        )
        self.optimization = OptimizationStep(accumulation_steps, grad_clip_norm)
        model = unwrap_network(network)
        for task in model.tasks:
            if model.kind(task) != DETECTION and task_losses.get(task) is None:
                raise BadInputError(f"Task '{task}' ({model.kind(task)}) has no loss in task_losses.")
        self.task_losses = dict(task_losses)
        self.state.task = None

    def task_loss(self, task: str, batch: Any) -> torch.Tensor:
        """The loss of one batch of ``task`` with the network in its current mode.

        Args:
            task: the task.
            batch: a collated dict (classification, segmentation) or a list of items (detection), on any device.

        Returns:
            A scalar tensor.
        """
        k = MultiTaskKeys
        if unwrap_network(self.network).kind(task) == DETECTION:
            images, targets = detection_inputs(batch, self.state.device, self.non_blocking)
            losses = self.network(images, task=task, targets=targets)
            return sum(losses.values())
        x = batch[k.IMAGE].to(self.state.device, non_blocking=self.non_blocking)
        y = batch[k.LABEL].to(self.state.device, non_blocking=self.non_blocking)
        return self.task_losses[task](self.network(x, task=task), y)

    def _iteration(self, engine: MultiTaskTrainer, batchdata: Any) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        task = engine.state.task
        if task is None:
            raise BadInputError("No task is being visited: attach a task schedule (CyclicTaskSchedule) to the trainer.")
        k = MultiTaskKeys
        engine.network.train()
        engine.optimization.zero_grad(engine)
        engine.state.output = {k.TASK: task, k.BATCH: batchdata, k.LOSS_TERMS: {}}
        out = engine.state.output
        with engine.optimization.autocast(engine):
            loss = engine.task_loss(task, batchdata)
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            out[k.LOSS_TERMS][k.TASK_LOSS] = loss
            out[k.LOSS] = loss
            engine.fire_event(IterationEvents.LOSS_COMPLETED)  # handlers add L2-SP and replay terms here
        engine.optimization.backward_and_step(engine, out[k.LOSS])
        out[k.LOSS] = out[k.LOSS].detach()
        out[k.LOSS_TERMS] = {name: float(torch.as_tensor(v).detach()) for name, v in out[k.LOSS_TERMS].items()}
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return out
