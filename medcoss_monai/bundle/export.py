"""Model Zoo export: turn a trained stage (or fine-tuned task) folder into a MONAI bundle.

``python -m medcoss_monai.bundle.export --stage_dir runs/medcoss/stage_ct --out exported/medcoss_ct``
writes ``configs/{metadata,inference,train}.json``, ``configs/logging.conf``, ``models/model.pt``
(plain state dict), ``models/model.ts`` (TorchScript), ``docs/README.md``, ``LICENSE`` and, when a
file exceeds 25 MB, ``large_files.yml``. The exported ``network_def`` returns ONE tensor (pooled
features for an encoder, the task output for a fine-tuned network), so MONAI's ``verify_net_in_out``
and ``ckpt_export`` apply to it unchanged.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from medcoss_monai.networks.checkpoint import load_state, load_strict, state_dict_of

__all__ = ["export_bundle", "find_trained_network", "schema_path", "FeatureWriter", "load_weights", "main"]

logger = logging.getLogger(__name__)

MODALITIES_3D = ("ct", "mri")
MODALITIES_2D = ("xray", "pathology")
LARGE_FILE_BYTES = 25 * 1024 * 1024
ZOO_SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
_MODALITY_WORDS = {
    "ct": ("CT", "chest CT volumes (NRRD/NIfTI/DICOM)"),
    "mri": ("MR", "brain MRI volumes (NRRD/NIfTI)"),
    "xray": ("X-ray", "radiographs (DICOM/PNG/JPEG)"),
    "pathology": ("pathology", "H&E whole-slide image tiles (SVS/TIFF)"),
    "report": ("text", "clinical report text"),
}


def schema_path() -> Path:
    """The metadata JSON schema shipped with the package (for ``monai.bundle verify_metadata --filepath``).

    Returns:
        Path of ``medcoss_monai/bundle/schema/metadata_schema.json``.
    """
    return Path(str(resources.files("medcoss_monai.bundle") / "schema" / "metadata_schema.json"))


def find_trained_network(folder: str | os.PathLike) -> tuple[dict[str, Any], Path, dict[str, Any]]:
    """Find the network config and weights in a stage or fine-tuned task folder.

    The folder must hold a JSON file (``stage.json``, ``task.json`` or any ``*.json``) with a key
    ``"network"`` that is a config with ``"_target_"`` (as :class:`~medcoss_monai.handlers.StageModelSaver`
    writes), and the weights it names under ``"model"`` (default ``model.pt``).

    Args:
        folder: the trained folder.

    Returns:
        ``(network config, weights path, the whole info dict)``.

    Raises:
        FileNotFoundError: when the folder, a network config or the weights are missing.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder: pass the stage_<modality> (or task) output folder.")
    candidates = [folder / "stage.json", folder / "task.json"] + sorted(folder.glob("*.json"))
    for path in candidates:
        if not path.is_file():
            continue
        try:
            info = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        net = info.get("network") if isinstance(info, dict) else None
        if isinstance(net, dict) and "_target_" in net:
            weights = folder / str(info.get("model", "model.pt"))
            if not weights.is_file():
                raise FileNotFoundError(f"{path} names the weights {weights.name}, but {weights} does not exist.")
            info = dict(info)
            info.setdefault("config_file", str(path))
            return dict(net), weights, info
    raise FileNotFoundError(
        f"{folder} has no JSON file with a 'network' config (\"_target_\"...): it does not look like a finished "
        "stage or task folder (train it to completion first; the stage writes stage.json)."
    )


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
    if isinstance(raw, str) and ("@" in raw or raw.startswith("$") or raw.startswith("%")):
        value = parser.get_parsed_content(id)
        json.dumps(value)  # raises TypeError for values an exported config cannot hold
        return value
    return raw


