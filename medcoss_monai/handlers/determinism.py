"""Epochs whose randomness depends only on (seed, epoch), so a resumed stage equals an uninterrupted one."""

from __future__ import annotations

from typing import Any

import numpy as np
from ignite.engine import Engine, Events
from monai.data.utils import set_rnd
from monai.utils import set_determinism

__all__ = ["EpochSeedHandler", "epoch_seed"]


def epoch_seed(seed: int, epoch: int) -> int:
    """A 31-bit seed drawn from ``(seed, epoch)``; different epochs get unrelated streams.

    Args:
        seed: the run's seed.
        epoch: the epoch number (1-based, as Ignite counts).

    Returns:
        The epoch's seed.
    """
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0] & 0x7FFFFFFF)


def _training_datasets(loader: Any) -> list[tuple[int, Any]]:
    """``(stream number, dataset)`` of each dataset a trainer's loader draws from.

    A plain loader has one (number 1); a ``RehearsalLoader`` has one per rehearsed modality
    (numbers 2, 3...) and the current modality's (the next number).
    """
    current = getattr(loader, "current", None)
    if current is None:
        return [(1, loader.dataset)] if getattr(loader, "dataset", None) is not None else []
    buffers = [b.dataset for b in getattr(loader, "buffers", {}).values()]
    return [(2 + i, d) for i, d in enumerate(buffers)] + [(2 + len(buffers), current.dataset)]


class EpochSeedHandler:
    """Re-seeds every random stream of the trainer at the start of each epoch from ``(seed, epoch)``.

    Without it a resumed stage restarts the transforms' and loaders' random streams where the run
    began, so epoch N+1 after a resume sees other crops, masks and mixing draws than it would have.
    With it the epoch's crops, flips, shuffling, MAE masks, buffer order and mixup draws depend only
    on ``(seed, epoch)``: resuming from ``checkpoint_epoch=N.pt`` continues exactly as the
    uninterrupted run (bit for bit on CPU; on GPU as far as its kernels are deterministic).

    It seeds Python, NumPy and PyTorch (``monai.utils.set_determinism``), the random transforms of
    each training dataset (``monai.data.utils.set_rnd``, which DataLoader workers then derive their
    seeds from) and restarts the rehearsal loader's buffer iterators. Handlers with their own
    random draws re-seed themselves per epoch the same way (the mixup handler). Attach it first.

    Args:
        seed: the run's seed.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    def attach(self, engine: Engine) -> None:
        """Register on ``Events.EPOCH_STARTED``.

        Args:
            engine: the trainer.
        """
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        seed = epoch_seed(self.seed, engine.state.epoch)
        set_determinism(seed=seed)
        for number, dataset in _training_datasets(engine.data_loader):
            set_rnd(dataset, seed=(seed + 1000 * number) % 0x7FFFFFFF)
        if hasattr(engine.data_loader, "restart_buffers"):
            engine.data_loader.restart_buffers()  # buffer batches restart each epoch, from the re-seeded shuffle
