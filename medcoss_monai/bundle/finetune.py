"""Helpers the fine-tuning bundles (``bundles/finetune_<task>.json``) call: data, checks, weights, tokenizer.

The bundles hold the choices (transforms, heads, losses, metrics); these functions hold the mechanisms
that do not fit in a JSON expression.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medcoss_monai import layout
from medcoss_monai.bundle.finetune_encoder import stage_chain
from medcoss_monai.data.checks import (
    EXPECTED_SPATIAL_DIMS,
    BadInputError,
    check_datalist,
    item_problems,
)
from medcoss_monai.data.folder_datalists import label_problems
from medcoss_monai.data.label_fraction import label_fraction_items
from medcoss_monai.errors import CheckpointError
from medcoss_monai.samples.tasks import load_task_datalist
from medcoss_monai.networks.checkpoint import load_state, state_dict_of
from medcoss_monai.networks.pos_embed import StateDictReport, adapt_state_dict
from medcoss_monai.utils import remove_stale_temp_files

__all__ = [
    "load_task",
    "task_items",
    "checked_items",
    "split_sizes",
    "default_tokenizer_dir",
    "load_pretrained",
    "pretrained_weights",
    "TextPrepareBatch",
    "resumable_evaluator",
    "prepare_output_dir",
]

logger = logging.getLogger(__name__)

SPLITS = ("training", "validation", "test")


def load_task(dataset_dir: str | os.PathLike | None, task: str) -> dict[str, Any]:
    """The task datalist: the derived sample task when ``dataset_dir`` is empty, else the JSON it names.

    Args:
        dataset_dir: "" (the sample task ``sample_dir()/tasks/<task>/datalist.json``), a datalist JSON,
            or a folder holding ``datalist.json``.
        task: the task name (used for the sample default).

    Returns:
        the datalist dict with ``training`` / ``validation`` / ``test``.

    Raises:
        BadInputError: the named datalist does not exist.
        BadInputError: the datalist misses a split.
    """
    if not dataset_dir:
        data = load_task_datalist(task)
        path = "sample task " + task
    else:
        p = Path(dataset_dir)
        if p.is_dir():
            p = p / "datalist.json"
        if not p.is_file():
            raise BadInputError(f"Task datalist '{p}' does not exist: check --dataset_dir (a datalist JSON, or a folder holding datalist.json).")
        with open(p, encoding="utf-8") as f:
            data = json.load(f)
        path = str(p)
    missing = [s for s in SPLITS if not isinstance(data.get(s), list) or not data[s]]
    if missing:
        raise BadInputError(f"{path}: the datalist has no (or an empty) {', '.join(missing)} split.")
    return data


def task_items(
    dataset_dir: str | os.PathLike | None,
    task: str,
    split: str,
    max_items: int | None = None,
    seed: int = 0,
    label_fraction: float = 1.0,
) -> list[dict[str, Any]]:
    """The items of one split: for training, ``label_fraction`` of each class; at most ``max_items`` (tiny runs).

    Args:
        dataset_dir: see :func:`load_task`.
        task: the task name.
        split: ``training``, ``validation`` or ``test``.
        max_items: keep at most this many items (None or <= 0: all), drawn with ``seed``.
        seed: the subsets' seed.
        label_fraction: the fraction of each class of the training split to keep
            (:func:`~medcoss_monai.data.label_fraction.label_fraction_items`); other splits are whole.

    Returns:
        a list of datalist items (copies).
    """
    items = [dict(i) for i in load_task(dataset_dir, task)[split]]
    if split == "training":
        items = label_fraction_items(items, label_fraction, seed)
    if max_items and 0 < int(max_items) < len(items):
        keep = np.sort(np.random.default_rng(seed).choice(len(items), int(max_items), replace=False))
        items = [items[i] for i in keep]
    return items


def checked_items(
    items: Sequence[dict[str, Any]],
    num_classes: int,
    mask_values: Sequence[int] | None = None,
    image_key: str = "image",
    label_key: str = "label",
    task: str = "",
    skip_bad_inputs: bool = False,
    rejected_path: str | os.PathLike | None = None,
    modality: str | None = None,
    source: str | None = None,
    label_check: Callable[[dict[str, Any]], list[str]] | None = None,
) -> list[dict[str, Any]]:
    """The usable items of a task split, checked before training (a bundle expression).

    Each item's image (or text) is checked as a stage checks its data
    (:func:`~medcoss_monai.data.checks.item_problems`: readable, finite, not constant, the task's
    dimensionality) and its label by :func:`~medcoss_monai.data.folder_datalists.label_problems` (class in range,
    mask on the image's grid with allowed values) or by ``label_check``. All problems are reported together.

    Args:
        items: the split's items.
        num_classes: the task's number of classes.
        mask_values: allowed mask values (default ``range(num_classes)``).
        image_key: key of the image path.
        label_key: key of the label.
        task: the task name; its prefix (``ct_seg`` -> ``ct``) sets the expected dimensionality.
        skip_bad_inputs: drop bad items (listed in ``rejected_path``) instead of stopping.
        rejected_path: JSON file listing dropped items with their reasons.
        modality: the modality setting the expected dimensionality (default: the prefix of ``task``).
        source: where the items come from, named in messages (default ``task``).
        label_check: replaces the label check (e.g. detection boxes); returns the item's problems.

    Returns:
        The good items, in order.

    Raises:
        BadInputError: bad items and ``skip_bad_inputs`` is False (or none is left), naming each file.
    """
    modality = modality or (task.split("_")[0] if task else "task")
    expected = EXPECTED_SPATIAL_DIMS.get(modality)

    def problems(item: dict[str, Any]) -> list[str]:
        labels = label_check(item) if label_check else label_problems(item, num_classes, image_key, label_key, mask_values)
        return item_problems(item, (image_key,), expected) + labels

    return check_datalist(
        list(items), modality, datalist_path=source or task or None, skip_bad_inputs=skip_bad_inputs,
        rejected_path=rejected_path, check=problems,
    )


def split_sizes(*splits: Sequence[Any]) -> dict[str, int]:
    """``{"training": n, "validation": n, "test": n}`` for the given split lists (in that order)."""
    return {name: len(s) for name, s in zip(SPLITS, splits)}


def default_tokenizer_dir(pretrained_ckpt: str | None, output_dir: str | os.PathLike) -> str:
    """The tokenizer the pre-trained text table was learnt with, else ``output_dir/tokenizer`` (trained there).

    It is the ``tokenizer/`` of the stage of ``pretrained_ckpt`` or, nearest first, of the stages before it in
    its run folder: a curriculum's later stages (X-ray ... pathology) carry the report stage's text table but
    not its tokenizer folder, and a new tokenizer's ids would index that table at random.

    Args:
        pretrained_ckpt: a stage folder or weights file; "" or None fine-tunes from scratch.
        output_dir: the fine-tuning folder.

    Returns:
        The tokenizer folder.

    Raises:
        BadInputError: a stage of the chain was imported from a released checkpoint whose text table goes with
            the authors' tokenizer and no tokenizer was saved with it (import with ``--tokenizer``).
    """
    if pretrained_ckpt:
        path = Path(pretrained_ckpt)
        for stage in stage_chain(path if path.is_dir() else path.parent):
            if (stage / layout.TOKENIZER_DIR / "tokenizer.json").is_file():
                return str(stage / layout.TOKENIZER_DIR)
            imported = layout.read_stage_record(stage).get("imported") or {}
            if imported.get("format") == "medcoss":
                raise BadInputError(
                    f"{stage}: imported from {imported.get('checkpoint') or 'a released checkpoint'} without its tokenizer, "
                    "and its text table is indexed by that tokenizer's ids: import it again with --tokenizer "
                    "emilyalsentzer/Bio_ClinicalBERT (or a folder holding that tokenizer)."
                )
        logger.warning(f"No tokenizer in the stages of '{pretrained_ckpt}'; a new one is trained into {output_dir}/tokenizer.")
    return str(Path(output_dir) / layout.TOKENIZER_DIR)


def pretrained_weights(ckpt: str | os.PathLike) -> Path:
    """The weights file of ``--pretrained_ckpt``: the file itself, or the ``model.pt`` of a stage folder.

    Raises:
        CheckpointError: a folder without its weights file, naming it.
    """
    path = Path(ckpt)
    if not path.is_dir():
        return path
    weights = path / str(layout.read_stage_record(path).get("model") or layout.MODEL_FILE)
    if not weights.is_file():
        raise CheckpointError(f"{weights}: the stage folder holds no weights (pretrained_ckpt '{path}').")
    return weights


def load_pretrained(network: nn.Module, ckpt: str | os.PathLike | None, encoder_prefix: str = "encoder.") -> nn.Module:
    """Load a stage's weights into the encoder of a downstream network; ``ckpt`` empty = from scratch.

    ``ckpt`` is a stage folder (trained here or imported with ``python -m medcoss_monai.weights import``)
    or a weights file (``model.pt``). The weights of an encoder saved alone (an imported stage) get the
    ``encoder.`` prefix of the downstream network. Keys are matched and position embeddings resized by
    :func:`~medcoss_monai.networks.adapt_state_dict`;
    pretext heads and other extra keys are dropped, and what was skipped or missing is logged. The
    report is kept on ``network.pretrained_report``.

    Args:
        network: the downstream network (e.g. ``EncoderClassifier``, ``UNETRStyleSegmenter``).
        ckpt: path of the checkpoint, or "" / None.
        encoder_prefix: prefix of the encoder keys in ``network``.

    Returns:
        ``network``, loaded.

    Raises:
        CheckpointError: ``ckpt`` does not exist or cannot be read safely, naming the file.
        BadInputError: the checkpoint is from another architecture (no encoder tensor fits, or encoder
            tensors differ in shape, e.g. another hidden size), naming the file.
    """
    network.pretrained_report = None  # type: ignore[assignment]
    if not ckpt:
        logger.info("No pretrained_ckpt: the encoder is trained from scratch.")
        return network
    path = str(pretrained_weights(ckpt))
    obj = load_state(path, "pretrained checkpoint")
    state, report = adapt_state_dict(state_dict_of(obj, path), network)
    encoder_loaded = [k for k in report.loaded if k.startswith(encoder_prefix)]
    encoder_skipped = {k: v for k, v in report.skipped.items() if k.startswith(encoder_prefix)}
    if not encoder_loaded or encoder_skipped:
        shapes = "; ".join(f"{k}: checkpoint {tuple(a)} vs model {tuple(b)}" for k, (a, b) in list(encoder_skipped.items())[:4])
        reason = f"encoder tensors differ in shape ({shapes})" if encoder_skipped else "no encoder tensor fits the model"
        raise BadInputError(
            f"pretrained_ckpt '{path}' is from another architecture: {reason}. "
            "Use the network_def the checkpoint was trained with (hidden_size, num_layers, patch sizes, vocab_size)."
        )
    network.load_state_dict(state, strict=False)
    _log_report(path, report, encoder_prefix)
    network.pretrained_report = report  # type: ignore[assignment]
    return network


def _log_report(path: str, report: StateDictReport, encoder_prefix: str) -> None:
    logger.info(f"Loaded '{path}': {report}")
    missing_encoder = [k for k in report.missing if k.startswith(encoder_prefix)]
    if missing_encoder:
        logger.warning(f"'{path}' lacks {len(missing_encoder)} encoder tensors, kept at init: {missing_encoder[:4]}")


BEST_METRIC_KEYS = ("best_metric", "best_metric_epoch")
"""The validator's state a fine-tuning checkpoint keeps, so a resumed run keeps the same best model."""


def resumable_evaluator(evaluator: Any) -> Any:
    """The validator, with its best metric and epoch in its ``state_dict()`` (Ignite ``state_dict_user_keys``).

    A fine-tuning checkpoint (``checkpoint_epoch=N.pt``) holds the validator beside the network and
    optimizer: resumed, it compares the next epochs with the best metric of the epochs before the kill,
    so ``model_best.pt`` is the one an uninterrupted run keeps.

    Args:
        evaluator: the bundle's ``validate#evaluator`` (an Ignite engine).

    Returns:
        The same evaluator.
    """
    from ignite.engine import Events

    def plain_best(engine: Any) -> None:
        # metrics may give NumPy scalars, which a weights_only checkpoint cannot hold; float() keeps the value
        engine.state.best_metric = float(engine.state.best_metric)

    keys = evaluator.state_dict_user_keys
    if not all(k in keys for k in BEST_METRIC_KEYS):
        keys.extend(k for k in BEST_METRIC_KEYS if k not in keys)
        evaluator.add_event_handler(Events.EPOCH_COMPLETED, plain_best)  # after MONAI's comparison, attached earlier
    return evaluator


def prepare_output_dir(output_dir: str | os.PathLike, resume: bool) -> None:
    """Make ``output_dir`` ready: temporary files of a killed run removed; without ``--resume``, its old checkpoints too.

    A killed run leaves at most a half-written ``.<name>.<random>.tmp`` (the files themselves are written
    atomically). A run without ``--resume`` replaces the earlier one: its ``checkpoint_epoch=N.pt`` would
    otherwise outrank the new run's (the saver keeps the newest epochs) and a later ``--resume`` would
    continue the old run.

    Args:
        output_dir: the task's output folder (created).
        resume: the bundle's ``resume`` switch.
    """
    from medcoss_monai.handlers.stage_outputs import latest_checkpoint

    os.makedirs(output_dir, exist_ok=True)
    stale = remove_stale_temp_files(output_dir)
    if stale:
        logger.info(f"removed {len(stale)} temporary file(s) a killed run left in {output_dir}: {[p.name for p in stale]}")
    while not resume and (old := latest_checkpoint(output_dir)) is not None:
        logger.info(f"not resuming: removing {old} of an earlier run (pass --resume true to continue it)")
        old.unlink(missing_ok=True)  # ranks of one multi-GPU run share the folder


class TextPrepareBatch:
    """Batch -> (input_ids, label, (), {"attention_mask": ...}) for MONAI trainers/evaluators on text.

    Args:
        input_key: key of the token ids.
        mask_key: key of the attention mask.
        label_key: key of the label.
    """

    def __init__(self, input_key: str = "input_ids", mask_key: str = "attention_mask", label_key: str = "label") -> None:
        self.input_key, self.mask_key, self.label_key = input_key, mask_key, label_key

    def __call__(
        self, batchdata: dict[str, torch.Tensor], device: str | torch.device | None = None, non_blocking: bool = False, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict[str, torch.Tensor]]:
        def to(x: torch.Tensor) -> torch.Tensor:
            return torch.as_tensor(x).to(device=device, non_blocking=non_blocking)

        mask = {"attention_mask": to(batchdata[self.mask_key])}
        return to(batchdata[self.input_key]), to(batchdata[self.label_key]), (), mask
