"""Keep a network's weights of its best validation epoch, written atomically."""

from __future__ import annotations

import os
from pathlib import Path

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events

from medcoss_monai.networks.checkpoint import unwrap_network
from medcoss_monai.utils import atomic_torch_save

__all__ = ["BestModelSaver"]


class BestModelSaver:
    """Writes the network's plain ``state_dict`` to ``save_path`` whenever a validator's key metric improves.

    MONAI evaluators track their key metric in ``state.best_metric`` / ``state.best_metric_epoch``;
    this handler saves when the epoch just validated became the best one. Unlike MONAI's
    ``CheckpointSaver`` (which writes in place) the file is written to a temporary file and renamed,
    so a kill mid-write never leaves a truncated best model. It loads with
    :func:`medcoss_monai.networks.checkpoint.load_strict`.

    Ignite's ``ModelCheckpoint`` with ``DiskSaver(atomic=True)`` writes atomically too, but under one
    fixed file name it deletes the previous best before writing the new one: a kill in between leaves
    no ``model_best.pt`` at all. Here the previous best stays until the new one replaces it.

    Args:
        save_path: the file, e.g. ``<output_dir>/model_best.pt``.
        network: the network being validated (wrappers are removed).
    """

    def __init__(self, save_path: str | os.PathLike, network: torch.nn.Module) -> None:
        self.save_path = Path(save_path)
        self.network = network

    def attach(self, engine: Engine) -> None:
        """Register on the validator's ``Events.EPOCH_COMPLETED`` (after MONAI has compared the metric).

        Args:
            engine: a MONAI evaluator with a key metric.
        """
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if engine.state.best_metric_epoch != engine.state.epoch or idist.get_rank() != 0:
            return
        state = {k: v.detach().cpu() for k, v in unwrap_network(self.network).state_dict().items()}
        atomic_torch_save(state, self.save_path)
