"""Configs of an exported bundle that run with MONAI and PyTorch only (no ``medcoss_monai``), as the Model Zoo needs.

- ``configs/inference.json`` (:func:`portable_inference`): ``network_def`` loads the TorchScript
  ``models/model.ts``; inputs are read with ``monai.data.load_decathlon_datalist`` or ``glob``; outputs
  are written by MONAI's ``ClassificationSaver`` (CSV rows) or ``SaveImaged`` (label maps on the input grid).
- ``configs/evaluate.json`` (:func:`portable_evaluate`): the same chain on a labelled datalist, MONAI
  metrics written by ``MetricsSaver``.
- ``configs/multi_gpu_train.json`` (:func:`ddp_overlay`): the Zoo's DDP overlay of ``train.json``.
- :func:`save_torchscript`: ``models/model.ts`` scripted (or traced at the bundle's input size), with
  the metadata and inference config inside, as MONAI's ``ckpt_export`` writes it.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from medcoss_monai.bundle.export.zoo_configs import ZOO_TORCHSCRIPT, ZOO_WEIGHTS, add_segmentation_output

__all__ = [
    "GRAY_XRAY",
    "PORTABLE_IMPORTS",
    "ddp_overlay",
    "make_portable",
    "make_portable_transforms",
    "needs_medcoss",
    "portable_evaluate",
    "portable_inference",
    "save_torchscript",
]

PORTABLE_IMPORTS = ["$import glob", "$import os", "$import numpy", "$import torch", "$import monai"]
"""The only modules an exported inference or evaluation config imports."""
GRAY_XRAY = ("$lambda x: (((x[:3].float() * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0, keepdim=True) "
             "if x.shape[0] >= 3 else x[:1].float()) / (255.0 if x.dtype == torch.uint8 else 65535.0 "
             "if x.dtype in (torch.int32, torch.uint16) else 1.0)).clamp(0.0, 1.0)")
"""A PNG/JPEG radiograph as one gray channel in [0, 1]: luma of colour, integer range of the file (as ``LoadXRay``)."""
_NAMES = "$lambda batch: [item['image'].meta for item in batch]"
_ITEMS = ("$monai.data.load_decathlon_datalist(@dataset_dir, True, @data_section) if @dataset_dir.endswith('.json') "
          "else [{'image': p} for p in (sorted(f for f in glob.glob(os.path.join(@dataset_dir, '*')) if os.path.isfile(f)) "
          "if os.path.isdir(@dataset_dir) else [@dataset_dir])]")


def portable_inference(
    transforms: list[Any],
    output: str,
    dataset_dir: str = "",
    inferer: Mapping[str, Any] | None = None,
    items: str = "@datalist",
    class_names: Sequence[str] = (),
    output_ext: str = ".nii.gz",
    mask_values: Sequence[int] | None = None,
    activation: str = "softmax",
) -> dict[str, Any]:
    """``configs/inference.json`` that needs MONAI and PyTorch only.

    Args:
        transforms: MONAI transform configs (raw, by ``_target_``) from a datalist item to the network input.
        output: ``"features"`` (``features.csv``), ``"classification"`` (``predictions.csv``),
            ``"detection"`` (``detections.csv``) or ``"segmentation"`` (label maps).
        dataset_dir: default input: a file, a folder of files or a decathlon datalist JSON.
        inferer: the inferer config (default ``SimpleInferer``).
        items: expression of the items the dataset reads (default the datalist as read).
        class_names: names of the output channels.
        output_ext: label map extension (segmentation).
        mask_values: label values written per class (segmentation).
        activation: ``"softmax"`` or ``"sigmoid"`` of classification logits.

    Returns:
        The config.
    """
    cfg: dict[str, Any] = {
        "imports": list(PORTABLE_IMPORTS),
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": dataset_dir,
        "data_section": "test",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": f"$torch.jit.load(os.path.join(@bundle_root, '{ZOO_TORCHSCRIPT}'), map_location='cpu')",
        "network": "$@network_def.to(@device)",
        "datalist": _ITEMS,
        "items": items,
        "preprocessing": {"_target_": "Compose", "transforms": copy.deepcopy(list(transforms))},
        "dataset": {"_target_": "Dataset", "data": "@items", "transform": "@preprocessing"},
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
    if output == "segmentation":
        return add_segmentation_output(cfg, class_names, output_ext, mask_values)
    if class_names:
        cfg["class_names"] = list(class_names)
    if output == "classification":
        cfg["postprocessing"]["transforms"] = [{"_target_": "Activationsd", "keys": "pred", activation: True}]
    filename = {"features": "features.csv", "classification": "predictions.csv", "detection": "detections.csv"}[output]
    saver = {"_target_": "ClassificationSaver", "output_dir": "@output_dir", "filename": filename,
             "batch_transform": _NAMES, "output_transform": "$monai.handlers.from_engine(['pred'])"}
    if output == "detection":  # (N, 6) boxes of one image: kept whole (not decollated along N), one CSV row
        cfg["evaluator"]["decollate"] = False
        saver["batch_transform"] = "$lambda batch: [{'filename_or_obj': batch['image'].meta['filename_or_obj'][0]}]"
        saver["output_transform"] = "$lambda output: [output['pred'].flatten()]"
    cfg["handlers"].append(saver)
    return cfg


def portable_evaluate(inference: Mapping[str, Any], output: str, label_transforms: list[Any], num_classes: int) -> dict[str, Any] | None:
    """``configs/evaluate.json``: the inference chain on a labelled datalist, MONAI metrics in ``output_dir``.

    Standalone in the Zoo style (``python -m monai.bundle run --config_file configs/evaluate.json
    --dataset_dir datalist.json``): the labels go through the image's spatial transforms (``label_transforms``
    replaces the preprocessing), metrics are computed on the network's grid and written by ``MetricsSaver``
    (``metrics.csv``) with the per-item scores.

    Args:
        inference: the bundle's inference config (:func:`portable_inference`).
        output: ``"classification"`` or ``"segmentation"``; other outputs have no labelled metric here.
        label_transforms: the preprocessing of an item with its ``label``.
        num_classes: output channels.

    Returns:
        The config, or None for outputs without a metric.
    """
    if output not in ("classification", "segmentation"):
        return None
    cfg = {k: copy.deepcopy(v) for k, v in inference.items() if k not in ("class_names", "output_ext", "mask_values")}
    cfg["output_dir"] = "$@bundle_root + '/eval_metrics'"
    cfg["preprocessing"]["transforms"] = copy.deepcopy(label_transforms)
    onehot = [{"_target_": "Activationsd", "keys": "pred", "softmax": True},
              {"_target_": "AsDiscreted", "keys": ["pred", "label"], "argmax": [True, False], "to_onehot": num_classes}]
    cfg["postprocessing"]["transforms"] = onehot
    pairs = "$monai.handlers.from_engine(['pred', 'label'])"
    if output == "segmentation":
        name, metric = "mean_dice", {"_target_": "MeanDice", "include_background": False, "output_transform": pairs}
    else:
        name, metric = "accuracy", {"_target_": "ConfusionMatrix", "metric_name": "accuracy", "output_transform": pairs}
    cfg["evaluator"]["key_val_metric"] = {name: metric}
    cfg["handlers"] = [cfg["handlers"][0], {"_target_": "StatsHandler", "iteration_log": False},
                       {"_target_": "MetricsSaver", "save_dir": "@output_dir", "metrics": "*",
                        "metric_details": "*" if output == "segmentation" else None,
                        "batch_transform": _NAMES, "summary_ops": "*"}]
    return cfg


def ddp_overlay(train: Mapping[str, Any], project_overlay: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``configs/multi_gpu_train.json``: the Zoo's overlay that runs ``train.json`` under ``torchrun``.

    The project's own overlay of the bundle (``bundles/multi_gpu*.json``) is used when it fits the
    bundle; otherwise the Zoo's form: ``torch.distributed`` initialised, the training loader sampled by a
    ``DistributedSampler``, the network wrapped in ``DistributedDataParallel``, and the handlers that write
    files (savers, writers, progress) kept on rank 0 only.

    Args:
        train: the bundle's ``train.json``.
        project_overlay: the project's overlay for this kind of bundle, if any.

    Returns:
        The overlay config (merge after ``train.json``).
    """
    if project_overlay is not None:
        return {k: copy.deepcopy(v) for k, v in project_overlay.items() if not k.startswith("_")}
    writes = ("Saver", "Writer", "ProgressBar", "TensorBoard", "History")
    return {
        "device": "$torch.device('cuda', int(os.environ.get('LOCAL_RANK', 0))) if torch.cuda.is_available() else torch.device('cpu')",
        "ddp_backend": "$'nccl' if torch.cuda.is_available() else 'gloo'",
        "ddp_network": {"_target_": "torch.nn.parallel.DistributedDataParallel", "module": "@network",
                        "device_ids": "$[@device] if @device.type == 'cuda' else None", "find_unused_parameters": True},
        "train#trainer#network": "@ddp_network",
        "train#dataloader#sampler": {"_target_": "torch.utils.data.DistributedSampler", "dataset": "@train#dataloader#dataset",
                                     "shuffle": True, "seed": "@seed" if "seed" in train else 0},
        "train#dataloader#shuffle": False,
        "train#trainer#train_handlers": (f"$@train#handlers if torch.distributed.get_rank() == 0 else [h for h in @train#handlers "
                                         f"if not any(w in type(h).__name__ for w in {list(writes)})]"),
        "initialize": ["$import torch.distributed", "$import ignite",
                       "$torch.distributed.is_initialized() or torch.distributed.init_process_group(backend=@ddp_backend)",
                       "$torch.cuda.set_device(@device) if torch.cuda.is_available() else None"]
                      + [s for s in train.get("initialize", []) if isinstance(s, str) and "set_determinism" in s],
        "run": ["$@train#trainer.add_event_handler(ignite.engine.Events.EPOCH_STARTED, "
                "lambda e: e.data_loader.sampler.set_epoch(e.state.epoch))"] + list(train.get("run", [])),
        "finalize": ["$torch.distributed.is_initialized() and torch.distributed.destroy_process_group()"],
    }


