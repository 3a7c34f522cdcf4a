"""Rehearsal of earlier modalities' buffers: which loss a buffer batch gets, and the epoch order."""

from __future__ import annotations

from ignite.engine import Engine, Events

from medcoss_monai.buffer.rehearsal_loader import BUFFER_FLAG
from medcoss_monai.engines.pretext_trainer import PretextEvents, PretextKeys

__all__ = ["RehearsalHandler", "is_buffer_batch"]


def is_buffer_batch(engine: Engine) -> bool:
    """Whether the engine's current batch comes from a rehearsal buffer.

    Args:
        engine: a :class:`~medcoss_monai.engines.PretextTrainer` inside an iteration.

    Returns:
        True for buffer batches.
    """
    output = engine.state.output
    batch = output.get(PretextKeys.BATCH, {}) if isinstance(output, dict) else {}
    return bool(batch.get(BUFFER_FLAG, False))


class RehearsalHandler:
    """Sets the pretext-loss weight of buffer batches and keeps the interleaving order per epoch.

    MedCoSS gives buffer batches only the distillation loss (``buffer_pretext_weight=0``: the trainer
    then runs the encoder alone on them); experience replay gives them the pretext loss
    (``buffer_pretext_weight=1``). At every epoch start the trainer's
    :class:`~medcoss_monai.buffer.rehearsal_loader.RehearsalLoader` is told the epoch, so a resumed run repeats the
    same order.

    Args:
        buffer_pretext_weight: weight of the pretext loss on buffer batches.
    """

    def __init__(self, buffer_pretext_weight: float = 0.0) -> None:
        self.buffer_pretext_weight = float(buffer_pretext_weight)

    def attach(self, engine: Engine) -> None:
        """Register on ``EPOCH_STARTED`` and ``PretextEvents.INPUTS_PREPARED``.

        Args:
            engine: the trainer.
        """
        engine.add_event_handler(Events.EPOCH_STARTED, self._set_epoch)
        engine.add_event_handler(PretextEvents.INPUTS_PREPARED, self)

    def _set_epoch(self, engine: Engine) -> None:
        loader = engine.data_loader
        if hasattr(loader, "set_epoch") and hasattr(loader, "buffers"):
            loader.set_epoch(engine.state.epoch)

    def __call__(self, engine: Engine) -> None:
        if is_buffer_batch(engine):
            engine.state.output[PretextKeys.PRETEXT_WEIGHT] = self.buffer_pretext_weight
