"""Model Zoo export of BrainMVP and MUSCLE models (a BrainMVP stage, trained here or imported, segmentation or
classification, MUSCLE tasks).

:func:`find_app_model` reads the trained folder and the bundle it was trained with, and builds the
tensor-only network of :mod:`.app_networks` around the trained one; :func:`app_inference` writes its
MONAI-only preprocessing (the trained bundle's settings: spacing, percentiles, crop size, image size)
and :func:`medcoss_monai.bundle.export.zoo.write_bundle` writes the bundle. Inference needs MONAI and
PyTorch only: the network is the TorchScript ``models/model.ts``.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medcoss_monai import layout
from medcoss_monai.bundle.export.app_networks import (
    MuscleClassifier,
    MuscleDetector,
    MuscleSegmenter,
    ResNetPyramid,
    UniFormerFeatures,
)
from medcoss_monai.errors import BadInputError
from medcoss_monai.networks.checkpoint import check_state_fits, load_state, state_dict_of

__all__ = ["AppModel", "app_kind", "find_app_model"]

BRAINMVP_CARD = {"modality": "brainmvp", "input_kind": "3d", "title": "brain MRI", "data": "multi-contrast brain MRI",
                 "data_type": "nifti", "image_format": "magnitude", "inputs": "a datalist JSON of studies"}
MUSCLE_CARD = {"modality": "muscle", "input_kind": "2d", "title": "X-ray", "data": "radiographs", "data_type": "png",
               "image_format": "magnitude", "channels": "gray", "inputs": "a PNG/JPEG file, a folder of them or a datalist JSON"}
REFERENCES = {
    "brainmvp": ("Rui et al., BrainMVP: Multi-modal Vision Pre-training for Brain Image Analysis using "
                 "Multi-parametric MRI, 2024"),
    "muscle": ("Liao et al., MUSCLE: Multi-task Self-supervised Continual Learning to Pre-train Deep Models for "
               "X-ray Images of Multiple Body Parts, MICCAI 2022"),
}


@dataclass
class AppModel:
    """A trained BrainMVP or MUSCLE network, ready to export.

    Attributes:
        app: ``"brainmvp"`` or ``"muscle"``.
        output: ``"features"``, ``"classification"``, ``"segmentation"`` or ``"detection"``.
        net: the tensor-only network (eval mode) that becomes ``models/model.ts``.
        trace: trace (fixed input size) rather than script.
        example: one input of the bundle's input size.
        trained_state: the trained network's weights (what ``train.json`` loads).
        parser: the trained bundle, read with its macros resolved.
        bundle_file: that bundle.
        settings: what the inference chain needs (sizes, contrasts, class names, default inputs...).
        info: facts for the metadata and README (``task``, ``epochs``, ``metrics``...).
    """

    app: str
    output: str
    net: torch.nn.Module
    trace: bool
    example: torch.Tensor
    trained_state: dict[str, torch.Tensor]
    parser: Any
    bundle_file: Path
    settings: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def card(self) -> dict[str, Any]:
        return dict(BRAINMVP_CARD if self.app == "brainmvp" else MUSCLE_CARD)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError as e:
        raise BadInputError(f"{path}: not valid JSON ({e})") from e
    return data if isinstance(data, dict) else {}


IMPORTED_BRAINMVP = "medcoss_monai.apps.brainmvp.stage_network.BrainMVPStageNetwork"
"""The network an imported BrainMVP stage records (``python -m medcoss_monai.weights import --format brainmvp_*``)."""


def app_kind(folder: str | os.PathLike) -> str | None:
    """``"brainmvp_stage"``, ``"brainmvp_imported"``, ``"brainmvp_seg"``, ``"brainmvp_cls"``, ``"muscle"`` for a folder
    those bundles (or the BrainMVP import) wrote, else None (MedCoSS)."""
    folder = Path(folder)
    stage, metrics = _read_json(folder / layout.STAGE_RECORD_FILE), _read_json(folder / layout.METRICS_FILE)
    if stage.get("method") == "brainmvp":
        return "brainmvp_stage"
    if isinstance(stage.get("network"), dict) and stage["network"].get("_target_") == IMPORTED_BRAINMVP:
        return "brainmvp_imported"
    if metrics.get("task") == "brainmvp_cls":
        return "brainmvp_cls"
    if str(metrics.get("task", "")).startswith("muscle_"):
        return "muscle"
    if metrics.get("label_mode") is not None and "fill" in metrics:
        return "brainmvp_seg"
    return None


def _load_trained(net: torch.nn.Module, weights: Path) -> dict[str, torch.Tensor]:
    if not weights.is_file():
        raise BadInputError(f"{weights} does not exist: train the bundle to completion first.")
    state = state_dict_of(load_state(weights, "trained weights"), weights)
    check_state_fits(state, net, weights, "The bundle's network does not match the weights (pass the overrides used at "
                                          "training time, e.g. --backbone_name resnet50).")
    net.load_state_dict(state, strict=True)
    net.eval()
    return state


def _sample(path_fn: str, *args: Any) -> str:
    """An absolute path of the sample data (the default input of the bundle), or "" when it is not there."""
    try:
        if path_fn == "brainmvp":
            from medcoss_monai.samples.sample_data import sample_dir

            # written by the sample fine-tuning the exported model came from (apps.brainmvp.studies, a layer above)
            path = sample_dir() / "tasks" / "brainmvp_seg" / "datalist.json"
        else:
            from medcoss_monai.samples.tasks import task_datalist_path

            path = task_datalist_path(*args)
    except Exception:  # the default input is a convenience: a missing sample must not stop the export
        return ""
    return str(path) if path.is_file() else ""


def _brainmvp_imported(folder: Path, config_file: Path | None, overrides: Mapping[str, Any]) -> AppModel:
    """An imported BrainMVP stage (the authors' UniFormer or U-Net): its encoder's pooled features.

    The input is the reference's pre-training input (``stage_brainmvp.json`` with ``brainmvp_paper_scale.json``: 1 mm,
    the 96^3 centre crop; ``--config_file`` / overrides change it). The stage's ``train.json`` fine-tunes a segmentation
    from these weights (:func:`~medcoss_monai.bundle.export.app_configs.write_app_bundle`): this project continues
    BrainMVP pre-training only from a stage it trained.
    """
    record = folder / layout.STAGE_RECORD_FILE
    info = _read_json(record)
    bundles = layout.bundles_dir()
    inputs = config_file or [bundles / "stage_brainmvp.json", bundles / "brainmvp_paper_scale.json"]
    read = layout.read_bundle(inputs, {"output_dir": str(folder.parent)}, user_overrides=overrides)
    network = layout.stage_network_class(IMPORTED_BRAINMVP, record)  # by name: bundle/ does not import apps/
    net = network(**{k: v for k, v in info["network"].items() if k != "_target_"})
    state = _load_trained(net, folder / str(info.get("model") or layout.MODEL_FILE))
    roi = [int(s) for s in read.get_parsed_content("roi_size")]
    settings = {"roi_size": roi, "spacing": read.get_parsed_content("spacing"),
                "percentiles": read.get_parsed_content("percentiles"), "dataset_dir": ""}
    finetune = bundles / "finetune_brainmvp_seg.json"
    parser = layout.read_bundle(finetune, {"output_dir": str(folder), "pretrained_ckpt": str(folder)})
    info = {**info, "config_file": str(folder / layout.STAGE_RECORD_FILE)}
    example = torch.rand(1, 1, *roi, generator=torch.Generator().manual_seed(0))
    return AppModel("brainmvp", "features", UniFormerFeatures(net.backbone.encoder).eval(), True, example, state, parser,
                    finetune, settings, info)


def _brainmvp_stage(folder: Path, config_file: Path | None, overrides: Mapping[str, Any]) -> AppModel:
    info = _read_json(folder / layout.STAGE_RECORD_FILE)
    bundle = config_file or layout.bundles_dir() / "stage_brainmvp.json"
    recorded = {k: info[k] for k in ("roi_size", "spacing", "percentiles", "contrasts") if k in info}
    parser = layout.read_bundle(bundle, {"output_dir": str(folder.parent), **recorded}, user_overrides=overrides)
    model = parser.get_parsed_content("network_def")
    state = _load_trained(model, folder / str(info.get("model", layout.MODEL_FILE)))
    roi = [int(s) for s in parser.get_parsed_content("roi_size")]
    settings = {"roi_size": roi, "spacing": parser.get_parsed_content("spacing"),
                "percentiles": parser.get_parsed_content("percentiles"), "dataset_dir": ""}
    info = {**info, "config_file": str(folder / layout.STAGE_RECORD_FILE)}
    return AppModel("brainmvp", "features", UniFormerFeatures(model.backbone.encoder).eval(), True,
                    torch.rand(1, 1, *roi, generator=torch.Generator().manual_seed(0)), state, parser, Path(bundle),
                    settings, info)


_RECORDED_BY_TASK = ("network_backbone", "input_contrasts", "num_classes", "roi_size", "spacing", "percentiles",
                     "sw_overlap", "label_mode")
"""What a BrainMVP task's ``metrics.json`` records of the trained network and its input, used over the bundle's defaults."""


def _recorded_settings(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The training-time settings a BrainMVP task's ``metrics.json`` records (older folders record fewer: the bundle's
    defaults stand in for the rest, and ``--key value`` overrides of the export name them)."""
    return {k: metrics[k] for k in _RECORDED_BY_TASK if isinstance(metrics.get(k), (dict, list, int, float, str))}


