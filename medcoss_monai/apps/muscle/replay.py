"""Replay of a small labelled memory of the tasks visited before, against forgetting across tasks."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents

from medcoss_monai.apps.muscle.multitask_trainer import MultiTaskKeys
from medcoss_monai.buffer.rehearsal_loader import CyclingLoaders
from medcoss_monai.errors import BadInputError

__all__ = ["memory_items", "TaskReplay"]

REPLAY_LOSS = "replay_loss"


def memory_items(items: Sequence[Mapping[str, Any]], size: int, seed: int = 0) -> list[dict[str, Any]]:
    """A task's replay memory: ``size`` of its training items, drawn once with ``seed``.

    The memory depends on the task's items and the seed alone, so a resumed run replays the same items.

    Args:
        items: the task's training items.
        size: the memory's size (all items when larger).
        seed: the draw's seed.

    Returns:
        Copies of the chosen items, in their datalist order.
    """
    if size < 0:
        raise BadInputError(f"The replay memory size must be >= 0, got {size}.")
    keep = np.sort(np.random.default_rng(int(seed)).permutation(len(items))[: int(size)])
    return [dict(items[i]) for i in keep]


class TaskReplay:
    """Adds the loss of one memory batch of an earlier-visited task to every step (``replay_loss``).

    At each ``LOSS_COMPLETED`` the tasks visited before the current visit (other than the current
    task; :meth:`~medcoss_monai.apps.muscle.task_schedule.CyclicTaskSchedule.visited_before`) take turns;
    a batch of that task's memory is run through its own head and loss, weighted by ``weight``. Nothing
    is added during the first task's first visit.

    Args:
        memories: task -> loader over its memory (:func:`memory_items` with the task's transforms).
        schedule: the trainer's schedule.
        weight: weight of the replayed loss; 0 disables the handler.
    """

    def __init__(self, memories: Mapping[str, Iterable], schedule: Any, weight: float = 1.0) -> None:
        self.memories = dict(memories)
        self.schedule = schedule
        self.weight = float(weight)
        self._memory_batches = CyclingLoaders(self.memories)

    def attach(self, engine: Engine) -> None:
        """Register on ``LOSS_COMPLETED`` (nothing when the weight is 0 or there is no memory).

        Memory loaders restart at every visit (``EPOCH_STARTED``), so with the epoch's seeding a resumed
        run replays the same batches.

        Args:
            engine: the multi-task trainer.
        """
        if self.weight == 0 or not self.memories:
            return
        engine.add_event_handler(Events.EPOCH_STARTED, self.restart)
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self)

    def restart(self, engine: Engine | None = None) -> None:
        """Start every memory loader afresh at its next use."""
        self._memory_batches.restart()

    def replayed_task(self, engine: Engine) -> str | None:
        """The earlier task replayed at this iteration (turns by iteration), or None."""
        earlier = [t for t in self.schedule.visited_before(engine.state.epoch) if t in self.memories]
        return earlier[engine.state.iteration % len(earlier)] if earlier else None

    def __call__(self, engine: Engine) -> None:
        task = self.replayed_task(engine)
        if task is None:
            return
        k = MultiTaskKeys
        term = self.weight * engine.task_loss(task, self._memory_batches.next(task))
        out = engine.state.output
        out[k.LOSS_TERMS][REPLAY_LOSS] = term
        out[k.LOSS] = out[k.LOSS] + term
