"""The configs of an exported Model Zoo bundle: ``configs/inference.json`` and ``configs/train.json``.

Both are written from the stage or task bundle the weights were trained with (read with its macros
resolved), so the preprocessing a user runs is the one the model saw. The inference config is built
in layers: :func:`inference_skeleton` (data, network, evaluator), then one output writer:
:func:`add_feature_output` (stage encoders), :func:`add_classification_output` (CSV of class
probabilities) or :func:`add_segmentation_output` (masks on the input's grid, MONAI ``Invertd`` and
``SaveImaged``, as the Zoo's segmentation bundles do).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "ZOO_TOKENIZER",
    "ZOO_TORCHSCRIPT",
    "ZOO_WEIGHTS",
    "add_classification_output",
    "add_feature_output",
    "add_segmentation_output",
    "evaluation_skeleton",
    "inference_skeleton",
    "inline_config",
    "referenced_ids",
    "train_config",
    "transform_keys",
    "unlabelled_transforms",
]

ZOO_WEIGHTS, ZOO_TORCHSCRIPT = "models/model.pt", "models/model.ts"
"""Where a Model Zoo bundle keeps its weights and TorchScript, relative to its root."""
ZOO_TOKENIZER = "models/tokenizer"
"""Where a text bundle keeps its tokenizer (HF format), relative to its root."""
LABEL_KEY = "label"
OWN_IDS = ("dataset_dir", "output_dir", "device", "network", "network_def", "bundle_root", "datalist")
"""Ids the exported configs define themselves, never copied from the trained bundle."""
IMPORTS = [
    "$import os",
    "$import numpy",
    "$import torch",
    "$import monai",
    "$import medcoss_monai",
    "$import medcoss_monai.bundle",
    "$import medcoss_monai.bundle.finetune",
    "$import medcoss_monai.bundle.export.inference_inputs",
    "$import medcoss_monai.samples.sample_data",
    "$import medcoss_monai.samples.tasks",
    "$import medcoss_monai.handlers",
    "$import medcoss_monai.networks.inference",
    "$import medcoss_monai.transforms",
]


def inline_config(parser: Any, id: str) -> Any:
    """The raw config at ``id`` with its references replaced by values, so it stands alone.

    ``"@other"`` is replaced by the (inlined) raw config of ``other``; a ``"$expression"`` leaf is
    evaluated and must give a JSON value (a number, a list...). Used to copy a task bundle's network
    config (``model_def`` referencing ``network_def``, ``@num_classes``...) into an exported bundle.

    Args:
        parser: a ``monai.bundle.ConfigParser`` holding the bundle.
        id: the config id, e.g. ``"model_def"``.

    Returns:
        A JSON-serialisable config.
    """
    raw = parser.get(id)
    if isinstance(raw, dict):
        # "_target_", "_disabled_"... stay as written; every other value is inlined
        return {k: v if k.startswith("_") else inline_config(parser, f"{id}#{k}") for k, v in raw.items()}
    if isinstance(raw, list):
        return [inline_config(parser, f"{id}#{i}") for i in range(len(raw))]
    if isinstance(raw, str) and raw.startswith("@") and "#" not in raw[1:] and raw[1:] in parser:
        return inline_config(parser, raw[1:])
    if isinstance(raw, str) and ("@" in raw or raw.startswith(("$", "%"))):
        value = parser.get_parsed_content(id)
        json.dumps(value)  # raises TypeError for values an exported config cannot hold
        return value
    return raw


def _refs(obj: Any) -> set[str]:
    """Top-level ids referenced with ``@id`` in a raw config fragment."""
    return {m.split("#")[0] for m in re.findall(r"@([A-Za-z_][\w#]*)", json.dumps(obj))}


def referenced_ids(raw: Mapping[str, Any], *fragments: Any) -> dict[str, Any]:
    """The top-level ids the fragments refer to, and the ids those refer to, with their raw configs.

    Args:
        raw: the bundle's config, macros resolved.
        fragments: raw config fragments (transforms, an inferer...).

    Returns:
        ``{id: raw config}``, without the ids the exported configs define themselves (:data:`OWN_IDS`).
    """
    ids: dict[str, Any] = {}
    todo = set().union(*map(_refs, fragments))
    while todo:
        key = todo.pop()
        if key in ids or key not in raw or key in OWN_IDS:
            continue
        ids[key] = copy.deepcopy(raw[key])
        todo |= _refs(raw[key])
    return ids


def transform_keys(transform: Mapping[str, Any]) -> list[str]:
    """The ``keys`` of a raw dictionary-transform config, as a list."""
    keys = transform.get("keys", [])
    return [keys] if isinstance(keys, str) else list(keys) if isinstance(keys, list) else []


def unlabelled_transforms(transforms: Sequence[Any], label_key: str = LABEL_KEY) -> list[Any]:
    """A task's loading transforms for items without a label, keeping the image's metadata.

    A transform of the label alone is dropped; one of the image and the label is told the label may
    be missing (``allow_missing_keys``, so per-key settings such as ``mode`` stay aligned); and
    ``track_meta: false`` is dropped, because inverting the preprocessing and naming the outputs need
    the image's metadata.

    Args:
        transforms: the raw transform configs.
        label_key: the label key of the task's items.

    Returns:
        New raw transform configs.
    """
    out = []
    for transform in copy.deepcopy(list(transforms)):
        if isinstance(transform, dict):
            keys = transform_keys(transform)
            if keys and set(keys) <= {label_key}:
                continue
            if label_key in keys:
                transform["allow_missing_keys"] = True
            if transform.get("track_meta") is False:
                del transform["track_meta"]
        out.append(transform)
    return out


def inference_skeleton(
    network_def: Mapping[str, Any],
    ids: Mapping[str, Any],
    transforms: list[Any] | str,
    sample_datalist: str,
    input_key: str = "image",
    series: bool = False,
    inferer: Mapping[str, Any] | None = None,
    prepare_batch: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``configs/inference.json`` without its output: data, preprocessing, network, inferer and evaluator.

    ``dataset_dir`` names the input (a file, a folder, or a datalist whose ``data_section`` is read, see
    :func:`~medcoss_monai.bundle.export.inference_inputs.inference_items`); empty, the held-out split of
    the project's sample data is read (``sample_datalist``).

    Args:
        network_def: the inference network's config.
        ids: top-level ids the transforms and inferer refer to.
        transforms: the preprocessing transforms (a list or an expression).
        sample_datalist: an expression giving the sample datalist's path.
        input_key: ``"image"`` or ``"text"``.
        series: folders of DICOM files are series (3D inputs).
        inferer: the inferer config (default ``SimpleInferer``).
        prepare_batch: the evaluator's ``prepare_batch`` config (text inputs).

    Returns:
        The config; ``postprocessing`` is empty and ``handlers`` only loads the weights.
    """
    datalist = (f"$medcoss_monai.bundle.export.inference_inputs.inference_items(@dataset_dir or @sample_datalist, "
                f"'{input_key}', @data_section, series={series})")
    cfg = evaluation_skeleton(IMPORTS, copy.deepcopy(dict(network_def)), datalist, transforms, inferer)
    cfg["sample_datalist"] = sample_datalist
    cfg.update({k: copy.deepcopy(v) for k, v in ids.items() if k not in cfg})  # the skeleton's own ids win
    if prepare_batch is not None:
        cfg["prepare_batch"] = copy.deepcopy(dict(prepare_batch))
        cfg["evaluator"]["prepare_batch"] = "@prepare_batch"
    return cfg


