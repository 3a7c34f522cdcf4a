"""The pre-training engine: one masked-modelling step per batch, with MONAI's iteration events.

Behaviour beyond the plain pretext step (rehearsal, mixup, feature distillation, probes) is added by
Ignite handlers listening to the events fired here, so a bundle switches it on or off in JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys
from ignite.engine import EventEnum
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from medcoss_monai.losses import MaskedReconstructionLoss, MaskedTokenLoss

__all__ = ["PretextTrainer", "PretextEvents", "TEXT_KEYS", "pretext_of_batch"]

TEXT_KEYS = ("input_ids", "attention_mask", "labels")


class PretextEvents(EventEnum):
    """Events the :class:`PretextTrainer` fires in addition to MONAI's ``IterationEvents``.

    ``INPUTS_PREPARED`` fires after the batch is on the device and before the forward pass, so a handler
    can rewrite ``engine.state.output["inputs"]`` (mixup of buffer batches) or set
    ``engine.state.output["pretext_weight"]`` (buffer batches that get only the distillation loss).
    """

    INPUTS_PREPARED = "inputs_prepared"


def pretext_of_batch(batch: Mapping[str, Any]) -> str:
    """Which pretext a collated batch gets: masked-language modelling for text, MAE for images.

    Args:
        batch: a collated batch dictionary.

    Returns:
        ``"mlm"`` when the batch holds ``input_ids``, ``"mae"`` when it holds ``image``.

    Raises:
        KeyError: when the batch holds neither.
    """
    if "input_ids" in batch:
        return "mlm"
    if "image" in batch:
        return "mae"
    raise KeyError(f"a pre-training batch needs 'image' or 'input_ids', got keys {sorted(batch)}")


def _to_device(batch: Mapping[str, Any], device: torch.device, non_blocking: bool) -> dict[str, Any]:
    return {
        k: (v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()
    }


class PretextTrainer(SupervisedTrainer):
    """A MONAI ``SupervisedTrainer`` whose iteration is a masked-modelling pretext step.

    Each batch is routed by its keys: images get masked-image modelling (the network's ``pretext="mae"``
    forward and a masked-patch MSE), report text gets masked-language modelling (``pretext="mlm"``
    and a cross-entropy over masked tokens). The iteration fires MONAI's ``IterationEvents``
    (``FORWARD_COMPLETED``, ``LOSS_COMPLETED``, ``BACKWARD_COMPLETED``, ``MODEL_COMPLETED``) and
    :class:`PretextEvents` ``INPUTS_PREPARED``. ``engine.state.output`` holds:

    - ``"inputs"``: dict with ``x`` (images or token ids) and ``attention_mask`` (text) fed to the network;
    - ``"batch"``: the whole batch on the device; ``"pretext"``: ``"mae"`` or ``"mlm"``;
    - ``Keys.PRED``: the network's output dict; ``"loss_terms"``: named loss terms (floats after the step);
    - ``Keys.LOSS``: their sum, the loss that is back-propagated.

    Handlers listening to ``LOSS_COMPLETED`` may add a term to ``"loss_terms"`` and to ``Keys.LOSS``.

    Args:
        device: device to train on.
        max_epochs: number of epochs.
        train_data_loader: loader of collated batch dictionaries.
        network: a :class:`medcoss_monai.networks.MedCoSSModel` (or DDP wrapping one).
        optimizer: the optimizer.
        mask_ratio: fraction of image patches masked for MAE.
        pretext_losses: loss per pretext; defaults to masked-patch MSE for ``"mae"`` and masked-token
            cross-entropy for ``"mlm"``.
        epoch_length: iterations per epoch, default ``len(train_data_loader)``.
        non_blocking: non-blocking host-to-device copies.
        train_handlers: Ignite handlers with an ``attach`` method.
        amp: automatic mixed precision (CUDA only, as in MONAI).
        optim_set_to_none: ``zero_grad(set_to_none=...)``.
        amp_kwargs: arguments of ``torch.autocast``.
        grad_clip_norm: clip the gradient norm to this value when given.
        kwargs: other ``SupervisedTrainer`` arguments (``event_names``, ``compile``...).
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable | DataLoader,
        network: torch.nn.Module,
        optimizer: Optimizer,
        mask_ratio: float = 0.75,
        pretext_losses: Mapping[str, Callable] | None = None,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        train_handlers: Sequence | None = None,
        amp: bool = False,
        optim_set_to_none: bool = True,
        amp_kwargs: dict | None = None,
        grad_clip_norm: float | None = None,
        **kwargs: Any,
    ) -> None:
        losses = {"mae": MaskedReconstructionLoss(), "mlm": MaskedTokenLoss()}
        losses.update(pretext_losses or {})
        event_names = list(kwargs.pop("event_names", None) or []) + [PretextEvents]
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=losses["mae"],
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            train_handlers=train_handlers,
            amp=amp,
            optim_set_to_none=optim_set_to_none,
            amp_kwargs=amp_kwargs,
            decollate=False,
            event_names=event_names,
            **kwargs,
        )
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}.")
        self.mask_ratio = mask_ratio
        self.pretext_losses = losses
        self.grad_clip_norm = grad_clip_norm

    def forward_pretext(self, inputs: Mapping[str, Any], pretext: str, pretext_weight: float) -> dict:
        """Run the network for one pretext.

        A batch whose pretext weight is 0 (a rehearsal batch that gets only distillation) runs the
        encoder alone (``pretext="encode"``), skipping the decoder/MLM head it would not use.

        Args:
            inputs: ``{"x": tensor, "attention_mask": tensor or None, "labels": MLM labels or None}``.
            pretext: ``"mae"`` or ``"mlm"``.
            pretext_weight: the weight of the pretext loss for this batch.

        Returns:
            The network's output dictionary.
        """
        mode = pretext if pretext_weight != 0 else "encode"
        kwargs: dict[str, Any] = {"pretext": mode}
        if inputs.get("attention_mask") is not None:
            kwargs["attention_mask"] = inputs["attention_mask"]
        if pretext == "mae":
            kwargs["mask_ratio"] = self.mask_ratio
            if inputs.get("noise") is not None:
                kwargs["noise"] = inputs["noise"]
        elif mode == "mlm" and inputs.get("labels") is not None:
            kwargs["labels"] = inputs["labels"]  # the vocabulary head then runs on masked positions only
        return self.network(inputs["x"], **kwargs)

    def pretext_loss(self, pred: Mapping[str, torch.Tensor], batch: Mapping[str, Any], pretext: str) -> torch.Tensor:
        """The pretext loss of one batch.

        Args:
            pred: the network's output dictionary.
            batch: the batch (holds MLM ``labels``).
            pretext: ``"mae"`` or ``"mlm"``.

        Returns:
            A scalar loss tensor.
        """
        if pretext == "mae":
            return self.pretext_losses["mae"](pred["pred"], pred["target"], pred["mask"])
        return self.pretext_losses["mlm"](pred["logits"], pred.get("labels", batch["labels"]))

    def _iteration(self, engine: PretextTrainer, batchdata: dict[str, Any]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = _to_device(batchdata, engine.state.device, engine.non_blocking)
        pretext = pretext_of_batch(batch)
        x = batch["input_ids"] if pretext == "mlm" else batch["image"]
        inputs = {"x": x, "attention_mask": batch.get("attention_mask"), "labels": batch.get("labels")}
        engine.state.output = {
            Keys.IMAGE: x,
            "batch": batch,
            "inputs": inputs,
            "pretext": pretext,
            "pretext_weight": 1.0,
            "loss_terms": {},
        }
        engine.fire_event(PretextEvents.INPUTS_PREPARED)

        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        out = engine.state.output
        autocast = (
            torch.autocast("cuda", **engine.amp_kwargs)
            if engine.amp and engine.scaler is not None
            else torch.autocast("cpu", enabled=False)
        )
        with autocast:
            weight = float(out["pretext_weight"])
            out[Keys.PRED] = engine.forward_pretext(out["inputs"], pretext, weight)
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            if weight != 0:
                out["loss_terms"]["pretext_loss"] = weight * engine.pretext_loss(out[Keys.PRED], batch, pretext)
            else:
                out["loss_terms"]["pretext_loss"] = torch.zeros((), device=engine.state.device)
            out[Keys.LOSS] = sum(out["loss_terms"].values())
            engine.fire_event(IterationEvents.LOSS_COMPLETED)

        loss = out[Keys.LOSS]
        if not loss.requires_grad:
            # nothing to learn from this batch (a buffer batch with no pretext weight and no teacher)
            if not getattr(engine, "_warned_no_grad", False):
                engine.logger.warning("a batch produced no trainable loss term; its step is skipped")
                engine._warned_no_grad = True
            return engine._finish(out)
        if engine.amp and engine.scaler is not None:
            engine.scaler.scale(loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            if engine.grad_clip_norm:
                engine.scaler.unscale_(engine.optimizer)
                torch.nn.utils.clip_grad_norm_(engine.network.parameters(), engine.grad_clip_norm)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            loss.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            if engine.grad_clip_norm:
                torch.nn.utils.clip_grad_norm_(engine.network.parameters(), engine.grad_clip_norm)
            engine.optimizer.step()
        return engine._finish(out)

    def _finish(self, out: dict) -> dict:
        # keep floats, not graphs, in the engine state once the step is done
        out["loss_terms"] = {k: float(v.detach()) for k, v in out["loss_terms"].items()}
        out[Keys.LOSS] = out[Keys.LOSS].detach()
        self.fire_event(IterationEvents.MODEL_COMPLETED)
        return out
