"""BrainMVP's pre-training engine: two masked views, two reconstructions and a contrastive term per step.

``engine.state.output`` uses the pretext trainer's keys (``loss``, ``loss_terms``), so the stage
handlers (loss history, checkpoints, non-finite-loss stop) work unchanged; it also holds the views
and reconstructions of the step (detached) for the picture writer.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from torch.optim import Optimizer

from medcoss_monai.engines.pretext_trainer import PretextKeys
from medcoss_monai.engines.steps import autocast_of
from medcoss_monai.apps.brainmvp.contrastive import ModalityAwareInfoNCE
from medcoss_monai.apps.brainmvp.curriculum_head import BRAINMVP_INPUT_KEYS

__all__ = ["BrainMVPTrainer", "BRAINMVP_BATCH_KEYS"]

BRAINMVP_BATCH_KEYS = ("image",) + BRAINMVP_INPUT_KEYS
"""Batch keys the model takes, in the order of :meth:`BrainMVPModel.forward`."""


class BrainMVPTrainer(SupervisedTrainer):
    """A MONAI ``SupervisedTrainer`` whose step is BrainMVP's: ``a * MSE(A) + b * MSE(B) + c * InfoNCE``.

    Args:
        device: device.
        max_epochs: epochs.
        train_data_loader: batches with :data:`BRAINMVP_BATCH_KEYS`.
        network: a :class:`~medcoss_monai.apps.brainmvp.model.BrainMVPModel` (or DDP wrapping one).
        optimizer: optimizer.
        weight_a: weight of view A's reconstruction MSE (paper: 10).
        weight_b: weight of view B's reconstruction MSE (paper: 1).
        weight_contrastive: weight of the contrastive term.
        temperature: InfoNCE temperature.
        contrastive_start_epoch: first epoch (1-based) with the contrastive term.
        other_contrast_start_epoch: first epoch in which view B takes another contrast (before: the template).
        accumulation_steps: micro-batches per optimizer step (a window is stepped only when full, or at the epoch's end).
        grad_clip_norm: clip the gradient norm when given.
        train_handlers: Ignite handlers.
        amp: mixed precision (CUDA).
        kwargs: other ``SupervisedTrainer`` arguments.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: torch.nn.Module,
        optimizer: Optimizer,
        weight_a: float = 10.0,
        weight_b: float = 1.0,
        weight_contrastive: float = 1.0,
        temperature: float = 0.2,
        contrastive_start_epoch: int = 1,
        other_contrast_start_epoch: int = 1,
        accumulation_steps: int = 1,
        grad_clip_norm: float | None = None,
        train_handlers: Iterable | None = None,
        amp: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            device=device, max_epochs=max_epochs, train_data_loader=train_data_loader, network=network,
            optimizer=optimizer, loss_function=F.mse_loss, train_handlers=train_handlers, amp=amp, decollate=False,
            **kwargs,
        )
        if int(accumulation_steps) < 1:
            raise ValueError(f"accumulation_steps must be at least 1, got {accumulation_steps}")
        self.weights = {"recon_a_loss": float(weight_a), "recon_b_loss": float(weight_b), "contrastive_loss": float(weight_contrastive)}
        self.contrastive = ModalityAwareInfoNCE(temperature)
        self.contrastive_start_epoch = int(contrastive_start_epoch)
        self.other_contrast_start_epoch = int(other_contrast_start_epoch)
        self.accumulation_steps = int(accumulation_steps)
        self.grad_clip_norm = grad_clip_norm
        self._micro_batches = 0

    def _iteration(self, engine: BrainMVPTrainer, batchdata: dict[str, Any]) -> dict:
        batch = {k: batchdata[k].to(engine.state.device, non_blocking=engine.non_blocking) for k in BRAINMVP_BATCH_KEYS}
        image = batch["image"].float()
        epoch = engine.state.epoch
        engine.network.train()
        if engine._micro_batches == 0:
            engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        autocast = autocast_of(engine)
        with autocast:
            pred = engine.network(
                image, batch["mask"].bool(), batch["contrast"], batch["other"].float(), batch["has_other"], batch["affine"],
                use_other=epoch >= engine.other_contrast_start_epoch,
            )
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            terms = {
                "recon_a_loss": F.mse_loss(pred["recon_a"].float(), image),
                "recon_b_loss": F.mse_loss(pred["recon_b"].float(), image),
            }
            if epoch >= engine.contrastive_start_epoch and engine.weights["contrastive_loss"]:
                terms["contrastive_loss"] = engine.contrastive(pred["z_a"].float(), pred["z_b"].float())
            loss = sum(engine.weights[k] * v for k, v in terms.items())
        out = {PretextKeys.IMAGE: image, PretextKeys.PRED: pred, PretextKeys.LOSS: loss, PretextKeys.LOSS_TERMS: terms}
        engine.state.output = out
        engine.fire_event(IterationEvents.LOSS_COMPLETED)

        engine._micro_batches += 1
        step = engine._micro_batches == engine.accumulation_steps or engine.state.iteration % engine.state.epoch_length == 0
        scaled = loss / engine.accumulation_steps
        if engine.amp and engine.scaler is not None:
            engine.scaler.scale(scaled).backward()
        else:
            scaled.backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        if step:
            if engine.amp and engine.scaler is not None:
                if engine.grad_clip_norm:
                    engine.scaler.unscale_(engine.optimizer)
                    torch.nn.utils.clip_grad_norm_(engine.network.parameters(), engine.grad_clip_norm)
                engine.scaler.step(engine.optimizer)
                engine.scaler.update()
            else:
                if engine.grad_clip_norm:
                    torch.nn.utils.clip_grad_norm_(engine.network.parameters(), engine.grad_clip_norm)
                engine.optimizer.step()
            engine._micro_batches = 0
        # keep floats and detached tensors, not graphs, in the engine state
        out[PretextKeys.LOSS_TERMS] = {k: float(v.detach()) for k, v in terms.items()}
        out[PretextKeys.LOSS] = loss.detach()
        out[PretextKeys.PRED] = {k: v.detach() for k, v in pred.items()}
        out["contrast"] = batch["contrast"].detach()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return out
