"""What an exported Model Zoo bundle's ``configs/inference.json`` reads: the user's files, and text batches.

``--dataset_dir`` of an exported bundle names a file (an image, a DICOM series folder, a ``.txt``
report), a folder of them, or a decathlon-style datalist JSON; :func:`inference_items` turns any of
them into datalist items.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["IMAGE_SUFFIXES", "TEXT_SUFFIXES", "TextInferenceBatch", "inference_items"]

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm", ".png", ".jpg", ".jpeg", ".bmp",
                  ".tif", ".tiff", ".svs", ".ndpi")
TEXT_SUFFIXES = (".txt",)
_PATH_KEYS = ("image", "label", "text_file")


def _has_suffix(path: Path, suffixes: tuple[str, ...]) -> bool:
    return path.name.lower().endswith(suffixes)


def _is_dicom_series(folder: Path) -> bool:
    return folder.is_dir() and any(_has_suffix(p, (".dcm",)) for p in folder.iterdir() if p.is_file())


def _from_datalist(path: Path, section: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or not isinstance(data.get(section), list):
        found = sorted(k for k, v in data.items() if isinstance(v, list)) if isinstance(data, dict) else []
        raise ValueError(f"{path}: no '{section}' list of items (lists found: {found}); set --data_section.")
    items = []
    for item in data[section]:
        item = dict(item) if isinstance(item, dict) else {"image": item}
        for key in _PATH_KEYS:  # relative paths are relative to the datalist, as MONAI's decathlon loader does
            if isinstance(item.get(key), str) and not os.path.isabs(item[key]):
                item[key] = str(path.parent / item[key])
        items.append(item)
    return items


def inference_items(source: str | os.PathLike, key: str = "image", section: str = "test", series: bool = False) -> list[dict[str, Any]]:
    """Datalist items from a file, a folder, or a datalist JSON.

    - a ``.json`` file: its ``section`` list (decathlon style; relative paths are taken from its folder);
    - a file: one item, ``{"image": path}``, or ``{"text_file": path}`` when ``key`` is ``"text"``
      (one report per file);
    - a folder: one item per image (or ``.txt``) file in it, sorted; with ``series`` (3D modalities)
      a folder of ``.dcm`` files is one DICOM series, and so is each such sub-folder.

    Args:
        source: the file, folder or datalist.
        key: ``"image"`` or ``"text"``.
        section: the datalist section to read.
        series: read folders of DICOM files as series (volumes).

    Returns:
        The items, in order; text items also get an ``"id"`` (the file name).

    Raises:
        FileNotFoundError: ``source`` is empty or does not exist.
        ValueError: nothing to read in it.
    """
    if not str(source):
        raise FileNotFoundError("no input given: pass --dataset_dir (a file, a folder of files or a datalist JSON).")
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (pass a file, a folder of files or a datalist JSON).")
    text = key == "text"
    if path.is_file() and _has_suffix(path, (".json",)):
        return _from_datalist(path, section)
    if path.is_file() or (series and _is_dicom_series(path)):
        return [{"text_file": str(path), "id": path.name} if text else {"image": str(path)}]
    entries = sorted(path.iterdir())
    if text:
        items = [{"text_file": str(p), "id": p.name} for p in entries if p.is_file() and _has_suffix(p, TEXT_SUFFIXES)]
    else:
        items = [{"image": str(p)} for p in entries
                 if (p.is_file() and _has_suffix(p, IMAGE_SUFFIXES)) or (series and _is_dicom_series(p))]
    if not items:
        kinds = TEXT_SUFFIXES if text else IMAGE_SUFFIXES
        raise ValueError(f"{path}: no input file in the folder (looked for {', '.join(kinds)}).")
    return items


class TextInferenceBatch:
    """Batch -> ``(input_ids, label or None, (), {"attention_mask": ...})`` for a MONAI evaluator on text.

    Like :class:`~medcoss_monai.bundle.finetune.TextPrepareBatch`, but the label may be absent
    (inference on unlabelled reports).

    Args:
        input_key: key of the token ids.
        mask_key: key of the attention mask.
        label_key: key of the label, if any.
    """

    def __init__(self, input_key: str = "input_ids", mask_key: str = "attention_mask", label_key: str = "label") -> None:
        self.input_key, self.mask_key, self.label_key = input_key, mask_key, label_key

    def __call__(
        self, batchdata: dict[str, Any], device: str | torch.device | None = None, non_blocking: bool = False, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor | None, tuple, dict[str, torch.Tensor]]:
        def to(x: Any) -> torch.Tensor:
            return torch.as_tensor(x).to(device=device, non_blocking=non_blocking)

        label = batchdata.get(self.label_key)
        mask = {"attention_mask": to(batchdata[self.mask_key])}
        return to(batchdata[self.input_key]), None if label is None else to(label), (), mask
