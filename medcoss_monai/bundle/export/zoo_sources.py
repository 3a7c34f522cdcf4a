"""What a Model Zoo export starts from: the network, weights and bundle of a trained stage or fine-tuned task.

:func:`find_stage` reads a pre-training stage folder (``stage.json``, ``model.pt``), :func:`find_finetuned`
a fine-tuning ``output_dir`` (``model_best.pt``, ``metrics.json``); both return a :class:`Trained`
that :func:`medcoss_monai.bundle.export.zoo.write_bundle` turns into a bundle. The input kind and the
words describing the modality come from its stage bundle (:func:`medcoss_monai.layout.modality_card`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medcoss_monai import layout
from medcoss_monai.bundle.export import zoo_configs as configs
from medcoss_monai.errors import BadInputError
from medcoss_monai.networks.checkpoint import load_state, state_dict_of

__all__ = ["Trained", "find_finetuned", "find_stage", "find_trained_network", "WEIGHT_NAMES"]

WEIGHT_NAMES = (layout.BEST_MODEL_FILE, layout.MODEL_FILE, "model_final.pt")
"""The weights of a fine-tuning output folder, in order of preference."""


@dataclass
class Trained:
    """A trained network to export.

    Attributes:
        network: its config (``_target_`` and arguments, self-contained).
        state: its weights.
        modality: the stage's modality, or a task's prefix (``text`` for report tasks).
        card: the modality's card (:func:`~medcoss_monai.layout.modality_card`): input kind and descriptions.
        bundle_file: the bundle it was trained with.
        parser: that bundle, read with its macros resolved (and the task's overrides).
        info: facts for the metadata and README (``config_file``, ``epochs``, ``task``, ``metrics``...).
        tokenizer: the tokenizer folder of a text network.
    """

    network: dict[str, Any]
    state: dict[str, torch.Tensor]
    modality: str
    card: dict[str, Any]
    bundle_file: Path
    parser: Any
    info: dict[str, Any] = field(default_factory=dict)
    tokenizer: Path | None = None


def find_trained_network(folder: str | os.PathLike) -> tuple[dict[str, Any], Path, dict[str, Any]]:
    """Find the network config and weights in a stage folder.

    The folder must hold a JSON file (the stage record ``stage.json``, or any ``*.json``) with a key
    ``"network"`` that is a config with ``"_target_"`` (as :class:`~medcoss_monai.handlers.StageModelSaver`
    writes), and the weights it names under ``"model"`` (default :data:`~medcoss_monai.layout.MODEL_FILE`).

    Args:
        folder: the trained folder.

    Returns:
        ``(network config, weights path, the whole info dict)``.

    Raises:
        BadInputError: when the folder, a network config or the weights are missing.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInputError(f"{folder} is not a folder: pass the stage_<modality> output folder.")
    for path in [folder / layout.STAGE_RECORD_FILE] + sorted(folder.glob("*.json")):
        if not path.is_file():
            continue
        try:
            info = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        net = info.get("network") if isinstance(info, dict) else None
        if isinstance(net, dict) and "_target_" in net:
            # the export parses this config: only a network of this package, with plain arguments, is built
            layout.stage_network_class(str(net["_target_"]), path)
            if not layout.is_plain_value({k: v for k, v in net.items() if k != "_target_"}):
                raise BadInputError(f"{path}: the network's arguments are not plain values; it is not exported.")
            weights = folder / str(info.get("model", layout.MODEL_FILE))
            if not weights.is_file():
                raise BadInputError(f"{path} names the weights {weights.name}, but {weights} does not exist.")
            info = dict(info)
            info.setdefault("config_file", str(path))
            return dict(net), weights, info
    raise BadInputError(
        f"{folder} has no JSON file with a 'network' config (\"_target_\"...): it does not look like a finished "
        f"stage folder (train it to completion first; the stage writes {layout.STAGE_RECORD_FILE}). "
        "For a fine-tuned task's output_dir use --finetune_dir."
    )


def find_stage(
    stage_dir: str | os.PathLike, bundle_file: str | os.PathLike | None = None, modality: str | None = None
) -> Trained:
    """The trained network of a pre-training stage folder, with the stage bundle of its modality.

    Args:
        stage_dir: the stage folder (``stage.json`` + ``model.pt``; ``tokenizer/`` for a text stage).
        bundle_file: the stage bundle whose ``eval#transforms`` become the inference preprocessing
            (default :func:`~medcoss_monai.layout.stage_bundle` of the modality).
        modality: the modality whose inputs the bundle reads, for a stage that records none (an imported
            MedCoSS stage reads every modality); default the stage's, else ``bundle_file``'s ``"modality"``.

    Returns:
        The :class:`Trained` network.

    Raises:
        BadInputError: the folder, its weights, its bundle or a text stage's tokenizer are missing, or no
            stage bundle registers the recorded modality.
    """
    stage_dir = Path(stage_dir)
    network, weights, info = find_trained_network(stage_dir)
    if not (modality or info.get("modality")) and bundle_file and Path(bundle_file).is_file():
        modality = layout.read_bundle(bundle_file).get("modality", "")
    modality = str(modality or info.get("modality") or "")
    if not modality:  # an imported stage (python -m medcoss_monai.weights import) reads every input kind
        raise BadInputError(f"{stage_dir / layout.STAGE_RECORD_FILE} records no modality (an imported stage): pass "
                            f"--modality, one of {sorted(layout.stage_modalities())}, for the inputs the bundle reads.")
    card = layout.modality_card(modality)
    path = Path(bundle_file) if bundle_file else layout.stage_bundle(modality)
    if not path.is_file():
        raise BadInputError(f"{path}: the stage bundle for the inference preprocessing is missing")
    tokenizer = stage_dir / layout.TOKENIZER_DIR if card["input_kind"] == "text" else None
    if tokenizer is not None and not (tokenizer / "tokenizer.json").is_file():
        raise BadInputError(f"{tokenizer}: the report stage's tokenizer is missing (the stage writes it).")
    state = state_dict_of(load_state(weights, "stage weights"), weights)
    parser = layout.read_bundle(path)
    # the preprocessing the stage ran (an imported one: was pre-trained) with, as its stage.json records it;
    # recorded_settings refuses config syntax, so nothing from the run folder is evaluated by the parser
    for key, value in layout.recorded_settings(stage_dir).items():
        if key in parser and key != "modality":
            parser[key] = value
    return Trained(network, state, modality, card, path, parser, dict(info), tokenizer)


def find_finetuned(
    finetune_dir: str | os.PathLike,
    config_file: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    net_id: str = "model_def",
    model: str | None = None,
) -> Trained:
    """The fine-tuned network of a task's ``output_dir``, with the architecture read from its bundle.

    The task is the ``"task"`` of the folder's ``metrics.json`` (or ``overrides["task"]``); its bundle
    is ``bundles/finetune_<task>.json`` unless ``config_file`` names it. Overrides used at training
    time that change the architecture (``num_classes``, sizes) must be given again; the classifier
    ``head`` is read from ``metrics.json``.

    Args:
        finetune_dir: the task's output folder (``model_best.pt``, ``metrics.json``).
        config_file: the task bundle it was trained with (default from the task name).
        overrides: ``{id: value}`` applied to the bundle, as on the training command line.
        net_id: id of the network config in that bundle.
        model: weights file name in the folder (default the first of :data:`WEIGHT_NAMES`).

    Returns:
        The :class:`Trained` network.

    Raises:
        BadInputError: the folder, its weights or the bundle are missing, no stage bundle registers
            the task's modality, or an override names an id the bundle does not define.
    """
    folder = Path(finetune_dir)
    if not folder.is_dir():
        raise BadInputError(f"{folder} is not a folder: pass the output_dir of a fine-tuning bundle.")
    metrics_path = folder / layout.METRICS_FILE
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    overrides = dict(overrides or {})
    task = str(overrides.get("task") or metrics.get("task") or "")
    if config_file is None:
        if not task:
            raise BadInputError(f"{folder} has no {layout.METRICS_FILE} naming the task: pass --config_file (the task bundle).")
        config_file = layout.bundles_dir() / f"finetune_{task}.json"
        if not config_file.is_file():
            raise BadInputError(f"{config_file}: no bundle for task '{task}'; pass --config_file (the bundle it was "
                                    "trained with) and the overrides it was trained with.")
    config_file = Path(config_file)
    names = [model] if model else [n for n in WEIGHT_NAMES if (folder / n).is_file()]
    if not names or not (folder / names[0]).is_file():
        raise BadInputError(f"{folder} holds none of {[model] if model else list(WEIGHT_NAMES)}: train the task first.")
    weights = folder / names[0]
    # what metrics.json records of the training run; the user's overrides win over it
    recorded: dict[str, Any] = {"output_dir": str(folder)}
    if task:
        recorded["task"] = task  # a bundle run for another task (--task mri_tissue_seg)
    if metrics.get("pretrained_ckpt") is not None:
        recorded["pretrained_ckpt"] = metrics["pretrained_ckpt"]  # where its tokenizer was found
    if isinstance(metrics.get("head"), str):
        recorded["head"] = metrics["head"]  # the classifier it was trained with (--head mlp)
    if isinstance(metrics.get("multi_label"), bool):
        recorded["multi_label"] = metrics["multi_label"]  # text_cls's switch (--multi_label false)
    parser = layout.read_bundle(config_file, recorded, user_overrides=overrides)
    if net_id not in parser:
        raise KeyError(f"{config_file}: no id '{net_id}' (pass --net_id, the id of the network config)")
    task = str(parser.get("task", task))
    modality = task.split("_")[0]
    card = layout.modality_card(modality)
    tokenizer = Path(parser.get_parsed_content("tokenizer_dir")) if "tokenizer_dir" in parser else None
    if tokenizer is not None and not (tokenizer / "tokenizer.json").is_file():
        raise BadInputError(f"{tokenizer}: the tokenizer the task was trained with is missing.")
    info = {"task": task, "config_file": str(weights), "bundle_file": str(config_file), "metrics": metrics.get("metrics", {}),
            "split_sizes": metrics.get("split_sizes", {}), "epochs": metrics.get("max_epochs", parser.get("train#trainer#max_epochs", "?")),
            "pretrained_ckpt": metrics.get("pretrained_ckpt", "")}
    state = state_dict_of(load_state(weights, "fine-tuned weights"), weights)
    return Trained(configs.inline_config(parser, net_id), state, modality, card, config_file, parser, info, tokenizer)