def find_task_network(
    folder: str | os.PathLike, config_file: str | os.PathLike, net_id: str = "model_def", model: str | None = None
) -> tuple[dict[str, Any], Path, dict[str, Any]]:
    """Network config and weights of a fine-tuned task folder, with the architecture read from its bundle.

    Args:
        folder: the task's output folder (holding ``model_best.pt`` or ``model.pt``...).
        config_file: the task bundle it was trained with (e.g. ``bundles/finetune_ct_cls.json``);
            command-line overrides used at training time (sizes, ``num_classes``) must match.
        net_id: id of the network config in that bundle.
        model: weights file name in ``folder`` (default: the first of ``model_best.pt``, ``model.pt``,
            ``model_final.pt``, or the newest ``*.pt``).

    Returns:
        ``(network config, weights path, info)`` as :func:`find_trained_network`.
    """
    from monai.bundle import ConfigParser

    folder = Path(folder)
    parser = ConfigParser()
    parser.read_config(str(config_file))
    if net_id not in parser:
        raise KeyError(f"{config_file}: no id '{net_id}' (pass --net_id, the id of the network config)")
    network = inline_config(parser, net_id)
    if model:
        weights = folder / model
    else:
        found = [folder / n for n in ("model_best.pt", "model.pt", "model_final.pt") if (folder / n).is_file()]
        found = found or sorted(folder.glob("*.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
        if not found:
            raise FileNotFoundError(f"{folder} holds no *.pt weights of the task")
        weights = found[0]
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} does not exist")
    task = str(parser.get("task", ""))
    modality = str(parser.get("modality", "") or task.split("_")[0])
    info = {"task": task, "modality": modality, "config_file": str(weights), "bundle_file": str(config_file),
            "epochs": parser.get("train#trainer#max_epochs", "?")}
    return network, weights, info


def load_weights(network: torch.nn.Module, path: str | os.PathLike) -> torch.nn.Module:
    """Load a plain state dict into ``network`` (used by the exported ``train.json``).

    Args:
        network: the network built from ``network_def``.
        path: a ``model.pt`` (plain state dict).

    Returns:
        The same network.
    """
    return load_strict(network, path, "model.pt", "The weights were trained with another network_def.")


class FeatureWriter:
    """Collects the evaluator's ``pred`` per item and writes ``features.npy`` and ``features.json``.

    Args:
        output_dir: folder of the outputs (created).
        items: the datalist items, in loader order (written beside the features, paths kept).
        pred_key: key of the network output in the decollated engine output.
    """

    def __init__(self, output_dir: str | os.PathLike, items: Sequence[Mapping[str, Any]] = (), pred_key: str = "pred") -> None:
        self.output_dir = Path(output_dir)
        self.items = [dict(i) for i in items]
        self.pred_key = pred_key
        self._features: list[np.ndarray] = []

    def attach(self, engine: Engine) -> None:
        """Register on ``ITERATION_COMPLETED`` (collect) and ``COMPLETED`` (write).

        Args:
            engine: the evaluator.
        """
        engine.add_event_handler(Events.STARTED, lambda _: self._features.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self)

    def _collect(self, engine: Engine) -> None:
        out = engine.state.output
        preds = [o[self.pred_key] for o in out] if isinstance(out, list) else list(out[self.pred_key])
        self._features += [torch.as_tensor(p).detach().float().cpu().numpy() for p in preds]

    def __call__(self, engine: Engine) -> None:
        from medcoss_monai.utils import atomic_write_json, is_rank0

        if not is_rank0() or not self._features:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        feats = np.stack(self._features)
        np.save(self.output_dir / "features.npy", feats)
        atomic_write_json({"shape": list(feats.shape), "items": _jsonable(self.items)}, self.output_dir / "features.json")
        logger.info(f"{feats.shape[0]} feature vectors written to {self.output_dir / 'features.npy'}")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def _input_spec(network: Mapping[str, Any], modality: str) -> tuple[int, list[int]]:
    """(channels, spatial shape) of the network's image input for ``modality``."""
    if isinstance(network.get("encoder"), Mapping):  # a task network around a MedCoSS encoder
        network = network["encoder"]
    if modality in MODALITIES_3D:
        return int(network.get("in_channels_3d", 1)), [int(s) for s in network.get("img_size_3d", [64, 64, 16])]
    if modality in MODALITIES_2D:
        return int(network.get("in_channels_2d", 3)), [int(s) for s in network.get("img_size_2d", [96, 96])]
    raise ValueError(
        f"modality '{modality}' has no image input: only ct, mri, xray and pathology encoders are exported "
        "(a report encoder takes token ids, which MONAI's bundle checks cannot generate)."
    )


def _refs(obj: Any) -> set[str]:
    """Top-level ids referenced with ``@id`` in a raw config fragment."""
    text = json.dumps(obj)
    return {m.split("#")[0] for m in re.findall(r"@([A-Za-z_][\w#]*)", text)}


def _eval_preprocessing(bundle_file: Path, network: Mapping[str, Any]) -> tuple[list[Any], dict[str, Any], Any]:
    """The raw ``eval#transforms`` of a stage bundle and the top-level ids they need.

    Input sizes are taken from the trained network config, so the exported preprocessing matches
    the exported weights even if the stage ran with size overrides.
    """
    raw = json.loads(bundle_file.read_text())
    section = raw.get("eval") or {}
    transforms = section.get("transforms")
    if transforms is None and isinstance(raw.get("validate"), dict):  # a fine-tuning task bundle
        pre = raw["validate"].get("preprocessing")
        transforms = pre.get("transforms") if isinstance(pre, dict) else None
        datalist = raw["validate"].get("datalist")
    else:
        datalist = "$medcoss_monai.bundle.load_stage_datalist(@dataset_dir, @modality, 'validation', None, 0, False)"
    if not isinstance(transforms, list):
        raise ValueError(f"{bundle_file}: no 'eval#transforms' list to build the inference preprocessing from")
    ids: dict[str, Any] = {}
    todo = _refs(transforms) | _refs(datalist)
    while todo:
        key = todo.pop()
        if key in ids or key not in raw:
            continue
        ids[key] = raw[key]
        todo |= _refs(raw[key])
    encoder = network.get("encoder", network) if isinstance(network.get("encoder"), dict) else network
    for key in ("img_size_2d", "img_size_3d", "patch_size_2d", "patch_size_3d"):
        if key in ids and key in encoder:
            ids[key] = list(encoder[key])
    for key in ("dataset_dir", "output_dir", "device", "network", "network_def", "bundle_root"):
        ids.pop(key, None)  # the exported config defines these itself
    return transforms, ids, datalist


def _metadata(
    modality: str, network: Mapping[str, Any], info: Mapping[str, Any], name: str, version: str, pred: torch.Tensor
) -> dict[str, Any]:
    import monai

    channels, spatial = _input_spec(network, modality)
    output_channels = int(pred.shape[1])
    mod_word, data_words = _MODALITY_WORDS.get(modality, (modality, modality))
    is_task = bool(info.get("task"))
    task_kind = "segmentation" if pred.ndim > 2 else "classification"
    out_def = {"0": "pooled encoder features"} if not is_task else {str(i): f"class {i}" for i in range(output_channels)}
    packages = {"medcoss-monai": _package_version()}
    return {
        "schema": ZOO_SCHEMA_URL,
        "version": version,
        "changelog": {version: "exported from " + str(info.get("config_file", "a trained folder"))},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": packages,
        "supported_apps": {},
        "name": name,
        "task": (f"{mod_word} {task_kind} fine-tuned from a MedCoSS encoder (task '{info.get('task')}')" if is_task
                 else f"Self-supervised (MedCoSS continual pre-training) {mod_word} encoder"),
        "description": (
            f"MedCoSS encoder fine-tuned on task '{info.get('task')}'; network_def returns the task output (logits)."
            if is_task else
            f"Shared transformer encoder of MedCoSS after the '{modality}' stage "
            f"({info.get('epochs', '?')} epochs). network_def returns the pooled (mean of final tokens) features."
        ),
        "authors": "medcoss-monai contributors",
        "copyright": "Copyright (c) medcoss-monai contributors",
        "data_source": f"medcoss-monai sample data ({data_words}), see docs/README.md",
        "data_type": "nrrd" if modality in MODALITIES_3D else ("dicom" if modality == "xray" else "svs"),
        "intended_use": "Research only: feature extraction and initialisation for fine-tuning. Not for clinical use.",
        "references": [
            "Ye et al., Continual Self-supervised Learning: Towards Universal Multi-modal Medical Data "
            "Representation Learning, CVPR 2024"
        ],
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude" if modality != "pathology" else "RGB",
                    "modality": mod_word,
                    "num_channels": channels,
                    "spatial_shape": spatial,
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": modality in MODALITIES_3D,
                    "channel_def": {str(i): ("image" if channels == 1 else "RGB"[i] if i < 3 else str(i)) for i in range(channels)},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image" if pred.ndim > 2 else "tensor",
                    "format": ("segmentation" if pred.ndim > 2 else "logits") if is_task else "features",
                    "modality": "n/a",
                    "num_channels": output_channels,
                    "spatial_shape": [int(s) for s in pred.shape[2:]],
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": pred.ndim > 2 and modality in MODALITIES_3D,
                    "channel_def": out_def,
                }
            },
        },
    }


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("medcoss-monai")
    except Exception:  # not installed as a distribution: the source tree is used
        return "0.0.0"


