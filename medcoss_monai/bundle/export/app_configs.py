"""The configs and files of an exported BrainMVP or MUSCLE bundle (:func:`write_app_bundle`).

The inference and evaluation chains are MONAI transforms only, written from the trained bundle's
settings, in the order its own loading chain applies them:

- BrainMVP: each contrast loaded, resampled to the first one's grid and stacked (``ConcatItemsd``),
  then RAS orientation, the bundle's spacing, foreground crop, per-channel percentile scaling, padding
  to the crop size (the stage's features: one centred crop of that size). Segmentation runs a sliding
  window of the training crop and writes the label map on the first contrast's grid (``Invertd``).
- MUSCLE: a PNG/JPEG radiograph as one gray channel in [0, 1] (luma of colour, the file's integer
  range), resized to the bundle's ``image_size`` (classification, segmentation; the detector resizes
  itself) and repeated to 3 channels.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from medcoss_monai import layout
from medcoss_monai.bundle.export import zoo_configs as configs
from medcoss_monai.bundle.export.evaluate_config import portable_evaluate
from medcoss_monai.bundle.export.portable import (
    ddp_overlay,
    portable_inference,
    save_torchscript,
    xray_loading,
)
from medcoss_monai.bundle.export.zoo_apps import REFERENCES, AppModel
from medcoss_monai.bundle.export.zoo_docs import bundle_license
from medcoss_monai.bundle.export.zoo_imported import imported_origin, note_imported_files, note_imported_metadata
from medcoss_monai.bundle.export.zoo_metadata import bundle_metadata, reader_packages

__all__ = ["TRAINED_WEIGHTS", "app_inference", "app_transforms", "write_app_bundle"]

TRAINED_WEIGHTS = "models/trained_model.pt"
"""The trained network's own weights (all its heads, templates...), what the bundle's train.json continues from."""
_RAS = "$((('L', 'R'), ('P', 'A'), ('I', 'S')))"
_DETECTION_CHANNELS = {"0": "x1 (column)", "1": "y1 (row)", "2": "x2", "3": "y2", "4": "score", "5": "label"}


def _brainmvp(m: AppModel, label: bool) -> list[dict[str, Any]]:
    s = m.settings
    contrasts = s.get("contrasts", ["image"])
    lab = ["label"] if label and m.output == "segmentation" else []  # a class label is a number, not a file
    keys, modes = ["image"] + lab, ["bilinear"] + ["nearest"] * len(lab)
    chain: list[dict[str, Any]] = [{"_target_": "LoadImaged", "keys": contrasts + lab, "image_only": True,
                                    "ensure_channel_first": True}]
    if m.output in ("segmentation", "classification"):  # a study: one channel per input contrast
        if len(contrasts) > 1:
            chain.append({"_target_": "ResampleToMatchd", "keys": contrasts[1:], "key_dst": contrasts[0],
                          "mode": "bilinear", "allow_missing_keys": True})
        chain.append({"_target_": "ConcatItemsd", "keys": contrasts, "name": "image", "dim": 0})
    low, high = s["percentiles"]
    chain += [
        {"_target_": "Orientationd", "keys": keys, "axcodes": "RAS", "labels": _RAS},
        {"_target_": "Spacingd", "keys": keys, "pixdim": list(s["spacing"]), "mode": modes},
        {"_target_": "CropForegroundd", "keys": keys, "source_key": "image", "margin": 2, "allow_smaller": True},
        {"_target_": "ScaleIntensityRangePercentilesd", "keys": "image", "lower": low, "upper": high, "b_min": 0.0,
         "b_max": 1.0, "clip": True, "channel_wise": True},
        # the whole volume for the sliding window; else the centre roi (the classifier's pad + centre crop)
        {"_target_": "SpatialPadd" if m.output == "segmentation" else "ResizeWithPadOrCropd", "keys": keys,
         "spatial_size": list(s["roi_size"])},
        {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"},
    ]
    return chain


def _muscle(m: AppModel, label: bool) -> list[dict[str, Any]]:
    size = m.settings["image_size"]
    masks = label and m.output == "segmentation"
    keys = ["image", "label"] if masks else ["image"]
    chain: list[dict[str, Any]] = xray_loading(keys, "image")  # PNG/JPEG or DICOM films, as LoadXRayd reads them
    if masks:
        chain.append({"_target_": "Lambdad", "keys": "label", "func": "$lambda x: (x[:1] > 0).float()"})
    if m.output != "detection":
        chain.append({"_target_": "Resized", "keys": keys, "spatial_size": [size, size],
                      "mode": ["area", "nearest"] if masks else "area"})
    chain += [{"_target_": "RepeatChanneld", "keys": "image", "repeats": 3},
              {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"}]
    return chain


def app_transforms(m: AppModel, label: bool = False) -> list[dict[str, Any]]:
    """The MONAI preprocessing of the exported bundle (with ``label``: of a labelled item, for evaluation)."""
    return _brainmvp(m, label) if m.app == "brainmvp" else _muscle(m, label)


def app_inference(m: AppModel) -> dict[str, Any]:
    """``configs/inference.json`` of a BrainMVP or MUSCLE bundle (MONAI and PyTorch only)."""
    s = m.settings
    inferer = None
    items = "@datalist"
    if m.app == "brainmvp" and m.output == "segmentation":
        inferer = {"_target_": "SlidingWindowInferer", "roi_size": list(s["roi_size"]), "sw_batch_size": 4,
                   "overlap": s.get("overlap", 0.25)}
    if m.app == "brainmvp" and m.output in ("segmentation", "classification"):
        # a study item {"image": {"t1": ..., "t2": ...}} gives one key per contrast
        items = "$[dict(d, **d['image']) if isinstance(d.get('image'), dict) else d for d in @datalist]"
    cfg = portable_inference(app_transforms(m), m.output, s.get("dataset_dir", ""), inferer, items,
                             s.get("class_names", ()), ".png" if m.app == "muscle" else ".nii.gz", s.get("mask_values"))
    if m.app == "muscle":
        cfg["imports"].append("$import torchvision")  # registers the detection ops a scripted detector calls
    if m.app == "muscle" and m.output == "segmentation":
        # the images are read rows first (as LoadXRay reads them); MONAI's PNG writer swaps the two axes back
        post = cfg["postprocessing"]["transforms"]
        post.insert(len(post) - 1, {"_target_": "Transposed", "keys": "pred", "indices": [0, 2, 1]})
    return cfg


def _metadata(m: AppModel, name: str, version: str, pred: torch.Tensor) -> dict[str, Any]:
    spatial = list(m.example.shape[2:])
    kind = m.card["input_kind"]
    encoder = {f"in_channels_{kind}": int(m.example.shape[1]), f"img_size_{kind}": spatial}
    output = "classification" if m.output == "detection" else m.output  # its text; the pred is described below
    meta = bundle_metadata(name=name, version=version, card=m.card, output=output, encoder=encoder, pred=pred,
                           info=m.info, class_names=m.settings.get("class_names", ()), value_range=[0, 1])
    method = {"brainmvp": "BrainMVP", "muscle": "MUSCLE"}[m.app]
    task = m.info.get("task")
    what = f"{m.output} (task '{task}')" if task else f"pre-training stage ({m.card['title']} encoder features)"
    meta["task"] = f"{method} {m.card['title']} {what}"
    meta["description"] = (f"{method} network exported from {m.info.get('config_file', '?')}. models/model.ts (TorchScript) "
                           "maps a preprocessed input to its output; configs/inference.json needs MONAI and PyTorch only. "
                           "configs/train.json continues training and needs medcoss-monai.")
    meta["intended_use"] = "Research only: a demonstration trained on tiny public samples. Not for clinical use."
    meta["references"] = [REFERENCES[m.app]]
    meta["required_packages_version"] = {}
    if m.app == "muscle":
        import torchvision

        meta["required_packages_version"]["torchvision"] = torchvision.__version__.split("+")[0]
    out = meta["network_data_format"]["outputs"]["pred"]
    if m.output == "detection":
        out.update({"format": "boxes", "channel_def": dict(_DETECTION_CHANNELS), "spatial_shape": []})
    if m.output == "segmentation" and m.app == "muscle":
        out["is_patch_data"] = False
    return meta


def _readme(name: str, m: AppModel, meta: dict[str, Any]) -> str:
    writes = {"features": "`features.csv` (one row per input: its file, then the pooled features)",
              "classification": "`predictions.csv` (one row per input: its file, then one probability per class)",
              "detection": "`detections.csv` (one row per input: its file, then x1, y1, x2, y2, score, label per box)",
              "segmentation": "one label map per input, `<name>_seg<ext>`, on the input's grid"}[m.output]
    metrics = "\n".join(f"- {k}: {v}" for k, v in meta.get("eval_metrics", {}).items()) or "- not recorded"
    training = (f"`configs/train.json` fine-tunes a segmentation from these weights (`models/` is their stage folder; "
                f"give `--dataset_dir`)" if isinstance(m.info.get("imported"), dict)
                else f"`configs/train.json` continues training from `{TRAINED_WEIGHTS}`")
    return f"""# {name}

