"""Model Zoo export: turn a trained stage, or a fine-tuned task, into a MONAI bundle.

``python -m medcoss_monai.bundle.export --stage_dir runs/medcoss/stage_ct --out exported/medcoss_ct``
``python -m medcoss_monai.bundle.export --finetune_dir runs/finetune/ct_seg --out exported/medcoss_ct_seg``

write ``configs/{metadata,inference,train}.json``, ``configs/logging.conf``, ``models/model.pt``
(plain state dict of ``network_def``), ``models/model.ts`` (TorchScript, by MONAI's ``ckpt_export``
with scripting), ``docs/README.md``, ``LICENSE``, ``models/tokenizer/`` for text, and, when a file
exceeds 25 MB, ``large_files.yml``. A stage bundle also keeps the whole pre-training network
(``models/pretrain_model.pt``: encoder, MAE decoder, MLM head) for its ``train.json``.

``models/model.ts`` is a tensor-only network of :mod:`medcoss_monai.networks.inference` around the
trained one, scripted: pooled features (stage), logits (classification) or per-voxel logits
(segmentation). ``configs/inference.json`` loads it as ``network_def`` and needs MONAI and PyTorch only
(:mod:`.portable`: radiographs, DICOM included, slide tiles and reports too): it reads the user's files
(``--dataset_dir``: a file, a folder or a datalist) with the trained bundle's preprocessing and writes
features or class probabilities (CSV) or label maps on the input's grid. A task also gets
``configs/evaluate.json`` (metrics on a labelled datalist), every bundle ``configs/multi_gpu_train.json``
(``torchrun`` overlay of ``train.json``). BrainMVP and MUSCLE folders are exported by :mod:`.app_configs`.
The configs are self-contained (no macro into the repository).

An imported MedCoSS stage (``python -m medcoss_monai.weights import``) reads every modality: ``--modality``
names the one its bundle reads. It, and every stage or task trained from it, names the imported checkpoint
and its licence in the metadata, ``docs/README.md`` and ``LICENSE``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from medcoss_monai import layout
from medcoss_monai.bundle.stage import flag
from medcoss_monai.bundle.export import zoo_configs as configs
from medcoss_monai.bundle.export.app_configs import write_app_bundle
from medcoss_monai.bundle.export.evaluate_config import portable_evaluate
from medcoss_monai.bundle.export.portable import (
    ddp_overlay,
    make_portable,
    make_portable_transforms,
    save_torchscript,
)
from medcoss_monai.bundle.export.zoo_configs import ZOO_TOKENIZER, ZOO_TORCHSCRIPT, ZOO_WEIGHTS
from medcoss_monai.bundle.export.zoo_docs import bundle_license, bundle_readme
from medcoss_monai.bundle.export.zoo_imported import (
    imported_origin,
    note_imported_files,
    note_imported_metadata,
    pretraining_network,
)
from medcoss_monai.bundle.export.zoo_metadata import bundle_metadata, reader_packages
from medcoss_monai.bundle.export.zoo_apps import app_kind, find_app_model
from medcoss_monai.bundle.export.zoo_sources import Trained, find_finetuned, find_stage
from medcoss_monai.errors import install_run_hooks
from medcoss_monai.networks.checkpoint import check_state_fits
from medcoss_monai.networks.inference import inference_network
from medcoss_monai.networks.segmentation import UNETRStyleSegmenter

__all__ = ["PRETRAIN_WEIGHTS", "write_bundle", "main"]

logger = logging.getLogger(__name__)

LARGE_FILE_BYTES = 25 * 1024 * 1024
PRETRAIN_WEIGHTS = "models/pretrain_model.pt"
"""A stage bundle's whole pre-training network (encoder and pretext heads), what its train.json loads."""


def _build(network: Mapping[str, Any], state: Mapping[str, torch.Tensor], path: Path) -> torch.nn.Module:
    """The trained network: built from its config, weights loaded strictly, in eval mode."""
    from monai.bundle import ConfigParser

    net = ConfigParser({"network_def": dict(network)}).get_parsed_content("network_def")
    check_state_fits(state, net, path, "The bundle's network config does not match the weights (pass the overrides "
                                       "used at training time, e.g. --num_classes 3).")
    net.load_state_dict(state, strict=True)
    return net.eval()