def _inference_config(
    modality: str, network: Mapping[str, Any], transforms: list[Any], ids: Mapping[str, Any], datalist: Any
) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "imports": ["$import os", "$import torch", "$import monai", "$import medcoss_monai", "$import medcoss_monai.bundle",
                    "$import medcoss_monai.bundle.export", "$import medcoss_monai.bundle.finetune",
                    "$import medcoss_monai.transforms"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "",
        "modality": modality,
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        **copy.deepcopy(dict(ids)),
        "network_def": copy.deepcopy(dict(network)),
        "network": "$@network_def.to(@device)",
        "datalist": copy.deepcopy(datalist),
        "preprocessing": {"_target_": "Compose", "transforms": copy.deepcopy(transforms)},
        "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False, "num_workers": 0},
        "inferer": {"_target_": "SimpleInferer"},
        "handlers": [
            {"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'", "load_dict": {"model": "@network"},
             "map_location": "@device"},
            {"_target_": "medcoss_monai.bundle.export.FeatureWriter", "output_dir": "@output_dir", "items": "@datalist"},
        ],
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@dataloader",
            "network": "@network",
            "inferer": "@inferer",
            "val_handlers": "@handlers",
            "amp": False,
        },
        "initialize": ["$monai.utils.set_determinism(seed=0)"],
        "run": ["$@evaluator.run()"],
        "finalize": [],
    }
    return cfg


