"""Rebuild the network of a stage folder (imported or trained here) with its weights."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from medcoss_monai import layout
from medcoss_monai.errors import CheckpointError
from medcoss_monai.layout import is_plain_value, stage_network_class
from medcoss_monai.networks.checkpoint import load_strict

__all__ = ["load_pretrained", "stage_network_class"]


def load_pretrained(path: str | os.PathLike) -> torch.nn.Module:
    """The network of a stage folder, with its weights, in eval mode.

    Works for a folder written by ``python -m medcoss_monai.weights import`` and for a pre-training
    stage trained here: its ``stage.json`` names the architecture and its sizes, its ``model.pt`` holds
    the weights (read with ``weights_only=True`` and loaded strictly). A text stage's tokenizer is in
    its ``tokenizer/`` folder (``transformers.AutoTokenizer.from_pretrained``).

    Args:
        path: the stage folder, or its ``model.pt``.

    Returns:
        The network, on the CPU, in eval mode. MedCoSS networks have
        ``encode_tokens(x, kind, attention_mask=None)``.

    Raises:
        CheckpointError: no ``stage.json`` beside the weights, one that names no network, or weights that
            do not fit it.
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    record_path = folder / layout.STAGE_RECORD_FILE
    record = layout.read_stage_record(folder)
    config = record.get("network")
    if not isinstance(config, Mapping) or not config.get("_target_"):
        raise CheckpointError(
            f"{record_path}: missing, or names no network; load_pretrained needs a stage folder written by a "
            "stage or by 'python -m medcoss_monai.weights import'."
        )
    kwargs = {k: v for k, v in config.items() if k != "_target_"}
    if not is_plain_value(kwargs):
        raise CheckpointError(f"{record_path}: the network's arguments are not plain values; it is not built.")
    cls = stage_network_class(str(config["_target_"]), record_path)
    builder = getattr(cls, "from_config", None)
    network = builder(kwargs) if callable(builder) else cls(**kwargs)
    model_path = path if path.is_file() else folder / str(record.get("model") or layout.MODEL_FILE)
    hint = f"It was not written with the network of {record_path}."
    load_strict(network, model_path, f"stage {layout.MODEL_FILE}", hint)
    return network.eval()