def _brainmvp_task(folder: Path, config_file: Path | None, overrides: Mapping[str, Any], model: str | None,
                   task: str) -> AppModel:
    """A fine-tuned BrainMVP segmentation (``task`` "brainmvp_seg") or classification ("brainmvp_cls") network.

    Its ``metrics.json`` gives the network sizes (``network_backbone``: the stage it started from is not needed, an
    imported one included), the classes and the input it was tested on (contrasts, crop, spacing, percentiles), which
    the exported inference repeats; the inference fills no missing contrast (no templates).
    """
    metrics = _read_json(folder / layout.METRICS_FILE)
    segmentation = task == "brainmvp_seg"
    bundle = config_file or layout.bundles_dir() / f"finetune_{task}.json"
    fixed = {"output_dir": str(folder), "pretrained_ckpt": "", **({"templates_ckpt": ""} if segmentation else {})}
    parser = layout.read_bundle(bundle, {**fixed, **_recorded_settings(metrics)}, user_overrides=overrides)
    if segmentation and parser.get_parsed_content("label_mode") != "classes":
        raise BadInputError(f"{folder}: label_mode '{parser.get_parsed_content('label_mode')}' is not exported yet "
                            "(only 'classes', softmax over the label values)")
    net = parser.get_parsed_content("network_def")
    state = _load_trained(net, folder / (model or layout.BEST_MODEL_FILE))
    roi = [int(s) for s in parser.get_parsed_content("roi_size")]
    contrasts = list(parser.get_parsed_content("input_contrasts"))
    settings = {"roi_size": roi, "spacing": parser.get_parsed_content("spacing"), "contrasts": contrasts,
                "percentiles": parser.get_parsed_content("percentiles"), "dataset_dir": ""}
    if segmentation:
        labels = parser.get_parsed_content("labels")
        settings.update({"overlap": parser.get_parsed_content("sw_overlap"), "num_classes": int(labels["out_channels"]),
                         "class_names": ["background"] + [str(c) for c in labels["channel_names"]],
                         "dataset_dir": _sample("brainmvp")})
    else:
        num_classes = int(parser.get_parsed_content("num_classes"))
        settings.update({"num_classes": num_classes, "class_names": [f"class {i}" for i in range(num_classes)]})
    info = {"task": task, "config_file": str(folder / (model or layout.BEST_MODEL_FILE)), "bundle_file": str(bundle),
            "metrics": dict(metrics.get("metrics", {})), "epochs": metrics.get("max_epochs", "?"),
            "split_sizes": metrics.get("split_sizes", {}), "pretrained_ckpt": metrics.get("pretrained_ckpt", "")}
    example = torch.rand(1, len(contrasts), *roi, generator=torch.Generator().manual_seed(0))
    output = "segmentation" if segmentation else "classification"
    return AppModel("brainmvp", output, net.eval(), True, example, state, parser, Path(bundle), settings, info)


