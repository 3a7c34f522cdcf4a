"""What a stage bundle calls to find its data, its previous stage and its folder."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import torch
from monai.data import load_decathlon_datalist

from medcoss_monai import layout
from medcoss_monai.data.checks import BadInputError, check_datalist, item_problems
from medcoss_monai.errors import CheckpointError, RunLockedError
from medcoss_monai.bundle.encoder_chain import (
    ENCODER_PREFIX,
    follow_previous_encoder,
    load_previous_weights,
    previous_encoder_def,
)
from medcoss_monai.networks.checkpoint import load_adapted
from medcoss_monai.utils import remove_stale_temp_files

__all__ = [
    "resolve_datalist",
    "load_stage_datalist",
    "init_from_previous_stage",
    "refuse_missing_previous_stage",
    "previous_stage_dir",
    "claim_stage_dir",
    "volumes_per_batch",
    "checkpoint_objects",
]

logger = logging.getLogger(__name__)

SPATIAL_DIMS = {"2d": 2, "3d": 3}
"""Spatial dimensionality of an image input kind (text items have none)."""


def resolve_datalist(dataset_dir: str | os.PathLike | None, modality: str) -> Path:
    """Find the datalist JSON of a stage.

    Args:
        dataset_dir: a datalist JSON file, a folder holding ``<modality>.json``, ``datalist.json`` or
            ``datalists/<modality>.json``, or empty/None for the built-in sample data.
        modality: the stage's modality.

    Returns:
        Path of the datalist JSON.

    Raises:
        FileNotFoundError: with one sentence saying what to do (fetch the sample data, or fix the path).
    """
    if not dataset_dir:
        from medcoss_monai.samples.sample_data import require_datalist

        return Path(require_datalist(modality))
    path = Path(dataset_dir).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        for cand in (path / f"{modality}.json", path / "datalist.json", path / "datalists" / f"{modality}.json"):
            if cand.is_file():
                return cand
        raise FileNotFoundError(
            f"--dataset_dir {path} is a folder without {modality}.json, datalist.json or datalists/{modality}.json: "
            "point it at a decathlon-style datalist JSON."
        )
    raise FileNotFoundError(f"--dataset_dir {path} does not exist: point it at a decathlon-style datalist JSON.")


def load_stage_datalist(
    dataset_dir: str | os.PathLike | None,
    modality: str,
    key: str = "training",
    max_items: int | None = None,
    seed: int = 0,
    check: bool = True,
    skip_bad_inputs: bool = False,
    rejected_path: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Load, optionally subsample, and check the items of a stage's datalist.

    Args:
        dataset_dir: see :func:`resolve_datalist`.
        modality: the stage's modality; a stage bundle must declare it (:func:`~medcoss_monai.layout.modality_card`).
        key: datalist section (``training``, ``validation``).
        max_items: keep at most this many items, chosen with ``seed`` (demo runs); None keeps all.
        seed: seed of the subsample.
        check: check every file before training (:func:`medcoss_monai.data.checks.check_datalist`).
        skip_bad_inputs: drop bad items (listed in ``rejected_path``) instead of stopping.
        rejected_path: where dropped items are listed.

    Returns:
        The datalist items, paths absolute.
    """
    # the modality's bundle registers it: its input kind sets the dimensionality every image must have
    kind = layout.modality_card(modality)["input_kind"]
    path = resolve_datalist(dataset_dir, modality)
    try:
        items = load_decathlon_datalist(str(path), is_segmentation=True, data_list_key=key)
    except (ValueError, KeyError) as e:
        raise ValueError(f"{path}: cannot read section '{key}' of the datalist ({e})") from e
    if max_items is not None and 0 < max_items < len(items):
        items = random.Random(seed).sample(items, int(max_items))
    if check:
        expected_dims = SPATIAL_DIMS.get(kind)
        items = check_datalist(
            items, modality, datalist_path=path, skip_bad_inputs=skip_bad_inputs, rejected_path=rejected_path,
            check=lambda item: item_problems(item, ("image", "label"), expected_dims),
        )
    return items


_HELD_LOCKS: dict[str, int] = {}
"""Stage folders this process holds the writer lock of: path -> open file descriptor."""



def _global_rank() -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))  # torchrun sets it before the process group exists


