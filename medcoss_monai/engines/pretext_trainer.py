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
from monai.utils import CommonKeys
from ignite.engine import EventEnum
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from medcoss_monai.engines.steps import OptimizationStep
from medcoss_monai.losses import MaskedReconstructionLoss, MaskedTokenLoss

__all__ = ["PretextTrainer", "PretextEvents", "PretextKeys", "TEXT_KEYS", "pretext_of_batch"]


class PretextKeys:
    """Keys of :class:`PretextTrainer`'s ``engine.state.output``, shared with the handlers that read or change it.

    MONAI's ``CommonKeys`` name the network input (``IMAGE``), its output (``PRED``) and the loss
    (``LOSS``); the other keys are this engine's own. ``INPUTS`` maps ``X`` (images or token ids),
    ``ATTENTION_MASK``, ``LABELS`` (MLM labels) and ``NOISE`` (MAE masking noise) to what the network
    is fed; ``LOSS_TERMS`` maps term names (``PRETEXT_LOSS``, ``DISTILL_LOSS``) to their values.
    """

    IMAGE = CommonKeys.IMAGE  # also the batch key of images
    PRED = CommonKeys.PRED
    LOSS = CommonKeys.LOSS
    BATCH = "batch"
    INPUTS = "inputs"
    PRETEXT = "pretext"
    PRETEXT_WEIGHT = "pretext_weight"
    LOSS_TERMS = "loss_terms"
    MIXUP_LAM = "mixup_lam"
    # keys of INPUTS; text batches hold INPUT_IDS, ATTENTION_MASK and LABELS too
    X = "x"
    NOISE = "noise"
    INPUT_IDS = "input_ids"
    ATTENTION_MASK = "attention_mask"
    LABELS = "labels"
    # names in LOSS_TERMS
    PRETEXT_LOSS = "pretext_loss"
    DISTILL_LOSS = "distill_loss"


TEXT_KEYS = (PretextKeys.INPUT_IDS, PretextKeys.ATTENTION_MASK, PretextKeys.LABELS)
"""Batch keys of a report-text batch that travel together (token ids, attention mask, MLM labels)."""


class PretextEvents(EventEnum):
    """Events the :class:`PretextTrainer` fires in addition to MONAI's ``IterationEvents``.

    ``INPUTS_PREPARED`` fires after the batch is on the device and before the forward pass, so a handler
    can rewrite ``engine.state.output[PretextKeys.INPUTS]`` (mixup of buffer batches) or set
    ``engine.state.output[PretextKeys.PRETEXT_WEIGHT]`` (buffer batches that get only the distillation loss).
    """

    INPUTS_PREPARED = "inputs_prepared"


