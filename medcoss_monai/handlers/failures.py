"""Stopping a stage cleanly: a loss that is no longer finite, and errors the user can act on."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import ignite.distributed as idist
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents

from medcoss_monai.engines.pretext_trainer import PretextKeys
from medcoss_monai.errors import DivergenceError, MedcossError
from medcoss_monai.handlers.rehearsal import is_buffer_batch

__all__ = ["StopOnNonFiniteLoss", "describe_batch"]


def describe_batch(batch: Mapping[str, Any] | None, limit: int = 8) -> list[str]:
    """Names of the items in a collated batch: source files (the stage bundles keep ``source_file``) or report texts (``source_text``).

    Args:
        batch: the batch the trainer was given.
        limit: at most this many names.

    Returns:
        The names found (empty when the batch carries none).
    """
    if not isinstance(batch, Mapping):
        return []
    for key in (PretextKeys.IMAGE, PretextKeys.INPUT_IDS):
        meta = getattr(batch.get(key), "meta", None)
        if isinstance(meta, Mapping) and meta.get("filename_or_obj") is not None:
            names = meta["filename_or_obj"]
            return [str(n) for n in (names if isinstance(names, (list, tuple)) else [names])][:limit]
    for key in ("source_file", "id", "text_file", "source_text"):
        value = batch.get(key)
        if isinstance(value, (list, tuple)) and value:
            # reports are named by their opening words
            return [str(v) if key != "source_text" else repr(str(v)[:60]) for v in value][:limit]
    return []


def _reraise_user_errors(engine: Engine, e: Exception) -> None:
    # ahead of MONAI's StatsHandler, which would log the full traceback before re-raising
    if isinstance(e, MedcossError):
        raise e


class StopOnNonFiniteLoss:
    """Stops the stage, before the optimizer step, when the loss becomes NaN or infinite.

    The error names the epoch, the iteration and the batch's items. Nothing is written on the way out:
    the last good ``checkpoint_epoch=N.pt`` (resume from it) and ``model.pt`` stay as they were.
    Ignite's ``TerminateOnNan`` would end the run as *completed*, which writes ``model.pt`` from the
    broken weights. Under ``torch.distributed`` the ranks agree on the check, so all stop together.

    Attaching it also lets errors the user can act on (:class:`~medcoss_monai.errors.MedcossError`)
    leave the engine without MONAI's ``StatsHandler`` logging their traceback; attach it before
    ``StatsHandler``.
    """

    def attach(self, engine: Engine) -> None:
        """Check the loss on ``LOSS_COMPLETED``; pass user errors through on ``EXCEPTION_RAISED``.

        Args:
            engine: the trainer.
        """
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self)
        engine.add_event_handler(Events.EXCEPTION_RAISED, _reraise_user_errors)

    def __call__(self, engine: Engine) -> None:
        out = engine.state.output
        loss = out[PretextKeys.LOSS].detach()
        bad = (~torch.isfinite(loss)).any().to(torch.float32)
        bad = idist.all_reduce(bad)  # every rank stops at the same iteration, none waits in a collective
        if bad.item() == 0:
            return
        state = engine.state
        in_epoch = (state.iteration - 1) % state.epoch_length + 1 if state.epoch_length else state.iteration
        terms = {k: float(v) for k, v in out.get(PretextKeys.LOSS_TERMS, {}).items()}
        value = float(loss) if loss.numel() == 1 else "non-finite"
        items = describe_batch(out.get(PretextKeys.BATCH, state.batch))
        where = "a rehearsal-buffer batch" if is_buffer_batch(engine) else "a batch of the current modality"
        raise DivergenceError(
            f"The loss became {value} at epoch {state.epoch}, iteration {in_epoch} of {state.epoch_length} "
            f"(global iteration {state.iteration}), on {where}; loss terms "
            f"{ {k: (v if math.isfinite(v) else str(v)) for k, v in terms.items()} }.\n"
            f"Batch items: {items if items else 'not named by the loader'}.\n"
            "Training stopped before the optimizer step; the last checkpoint_epoch=N.pt and model.pt were not "
            "touched. Lower base_lr, set train#trainer#grad_clip_norm, or check these items; then rerun with "
            "--resume true to continue from the last checkpoint."
        )