def _class_names(parser: Any, task: str, count: int) -> list[str]:
    """The task's class names, from its datalist's ``"classes"`` (else ``class 0``, ``class 1``...)."""
    from medcoss_monai.bundle.finetune import load_task

    try:
        names = load_task(parser.get("dataset_dir", ""), task).get("classes")
    except Exception as e:  # the names are documentation: a missing datalist must not stop the export
        logger.warning(f"no class names for task '{task}' ({e}); numbered names are used")
        names = None
    if isinstance(names, list) and len(names) == count:
        return [str(n) for n in names]
    return [f"class {i}" for i in range(count)]


def _sizes_from_encoder(ids: dict[str, Any], encoder: Mapping[str, Any]) -> None:
    """Input sizes of the trained network win over the bundle's (a stage may have run with size overrides)."""
    for key in ("img_size_2d", "img_size_3d", "patch_size_2d", "patch_size_3d", "max_text_len", "vocab_size"):
        if key in ids and key in encoder:
            ids[key] = encoder[key]


def _resolve(parser: Any, value: Any) -> Any:
    """A raw config value, following ``"@id"`` references to the value they name."""
    while isinstance(value, str) and value.startswith("@") and value[1:] in parser:
        value = parser.get(value[1:])
    return value


_FLAG = re.compile(r"medcoss_monai\.bundle\.flag\(@([\w#]+)\)")


def _fixed_flags(parser: Any, value: Any) -> Any:
    """``value`` with each ``medcoss_monai.bundle.flag(@id)`` of its expressions replaced by the trained run's
    ``True`` / ``False``: a switch (text_cls's ``multi_label``) decided at training time needs no package after export."""
    if isinstance(value, str) and value.startswith("$"):
        return _FLAG.sub(lambda m: str(flag(parser.get_parsed_content(m[1]))), value)
    if isinstance(value, list):
        return [_fixed_flags(parser, v) for v in value]
    if isinstance(value, dict):
        return {k: _fixed_flags(parser, v) for k, v in value.items()}
    return value


def _inference(trained: Trained, net: torch.nn.Module, output: str, kind: str, pred: torch.Tensor) -> tuple[dict[str, Any], list[str]]:
    """``configs/inference.json`` of the trained network, and its class names (tasks)."""
    parser, raw = trained.parser, trained.parser.get()
    text = kind == "text"
    tokenizer = f"$medcoss_monai.transforms.load_tokenizer(@bundle_root + '/{ZOO_TOKENIZER}')"
    if trained.info.get("task"):
        task = trained.info["task"]
        transforms = _resolve(parser, parser.get("validate#preprocessing#transforms"))
        if not isinstance(transforms, list):
            raise ValueError(f"{trained.bundle_file}: validate#preprocessing#transforms is not a list of transforms")
        transforms = configs.unlabelled_transforms(transforms)
        if text:  # reads "text", or "text_file" (a .txt report)
            transforms = [{"_target_": "medcoss_monai.transforms.ReportTextd", "keys": ["text"]}] + transforms
        inferer = raw.get("eval_inferer")
        sample = f"$str(medcoss_monai.samples.tasks.task_datalist_path('{task}'))"
    else:
        transforms = parser.get("eval#transforms")
        inferer = None
        sample = f"$str(medcoss_monai.samples.sample_data.datalist_path('{trained.modality}'))"
    if text:
        raw = {**raw, "tokenizer": tokenizer}
    ids = _inlined_ids(parser, configs.referenced_ids(raw, transforms, inferer or {}), transforms, inferer or {})
    encoder = trained.network.get("encoder", trained.network)
    _sizes_from_encoder(ids, encoder if isinstance(encoder, Mapping) else trained.network)
    network_def = {"_target_": f"medcoss_monai.networks.inference.{type(net).__name__}", "network": trained.network}
    if output != "segmentation":
        network_def["kind"] = kind
    prepare = {"_target_": "medcoss_monai.bundle.export.inference_inputs.TextInferenceBatch"} if text else None
    cfg = configs.inference_skeleton(network_def, ids, transforms, sample, "text" if text else "image",
                                     series=kind == "3d", inferer=inferer, prepare_batch=prepare)
    if output == "features":
        return configs.add_feature_output(cfg), []
    names = _class_names(parser, trained.info["task"], int(pred.shape[1]))
    if output == "classification":
        post = _resolve(parser, parser.get("validate#postprocessing#transforms", []))
        # a switch of the bundle (text_cls's multi_label) may choose the activation: export its value
        post = [{k: parser.get_parsed_content(f"validate#postprocessing#transforms#{i}#{k}")
                 if isinstance(v, str) and v.startswith("$") else v for k, v in t.items()} if isinstance(t, dict) else t
                for i, t in enumerate(post)]
        activations = [t for t in post if isinstance(t, dict) and set(configs.transform_keys(t)) == {"pred"}]
        multilabel = any(t.get("sigmoid") for t in activations)
        return configs.add_classification_output(cfg, activations, names, multilabel), names
    mask_values = raw.get("mask_values")
    ext = ".nii.gz" if kind == "3d" else ".png"
    return configs.add_segmentation_output(cfg, names, ext, mask_values if isinstance(mask_values, list) else None), names