def claim_stage_dir(output_dir: str | os.PathLike, modality: str) -> str:
    """Create ``<output_dir>/stage_<modality>`` and make this process its only writer.

    An exclusive ``flock`` on ``.writer.lock`` in the folder is held until the process ends; the
    kernel drops it when the process dies, even by ``kill -9``, so a killed run never leaves the
    folder locked. Only the process of global rank 0 (``RANK``) takes it: the other ranks of a
    distributed run write nothing. A process may claim the same folder again (sequential runs).

    Args:
        output_dir: the run folder.
        modality: the stage's modality.

    Returns:
        The stage folder, as a string (the bundle's ``stage_dir``).

    Raises:
        RunLockedError: another live process holds the folder, naming its pid.
    """
    folder = layout.stage_dir(output_dir, modality)
    key = str(folder.resolve())
    if _global_rank() != 0 or key in _HELD_LOCKS:
        return str(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no flock; one writer is then the user's responsibility
        return str(folder)
    fd = os.open(folder / layout.WRITER_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunLockedError(
            f"{folder} is being written by another process (pid {holder}). Wait for it to finish, stop it, "
            "or choose another --output_dir; two runs in one stage folder would overwrite each other's checkpoints."
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD_LOCKS[key] = fd
    stale = remove_stale_temp_files(folder)  # half-written files of a killed writer; the real ones are intact
    if stale:
        logger.info(f"removed {len(stale)} temporary file(s) a killed run left in {folder}: {[p.name for p in stale]}")
    return str(folder)


def previous_stage_dir(output_dir: str | os.PathLike, previous_stage: str | None) -> Path | None:
    """The folder of the previous stage when it finished (holds ``model.pt``), else None.

    Args:
        output_dir: the run folder holding ``stage_<modality>`` folders.
        previous_stage: modality of the previous stage, or empty for a first stage.

    Returns:
        ``<output_dir>/stage_<previous_stage>`` or None.
    """
    if not previous_stage:
        return None
    folder = layout.stage_dir(output_dir, previous_stage)
    return folder if (folder / layout.MODEL_FILE).is_file() else None


def refuse_missing_previous_stage(output_dir: str | os.PathLike, previous_stage: str | None, modality: str = "") -> None:
    """Refuse a stage whose previous stage is missing from a run folder that holds other stages.

    A typo in ``--output_dir`` or a deleted stage would otherwise turn a MedCoSS stage into training
    from scratch without teacher or buffer. Only an empty run folder (a stage run alone) starts from
    scratch with a configured ``previous_stage``; ``previous_stage`` empty always means a first stage.

    Args:
        output_dir: the run folder.
        previous_stage: the previous stage's modality (bundle id ``previous_stage``).
        modality: this stage's modality.

    Raises:
        CheckpointError: ``previous_stage`` is set, its ``model.pt`` is missing, and the run folder
            holds another stage.
    """
    if not previous_stage or previous_stage_dir(output_dir, previous_stage) is not None:
        return
    others = layout.other_stage_folders(output_dir, modality)
    if others:
        raise CheckpointError(
            f"{layout.stage_model(output_dir, previous_stage)} not found, but {output_dir} holds "
            f"{', '.join(p.name for p in others)}: this stage would start from scratch without its teacher and buffers. "
            f"Finish stage '{previous_stage}' first, correct --output_dir or --previous_stage, or pass "
            "--previous_stage '' to train this stage as a first stage on purpose."
        )


def init_from_previous_stage(
    network: torch.nn.Module,
    output_dir: str | os.PathLike,
    previous_stage: str | None,
    modality: str = "",
    inherit_pretext_heads: bool = False,
) -> torch.nn.Module:
    """Load the previous stage's encoder into ``network``, or say that this is a first stage.

    As in the MedCoSS paper, a stage takes over the encoder (the shared transformer and the text,
    2D and 3D tokenizers) and starts its MAE decoder and MLM head from their initialisation;
    ``inherit_pretext_heads`` takes those over too. Position embeddings of another input size are
    resized; keys that do not fit are reported.

    Args:
        network: the freshly built network.
        output_dir: the run folder.
        previous_stage: the previous stage's modality (bundle id ``previous_stage``).
        modality: this stage's modality, for the log line.
        inherit_pretext_heads: load the previous stage's MAE decoder and MLM head as well (bundle id
            ``inherit_pretext_heads``).

    Returns:
        The same network, with weights loaded when a previous stage exists.

    Raises:
        CheckpointError: the previous stage's encoder does not fit this one (another architecture).
    """
    folder = previous_stage_dir(output_dir, previous_stage)
    name = f"stage '{modality}'" if modality else "this stage"
    if folder is not None and previous_encoder_def(folder) is not None:
        network = follow_previous_encoder(network, folder, name)
        return load_previous_weights(network, folder, f"stage '{previous_stage}'", name, flag(inherit_pretext_heads))
    if folder is None:
        refuse_missing_previous_stage(output_dir, previous_stage, modality)
        if previous_stage:
            logger.warning(
                f"{name} runs as a first stage: {layout.stage_model(output_dir, previous_stage)} does not exist and "
                f"{output_dir} holds no other stage, so the encoder starts from scratch, with no teacher and no buffer "
                "(set --previous_stage '' to say so and silence this)."
            )
        else:
            logger.info(f"{name} runs as a first stage (no previous stage configured): encoder initialised from scratch.")
        return network
    prefixes = None if flag(inherit_pretext_heads) else (ENCODER_PREFIX,)
    report = load_adapted(network, folder / layout.MODEL_FILE, f"model.pt of stage '{previous_stage}'", prefixes)
    # every stage shares one encoder: a stage bundle or override that changes it would silently start
    # part of the encoder from scratch, so the chain stops instead
    skipped = {k: v for k, v in report.skipped.items() if k.startswith(ENCODER_PREFIX)}
    if skipped or not any(k.startswith(ENCODER_PREFIX) for k in report.loaded):
        shapes = "; ".join(f"{k}: stage '{previous_stage}' {tuple(a)} vs this stage {tuple(b)}" for k, (a, b) in list(skipped.items())[:3])
        raise CheckpointError(
            f"{folder / layout.MODEL_FILE} does not fit the encoder of {name} ({shapes or 'no encoder tensor fits'}): every "
            "stage of a chain shares one architecture (bundles/common/model.json: hidden_size, num_layers, num_heads, "
            "patch sizes, vocab_size); drop the override that changes it, or start a new run folder."
        )
    heads = "with" if prefixes is None else "without"
    logger.info(f"{name} starts from {folder / layout.MODEL_FILE}, {heads} its pretext heads ({report})")
    return network


def flag(value: Any) -> bool:
    """A bundle switch as a bool: command-line overrides arrive as ``true``/``false`` strings.

    Args:
        value: a bool, a number, or a string such as ``"true"``, ``"False"``, ``"0"``, ``"yes"``.

    Returns:
        The truth value.

    Raises:
        BadInputError: for a string that is not a recognised yes/no word (a ``ValueError``).
    """
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("true", "1", "yes", "y", "on"):
            return True
        if word in ("false", "0", "no", "n", "off", "", "none", "null"):
            return False
        raise BadInputError(f"expected true or false (a bundle switch such as --rehearsal), got {value!r}")
    return bool(value)


def volumes_per_batch(batch_size: int, crops_per_volume: int) -> int:
    """Volumes per loader batch of a 3D stage whose ``batch_size`` counts samples (crops), as every stage's does.

    Args:
        batch_size: samples per process per step (bundle id ``batch_size``).
        crops_per_volume: crops cut from each loaded volume (bundle id ``crops_per_volume``).

    Returns:
        ``batch_size // crops_per_volume``.

    Raises:
        BadInputError: ``batch_size`` is not a positive multiple of ``crops_per_volume``.
    """
    batch_size, crops = int(batch_size), int(crops_per_volume)
    if crops < 1 or batch_size < crops or batch_size % crops:
        raise BadInputError(
            f"batch_size {batch_size} counts crops and must be a multiple of crops_per_volume {crops} "
            f"(e.g. --batch_size {max(1, crops) * max(1, batch_size // max(1, crops))})."
        )
    return batch_size // crops


def checkpoint_objects(
    network: torch.nn.Module, optimizer: Any, lr_scheduler: Any, pretext_heads: Any = None
) -> dict[str, Any]:
    """What a stage checkpoint holds and a resume restores: the network, optimizer and LR scheduler, and
    the pretext heads (a BrainMVP stage's templates) when the stage has any.

    Args:
        network: the stage's network.
        optimizer: its optimizer.
        lr_scheduler: its LR scheduler.
        pretext_heads: ``{name: module}`` (bundle id ``pretext_heads``; empty for MAE/MLM stages).

    Returns:
        The saver's ``save_dict`` / the resume handler's ``load_dict``.
    """
    objects = {"network": network, "optimizer": optimizer, "lr_scheduler": lr_scheduler}
    if pretext_heads:
        objects["pretext_heads"] = pretext_heads if isinstance(pretext_heads, torch.nn.Module) else torch.nn.ModuleDict(dict(pretext_heads))
    return objects
