"""The MD-MoCo engine: one MoCo v2 step per batch of two augmented views (MUSCLE step 1)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys

from medcoss_monai.engines.steps import OptimizationStep
from medcoss_monai.errors import BadInputError

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
        loss_function: default ``torch.nn.CrossEntropyLoss()``.
        accumulation_steps: micro-batches per optimizer step (see :class:`~medcoss_monai.engines.steps.OptimizationStep`).
        grad_clip_norm: clip the gradient norm of every trained parameter to this value when given.
        kwargs: ``SupervisedTrainer`` arguments: ``device``, ``max_epochs``, ``train_data_loader`` (batches
            holding ``MoCoKeys.QUERY`` and ``MoCoKeys.KEY``), ``network`` (the MoCo network), ``optimizer``
            (over the query encoder's parameters), ``epoch_length``, ``train_handlers``, ``amp``...
    """

    def __init__(
        self, loss_function: Callable | None = None, accumulation_steps: int = 1, grad_clip_norm: float | None = None, **kwargs: Any
    ) -> None:
        super().__init__(loss_function=loss_function or torch.nn.CrossEntropyLoss(), decollate=False, **kwargs)
        self.optimization = OptimizationStep(accumulation_steps, grad_clip_norm)

    def _iteration(self, engine: MoCoTrainer, batchdata: dict[str, Any]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        for name in (MoCoKeys.QUERY, MoCoKeys.KEY):
            if name not in batchdata:
                raise BadInputError(f"a MoCo batch needs '{MoCoKeys.QUERY}' and '{MoCoKeys.KEY}', got {sorted(batchdata)}")
        query = batchdata[MoCoKeys.QUERY].to(engine.state.device, non_blocking=engine.non_blocking)
        key = batchdata[MoCoKeys.KEY].to(engine.state.device, non_blocking=engine.non_blocking)
        engine.state.output = out = {MoCoKeys.QUERY: query, MoCoKeys.KEY: key, MoCoKeys.LOSS_TERMS: {}}
        engine.network.train()
        engine.optimization.zero_grad(engine)
        with engine.optimization.autocast(engine):
            logits, targets = engine.network(query, key)
            out[MoCoKeys.PRED] = logits
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            out[MoCoKeys.LOSS] = engine.loss_function(logits.float(), targets)
            engine.fire_event(IterationEvents.LOSS_COMPLETED)
        engine.optimization.backward_and_step(engine, out[MoCoKeys.LOSS])
        out[MoCoKeys.LOSS] = out[MoCoKeys.LOSS].detach()
        out[MoCoKeys.LOSS_TERMS] = {MoCoKeys.MOCO_LOSS: float(out[MoCoKeys.LOSS])}
        out[MoCoKeys.PRED] = logits.detach()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return out