def save_torchscript(net: torch.nn.Module, example: torch.Tensor, path: Path, metadata: Mapping[str, Any],
                     inference: Mapping[str, Any], trace: bool = False) -> torch.jit.ScriptModule:
    """Write ``models/model.ts``: ``net`` scripted (or traced on ``example``), metadata and config inside.

    A traced network must give the eager one's output on ``example`` (checked here), so it is
    only used at the input size the bundle's inference feeds.

    Args:
        net: the tensor-only network, in eval mode.
        example: an input of the bundle's input size.
        path: the file to write.
        metadata: the bundle's metadata.
        inference: the bundle's inference config (saved as ``inference.json`` inside, as ``ckpt_export`` does).
        trace: trace instead of script.

    Returns:
        The TorchScript module.
    """
    from monai.data import save_net_with_metadata

    with torch.no_grad():
        jit = torch.jit.trace(net, example, check_trace=False) if trace else torch.jit.script(net)
        torch.testing.assert_close(jit(example), net(example), rtol=1e-4, atol=1e-5)
    save_net_with_metadata(jit, str(path), include_config_vals=False, meta_values=dict(metadata),
                           more_extra_files={"inference.json": json.dumps(inference).encode()})
    return jit


def needs_medcoss(cfg: Any) -> bool:
    """Whether a config imports or calls medcoss_monai (a path of its data cache, ``.../medcoss_monai/...``, does not)."""
    return re.search(r"medcoss_monai(?!/)", json.dumps(cfg).replace("\\\\", "/")) is not None