def _train_config(bundle_file: Path, network: Mapping[str, Any], net_id: str = "network_def") -> dict[str, Any]:
    """The stage (or task) bundle, re-pointed to start from the exported weights (continue or fine-tune by override)."""
    cfg = json.loads(bundle_file.read_text())
    cfg["imports"] = list(dict.fromkeys(list(cfg.get("imports", [])) + ["$import medcoss_monai.bundle.export"]))
    cfg["bundle_root"] = "."
    cfg["output_dir"] = "$@bundle_root + '/runs'"
    if "previous_stage" in cfg:
        cfg["previous_stage"] = ""
    cfg[net_id] = copy.deepcopy(dict(network))
    encoder = network.get("encoder") if isinstance(network.get("encoder"), Mapping) else network
    for key in ("img_size_2d", "img_size_3d", "patch_size_2d", "patch_size_3d", "hidden_size", "num_layers", "num_heads"):
        if key in cfg and key in encoder:
            cfg[key] = encoder[key]
    cfg["exported_weights"] = "$@bundle_root + '/models/model.pt'"
    cfg["network"] = f"$medcoss_monai.bundle.export.load_weights(@{net_id}, @exported_weights).to(@device)"
    return cfg


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _readme(name: str, modality: str, info: Mapping[str, Any], metadata: Mapping[str, Any]) -> str:
    inp = metadata["network_data_format"]["inputs"]["image"]
    out = metadata["network_data_format"]["outputs"]["pred"]
    if info.get("task"):
        recipe = (f"Supervised fine-tuning of a MedCoSS encoder on task '{info['task']}' with "
                  f"`{Path(str(info.get('bundle_file', ''))).name}` ({info.get('epochs', '?')} epoch(s)).")
    else:
        recipe = (f"MedCoSS continual self-supervised pre-training (masked image modelling, k-means rehearsal buffer, "
                  f"feature distillation, intra-modal mixup); stage '{modality}', {info.get('epochs', '?')} epoch(s), "
                  f"previous stage '{info.get('previous_stage', '') or 'none'}'.")
    history = ""
    stage_dir = Path(str(info.get("config_file", "."))).parent
    if (stage_dir / "loss_history.csv").is_file():
        history = "\n```\n" + (stage_dir / "loss_history.csv").read_text().strip() + "\n```\n"
    return f"""# {name}

## Intended use
{metadata['intended_use']} The encoder maps one {modality} input of shape
(1, {inp['num_channels']}, {', '.join(map(str, inp['spatial_shape']))}), intensities in [0, 1], to a
({out['num_channels']},) feature vector (mean of the final transformer tokens).

## Data
{metadata['data_source']}. The sample data is tiny: it proves the pipeline, it is not a benchmark.
Run on your own data with a decathlon-style datalist (`validation` section):
`python -m monai.bundle run --config_file configs/inference.json --dataset_dir /path/datalist.json`.

## Training recipe
{recipe} `configs/train.json` continues training from
`models/model.pt` (`python -m monai.bundle run --config_file configs/train.json --train#trainer#max_epochs 5`).

## Results
Loss per epoch of the exported stage:{history or ' not recorded here (see the training folder, e.g. metrics.json).'}

## Commands
- inference: `python -m monai.bundle run --config_file configs/inference.json` (writes `eval/features.npy`)
- checks: `python -m monai.bundle verify_net_in_out --net_id network_def --meta_file configs/metadata.json --config_file configs/inference.json`
- TorchScript: `python -m monai.bundle ckpt_export network_def --filepath models/model.ts --ckpt_file models/model.pt --meta_file configs/metadata.json --config_file configs/inference.json --use_trace True --input_shape "{[1, inp['num_channels'], *inp['spatial_shape']]}"`

## Limitations
Trained briefly on a handful of public sample files; features are not validated for any clinical
task. Inputs must be preprocessed as in `configs/inference.json`. Research use only.
"""