def evaluation_skeleton(
    imports: Sequence[str],
    network_def: Any,
    datalist: str,
    transforms: list[Any] | str,
    inferer: Mapping[str, Any] | None = None,
    data: str = "@datalist",
) -> dict[str, Any]:
    """The part every exported inference or evaluation config shares: items, preprocessing, network, evaluator.

    Args:
        imports: the config's ``imports``.
        network_def: the network's config (a ``_target_`` dict or an expression such as a TorchScript load).
        datalist: the expression of the items read (from ``@dataset_dir``, ``@data_section``).
        transforms: the preprocessing transforms (a list or an expression).
        inferer: the inferer config (default ``SimpleInferer``).
        data: what the dataset reads (default ``@datalist``).

    Returns:
        The config: ``dataset_dir`` empty, ``postprocessing`` empty, ``handlers`` only loads :data:`ZOO_WEIGHTS`.
    """
    return {
        "imports": list(imports),
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "",
        "data_section": "test",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": network_def,
        "network": "$@network_def.to(@device)",
        "datalist": datalist,
        "preprocessing": {"_target_": "Compose", "transforms": copy.deepcopy(transforms)},
        "dataset": {"_target_": "Dataset", "data": data, "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False, "num_workers": 0},
        "inferer": copy.deepcopy(dict(inferer or {"_target_": "SimpleInferer"})),
        "postprocessing": {"_target_": "Compose", "transforms": []},
        "handlers": [
            {"_target_": "CheckpointLoader", "load_path": f"$os.path.join(@bundle_root, '{ZOO_WEIGHTS}')",
             "load_dict": {"model": "@network"}, "map_location": "@device"},
        ],
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                      "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                      "val_handlers": "@handlers", "amp": False},
        "initialize": ["$monai.utils.set_determinism(seed=0)"],
        "run": ["$@evaluator.run()"],
        "finalize": [],
    }


def add_feature_output(cfg: dict[str, Any]) -> dict[str, Any]:
    """Write the pooled features of every item to ``output_dir/features.npy`` (and the items to ``features.json``)."""
    cfg["handlers"].append({"_target_": "medcoss_monai.handlers.FeatureWriter", "output_dir": "@output_dir", "items": "@datalist"})
    return cfg


def add_classification_output(
    cfg: dict[str, Any], activations: list[Any], class_names: Sequence[str], multilabel: bool = False
) -> dict[str, Any]:
    """Write the class probabilities of every item to ``output_dir/predictions.csv``.

    Args:
        cfg: the config from :func:`inference_skeleton`.
        activations: the task's post-processing of ``pred`` (softmax or sigmoid).
        class_names: one name per output.
        multilabel: independent labels.

    Returns:
        ``cfg``, completed.
    """
    cfg["class_names"] = list(class_names)
    cfg["postprocessing"]["transforms"] = copy.deepcopy(activations)
    cfg["handlers"].append({"_target_": "medcoss_monai.handlers.ClassProbabilityWriter", "output_dir": "@output_dir",
                            "class_names": "@class_names", "items": "@datalist", "multilabel": multilabel})
    return cfg


def add_segmentation_output(
    cfg: dict[str, Any], class_names: Sequence[str], output_ext: str, mask_values: Sequence[int] | None = None
) -> dict[str, Any]:
    """Write one label map per item on the input's grid: softmax, inverted preprocessing, argmax, ``SaveImaged``.

    Args:
        cfg: the config from :func:`inference_skeleton` (its preprocessing must keep the image's metadata).
        class_names: one name per output channel (label value ``i`` is ``class_names[i]``).
        output_ext: ``".nii.gz"``, ``".png"``...
        mask_values: the values the task's masks use per class (e.g. ``[0, 255]`` for PNG masks);
            None writes the class indices.

    Returns:
        ``cfg``, completed.
    """
    cfg["class_names"] = list(class_names)
    cfg["output_ext"] = output_ext
    post: list[Any] = [
        {"_target_": "Activationsd", "keys": "pred", "softmax": True},
        {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
         "nearest_interp": False, "to_tensor": True},
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
    ]
    if mask_values is not None:
        cfg["mask_values"] = list(mask_values)
        post.append({"_target_": "MapLabelValued", "keys": "pred", "orig_labels": f"$list(range({len(mask_values)}))",
                     "target_labels": "@mask_values", "dtype": "$numpy.uint8"})
    post.append({"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
                 "output_ext": "@output_ext", "output_dtype": "$numpy.uint8", "resample": False,
                 "separate_folder": False, "print_log": False})
    cfg["postprocessing"]["transforms"] = post
    return cfg


def train_config(
    raw: Mapping[str, Any],
    network: Mapping[str, Any],
    net_id: str = "network_def",
    weights: str = ZOO_WEIGHTS,
    tokenizer: bool = False,
) -> dict[str, Any]:
    """The stage (or task) bundle, re-pointed to start from the exported weights (continue or fine-tune by override).

    Args:
        raw: the bundle's config with its macros resolved.
        network: the trained network's config, written at ``net_id``.
        net_id: id of the network config in the bundle.
        weights: the weights file it loads, relative to the bundle root.
        tokenizer: the bundle ships its tokenizer (:data:`ZOO_TOKENIZER`): use it rather than train one.

    Returns:
        The ``configs/train.json`` content.
    """
    cfg = copy.deepcopy(dict(raw))
    cfg["imports"] = list(dict.fromkeys(list(cfg.get("imports", [])) + ["$import medcoss_monai.networks.checkpoint"]))
    cfg["bundle_root"] = "."
    cfg["output_dir"] = "$@bundle_root + '/runs'"
    if "previous_stage" in cfg:
        cfg["previous_stage"] = ""
    cfg[net_id] = copy.deepcopy(dict(network))
    encoder = network.get("encoder") if isinstance(network.get("encoder"), Mapping) else network
    for key in ("img_size_2d", "img_size_3d", "patch_size_2d", "patch_size_3d", "hidden_size", "num_layers", "num_heads"):
        if key in cfg and key in encoder:
            cfg[key] = encoder[key]
    if tokenizer:
        cfg["tokenizer_dir"] = f"$@bundle_root + '/{ZOO_TOKENIZER}'"
    cfg["exported_weights"] = f"$@bundle_root + '/{weights}'"
    hint = "'The weights were trained with another network_def.'"
    cfg["network"] = (f"$medcoss_monai.networks.checkpoint.load_strict(@{net_id}, @exported_weights, "
                      f"'{weights}', {hint}).to(@device)")
    return cfg
