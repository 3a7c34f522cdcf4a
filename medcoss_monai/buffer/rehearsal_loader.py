"""Interleaving of current-modality batches with rehearsal-buffer batches of earlier modalities."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

__all__ = ["RehearsalLoader", "CyclingLoaders", "BUFFER_FLAG", "SOURCE_KEY"]

BUFFER_FLAG = "is_buffer"
"""Batch key set to True on batches drawn from a rehearsal buffer."""
SOURCE_KEY = "source"
"""Batch key naming the modality a batch comes from."""


class CyclingLoaders:
    """Batches of several loaders by key, each loader started again when it runs out (and after :meth:`restart`).

    Args:
        loaders: ``{key: loader}``.
    """

    def __init__(self, loaders: Mapping[str, Iterable]) -> None:
        self.loaders = loaders
        self._iters: dict[str, Iterator] = {}

    def next(self, key: str) -> Any:
        """The next batch of ``key``'s loader (a fresh pass over it once it is exhausted)."""
        try:
            return next(self._iters[key])
        except (KeyError, StopIteration):
            self._iters[key] = iter(self.loaders[key])
            return next(self._iters[key])

    def restart(self) -> None:
        """Start every loader afresh at its next use."""
        self._iters.clear()


class RehearsalLoader:
    """Iterates a current-modality loader and buffer loaders of earlier modalities, interleaved.

    Every batch is single-modality. Per epoch, each buffer contributes about
    ``ratio * len(buffer_loader)`` batches (``relative_to="buffer"``: with ``ratio=1``, buffers are
    visited in proportion to their sizes, a buffer of 5% of a modality adds 5% of that modality's
    batches), or ``ratio * len(current)`` batches (``relative_to="current"``: every earlier modality
    gets the same share of the stage, whatever its size; for data of very different sizes, such as
    thousands of reports beside a handful of volumes). ``relative_to="buffer"`` with ``ratio=1`` is the
    reference's rule, each buffer item about once per epoch (reference: ``dataloader/Jointly_Dataset.py``,
    ``Buffer_Dataset`` adds ``len(buffer) // batch_size`` batches of each buffer to the epoch, each batch
    drawn with replacement; here the count is rounded up, so a buffer smaller than a batch still
    contributes one, and a buffer is visited without replacement). The batches are
    placed at random positions among the current ones, with an order drawn from ``seed`` and the epoch
    number so a resumed run sees the same order. Each batch gains ``source`` (its modality) and
    ``is_buffer``; buffer loaders are cycled when one epoch needs more batches than they hold.

    Args:
        current: loader of the stage's own modality.
        buffers: ``{modality: loader}`` of earlier buffers (may be empty: then this is ``current``).
        modality: the current modality.
        ratio: buffer batches per epoch relative to each buffer loader's length, or to the current
            loader's length (see ``relative_to``).
        seed: seed of the interleaving order.
        relative_to: ``"buffer"`` or ``"current"``.
    """

    def __init__(
        self,
        current: Any,
        buffers: Mapping[str, Any] | None = None,
        modality: str = "",
        ratio: float = 1.0,
        seed: int = 0,
        relative_to: str = "buffer",
    ) -> None:
        if ratio < 0:
            raise ValueError(f"rehearsal ratio must be >= 0, got {ratio}")
        if relative_to not in ("buffer", "current"):
            raise ValueError(f"relative_to must be 'buffer' or 'current', got {relative_to!r}")
        self.relative_to = relative_to
        self.current = current
        self.buffers = dict(buffers or {})
        self.modality = modality
        self.ratio = float(ratio)
        self.seed = int(seed)
        self.epoch = 0
        self._buffer_batches = CyclingLoaders(self.buffers)

    @property
    def dataset(self) -> Any:
        """The current loader's dataset (what samplers and MONAI look at)."""
        return getattr(self.current, "dataset", None)

    @property
    def sampler(self) -> Any:
        """The current loader's sampler (``DistributedSampler.set_epoch`` is called through it)."""
        return getattr(self.current, "sampler", None)

    def buffer_counts(self) -> dict[str, int]:
        """Batches each buffer contributes per epoch.

        Returns:
            ``{modality: number of batches}``.
        """
        counts = {}
        for m, loader in self.buffers.items():
            base = len(self.current) if self.relative_to == "current" else len(loader)
            counts[m] = int(math.ceil(self.ratio * base)) if len(loader) else 0
        return counts

    def __len__(self) -> int:
        return len(self.current) + sum(self.buffer_counts().values())

    def schedule(self, epoch: int) -> list[str]:
        """The source of each batch of an epoch, in order.

        Args:
            epoch: epoch number (mixed into the seed).

        Returns:
            A list of modality names (the current modality for current batches).
        """
        order = [self.modality or "current"] * len(self.current)
        for m, n in self.buffer_counts().items():
            order += [m] * n
        rng = np.random.default_rng([self.seed, epoch])
        rng.shuffle(order)
        return order

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order the next iteration follows (also forwarded to samplers).

        Args:
            epoch: epoch number.
        """
        self.epoch = int(epoch)
        for loader in [self.current, *self.buffers.values()]:
            sampler = getattr(loader, "sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(self.epoch)

    def restart_buffers(self) -> None:
        """Make the next buffer batches come from fresh iterators (a new shuffle of each buffer).

        Called at the start of each epoch so an epoch's buffer batches do not depend on where the
        previous epoch stopped (what a resumed run cannot know).
        """
        self._buffer_batches.restart()

    def __iter__(self) -> Iterator[dict]:
        schedule = self.schedule(self.epoch)
        current = iter(self.current)
        cur_name = self.modality or "current"
        for source in schedule:
            if source == cur_name:
                batch = dict(next(current))
                batch[BUFFER_FLAG] = False
            else:
                batch = dict(self._buffer_batches.next(source))
                batch[BUFFER_FLAG] = True
            batch[SOURCE_KEY] = source
            yield batch
        self.epoch += 1
