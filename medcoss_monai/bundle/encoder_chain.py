"""A chain of stages that continues an encoder other than ``bundles/common/model.json``'s: imported weights.

A stage folder written by ``python -m medcoss_monai.weights import`` holds the authors' encoder alone
(``model.pt`` + ``stage.json`` naming e.g. :class:`~medcoss_monai.networks.MedCoSSReferenceEncoder`). A
stage that names it as its previous stage pre-trains that architecture further: its network is a
``MedCoSSModel`` with that encoder and fresh pretext heads (:func:`follow_previous_encoder`), started
from its weights (:func:`load_previous_weights`); the stages after it follow the same encoder.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from medcoss_monai import layout
from medcoss_monai.errors import CheckpointError
from medcoss_monai.networks.checkpoint import load_adapted, load_strict, unwrap_network

__all__ = ["ENCODER_PREFIX", "previous_encoder_def", "follow_previous_encoder", "load_previous_weights"]

logger = logging.getLogger(__name__)

ENCODER_PREFIX = "encoder."
"""State-dict prefix of the shared encoder and its tokenizers (what one stage hands to the next)."""


def previous_encoder_def(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The encoder a stage folder records when it is not the one of ``bundles/common/model.json``.

    An imported stage (``python -m medcoss_monai.weights import``) records a bare encoder (its
    ``network._target_`` is one of :data:`~medcoss_monai.networks.medcoss.ENCODERS` other than
    ``UnifiedEncoder``); a stage that continued it records a ``MedCoSSModel`` with that ``encoder_def``.

    Args:
        folder: the previous stage's folder.

    Returns:
        ``{"_target_": ..., **arguments}`` of that encoder, or None for this project's own encoder.
    """
    from medcoss_monai.networks.encoder import UnifiedEncoder
    from medcoss_monai.networks.medcoss import ENCODERS

    network = layout.read_stage_record(folder).get("network")
    if not isinstance(network, dict):
        return None
    own = f"{UnifiedEncoder.__module__}.{UnifiedEncoder.__name__}"
    if network.get("_target_") in ENCODERS and network.get("_target_") != own:
        return dict(network)
    encoder_def = network.get("encoder_def")
    return dict(encoder_def) if isinstance(encoder_def, dict) and encoder_def.get("_target_") != own else None


def follow_previous_encoder(
    network: torch.nn.Module, folder: str | os.PathLike, name: str = "this stage"
) -> torch.nn.Module:
    """``network`` with the previous stage's encoder architecture (:func:`previous_encoder_def`), fresh heads.

    The stage's own MAE decoder and MLM head settings (``decoder_*``, ``norm_pix_loss``) are kept; the encoder
    sizes of the bundle (``hidden_size``...) give way to the recorded encoder's, and the log says so.

    Args:
        network: the bundle's network (a ``MedCoSSModel``).
        folder: the previous stage's folder.
        name: this stage, for the log.

    Returns:
        ``network`` itself when it already has that encoder, else a new ``MedCoSSModel`` with it.

    Raises:
        CheckpointError: ``network`` is not a ``MedCoSSModel`` (no pretext heads to put on the encoder).
    """
    from medcoss_monai.networks.medcoss import MedCoSSModel

    encoder_def = previous_encoder_def(folder)
    model = unwrap_network(network)
    if encoder_def is None:
        return network
    if not isinstance(model, MedCoSSModel):
        raise CheckpointError(
            f"{Path(folder) / layout.STAGE_RECORD_FILE}: its encoder ({encoder_def['_target_']}) continues only "
            f"with MedCoSSModel pretext heads; {name} builds {type(model).__name__}."
        )
    if model.config.get("encoder_def") == encoder_def:
        return network
    keep = ("decoder_hidden_size", "decoder_layers", "decoder_heads", "norm_pix_loss", "tie_mlm_weights")
    rebuilt = MedCoSSModel(encoder_def=encoder_def, **{k: model.config[k] for k in keep})
    logger.info(
        f"{name} continues the encoder of {folder} ({encoder_def['_target_'].rsplit('.', 1)[-1]}, hidden size "
        f"{encoder_def.get('hidden_size')}, {encoder_def.get('num_layers')} layers), with a fresh MAE decoder and MLM "
        "head; the bundle's encoder sizes (hidden_size, num_layers, ...) do not apply."
    )
    return rebuilt


def load_previous_weights(
    network: torch.nn.Module,
    folder: str | os.PathLike,
    what: str,
    name: str = "this stage",
    inherit_pretext_heads: bool = False,
) -> torch.nn.Module:
    """Load a previous stage's encoder into a network built by :func:`follow_previous_encoder`, strictly.

    An imported stage's ``model.pt`` is the bare encoder: it loads into ``network.encoder``, every key; a
    stage trained here loads its ``encoder.`` keys, and its pretext heads with ``inherit_pretext_heads``.

    Args:
        network: the network (its ``encoder`` has the previous stage's architecture).
        folder: the previous stage's folder.
        what: the previous stage, for messages.
        name: this stage, for the log.
        inherit_pretext_heads: load a trained stage's MAE decoder and MLM head too (bundle id of that name).

    Returns:
        The same network.

    Raises:
        CheckpointError: the weights do not fit the recorded architecture.
    """
    folder = Path(folder)
    model = unwrap_network(network)
    record = layout.read_stage_record(folder)
    hint = f"It was not written with the network of {folder / layout.STAGE_RECORD_FILE}."
    if previous_encoder_def(folder) == record.get("network"):  # a bare encoder: the imported weights
        load_strict(model.encoder, folder / layout.MODEL_FILE, f"model.pt of {what}", hint)
        imported = record.get("imported") or {}
        source = "weights"
        if imported:
            source = f"imported weights ({imported.get('format', '?')} format, {imported.get('checkpoint', '?')})"
        logger.info(
            f"{name} starts from the {source} of {folder / layout.MODEL_FILE}: every encoder tensor loaded, "
            "pretext heads initialised afresh"
        )
        return network
    prefixes = None if inherit_pretext_heads else (ENCODER_PREFIX,)
    report = load_adapted(model, folder / layout.MODEL_FILE, f"model.pt of {what}", prefixes)
    if any(k.startswith(ENCODER_PREFIX) for k in report.skipped) or not report.loaded:
        raise CheckpointError(f"{folder / layout.MODEL_FILE} does not fit the encoder it records ({report}). {hint}")
    heads = "with" if inherit_pretext_heads else "without"
    logger.info(f"{name} starts from {folder / layout.MODEL_FILE}, {heads} its pretext heads ({report})")
    return network
