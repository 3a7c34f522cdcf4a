"""``configs/metadata.json`` of an exported Model Zoo bundle: what goes in, what comes out, how well it did.

The input and output descriptions follow the MONAI Bundle Specification (``network_data_format``);
a fine-tuned task's test metrics (its ``metrics.json``) become ``eval_metrics``. The schema the
project checks them against is :func:`schema_path`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["READER_PACKAGES", "ZOO_SCHEMA_URL", "bundle_metadata", "eval_metrics", "reader_packages", "schema_path"]

ZOO_SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
REFERENCES = [
    (
        "Ye et al., Continual Self-supervised Learning: Towards Universal Multi-modal Medical Data "
        "Representation Learning, CVPR 2024"
    )
]


def schema_path() -> Path:
    """The metadata JSON schema shipped with the package (for ``monai.bundle verify_metadata --filepath``).

    Returns:
        Path of ``medcoss_monai/bundle/schema/metadata_schema.json``.
    """
    return Path(str(resources.files("medcoss_monai.bundle") / "schema" / "metadata_schema.json"))


def eval_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a task's ``metrics.json`` ``"metrics"`` (lists and undefined scores left out)."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[str(key)] = float(value)
    return out


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("medcoss-monai")
    except Exception:  # not installed as a distribution: the source tree is used
        return "0.0.0"


def _image_input(card: Mapping[str, Any], channels: int, spatial: Sequence[int], value_range: Sequence[float], patch: bool) -> dict[str, Any]:
    if channels == 1:
        channel_def = {"0": "image"}
    elif card.get("channels") == "gray":  # gray images repeated to the 2D tokenizer's channels (radiographs)
        channel_def = {str(i): "gray" for i in range(channels)}
    else:
        channel_def = {str(i): "RGB"[i] if i < 3 else str(i) for i in range(channels)}
    return {
        "type": "image",
        "format": card.get("image_format", "magnitude"),
        "modality": card.get("title", card["modality"]),
        "num_channels": channels,
        "spatial_shape": [int(s) for s in spatial],
        "dtype": "float32",
        "value_range": list(value_range),
        "is_patch_data": patch,
        "channel_def": channel_def,
    }


def _text_inputs(max_len: int, vocab_size: int) -> dict[str, Any]:
    common = {"modality": "text", "num_channels": 1, "spatial_shape": [max_len], "dtype": "int64", "is_patch_data": False}
    return {
        "input_ids": {"type": "tensor", "format": "token ids", "value_range": [0, vocab_size - 1],
                      "channel_def": {"0": "BPE token id (models/tokenizer)"}, **common},
        "attention_mask": {"type": "tensor", "format": "mask", "value_range": [0, 1],
                           "channel_def": {"0": "1 = token, 0 = padding"}, **common},
    }


def bundle_metadata(
    *,
    name: str,
    version: str,
    card: Mapping[str, Any],
    output: str,
    encoder: Mapping[str, Any],
    pred: torch.Tensor,
    info: Mapping[str, Any],
    class_names: Sequence[str] = (),
    value_range: Sequence[float] = (0, 1),
) -> dict[str, Any]:
    """The bundle's ``metadata.json``.

    Args:
        name: the bundle name.
        version: the bundle version.
        card: the modality's card (:func:`medcoss_monai.layout.modality_card`): its input kind and the
            words describing it (``title``, ``data``, ``data_type``, ``image_format``, ``channels``).
        output: ``"features"``, ``"classification"`` or ``"segmentation"``.
        encoder: the encoder's config (input sizes and channels).
        pred: the network's output for one example input (its shape is described).
        info: the trained folder's facts (``task``, ``epochs``, ``config_file``, ``metrics``...).
        class_names: one name per output channel (tasks).
        value_range: the range of the preprocessed image intensities (empty when not bounded).

    Returns:
        The metadata dict.
    """
    import monai

    modality, kind = card["modality"], card["input_kind"]
    word, data_words, data_type = (card.get(k, modality) for k in ("title", "data", "data_type"))
    task = info.get("task")
    three_d = kind == "3d"
    if kind == "text":
        inputs = _text_inputs(int(encoder.get("max_text_len", 112)), int(encoder.get("vocab_size", 8192)))
    else:
        channels = int(encoder.get(f"in_channels_{kind}", 1 if three_d else 3))
        spatial = encoder.get(f"img_size_{kind}", [64, 64, 16] if three_d else [96, 96])
        inputs = {"image": _image_input(card, channels, spatial, value_range, three_d)}
    channels_out = int(pred.shape[1])
    if output == "features":
        out_def = {"0": "pooled encoder features"}
        pred_desc = {"type": "tensor", "format": "features", "value_range": []}
    elif output == "classification":
        out_def = {str(i): str(c) for i, c in enumerate(class_names)}
        pred_desc = {"type": "tensor", "format": "logits", "value_range": []}
    else:
        out_def = {str(i): str(c) for i, c in enumerate(class_names)}
        pred_desc = {"type": "image", "format": "segmentation", "value_range": []}
    outputs = {"pred": {**pred_desc, "modality": "n/a", "num_channels": channels_out,
                        "spatial_shape": [int(s) for s in pred.shape[2:]], "dtype": "float32",
                        "is_patch_data": output == "segmentation" and three_d, "channel_def": out_def}}
    if task:
        what = {"classification": "classification", "segmentation": "segmentation"}[output]
        classes = ", ".join(map(str, class_names))
        title = f"{word} {what} ({classes}), fine-tuned from a MedCoSS encoder (task '{task}')"
        writes = ("predictions.csv: one row per input, the class probabilities" if output == "classification"
                  else "one label map per input, on the input's grid (same shape and affine)")
        description = (f"MedCoSS encoder fine-tuned on task '{task}' ({info.get('epochs', '?')} epoch(s)). network_def maps "
                       f"a preprocessed input to {what} logits; configs/inference.json reads your files and writes {writes}.")
        intended = "Research only: a demonstration of fine-tuning a MedCoSS encoder. Not for clinical use."
    else:
        title = f"Self-supervised (MedCoSS continual pre-training) {word} encoder"
        description = (f"Shared transformer encoder of MedCoSS after the '{modality}' stage ({info.get('epochs', '?')} "
                       "epochs). network_def returns the pooled (mean of final tokens) features; configs/inference.json "
                       "writes them for your files.")
        intended = "Research only: feature extraction and initialisation for fine-tuning. Not for clinical use."
    metadata: dict[str, Any] = {
        "schema": ZOO_SCHEMA_URL,
        "version": version,
        "changelog": {version: "exported from " + str(info.get("config_file", "a trained folder"))},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {"medcoss-monai": _package_version()},
        # MONAI's evaluators (every config's "evaluator") and the evaluation metrics are ignite's
        "optional_packages_version": _versions("pytorch-ignite"),
        "supported_apps": {},
        "name": name,
        "task": title,
        "description": description,
        "authors": "medcoss-monai contributors",
        "copyright": "Copyright (c) medcoss-monai contributors",
        "data_source": f"medcoss-monai sample data ({data_words}), see docs/README.md",
        "data_type": data_type,
        "intended_use": intended,
        "references": list(REFERENCES),
        "network_data_format": {"inputs": inputs, "outputs": outputs},
    }
    if kind == "text":
        metadata["required_packages_version"].update(_versions("transformers", "tokenizers"))
    if info.get("metrics"):
        metadata["eval_metrics"] = eval_metrics(info["metrics"])
    return metadata


READER_PACKAGES = {"PydicomReader": "pydicom", "PILReader": "pillow", "ITKReader": "itk", "NibabelReader": "nibabel",
                   "openslide": "openslide-python", "cucim": "cucim"}
"""The package each MONAI image reader (or whole-slide backend) of an inference config needs."""


def reader_packages(config: Any) -> dict[str, str]:
    """Versions of the packages the image readers named in a config need (``required_packages_version`` entries).

    Args:
        config: a bundle config (inference or evaluation).

    Returns:
        ``{package: version}`` for the installed ones.
    """
    text = json.dumps(config)
    return _versions(*sorted({pkg for name, pkg in READER_PACKAGES.items() if name in text}))


def _versions(*packages: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for p in packages:
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            pass
    return out