def _muscle_bundle(task: str) -> Path:
    for path in sorted(layout.bundles_dir().glob("finetune_muscle_*.json")):
        if _read_json(path).get("task") == task:
            return path
    raise BadInputError(f"no bundles/finetune_muscle_*.json fine-tunes task '{task}': pass --config_file")


def _muscle_network(net: torch.nn.Module, task: str, kind: str) -> torch.nn.Module:
    head = net.heads[task]
    if kind == "classification":
        return MuscleClassifier(net.backbone, head.fc)
    if kind == "segmentation":
        return MuscleSegmenter(net.backbone, head.head)
    detector = copy.copy(head.detector)  # a shallow copy whose backbone is the scriptable pyramid (same weights)
    detector._modules = dict(head.detector._modules)
    pyramid = head.detector.backbone
    detector.backbone = ResNetPyramid(net.backbone, pyramid.fpn, pyramid.out_channels)
    return MuscleDetector(detector)


def _muscle(folder: Path, config_file: Path | None, overrides: Mapping[str, Any], model: str | None) -> AppModel:
    metrics = _read_json(folder / layout.METRICS_FILE)
    task = str(overrides.get("task") or metrics["task"])
    bundle = config_file or _muscle_bundle(task)
    parser = layout.read_bundle(bundle, {"output_dir": str(folder), "pretrained_ckpt": ""}, user_overrides=overrides)
    net = parser.get_parsed_content("network_def")
    state = _load_trained(net, folder / (model or layout.MODEL_FILE))
    spec = parser.get_parsed_content("tasks")[task]
    kind, size = spec["kind"], int(parser.get_parsed_content("image_size"))
    settings = {"image_size": size, "class_names": list(parser.get_parsed_content("class_names")[task]),
                "num_classes": int(spec["num_classes"]), "mask_values": spec.get("mask_values"),
                "dataset_dir": str(spec.get("dataset_dir") or _sample("muscle", task))}
    if kind == "segmentation" and len(settings["class_names"]) != settings["num_classes"]:
        settings["class_names"] = [f"class {i}" for i in range(settings["num_classes"])]
    exported = _muscle_network(net, task, kind).eval()
    info = {"task": task, "config_file": str(folder / (model or layout.MODEL_FILE)), "bundle_file": str(bundle),
            "metrics": metrics.get("metrics", {}).get(task, {}), "epochs": metrics.get("max_epochs", "?"),
            "split_sizes": metrics.get("split_sizes", {}), "pretrained_ckpt": metrics.get("pretrained_ckpt", "")}
    example = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    return AppModel("muscle", kind, exported, False, example, state, parser, Path(bundle), settings, info)