{meta['task']}. {meta['description']}

## Inference (MONAI and PyTorch only)
```bash
python -m monai.bundle run --config_file configs/inference.json --dataset_dir <input> --output_dir <out>
```
`<input>`: {m.card['inputs']} (decathlon style, `--data_section`, default `test`). It writes {writes}.

## Evaluation and training
- `configs/evaluate.json` (when the task has a labelled metric): the same chain on a labelled datalist,
  metrics by MONAI's `MetricsSaver` in `--output_dir`.
- {training} (needs medcoss-monai);
  `configs/multi_gpu_train.json` is its overlay for `torchrun`:
  `torchrun --nproc_per_node 2 -m monai.bundle run --config_file "['configs/train.json','configs/multi_gpu_train.json']"`.

## Test metrics of the exported weights
{metrics}

## Checks
`verify_metadata` (schema `<medcoss_monai>/bundle/schema/metadata_schema.json`), `verify_net_in_out network_def`,
`ckpt_export network_def` (the network is the TorchScript `models/model.ts`).

## Limitations
Trained briefly on a handful of public sample files. Research use only.
"""


def _train_config(m: AppModel) -> dict[str, Any]:
    raw = m.parser.get()
    network = raw["network_def"]
    cfg = configs.train_config(raw, network if isinstance(network, dict) else {}, "network_def", TRAINED_WEIGHTS)
    cfg["network_def"] = copy.deepcopy(network)
    for key in ("pretrained_ckpt", "templates_ckpt"):
        if key in cfg:
            cfg[key] = ""
    return cfg


def _imported_train_config(m: AppModel) -> dict[str, Any]:
    """``train.json`` of an imported BrainMVP stage: the segmentation fine-tuning from the bundle's own weights.

    ``models/`` is the stage folder it reads (``stage.json`` names ``trained_model.pt`` and the network), so the
    task network follows the imported architecture and sizes and a missing contrast is filled from its templates.
    """
    cfg = copy.deepcopy(m.parser.get())
    cfg["bundle_root"] = "."
    cfg["output_dir"] = "$@bundle_root + '/runs'"
    cfg["pretrained_ckpt"] = f"$os.path.join(@bundle_root, '{Path(TRAINED_WEIGHTS).parent}')"
    return cfg


def _ddp(m: AppModel, train: dict[str, Any]) -> dict[str, Any]:
    overlay = layout.bundles_dir() / "multi_gpu_muscle.json"
    if m.app == "muscle" and overlay.is_file():
        return ddp_overlay(train, json.loads(overlay.read_text()))
    return ddp_overlay(train)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=4) + "\n")


def write_app_bundle(m: AppModel, out: Path, name: str | None = None, version: str = "0.1.0") -> Path:
    """Write the Model Zoo bundle of a BrainMVP or MUSCLE model.

    Args:
        m: what :func:`~medcoss_monai.bundle.export.zoo_apps.find_app_model` found.
        out: the bundle folder (created; files are overwritten).
        name: bundle name (default ``<app>_<task>`` or ``brainmvp_encoder``).
        version: bundle version.

    Returns:
        The bundle folder.
    """
    out = Path(out)
    name = name or (m.info["task"] if m.info.get("task") else f"{m.app}_encoder")
    for sub in ("configs", "models", "docs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        pred = m.net(m.example)
    inference = app_inference(m)
    meta = _metadata(m, name, version, pred)
    meta["required_packages_version"].update(reader_packages(inference))
    origin, imported_stage = imported_origin(m.info), isinstance(m.info.get("imported"), dict)
    if origin is not None:  # the released weights' licence applies to what was trained from them
        note_imported_metadata(meta, origin, imported_stage)
    train = _imported_train_config(m) if imported_stage else _train_config(m)
    _write_json(out / "configs/metadata.json", meta)
    _write_json(out / "configs/inference.json", inference)
    _write_json(out / "configs/train.json", train)
    _write_json(out / "configs/multi_gpu_train.json", _ddp(m, train))
    classes = int(m.settings["num_classes"]) if m.output == "detection" else int(pred.shape[1])  # pred: (boxes, 6)
    evaluate = portable_evaluate(inference, m.output, app_transforms(m, label=True), classes)
    if evaluate is not None:
        _write_json(out / "configs/evaluate.json", evaluate)
    shutil.copyfile(layout.bundles_dir() / "logging.conf", out / "configs/logging.conf")
    torch.save({k: v.detach().cpu() for k, v in m.net.state_dict().items()}, out / configs.ZOO_WEIGHTS)
    torch.save(m.trained_state, out / TRAINED_WEIGHTS)
    if imported_stage:  # models/ is the stage folder train.json fine-tunes from
        record = {**{k: v for k, v in m.info.items() if k != "config_file"}, "model": Path(TRAINED_WEIGHTS).name}
        # the released file by its name and checksum: where it lay on the exporter's disk is not the bundle's business
        record["imported"] = {**m.info["imported"], "checkpoint": Path(str(m.info["imported"].get("checkpoint", ""))).name}
        _write_json(out / Path(TRAINED_WEIGHTS).parent / layout.STAGE_RECORD_FILE, record)
    save_torchscript(m.net, m.example, out / configs.ZOO_TORCHSCRIPT, meta, inference, trace=m.trace)
    (out / "docs/README.md").write_text(_readme(name, m, meta))
    (out / "LICENSE").write_text(bundle_license(Path(__file__).resolve().parents[3] / "LICENSE"))
    if origin is not None:
        note_imported_files(out, origin, imported_stage)
    return out
