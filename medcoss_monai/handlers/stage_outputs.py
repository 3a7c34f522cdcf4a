"""Handlers that write a stage's durable outputs: ``model.pt``, ``checkpoint_*.pt`` and resuming."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader

from medcoss_monai.networks.checkpoint import load_state, state_dict_mismatch, unwrap_network
from medcoss_monai import layout
from medcoss_monai.errors import CheckpointError, ResumeError
from medcoss_monai.utils import atomic_torch_save, atomic_write_json, to_jsonable

__all__ = [
    "StageModelSaver",
    "AtomicCheckpointSaver",
    "StageResumeHandler",
    "latest_checkpoint",
    "stage_config",
]

_CKPT_PATTERN = re.compile(r"^checkpoint_epoch=(\d+)\.pt$")

STAGE_CONFIG_KEY = "stage_config"
"""Key of a checkpoint's record of what it was trained with (the network's config)."""


def stage_config(network: Any) -> dict[str, Any]:
    """What a checkpoint records about its run: the network's architecture config, JSON-plain.

    Args:
        network: the trained network (wrappers removed), or None.

    Returns:
        ``{"network": {...}}``, or ``{}`` when the network has no ``config``.
    """
    config = getattr(unwrap_network(network), "config", None) if isinstance(network, torch.nn.Module) else None
    return {"network": to_jsonable(dict(config))} if config is not None else {}


def latest_checkpoint(stage_dir: str | os.PathLike) -> Path | None:
    """The checkpoint of the highest epoch in a stage folder.

    Args:
        stage_dir: a ``stage_<modality>`` folder.

    Returns:
        Its path, or None when the folder holds no ``checkpoint_epoch=N.pt``.
    """
    stage_dir = Path(stage_dir)
    if not stage_dir.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in stage_dir.iterdir() if (m := _CKPT_PATTERN.match(p.name))]
    return max(found)[1] if found else None


class StageModelSaver:
    """Writes the trained network's plain ``state_dict`` as ``model.pt`` when the stage completes.

    ``model.pt`` is what the next stage and fine-tuning load. It is written atomically, by rank 0 only,
    next to ``stage.json`` (what was trained, for export and for the next stage).

    Args:
        stage_dir: the stage folder.
        network: the trained network (wrappers are removed).
        filename: file name of the weights.
        stage_info: JSON-serialisable facts written to ``stage.json`` (modality, network config...).
    """

    def __init__(
        self,
        stage_dir: str | os.PathLike,
        network: torch.nn.Module,
        filename: str = layout.MODEL_FILE,
        stage_info: Mapping[str, Any] | None = None,
    ) -> None:
        self.stage_dir = Path(stage_dir)
        self.network = network
        self.filename = filename
        self.stage_info = dict(stage_info or {})

    def attach(self, engine: Engine) -> None:
        """Register on ``Events.COMPLETED``.

        Args:
            engine: the trainer.
        """
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if idist.get_rank() != 0:
            return
        model = unwrap_network(self.network)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        path = atomic_torch_save(state, self.stage_dir / self.filename)
        info = dict(self.stage_info)
        config = getattr(model, "config", None)
        if config is not None:  # the architecture, so export and fine-tuning can rebuild the network
            info["network"] = {"_target_": f"{type(model).__module__}.{type(model).__name__}", **dict(config)}
        info.update({"epochs": engine.state.epoch, "iterations": engine.state.iteration, "model": self.filename})
        atomic_write_json(to_jsonable(info), self.stage_dir / layout.STAGE_RECORD_FILE)
        logging.getLogger(__name__).info(f"stage weights written to {path}")


class AtomicCheckpointSaver:
    """Saves the full training state every ``save_interval`` epochs as ``checkpoint_epoch=N.pt``.

    MONAI's ``CheckpointSaver`` writes in place; a kill during the write would leave a truncated file
    that a resume then trips over. This saver writes to a temporary file, fsyncs and renames it, keeps
    the newest ``n_saved`` checkpoints and writes from rank 0 only. The files load with
    ``torch.load(..., weights_only=True)`` and MONAI's ``CheckpointLoader``.

    Ignite's ``ModelCheckpoint`` with ``DiskSaver(atomic=True)`` is not used because it cannot do three
    things a stage needs: it keeps the list of files to prune in memory, so after a kill and a resume
    the checkpoints written before the kill are never pruned (this saver reads the folder); it saves
    only objects with ``state_dict()``, not the plain ``stage_config`` record that
    :meth:`StageResumeHandler.check_resumable` compares; and its atomic write does not fsync.

    Args:
        save_dir: the stage folder.
        save_dict: objects with ``state_dict()`` to save, e.g. network, optimizer, lr scheduler. The
            engine it is attached to is added as ``"trainer"`` (a bundle cannot reference the trainer
            from its own handler list without a cycle).
        save_interval: save every this many epochs (the last epoch is always saved).
        n_saved: how many checkpoints to keep.
    """

    def __init__(
        self, save_dir: str | os.PathLike, save_dict: Mapping[str, Any], save_interval: int = 1, n_saved: int = 2
    ) -> None:
        self.save_dir = Path(save_dir)
        self.save_dict = dict(save_dict)
        self.save_interval = max(1, int(save_interval))
        self.n_saved = max(1, int(n_saved))

    def attach(self, engine: Engine) -> None:
        """Register on ``Events.EPOCH_COMPLETED``.

        Args:
            engine: the trainer.
        """
        self.save_dict.setdefault("trainer", engine)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        if epoch % self.save_interval and epoch != engine.state.max_epochs:
            return
        if idist.get_rank() != 0:
            return
        state: dict[str, Any] = {}
        for name, obj in self.save_dict.items():
            obj = unwrap_network(obj) if isinstance(obj, torch.nn.Module) else obj
            state[name] = obj.state_dict()
        state[STAGE_CONFIG_KEY] = stage_config(self.save_dict.get("network"))
        atomic_torch_save(state, self.save_dir / f"checkpoint_epoch={epoch}.pt")
        found = sorted(
            (int(m.group(1)), p) for p in self.save_dir.iterdir() if (m := _CKPT_PATTERN.match(p.name))
        )
        for _, old in found[: -self.n_saved]:
            old.unlink(missing_ok=True)


class StageResumeHandler:
    """Resumes a stage from its newest ``checkpoint_epoch=N.pt`` when ``enabled``.

    It wraps MONAI's ``CheckpointLoader`` (which loads with ``weights_only=True``) and restores the
    network, optimizer, LR scheduler and trainer counters, so training continues at epoch N+1. With no
    checkpoint in the folder it says so in one log line and the stage starts from scratch.

    Args:
        stage_dir: the stage folder.
        load_dict: objects to restore, same keys as the saver's ``save_dict``; the engine it is attached
            to is restored as ``"trainer"``.
        enabled: whether to resume at all (the bundle's ``resume`` id).
        map_location: ``torch.load`` map location.
    """

    def __init__(
        self,
        stage_dir: str | os.PathLike,
        load_dict: Mapping[str, Any],
        enabled: bool = False,
        map_location: Any = "cpu",
    ) -> None:
        self.stage_dir = Path(stage_dir)
        self.load_dict = {
            k: (unwrap_network(v) if isinstance(v, torch.nn.Module) else v) for k, v in load_dict.items()
        }
        self.enabled = bool(enabled)
        self.map_location = map_location
        self.checkpoint: Path | None = None

    def attach(self, engine: Engine) -> None:
        """Check the newest checkpoint now and attach a ``CheckpointLoader`` for it, if resuming and one exists.

        Args:
            engine: the trainer.
        """
        if not self.enabled:
            return
        self.load_dict.setdefault("trainer", engine)
        self.checkpoint = latest_checkpoint(self.stage_dir)
        logger = logging.getLogger(__name__)
        if self.checkpoint is None:
            logger.info(f"resume requested but {self.stage_dir} holds no checkpoint: starting from epoch 1")
            return
        self.check_resumable(self.checkpoint)
        logger.info(f"resuming from {self.checkpoint}")
        CheckpointLoader(load_path=str(self.checkpoint), load_dict=self.load_dict, map_location=self.map_location).attach(
            engine
        )

    def check_resumable(self, checkpoint: Path) -> None:
        """Refuse, before any training, a checkpoint the current settings cannot continue from.

        The network's config recorded in the checkpoint is compared with the current one (every
        changed key is listed); a checkpoint without that record is compared tensor by tensor.

        Args:
            checkpoint: the checkpoint to resume from.

        Raises:
            CheckpointError: the file cannot be read or lacks a saved part (``network``, ``optimizer``...).
            ResumeError: the network differs from the one the checkpoint was trained with.
        """
        # memory-mapped: the config and the tensor shapes are read, not the weights (CheckpointLoader reads those)
        state = load_state(checkpoint, "stage checkpoint", mmap=True)
        missing = [k for k in self.load_dict if k not in state]
        if missing:
            raise CheckpointError(
                f"{checkpoint}: lacks {missing} (holds {sorted(state)}); it is not a stage checkpoint of this "
                "project. Move it away or rerun without --resume."
            )
        what_to_do = (
            "Rerun with the settings it was trained with, or start the stage afresh: without --resume, "
            "or with another --output_dir."
        )
        record = state.get(STAGE_CONFIG_KEY)
        recorded = record.get("network") if isinstance(record, dict) else None
        current = stage_config(self.load_dict.get("network")).get("network")
        if recorded is not None and current is not None and recorded != current:
            changed = [
                f"{k}: {recorded.get(k, '(absent)')!r} in the checkpoint, {current.get(k, '(absent)')!r} now"
                for k in sorted(set(recorded) | set(current))
                if recorded.get(k) != current.get(k)
            ]
            raise ResumeError(
                f"Cannot resume {self.stage_dir} from {checkpoint.name}: the network changed since it was saved:\n"
                + "\n".join(f"  {c}" for c in changed)
                + f"\n{what_to_do}"
            )
        network = self.load_dict.get("network")
        if isinstance(network, torch.nn.Module) and isinstance(state.get("network"), Mapping):
            problems = state_dict_mismatch(state["network"], network.state_dict())
            if problems:
                raise ResumeError(
                    f"Cannot resume {self.stage_dir} from {checkpoint.name}: its network does not fit the current one "
                    f"({'; '.join(problems)}). {what_to_do}"
                )

