"""The MD-MoCo engine: one MoCo v2 step per batch of two augmented views (MUSCLE step 1)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from medcoss_monai.engines.steps import autocast_of, backward_and_step

__all__ = ["MoCoTrainer", "MoCoKeys"]


class MoCoKeys:
    """Batch and output keys of :class:`MoCoTrainer`.

    ``QUERY`` / ``KEY`` are the batch keys of the two views (written by
    :class:`medcoss_monai.apps.muscle.two_views.TwoViewsd`); the output holds ``LOSS`` (as every engine of this
    project, read by the loss-history handler), ``PRED`` (the logits) and ``LOSS_TERMS``.
    """

    QUERY = CommonKeys.IMAGE
    KEY = "key_image"
    PRED = CommonKeys.PRED
    LOSS = CommonKeys.LOSS
    LOSS_TERMS = "loss_terms"
    MOCO_LOSS = "moco_loss"


class MoCoTrainer(SupervisedTrainer):
    """A MONAI ``SupervisedTrainer`` whose iteration is a MoCo step.

    The network is a :class:`medcoss_monai.apps.muscle.moco.MoCo` (or DDP around one): called with the
    query and key views it returns logits and targets, and updates its key encoder and queue itself.
    The loss is ``loss_function(logits, targets)`` (cross-entropy, i.e. InfoNCE). MONAI's iteration
    events fire as in ``SupervisedTrainer``, so MONAI / project handlers attach unchanged.

    Args:
        device: device to train on.
        max_epochs: number of epochs.
        train_data_loader: loader of batches holding ``MoCoKeys.QUERY`` and ``MoCoKeys.KEY``.
        network: the MoCo network.
        optimizer: optimizer over the query encoder's parameters.
        loss_function: default ``torch.nn.CrossEntropyLoss()``.
        epoch_length: iterations per epoch, default ``len(train_data_loader)``.
        non_blocking: non-blocking host-to-device copies.
        train_handlers: Ignite handlers with an ``attach`` method.
        amp: automatic mixed precision (CUDA only).
        kwargs: other ``SupervisedTrainer`` arguments.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable | DataLoader,
        network: torch.nn.Module,
        optimizer: Optimizer,
        loss_function: Callable | None = None,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        train_handlers: Sequence | None = None,
        amp: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function or torch.nn.CrossEntropyLoss(),
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            train_handlers=train_handlers,
            amp=amp,
            decollate=False,
            **kwargs,
        )

    def _iteration(self, engine: MoCoTrainer, batchdata: dict[str, Any]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        for name in (MoCoKeys.QUERY, MoCoKeys.KEY):
            if name not in batchdata:
                raise KeyError(f"a MoCo batch needs '{MoCoKeys.QUERY}' and '{MoCoKeys.KEY}', got {sorted(batchdata)}")
        query = batchdata[MoCoKeys.QUERY].to(engine.state.device, non_blocking=engine.non_blocking)
        key = batchdata[MoCoKeys.KEY].to(engine.state.device, non_blocking=engine.non_blocking)
        engine.state.output = out = {MoCoKeys.QUERY: query, MoCoKeys.KEY: key, MoCoKeys.LOSS_TERMS: {}}
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        autocast = autocast_of(engine)
        with autocast:
            logits, targets = engine.network(query, key)
            out[MoCoKeys.PRED] = logits
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            out[MoCoKeys.LOSS] = engine.loss_function(logits.float(), targets)
            engine.fire_event(IterationEvents.LOSS_COMPLETED)
        backward_and_step(engine, out[MoCoKeys.LOSS])
        out[MoCoKeys.LOSS] = out[MoCoKeys.LOSS].detach()
        out[MoCoKeys.LOSS_TERMS] = {MoCoKeys.MOCO_LOSS: float(out[MoCoKeys.LOSS])}
        out[MoCoKeys.PRED] = logits.detach()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return out
