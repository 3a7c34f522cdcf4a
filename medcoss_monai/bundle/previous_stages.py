"""Builds what a later stage needs from earlier ones: buffer loaders and the frozen teacher."""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.data import DataLoader

from medcoss_monai import layout
from medcoss_monai.bundle.encoder_chain import follow_previous_encoder, previous_encoder_def
from medcoss_monai.bundle.stage import previous_stage_dir
from medcoss_monai.data.caching import stage_dataset
from medcoss_monai.handlers.feature_distillation import freeze_teacher
from medcoss_monai.networks.checkpoint import load_strict, unwrap_network

__all__ = ["find_buffers", "buffer_loaders", "load_teacher"]

logger = logging.getLogger(__name__)


def find_buffers(output_dir: str | os.PathLike, modality: str, previous_stage: str | None) -> dict[str, Path]:
    """The rehearsal buffers of the stages before this one in the run's chain, oldest first.

    The chain is recorded, not guessed: ``previous_stage``, then the ``previous_stage`` that stage
    wrote into its ``stage.json``, and so on back to the first stage. Buffers of other stages in
    the run folder (a later stage, when an earlier one is run again) are not rehearsed.

    Args:
        output_dir: the run folder.
        modality: the current stage (a chain that leads back to it stops there).
        previous_stage: the stage this one starts from (bundle id ``previous_stage``); empty or None
            for a first stage.

    Returns:
        ``{modality: path of buffer.json}`` for every stage of the chain that selected a buffer. A
        stage of the chain that never ran ends the chain (the stage before it then runs as a first
        stage, and says so).
    """
    root = Path(output_dir)
    chain: list[str] = []
    current = previous_stage or ""
    while current and current != modality and current not in chain:
        folder = layout.stage_dir(root, current)
        if not folder.is_dir():
            logger.warning(f"rehearsal: {folder} does not exist; the chain of earlier stages of '{modality}' ends there")
            break
        chain.append(current)
        record = layout.read_stage_record(folder)
        if record.get("imported") and not (folder / layout.BUFFER_FILE).is_file():
            source = record["imported"].get("checkpoint") or folder
            logger.warning(
                f"rehearsal: stage '{current}' was imported from {source} ({record['imported'].get('format')} format): "
                f"its authors did not release the buffer of its data, so '{modality}' rehearses nothing of it (and of "
                "the stages before it). Its encoder and the distillation teacher are the imported weights; without "
                "buffer batches no distillation term is computed here (MedCoSS distils on rehearsal batches only), "
                "and this stage's own buffer is chosen for the stages after it."
            )
        current = str(record.get("previous_stage") or "")
    found = {m: layout.stage_dir(root, m) / layout.BUFFER_FILE for m in reversed(chain)}
    return {m: p for m, p in found.items() if p.is_file()}


def _parse_stage_bundle(
    modality: str,
    output_dir: str | os.PathLike,
    shared: Mapping[str, Any],
    tokenizer: Any = None,
    stage_dir: str | os.PathLike | None = None,
    bundles: str | os.PathLike | None = None,
) -> ConfigParser:
    """Another stage's bundle, set up as that stage ran: the settings it recorded, then this stage's shared sizes."""
    overrides: dict[str, Any] = {**dict(shared), "output_dir": str(output_dir)}
    if stage_dir is not None:
        overrides["stage_dir"] = str(stage_dir)  # rejected inputs and the tokenizer stay in this stage's folder
    if tokenizer is not None:
        overrides["tokenizer"] = tokenizer  # a plain object: nothing is evaluated from text
    settings = layout.recorded_settings(layout.stage_dir(output_dir, modality))
    parser = layout.read_stage_bundle(modality, settings, overrides, bundles)
    parser.parse()
    return parser