def pretext_of_batch(batch: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> str:
    """Which pretext a collated batch gets: masked-language modelling for text, MAE for images.

    Args:
        batch: a collated batch dictionary.
        extra: the trainer's pretext heads by name; an image batch holding every key of a head's
            ``batch_keys`` gets that head's pretext (without the head, e.g. a later stage rehearsing
            that stage's buffer, it gets MAE on its image).

    Returns:
        ``"mlm"`` when the batch holds ``input_ids``, a head's name (see ``extra``), ``"mae"`` when it holds ``image``.

    Raises:
        KeyError: when the batch holds neither.
    """
    if PretextKeys.INPUT_IDS in batch:
        return "mlm"
    if PretextKeys.IMAGE in batch:
        for name, head in (extra or {}).items():
            if all(k in batch for k in head.batch_keys):
                return name
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
    :class:`PretextEvents` ``INPUTS_PREPARED``. ``engine.state.output`` holds (keys of :class:`PretextKeys`):

    - ``INPUTS``: dict with ``X`` (images or token ids), ``ATTENTION_MASK`` and ``LABELS`` (text) fed to the network;
    - ``BATCH``: the whole batch on the device; ``PRETEXT``: ``"mae"`` or ``"mlm"``; ``PRETEXT_WEIGHT``;
    - ``PRED``: the network's output dict; ``LOSS_TERMS``: named loss terms (floats after the step);
    - ``LOSS``: their sum, the loss that is back-propagated.

    Handlers listening to ``LOSS_COMPLETED`` may add a term to ``LOSS_TERMS`` and to ``LOSS``.

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
        grad_clip_norm: clip the gradient norm of every trained parameter (pretext heads included) to this value.
        accumulation_steps: micro-batches whose gradients are summed before one optimizer step (each
            loss is divided by it, so a step sees the mean over ``accumulation_steps * batch`` samples);
            every micro-batch counts, one without gradient too, and the last, shorter window of an epoch
            is stepped at the epoch's end (:class:`~medcoss_monai.engines.steps.OptimizationStep`).
        pretext_heads: modules of further pretexts by name. A head names the batch keys it needs beside
            ``image`` (``head.batch_keys``); the image batches holding them are run by
            ``head(network, inputs, epoch)`` (``inputs`` holds ``X`` and those keys) and scored by
            ``head.loss(pred, epoch)``, which returns the loss and its unweighted terms. Their parameters
            train with the network (put them in the optimizer) and their gradients are averaged over
            processes under DDP (they are not inside the DDP wrapper).
        lr_scheduler: a scheduler stepped after each optimizer step (so it counts optimizer steps under
            accumulation); leave it out when an ``LrScheduleHandler`` steps it.
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
        accumulation_steps: int = 1,
        pretext_heads: Mapping[str, torch.nn.Module] | None = None,
        lr_scheduler: Any = None,
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
        self.optimization = OptimizationStep(accumulation_steps, grad_clip_norm, lr_scheduler)
        self.pretext_heads = dict(pretext_heads or {})
        for name, head in self.pretext_heads.items():
            if name in losses or not getattr(head, "batch_keys", None):
                raise ValueError(f"pretext head '{name}' needs a name other than {sorted(losses)} and its batch_keys.")

    def forward_pretext(self, inputs: Mapping[str, Any], pretext: str, pretext_weight: float) -> dict:
        """Run the network for one pretext.

        A batch whose pretext weight is 0 (a rehearsal batch that gets only distillation) runs the
        encoder alone (``pretext="encode"``), skipping the decoder/MLM head it would not use.

        Args:
            inputs: ``{X: tensor, ATTENTION_MASK: tensor or None, LABELS: MLM labels or None}`` (:class:`PretextKeys`).
            pretext: ``"mae"`` or ``"mlm"``.
            pretext_weight: the weight of the pretext loss for this batch.

        Returns:
            The network's output dictionary.
        """
        if pretext in self.pretext_heads:
            return self.pretext_heads[pretext](self.network, inputs, self.state.epoch)
        mode = pretext if pretext_weight != 0 else "encode"
        kwargs: dict[str, Any] = {"pretext": mode}
        if inputs.get(PretextKeys.ATTENTION_MASK) is not None:
            kwargs["attention_mask"] = inputs[PretextKeys.ATTENTION_MASK]
        if pretext == "mae":
            kwargs["mask_ratio"] = self.mask_ratio
            if inputs.get(PretextKeys.NOISE) is not None:
                kwargs["noise"] = inputs[PretextKeys.NOISE]
        elif mode == "mlm" and inputs.get(PretextKeys.LABELS) is not None:
            kwargs["labels"] = inputs[PretextKeys.LABELS]  # the vocabulary head then runs on masked positions only
        return self.network(inputs[PretextKeys.X], **kwargs)

    def pretext_loss(self, pred: Mapping[str, torch.Tensor], batch: Mapping[str, Any], pretext: str) -> torch.Tensor:
        """The pretext loss of one batch.

        Args:
            pred: the network's output dictionary.
            batch: the batch (holds MLM ``labels``).
            pretext: ``"mae"`` or ``"mlm"``.

        Returns:
            A scalar loss tensor.
        """
        if pretext in self.pretext_heads:
            loss, components = self.pretext_heads[pretext].loss(pred, self.state.epoch)
            pred["loss_components"] = components  # unweighted terms, reported in the loss history
            return loss
        if pretext == "mae":
            return self.pretext_losses["mae"](pred["pred"], pred["target"], pred["mask"])
        return self.pretext_losses["mlm"](pred["logits"], pred.get("labels", batch[PretextKeys.LABELS]))

    def _iteration(self, engine: PretextTrainer, batchdata: dict[str, Any]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = _to_device(batchdata, engine.state.device, engine.non_blocking)
        pretext = pretext_of_batch(batch, engine.pretext_heads)
        x = batch[PretextKeys.INPUT_IDS] if pretext == "mlm" else batch[PretextKeys.IMAGE]
        inputs = {
            PretextKeys.X: x,
            PretextKeys.ATTENTION_MASK: batch.get(PretextKeys.ATTENTION_MASK),
            PretextKeys.LABELS: batch.get(PretextKeys.LABELS),
        }
        if pretext in engine.pretext_heads:
            inputs.update({k: batch[k] for k in engine.pretext_heads[pretext].batch_keys})
        engine.state.output = {
            PretextKeys.IMAGE: x,
            PretextKeys.BATCH: batch,
            PretextKeys.INPUTS: inputs,
            PretextKeys.PRETEXT: pretext,
            PretextKeys.PRETEXT_WEIGHT: 1.0,
            PretextKeys.LOSS_TERMS: {},
        }
        engine.fire_event(PretextEvents.INPUTS_PREPARED)

        engine.network.train()
        engine.optimization.zero_grad(engine)
        out = engine.state.output
        with engine.optimization.autocast(engine):
            weight = float(out[PretextKeys.PRETEXT_WEIGHT])
            out[PretextKeys.PRED] = engine.forward_pretext(out[PretextKeys.INPUTS], pretext, weight)
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            terms = out[PretextKeys.LOSS_TERMS]
            if weight != 0:
                terms[PretextKeys.PRETEXT_LOSS] = weight * engine.pretext_loss(out[PretextKeys.PRED], batch, pretext)
            else:
                terms[PretextKeys.PRETEXT_LOSS] = torch.zeros((), device=engine.state.device)
            out[PretextKeys.LOSS] = sum(terms.values())
            engine.fire_event(IterationEvents.LOSS_COMPLETED)

        if not out[PretextKeys.LOSS].requires_grad and not getattr(engine, "_warned_no_grad", False):
            # nothing to learn from this batch (a buffer batch with no pretext weight and no teacher)
            engine.logger.warning("a batch produced no trainable loss term; it adds no gradient")
            engine._warned_no_grad = True
        heads = [p for head in engine.pretext_heads.values() for p in head.parameters()]
        engine.optimization.backward_and_step(engine, out[PretextKeys.LOSS], average=heads)
        return engine._finish(out)

    def _finish(self, out: dict) -> dict:
        # keep floats, not graphs, in the engine state once the step is done
        out[PretextKeys.LOSS_TERMS] = {k: float(v.detach()) for k, v in out[PretextKeys.LOSS_TERMS].items()}
        out[PretextKeys.LOSS_TERMS].update((out.get(PretextKeys.PRED) or {}).get("loss_components", {}))
        out[PretextKeys.LOSS] = out[PretextKeys.LOSS].detach()
        self.fire_event(IterationEvents.MODEL_COMPLETED)
        return out
