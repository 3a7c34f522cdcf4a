"""MUSCLE's visiting schedule: which task each epoch (one visit) of the multi-task trainer trains on."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from ignite.engine import Engine, Events

from medcoss_monai.errors import BadInputError

__all__ = ["visit_order", "CyclicTaskSchedule"]


def visit_order(tasks: Sequence[str], rounds: int, seed: int = 0, reshuffle: bool = True) -> list[str]:
    """The task of every visit: ``rounds`` rounds, each visiting every task once.

    With ``reshuffle`` each round's order is a permutation drawn from ``(seed, round)`` alone (so a
    resumed run, or any later reader, recomputes the same schedule); without it every round keeps the
    given order, and ``rounds=1`` is plain sequential training (``MUSCLE--``).

    Args:
        tasks: the task names.
        rounds: number of rounds (at least 1).
        seed: the schedule's seed.
        reshuffle: draw a fresh order for every round.

    Returns:
        ``rounds * len(tasks)`` task names.
    """
    if rounds < 1 or not tasks:
        raise BadInputError(f"A schedule needs at least one round and one task, got rounds={rounds}, tasks={list(tasks)}.")
    order: list[str] = []
    for r in range(int(rounds)):
        perm = np.random.default_rng([int(seed), r]).permutation(len(tasks)) if reshuffle else range(len(tasks))
        order += [tasks[i] for i in perm]
    return order


class CyclicTaskSchedule:
    """Switches the trainer to the task of each visit (one epoch = one visit), at ``EPOCH_STARTED``.

    The trainer's ``max_epochs`` must be ``len(schedule.order)``. The visited task is put in
    ``engine.state.task`` and its loader in the engine (``engine.set_data``); with the trainer's
    ``epoch_length`` fixed, a visit is that many steps whatever the size of the task's data.

    Args:
        loaders: task -> training loader (a task's order in the first round without reshuffling is
            the order of this mapping).
        rounds: number of rounds.
        seed: the schedule's seed.
        reshuffle: a fresh order in every round (MUSCLE); False keeps one order (sequential).
    """

    def __init__(self, loaders: Mapping[str, Iterable], rounds: int, seed: int = 0, reshuffle: bool = True) -> None:
        self.loaders = dict(loaders)
        self.order = visit_order(list(self.loaders), rounds, seed, reshuffle)

    def visit(self, epoch: int) -> tuple[int, str]:
        """``(round, task)`` of the 1-based epoch ``epoch`` (rounds count from 1)."""
        return (epoch - 1) // len(self.loaders) + 1, self.order[epoch - 1]

    def visited_before(self, epoch: int) -> list[str]:
        """Tasks visited before epoch ``epoch`` other than its own, in order of their last visit."""
        current = self.order[epoch - 1]
        seen = [t for t in self.order[: epoch - 1] if t != current]
        return list(dict.fromkeys(reversed(seen)))[::-1]

    def attach(self, engine: Engine) -> None:
        """Register on ``EPOCH_STARTED`` and check the trainer's length.

        Args:
            engine: the multi-task trainer.

        Raises:
            BadInputError: ``max_epochs`` differs from the number of visits.
        """
        if engine.state.max_epochs is not None and engine.state.max_epochs != len(self.order):
            raise BadInputError(
                f"The trainer runs {engine.state.max_epochs} epochs but the schedule has {len(self.order)} visits "
                "(rounds x tasks): set max_epochs to their product, or change --rounds and leave max_epochs to the bundle "
                "(bundles/muscle_multitask.json computes it)."
            )
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        _, task = self.visit(engine.state.epoch)
        engine.state.task = task
        engine.set_data(self.loaders[task])