def _license(repo_license: Path | None) -> str:
    text = (
        "The exported code and configuration follow the license of medcoss-monai.\n"
        "The weights were trained on public sample data whose licenses apply to derived models; some of it is\n"
        "non-commercial / no-derivatives (see docs/README.md). Research use only.\n"
    )
    if repo_license is not None and repo_license.is_file():
        text += "\n" + repo_license.read_text()
    return text


def export_bundle(
    stage_dir: str | os.PathLike,
    out: str | os.PathLike,
    name: str | None = None,
    version: str = "0.1.0",
    bundle_file: str | os.PathLike | None = None,
    torchscript: bool = True,
    config_file: str | os.PathLike | None = None,
    net_id: str = "model_def",
    model: str | None = None,
) -> Path:
    """Export a trained stage (or fine-tuned task) folder as a Model Zoo bundle.

    Args:
        stage_dir: the trained folder (``stage.json`` + ``model.pt``, or a task folder with a config
            holding ``"network"``).
        out: the bundle folder to write (created; existing files are overwritten).
        name: bundle name in the metadata (default ``medcoss_<modality>_encoder``).
        version: bundle version.
        bundle_file: the stage bundle whose ``eval#transforms`` become the inference preprocessing
            (default ``bundles/stage_<modality>.json``).
        torchscript: also write ``models/model.ts``.
        config_file: for a fine-tuned task folder (no ``stage.json``): the task bundle it was trained
            with; its ``net_id`` config gives the architecture and its ``validate#preprocessing`` the
            inference preprocessing.
        net_id: id of the network config in ``config_file``.
        model: weights file of the task folder (default ``model_best.pt``/``model.pt``).

    Returns:
        The bundle folder.
    """
    from monai.bundle import ConfigParser

    from medcoss_monai.bundle.pipeline import bundles_dir

    if config_file:
        network, weights, info = find_task_network(stage_dir, config_file, net_id, model)
    else:
        network, weights, info = find_trained_network(stage_dir)
    modality = str(info.get("modality", ""))
    if not modality:
        raise ValueError(f"{info.get('config_file')}: no 'modality' key, so the input format is unknown")
    if config_file and not bundle_file:
        bundle_file = config_file
    bundle_file = Path(bundle_file) if bundle_file else bundles_dir() / f"stage_{modality}.json"
    if not bundle_file.is_file():
        raise FileNotFoundError(f"{bundle_file}: the stage bundle for the inference preprocessing is missing")
    out = Path(out)
    for sub in ("configs", "models", "docs"):
        (out / sub).mkdir(parents=True, exist_ok=True)

    # the network as exported: build it, load the weights, measure its one output tensor
    net = ConfigParser({"network_def": network}).get_parsed_content("network_def")
    state = state_dict_of(load_state(weights, "model checkpoint"), weights)
    net.load_state_dict(state)
    net.eval()
    channels, spatial = _input_spec(network, modality)
    example = torch.rand(1, channels, *spatial)
    with torch.no_grad():
        pred = net(example)
    if not isinstance(pred, torch.Tensor):
        raise TypeError(f"{type(net).__name__}(x) returns {type(pred).__name__}, not one tensor: it cannot be a Zoo network_def")

    name = name or f"medcoss_{modality}_encoder"
    metadata = _metadata(modality, network, info, name, version, pred)
    transforms, ids, datalist = _eval_preprocessing(bundle_file, network)
    _write_json(out / "configs" / "metadata.json", metadata)
    _write_json(out / "configs" / "inference.json", _inference_config(modality, network, transforms, ids, datalist))
    _write_json(out / "configs" / "train.json", _train_config(bundle_file, network, net_id if config_file else "network_def"))
    logging_conf = bundle_file.parent / "logging.conf"
    if logging_conf.is_file():
        shutil.copyfile(logging_conf, out / "configs" / "logging.conf")
    torch.save(state, out / "models" / "model.pt")  # always a plain state dict
    if torchscript:
        with torch.no_grad():
            traced = torch.jit.trace(net, example, check_trace=False)
        extra = {"metadata.json": json.dumps(metadata), "inference.json": (out / "configs" / "inference.json").read_text()}
        torch.jit.save(traced, str(out / "models" / "model.ts"), _extra_files=extra)
    (out / "docs" / "README.md").write_text(_readme(name, modality, info, metadata))
    repo_license = Path(__file__).resolve().parents[2] / "LICENSE"
    (out / "LICENSE").write_text(_license(repo_license))
    large = [p for p in sorted(out.rglob("*")) if p.is_file() and p.stat().st_size > LARGE_FILE_BYTES]
    large_yml = out / "large_files.yml"
    if large:
        lines = ["large_files:"]
        for p in large:
            rel = p.relative_to(out).as_posix()
            lines += [f'  - path: "{rel}"', '    url: ""', f'    hash_val: "{_sha256(p)}"', '    hash_type: "sha256"']
        large_yml.write_text("\n".join(lines) + "\n")
    elif large_yml.exists():
        large_yml.unlink()
    logger.info(f"exported {stage_dir} to the bundle {out}")
    return out


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=4) + "\n")


