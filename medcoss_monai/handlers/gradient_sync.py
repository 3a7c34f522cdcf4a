"""Data-parallel training without the DDP wrapper: gradients averaged over processes after each backward pass.

MUSCLE's multi-task step runs a different head per visit and, with replay, two forward passes (the
visited task and a replayed one) before one backward pass; ``DistributedDataParallel`` expects one
forward per backward and a fixed set of used parameters. Every process follows the same seeded
schedule, so at each step the same parameters have gradients on every process; this handler averages
exactly those with ``all_reduce``, and makes every process start from rank 0's weights.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents
from torch.utils.data import DistributedSampler

from medcoss_monai.engines.steps import average_gradients
from medcoss_monai.networks.checkpoint import unwrap_network

__all__ = ["GradientAllReduce"]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class GradientAllReduce:
    """Broadcasts rank 0's weights at the start and averages gradients at every ``BACKWARD_COMPLETED``.

    At every epoch start it also tells the visited loader's ``DistributedSampler`` the epoch, so its
    shards are reshuffled. Does nothing in a single process, so a bundle lists it always (after the
    schedule, which sets the loader).
    """

    def attach(self, engine: Engine) -> None:
        """Register on ``STARTED``, ``EPOCH_STARTED`` and ``BACKWARD_COMPLETED``.

        Args:
            engine: the trainer.
        """
        engine.add_event_handler(Events.STARTED, self.broadcast)
        engine.add_event_handler(Events.EPOCH_STARTED, self.set_epoch)
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def set_epoch(self, engine: Engine) -> None:
        """Reshuffle the shards of the current loader for this epoch."""
        sampler = getattr(engine.data_loader, "sampler", None)
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(engine.state.epoch)

    def broadcast(self, engine: Engine) -> None:
        """Every process takes rank 0's parameters and buffers (after a resume, the same checkpoint's)."""
        if not _distributed():
            return
        with torch.no_grad():
            for tensor in unwrap_network(engine.network).state_dict().values():
                if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
                    dist.broadcast(tensor, src=0)

    def __call__(self, engine: Engine) -> None:
        average_gradients(unwrap_network(engine.network).parameters())