def _portable_transform(transform: Any) -> list[Any]:
    """One raw transform config as MONAI transforms: ``LoadXRayd`` (PNG/JPEG) becomes ``LoadImaged`` and a gray scaling."""
    if not isinstance(transform, dict):
        return [transform]
    t = {k: _portable_value(v) for k, v in transform.items()}
    if t.get("track_meta") is False:
        del t["track_meta"]  # the outputs are named from the image's metadata
    if t.get("_target_") == "medcoss_monai.transforms.LoadXRayd":
        keys = t.get("keys", ["image"])
        return [{"_target_": "LoadImaged", "keys": keys, "reader": "PILReader", "reverse_indexing": False,
                 "image_only": True, "ensure_channel_first": True, "dtype": None},
                {"_target_": "Lambdad", "keys": keys, "func": GRAY_XRAY}]
    return [t]


def _portable_value(value: Any) -> Any:
    if isinstance(value, list):
        return [u for v in value for u in _portable_transform(v)]
    if isinstance(value, dict):
        return {k: _portable_value(v) for k, v in value.items()}
    return value


def make_portable_transforms(transforms: Sequence[Any]) -> list[Any]:
    """Raw transform configs with MONAI loading in place of ``LoadXRayd`` and the image metadata kept."""
    return _portable_value(copy.deepcopy(list(transforms)))