def buffer_loaders(
    output_dir: str | os.PathLike,
    modality: str,
    shared: Mapping[str, Any] | None = None,
    batch_size: int = 8,
    enabled: bool = True,
    bundles: str | os.PathLike | None = None,
    num_workers: int = 0,
    dataset_cache: str = "memory",
    cache_dir: str | os.PathLike | None = None,
    distributed: bool | None = None,
    joint_modalities: Sequence[str] = (),
    stage_dir: str | os.PathLike | None = None,
    previous_stage: str | None = None,
) -> dict[str, DataLoader]:
    """Loaders over the rehearsal buffers of the earlier stages of the run's chain (or, for joint
    training, over the whole training data of the other modalities).

    Each buffer's items go through the training transforms of their own stage bundle
    (``bundles/stage_<modality>.json``), with this stage's shared sizes (``img_size_2d``...); buffer items
    that are 3D crops (file + location) go through its ``buffer_crop_preprocessing`` instead. Buffers
    whose files vanished are refused before training, with the missing paths listed.

    Args:
        output_dir: the run folder.
        modality: the current modality.
        shared: ids of the current bundle to impose on the earlier bundles (input sizes, text length).
        batch_size: samples (images, crops, reports) per buffer batch: a 3D buffer's batch holds
            ``batch_size // crops_per_volume`` volumes; a buffer smaller than one batch is repeated.
        enabled: False returns no loader (methods without rehearsal).
        bundles: folder of the stage bundles (default: the repository's ``bundles/``).
        num_workers: loader workers.
        dataset_cache: where each buffer's deterministic preprocessing is kept, as the stages'
            ``dataset_cache``: ``"memory"``, ``"disk"`` (under ``cache_dir``, beside that modality's own
            stage cache when its settings are the same) or ``"none"``.
        cache_dir: root of the disk cache.
        distributed: shard each buffer over ranks with a ``DistributedSampler`` (default: when a
            process group is initialised).
        joint_modalities: joint training: the modalities trained together with this one; their full
            training datalists (as their own bundles load them) replace the buffers.
        stage_dir: this stage's folder (joint training keeps the report tokenizer there).
        previous_stage: the stage this one starts from; its chain of ``stage.json`` records names
            the buffers (:func:`find_buffers`). None or empty: a first stage, no buffer.

    Returns:
        ``{modality: DataLoader}``, empty for a first stage or when disabled.
    """
    if not enabled:
        return {}
    from medcoss_monai.buffer import crop_rehearsal_transform, has_crops, load_buffer_manifest
    folder = Path(bundles) if bundles else layout.bundles_dir()
    if distributed is None:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if joint_modalities:
        return _joint_loaders(folder, output_dir, modality, joint_modalities, shared or {}, batch_size, num_workers,
                              distributed, stage_dir)
    loaders: dict[str, DataLoader] = {}
    for mod, path in find_buffers(output_dir, modality, previous_stage).items():
        manifest = load_buffer_manifest(path, check_files=True)
        items = [{k: v for k, v in it.items() if k not in ("cluster", "distance")} for it in manifest["items"]]
        if not items:
            continue
        tokenizer = None
        tok_dir = path.parent / layout.TOKENIZER_DIR
        if tok_dir.is_dir():
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
        parser = _parse_stage_bundle(mod, output_dir, shared or {}, tokenizer, bundles=folder)
        transform, crops = parser.get_parsed_content("train#preprocessing"), parser.get("crops_per_volume", 1)
        if has_crops(items):  # 3D crops chosen at paper scale: each is rehearsed as exactly that crop, one sample
            transform, crops = crop_rehearsal_transform(parser, items, path), 1
        settings = dict(parser.get_parsed_content("settings"), modality=mod)
        dataset = stage_dataset(items, transform, dataset_cache, cache_dir, settings)
        per_batch = max(1, int(batch_size) // max(1, int(crops)))
        if len(dataset) < per_batch:  # a buffer of a few items (one film): repeat it to fill one batch
            dataset = torch.utils.data.ConcatDataset([dataset] * math.ceil(per_batch / len(dataset)))
        loaders[mod] = _loader(dataset, per_batch, num_workers, distributed)
        logger.info(f"rehearsal: {len(items)} '{mod}' buffer items from {path}")
    return loaders


def _loader(dataset: Any, batch_size: int, num_workers: int, distributed: bool) -> DataLoader:
    sampler = torch.utils.data.DistributedSampler(dataset, shuffle=True) if distributed else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=sampler is None, sampler=sampler, num_workers=num_workers)


def _joint_loaders(
    folder: Path,
    output_dir: str | os.PathLike,
    modality: str,
    modalities: Sequence[str],
    shared: Mapping[str, Any],
    batch_size: int,
    num_workers: int,
    distributed: bool,
    stage_dir: str | os.PathLike | None,
) -> dict[str, DataLoader]:
    """Training loaders of the other modalities of a joint run, each built by its own stage bundle."""
    loaders = {}
    for mod in modalities:
        if mod == modality:
            continue
        parser = _parse_stage_bundle(mod, output_dir, shared, stage_dir=stage_dir, bundles=folder)
        dataset = parser.get_parsed_content("train#dataset")
        crops = parser.get("crops_per_volume", 1)
        repeats = parser.get("train#repeats", 1)
        dataset = torch.utils.data.ConcatDataset([dataset] * int(repeats))
        loaders[mod] = _loader(dataset, max(1, int(batch_size) // max(1, int(crops))), num_workers, distributed)
        logger.info(f"joint training: {len(dataset)} '{mod}' items")
    return loaders


def load_teacher(
    network: torch.nn.Module,
    output_dir: str | os.PathLike,
    previous_stage: str | None,
    device: torch.device | str = "cpu",
    enabled: bool = True,
) -> torch.nn.Module | None:
    """The previous stage's network, frozen in ``eval()`` mode, for feature distillation.

    A previous stage of another encoder (imported weights, :mod:`~medcoss_monai.bundle.encoder_chain`) gives
    a teacher of its encoder: an imported stage's ``model.pt`` (the bare encoder) loads into its ``encoder``.

    Args:
        network: a network of the stage's architecture (copied; it is not modified).
        output_dir: the run folder.
        previous_stage: the previous stage's modality.
        device: device of the teacher.
        enabled: False returns None (methods without distillation).

    Returns:
        The teacher, or None for a first stage or when disabled.
    """
    folder = previous_stage_dir(output_dir, previous_stage)
    if not enabled or folder is None:
        return None
    teacher = follow_previous_encoder(copy.deepcopy(unwrap_network(network)).cpu(), folder, "the distillation teacher")
    record = layout.read_stage_record(folder)
    encoder_def = previous_encoder_def(folder)
    bare = encoder_def is not None and encoder_def == record.get("network")  # an imported encoder alone
    what = f"model.pt of stage '{previous_stage}'"
    load_strict(teacher.encoder if bare else teacher, folder / layout.MODEL_FILE, what,
                "The previous stage was trained with another network_def.")
    imported = record.get("imported") or {}
    source = f" (imported {imported.get('format')} weights of {imported.get('checkpoint')})" if imported else ""
    logger.info(f"distillation teacher: {folder / layout.MODEL_FILE}{source} (frozen, eval mode)")
    return freeze_teacher(teacher.to(device))