def find_app_model(folder: str | os.PathLike, config_file: str | os.PathLike | None = None,
                   overrides: Mapping[str, Any] | None = None, model: str | None = None) -> AppModel:
    """The trained BrainMVP or MUSCLE network of a folder, with the bundle it was trained with.

    Args:
        folder: a BrainMVP stage folder (``stage.json`` with ``"method": "brainmvp"``), a BrainMVP
            segmentation or classification ``output_dir`` or a MUSCLE fine-tuning ``output_dir`` (``metrics.json``).
        config_file: the bundle it was trained with (default from the folder's records).
        overrides: ``{id: value}`` used at training time that change the network (sizes, classes).
        model: weights file name in the folder (default ``model_best.pt`` / ``model.pt``).

    Returns:
        The :class:`AppModel`.

    Raises:
        BadInputError: the folder is not one of these, an override names an id the bundle does not define, or its
            weights do not fit the bundle's network.
    """
    folder, overrides = Path(folder), dict(overrides or {})
    config = Path(config_file) if config_file else None
    kind = app_kind(folder)
    if kind == "brainmvp_stage":
        return _brainmvp_stage(folder, config, overrides)
    if kind == "brainmvp_imported":
        return _brainmvp_imported(folder, config, overrides)
    if kind in ("brainmvp_seg", "brainmvp_cls"):
        return _brainmvp_task(folder, config, overrides, model, kind)
    if kind == "muscle":
        return _muscle(folder, config, overrides, model)
    raise BadInputError(f"{folder}: neither a BrainMVP stage / segmentation / classification folder nor a MUSCLE "
                        "fine-tuning folder")