def make_portable(cfg: Mapping[str, Any], output: str, dataset_dir: str = "") -> dict[str, Any] | None:
    """A MedCoSS inference config (:func:`~.zoo_configs.inference_skeleton` and its output) with MONAI and PyTorch only.

    The network becomes the TorchScript ``models/model.ts``, inputs are read by MONAI, ``LoadXRayd``
    becomes MONAI loading (PNG/JPEG), and features or class probabilities are written by MONAI's
    ``ClassificationSaver`` (``features.csv``, ``predictions.csv``: the file, then the values).

    Args:
        cfg: the inference config.
        output: ``"features"``, ``"classification"`` or ``"segmentation"``.
        dataset_dir: the default input (the sample data's held-out split).

    Returns:
        The new config, or None when something still needs medcoss_monai (text, slides, DICOM radiographs).
    """
    keep = ("imports", "network_def", "datalist", "sample_datalist", "dataset_dir", "handlers", "prepare_batch")
    new = {k: _portable_value(copy.deepcopy(v)) for k, v in cfg.items() if k not in keep}
    new = {"imports": list(PORTABLE_IMPORTS), "dataset_dir": dataset_dir,
           "network_def": f"$torch.jit.load(os.path.join(@bundle_root, '{ZOO_TORCHSCRIPT}'), map_location='cpu')",
           "datalist": _ITEMS, **new}
    new["handlers"] = [copy.deepcopy(cfg["handlers"][0])]
    new["handlers"][0]["load_path"] = f"$os.path.join(@bundle_root, '{ZOO_WEIGHTS}')"
    if output != "segmentation":
        filename = "features.csv" if output == "features" else "predictions.csv"
        new["handlers"].append({"_target_": "ClassificationSaver", "output_dir": "@output_dir", "filename": filename,
                                "batch_transform": _NAMES, "output_transform": "$monai.handlers.from_engine(['pred'])"})
    if "prepare_batch" in cfg or needs_medcoss(new) or (_reads_xray(cfg) and not _plain_images(dataset_dir)):
        return None
    return new


def _reads_xray(cfg: Any) -> bool:
    return "medcoss_monai.transforms.LoadXRayd" in json.dumps(cfg)


def _plain_images(dataset_dir: str) -> bool:
    """Whether the bundle's default inputs are PNG/JPEG files, which MONAI's portable X-ray chain reads.

    ``LoadXRayd`` also reads DICOM radiographs (photometric interpretation, stored bits); the portable
    chain does not, so a bundle whose inputs are DICOM (the X-ray stage's sample films) keeps ``LoadXRayd``.
    """
    if not dataset_dir or not str(dataset_dir).endswith(".json") or not os.path.isfile(dataset_dir):
        return False
    with open(dataset_dir, encoding="utf-8") as f:
        data = json.load(f)
    items = [i for split in ("test", "validation", "training") for i in data.get(split, []) if isinstance(i, dict)]
    paths = [str(i.get("image", "")) for i in items]
    return bool(paths) and all(p.lower().endswith((".png", ".jpg", ".jpeg")) for p in paths)