def main(argv: Sequence[str] | None = None) -> Path:
    """Command line: ``python -m medcoss_monai.bundle.export --stage_dir DIR --out DIR``.

    Args:
        argv: arguments (default ``sys.argv[1:]``).

    Returns:
        The bundle folder.
    """
    ap = argparse.ArgumentParser(prog="python -m medcoss_monai.bundle.export", description=__doc__.splitlines()[0])
    ap.add_argument("--stage_dir", required=True, help="trained stage_<modality> folder or fine-tuned task folder")
    ap.add_argument("--out", required=True, help="bundle folder to write")
    ap.add_argument("--name", default=None, help="bundle name (default medcoss_<modality>_encoder)")
    ap.add_argument("--version", default="0.1.0", help="bundle version")
    ap.add_argument("--bundle_file", default=None, help="stage bundle for the inference preprocessing")
    ap.add_argument("--no_torchscript", action="store_true", help="do not write models/model.ts")
    ap.add_argument("--config_file", default=None, help="fine-tuned task folder: the task bundle it was trained with")
    ap.add_argument("--net_id", default="model_def", help="fine-tuned task: id of the network config in --config_file")
    ap.add_argument("--model", default=None, help="fine-tuned task: weights file in the folder (default model_best.pt)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = export_bundle(args.stage_dir, args.out, args.name, args.version, args.bundle_file, not args.no_torchscript,
                        args.config_file, args.net_id, args.model)
    print(out)
    return out


if __name__ == "__main__":
    main()
