"""Released checkpoints -> stage folders of this project.

:func:`import_checkpoint` reads a checkpoint of one of :data:`FORMATS`, converts it, and writes a
stage folder (``model.pt`` + ``stage.json``, and ``tokenizer/`` when one is given) that
:func:`~medcoss_monai.weights.load_pretrained` rebuilds. Everything is checked before anything is
written, and the folder appears at once: a refused or interrupted import leaves no folder.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medcoss_monai import layout
from medcoss_monai.errors import BadInputError
from medcoss_monai.networks.checkpoint import load_state, state_dict_of
from medcoss_monai.utils import atomic_torch_save, atomic_write_json, to_jsonable
from medcoss_monai.weights.brainmvp_format import convert_brainmvp_unet, convert_brainmvp_uniformer
from medcoss_monai.weights.medcoss_format import REFERENCE_SETTINGS, convert_medcoss

__all__ = ["WeightFormat", "FORMATS", "import_checkpoint", "read_checkpoint"]


@dataclass(frozen=True)
class WeightFormat:
    """A released checkpoint format.

    Args:
        convert: ``convert(state_dict, where, **options) -> {"network", "state_dict", "ignored_keys"}``.
        text: whether the network reads text (a tokenizer may be saved with it).
        source: where the weights come from.
        licence: the weights' licence, repeated to the user and into ``stage.json``.
        settings: the preprocessing the weights were pre-trained with (e.g. ``ct_spacing``), recorded in
            ``stage.json``'s ``settings`` as a stage trained here records its own, so fine-tuning follows it.
    """

    convert: Callable[..., dict[str, Any]]
    text: bool
    source: str
    licence: str
    settings: Mapping[str, Any] = field(default_factory=dict)


BRAINMVP_LICENCE = (
    "BrainMVP weights: no licence is stated by shaohao011/BrainMVP (no LICENSE file); ask its authors before any "
    "use beyond research, and cite Rui et al., CVPR 2025"
)

FORMATS: dict[str, WeightFormat] = {
    "medcoss": WeightFormat(
        convert_medcoss,
        text=True,
        source="MedCoSS_Report_Xray_CT_MR_Path_Buffer0.05 (yeerwen/MedCoSS, README 'Pre-trained Model')",
        licence="MedCoSS licence: non-commercial use only (yeerwen/MedCoSS LICENSE)",
        settings=REFERENCE_SETTINGS,
    ),
    "brainmvp_uniformer": WeightFormat(
        convert_brainmvp_uniformer,
        text=False,
        source="BrainMVP_uniformer.pt (shaohao011/BrainMVP, README 'Download Model')",
        licence=BRAINMVP_LICENCE,
    ),
    "brainmvp_unet": WeightFormat(
        convert_brainmvp_unet,
        text=False,
        source="BrainMVP_unet.pt (shaohao011/BrainMVP, README 'Download Model')",
        licence=BRAINMVP_LICENCE,
    ),
}
"""The importable formats, by the name the command line takes."""


def read_checkpoint(path: str | os.PathLike, what: str) -> dict[str, torch.Tensor]:
    """The network state dict of a released checkpoint, read with ``weights_only=True``.

    The reference saves its ``argparse.Namespace`` of arguments beside the weights (``util/misc.py``
    ``save_model``); that one class is allowed, so the file is read without running any of it. A zip
    checkpoint is memory-mapped (only the tensors that are used are read).

    Args:
        path: the file.
        what: what it should be, for messages.

    Returns:
        The state dict (the checkpoint's ``"model"``, or the file itself when it is one).

    Raises:
        CheckpointError: the file cannot be read or holds no state dict.
    """
    mmap = Path(path).is_file() and zipfile.is_zipfile(path)
    allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    with allow([argparse.Namespace]) if allow is not None else contextlib.nullcontext():
        return state_dict_of(load_state(path, what, mmap=mmap), path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_tokenizer(name_or_path: str, vocab_size: int) -> Any:
    """A Hugging Face tokenizer whose ids fit the network's text table."""
    try:
        from transformers import AutoTokenizer
    except ImportError as e:
        raise BadInputError("--tokenizer needs the 'transformers' package (pip install transformers).") from e
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
    except Exception as e:  # hub offline, folder without a tokenizer...: the user's to fix
        raise BadInputError(f"tokenizer '{name_or_path}' cannot be loaded ({e.__class__.__name__}: {e}).") from e
    if len(tokenizer) > vocab_size:
        raise BadInputError(
            f"tokenizer '{name_or_path}' has {len(tokenizer)} ids but the network's text table {vocab_size} rows; "
            "it is not the tokenizer of these weights (MedCoSS: emilyalsentzer/Bio_ClinicalBERT)."
        )
    return tokenizer


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadInputError(f"{out}: exists and is not an empty folder; choose a new --out folder.")


def import_checkpoint(
    fmt: str,
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    tokenizer: str | os.PathLike | None = None,
    options: Mapping[str, Any] | None = None,
) -> Path:
    """Import a released checkpoint as a stage folder.

    Args:
        fmt: a name of :data:`FORMATS`.
        checkpoint: the released file.
        out: the stage folder to write (new, or empty).
        tokenizer: a Hugging Face tokenizer name or folder, saved into ``out/tokenizer`` (text formats).
        options: options of the format's converter (MedCoSS: ``num_heads``).

    Returns:
        ``out``.

    Raises:
        CheckpointError: the file is not of the format (naming the first missing or misshaped key).
        BadInputError: ``out`` is not empty, or the tokenizer cannot be used.
    """
    if fmt not in FORMATS:
        raise BadInputError(f"unknown format {fmt!r}; one of {sorted(FORMATS)}.")
    spec = FORMATS[fmt]
    if tokenizer is not None and not spec.text:
        raise BadInputError(f"the {fmt} network reads no text; --tokenizer does not apply.")
    checkpoint, out = Path(checkpoint), Path(out)
    _check_out(out)
    where = str(checkpoint)
    converted = spec.convert(read_checkpoint(checkpoint, f"{fmt} checkpoint"), where, **dict(options or {}))
    tok = _load_tokenizer(str(tokenizer), converted["network"]["vocab_size"]) if tokenizer is not None else None
    record = {
        "network": converted["network"],
        "model": layout.MODEL_FILE,
        "previous_stage": None,
        "settings": dict(spec.settings),
        "imported": {
            "format": fmt,
            "checkpoint": str(checkpoint.resolve()),
            "sha256": _sha256(checkpoint),
            "source": spec.source,
            "licence": spec.licence,
            "ignored_keys": converted["ignored_keys"],
        },
    }
    if tok is not None:
        record["tokenizer"] = {"dir": layout.TOKENIZER_DIR, "source": str(tokenizer)}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; a stage folder is shared like the others
    try:
        atomic_torch_save(converted["state_dict"], tmp / layout.MODEL_FILE)
        if tok is not None:
            tok.save_pretrained(str(tmp / layout.TOKENIZER_DIR))
        atomic_write_json(to_jsonable(record), tmp / layout.STAGE_RECORD_FILE)
        _check_out(out)  # still free: nobody wrote there meanwhile
        os.replace(tmp, out)  # the whole folder appears at once (rename replaces an empty folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