def _inlined_ids(parser: Any, ids: Mapping[str, Any], *fragments: Any) -> dict[str, Any]:
    """The ids with their values computed at export time where they are expressions of JSON values (a spacing the
    pre-training stage recorded...), and only those the fragments still reach: the bundle needs no medcoss_monai for them."""
    inlined = {}
    for key, value in ids.items():
        try:
            inlined[key] = configs.inline_config(parser, key)
        except Exception:  # an object, not a JSON value: kept as written
            inlined[key] = value
    return configs.referenced_ids(inlined, *fragments)


def _example(kind: str, encoder: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One input of the network's built size (token ids with a full mask for text)."""
    if kind == "text":
        length, vocab = int(encoder.get("max_text_len", 112)), int(encoder.get("vocab_size", 8192))
        ids = torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(0))
        return ids, {"attention_mask": torch.ones_like(ids)}
    channels = int(encoder.get(f"in_channels_{kind}", 1 if kind == "3d" else 3))
    spatial = [int(s) for s in encoder.get(f"img_size_{kind}", [64, 64, 16] if kind == "3d" else [96, 96])]
    return torch.rand(1, channels, *spatial, generator=torch.Generator().manual_seed(0)), {}


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=4) + "\n")


def _large_files(out: Path) -> None:
    """List every file over 25 MB in ``large_files.yml`` (the Zoo keeps them outside git), or remove the list."""
    large = [p for p in sorted(out.rglob("*")) if p.is_file() and p.stat().st_size > LARGE_FILE_BYTES]
    large_yml = out / "large_files.yml"
    if large:
        lines = ["large_files:"]
        for p in large:
            rel = p.relative_to(out).as_posix()
            with open(p, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            lines += [f'  - path: "{rel}"', '    url: ""', f'    hash_val: "{digest}"', '    hash_type: "sha256"']
        large_yml.write_text("\n".join(lines) + "\n")
    elif large_yml.exists():
        large_yml.unlink()


def _value_range(transforms: Any) -> list[float]:
    """[0, 1] unless the preprocessing standardises intensities (z-scores are not bounded)."""
    return [] if "NormalizeIntensity" in json.dumps(transforms) else [0, 1]


def write_bundle(
    trained: Trained, out: str | os.PathLike, name: str | None = None, version: str = "0.1.0", torchscript: bool = True
) -> Path:
    """Write the Model Zoo bundle of a trained stage or task (every file; existing ones are overwritten).

    Args:
        trained: what :func:`~.zoo_sources.find_stage` or :func:`~.zoo_sources.find_finetuned` found.
        out: the bundle folder to write (created).
        name: bundle name in the metadata (default ``medcoss_<modality>_encoder`` or ``medcoss_<task>``).
        version: bundle version.
        torchscript: also write ``models/model.ts``.

    Returns:
        The bundle folder.
    """
    out, kind = Path(out), trained.card["input_kind"]
    trained_net = _build(trained.network, trained.state, Path(trained.info.get("config_file", "weights")))
    net = inference_network(trained_net, kind).eval()
    output = ("segmentation" if isinstance(trained_net, UNETRStyleSegmenter)
              else "classification" if trained.info.get("task") else "features")
    encoder = trained.network.get("encoder", trained.network)
    x, kwargs = _example(kind, encoder)
    with torch.no_grad():
        pred = net(x, **kwargs)
    inference, class_names = _inference(trained, net, output, kind, pred)
    portable = make_portable(inference, output, _sample_path(inference))
    if portable is not None:
        inference = portable
    else:
        logger.warning(f"the {trained.modality} bundle's inference has a step without a MONAI equivalent: it needs "
                       "medcoss_monai (listed in its metadata's required packages)")
    task = trained.info.get("task")
    name = name or (f"medcoss_{task}" if task else f"medcoss_{trained.modality}_encoder")
    metadata = bundle_metadata(name=name, version=version, card=trained.card, output=output, encoder=encoder,
                               pred=pred, info=trained.info, class_names=class_names,
                               value_range=_value_range(inference["preprocessing"]))
    if portable is not None:  # inference needs MONAI and PyTorch only (train.json still needs medcoss-monai)
        metadata["required_packages_version"].pop("medcoss-monai", None)
        metadata["required_packages_version"].update(reader_packages(inference))  # pydicom, pillow...
    origin, imported_stage = imported_origin(trained.info), isinstance(trained.info.get("imported"), dict)
    if origin is not None:  # the released weights' licence applies to what was trained from them
        note_imported_metadata(metadata, origin, imported_stage)
    for sub in ("configs", "models", "docs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    _write_json(out / "configs" / "metadata.json", metadata)
    _write_json(out / "configs" / "inference.json", inference)
    raw = trained.parser.get()
    if task:
        train = configs.train_config(raw, trained.network, "model_def", ZOO_WEIGHTS, trained.tokenizer is not None)
    else:
        pretraining, pretraining_state = pretraining_network(trained)
        train = configs.train_config(raw, pretraining, "network_def", PRETRAIN_WEIGHTS, trained.tokenizer is not None)
        torch.save(pretraining_state, out / PRETRAIN_WEIGHTS)
    _write_json(out / "configs" / "train.json", train)
    for logging_conf in (trained.bundle_file.parent / "logging.conf", layout.bundles_dir() / "logging.conf"):
        if logging_conf.is_file():
            shutil.copyfile(logging_conf, out / "configs" / "logging.conf")
            break
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, out / ZOO_WEIGHTS)  # a plain state dict
    if trained.tokenizer is not None:
        shutil.copytree(trained.tokenizer, out / ZOO_TOKENIZER, dirs_exist_ok=True)
    if torchscript and portable is not None:  # network_def is the TorchScript itself: script the network here
        save_torchscript(net, x, out / ZOO_TORCHSCRIPT, metadata, inference)
    elif torchscript:
        _torchscript(out)
    _write_overlays(out, trained, train, inference if portable is not None else None, output, int(pred.shape[1]))
    (out / "docs" / "README.md").write_text(bundle_readme(name, trained.card, trained.info, metadata, output))
    repo_license = Path(__file__).resolve().parents[3] / "LICENSE"
    (out / "LICENSE").write_text(bundle_license(repo_license))
    if origin is not None:
        note_imported_files(out, origin, imported_stage)
    _large_files(out)
    return out


def _sample_path(inference: Mapping[str, Any]) -> str:
    """The sample data's held-out datalist the inference config reads by default ("" when it is not there)."""
    from monai.bundle import ConfigParser

    try:
        path = ConfigParser({"imports": configs.IMPORTS, "s": inference["sample_datalist"]}).get_parsed_content("s")
    except Exception as e:  # the default input is a convenience: a missing sample must not stop the export
        logger.warning(f"no sample datalist for the default input ({e})")
        return ""
    return str(path) if Path(str(path)).is_file() else ""


def _write_overlays(out: Path, trained: Trained, train: Mapping[str, Any], inference: Mapping[str, Any] | None,
                    output: str, channels: int) -> None:
    """``configs/multi_gpu_train.json`` (the project's overlay of the bundle kind) and, for a task whose inference
    is MONAI-only, ``configs/evaluate.json`` (metrics on a labelled datalist)."""
    overlay = layout.bundles_dir() / ("multi_gpu_finetune.json" if trained.info.get("task") else "multi_gpu.json")
    _write_json(out / "configs" / "multi_gpu_train.json", ddp_overlay(train, json.loads(overlay.read_text())))
    if inference is None or not trained.info.get("task"):
        return
    multilabel = any(isinstance(t, dict) and t.get("sigmoid") for t in inference["postprocessing"]["transforms"])
    labelled = _fixed_flags(trained.parser, _resolve(trained.parser, trained.parser.get("validate#preprocessing#transforms")))
    evaluate = portable_evaluate(inference, "multilabel" if multilabel else output, make_portable_transforms(labelled), channels)
    if evaluate is not None:
        _write_json(out / "configs" / "evaluate.json", evaluate)


def _torchscript(out: Path) -> None:
    """``models/model.ts`` by MONAI's ``ckpt_export`` with scripting, from the bundle's own files, as the Zoo makes it."""
    from monai.bundle import ckpt_export

    ckpt_export(net_id="network_def", filepath=str(out / ZOO_TORCHSCRIPT), ckpt_file=str(out / ZOO_WEIGHTS),
                meta_file=str(out / "configs" / "metadata.json"), config_file=str(out / "configs" / "inference.json"),
                bundle_root=str(out), use_trace=False)


def _overrides(extra: Sequence[str]) -> dict[str, Any]:
    """``--key value`` pairs after the known options, values read as JSON when they parse (MONAI style)."""
    pairs: dict[str, Any] = {}
    it = iter(extra)
    for key in it:
        if not key.startswith("--"):
            raise SystemExit(f"unexpected argument {key!r}: overrides are given as --id value")
        value = next(it, None)
        if value is None:
            raise SystemExit(f"override {key} has no value")
        try:
            pairs[key[2:]] = json.loads(value)
        except json.JSONDecodeError:
            pairs[key[2:]] = value
    return pairs


def main(argv: Sequence[str] | None = None) -> Path:
    """Command line: ``python -m medcoss_monai.bundle.export (--stage_dir DIR | --finetune_dir DIR) --out DIR``.

    With ``--finetune_dir``, further ``--id value`` pairs override the task bundle as at training
    time (``--num_classes 3``); an id the bundle does not define is refused before anything is written.

    Args:
        argv: arguments (default ``sys.argv[1:]``).

    Returns:
        The bundle folder.
    """
    ap = argparse.ArgumentParser(prog="python -m medcoss_monai.bundle.export", description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--stage_dir", help="trained stage_<modality> folder")
    src.add_argument("--finetune_dir", help="output_dir of a fine-tuning bundle (model_best.pt, metrics.json)")
    ap.add_argument("--out", required=True, help="bundle folder to write")
    ap.add_argument("--name", default=None, help="bundle name (default medcoss_<modality>_encoder or medcoss_<task>)")
    ap.add_argument("--version", default="0.1.0", help="bundle version")
    ap.add_argument("--bundle_file", default=None, help="stage: the stage bundle for the inference preprocessing")
    ap.add_argument("--modality", default=None, help="stage: the modality the bundle reads (needed for an imported "
                                                     "stage, which records none: ct, xray...)")
    ap.add_argument("--config_file", default=None, help="fine-tuned: the task bundle (default bundles/finetune_<task>.json)")
    ap.add_argument("--net_id", default="model_def", help="fine-tuned: id of the network config in the task bundle")
    ap.add_argument("--model", default=None, help="fine-tuned: weights file in the folder (default model_best.pt)")
    ap.add_argument("--no_torchscript", action="store_true", help="do not write models/model.ts")
    args, extra = ap.parse_known_args(argv)
    overrides = _overrides(extra)
    app = app_kind(args.finetune_dir or args.stage_dir)
    if overrides and not args.finetune_dir and app is None:
        ap.error(f"unknown arguments {extra} (overrides apply to --finetune_dir only)")
    if args.modality and (args.finetune_dir or app is not None):
        ap.error("--modality applies to a MedCoSS --stage_dir only (a task's modality is its name's prefix)")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    install_run_hooks()
    if app is not None:  # BrainMVP and MUSCLE models
        model = find_app_model(args.finetune_dir or args.stage_dir, args.config_file or args.bundle_file, overrides, args.model)
        out = write_app_bundle(model, Path(args.out), args.name, args.version)
        _large_files(out)
    elif args.finetune_dir:
        trained = find_finetuned(args.finetune_dir, args.config_file, overrides, args.net_id, args.model)
        out = write_bundle(trained, args.out, args.name, args.version, not args.no_torchscript)
    else:
        trained = find_stage(args.stage_dir, args.bundle_file, args.modality)
        out = write_bundle(trained, args.out, args.name, args.version, not args.no_torchscript)
    logger.info(f"exported {args.finetune_dir or args.stage_dir} to the bundle {out}")
    print(out)
    return out


if __name__ == "__main__":
    main()
