"""Small shared helpers: atomic file writes, JSON-safe values and the writing rank."""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch

from medcoss_monai.errors import BadInputError, OutputWriteError

__all__ = [
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "remove_stale_temp_files",
    "to_jsonable",
    "is_rank0",
    "parse_seeds",
]


TEMP_SUFFIX = ".tmp"
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def to_jsonable(value: Any) -> Any:
    """``value`` as plain JSON: mappings and sequences recursively, numpy values as Python ones, paths as
    strings, non-finite floats as ``None`` (JSON has no NaN) and anything else as its ``str``.

    Args:
        value: what is to be written as JSON.

    Returns:
        A structure of dicts, lists, strings, numbers, booleans and ``None``.
    """
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _atomic_replace(path: str | os.PathLike, write_fn) -> Path:
    """Write through a temporary file in the target folder, then rename over ``path``.

    A crash half-way leaves the previous file intact: readers see either the old or the new file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes the file private; outputs and caches may be shared
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError) and e.errno in _NO_SPACE:
            before = f"the previous {path.name} is unchanged" if path.exists() else f"no partial {path.name} was left"
            raise OutputWriteError(
                e.errno, f"{path}: could not be written ({os.strerror(e.errno)}); {before}. "
                "Free space in that folder and rerun (a stage: with --resume true, from its last checkpoint)."
            ) from e
        raise
    return path


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files a killed writer left in ``folder`` (only call while owning it).

    Args:
        folder: a folder written with the atomic writers of this module.

    Returns:
        The files removed.
    """
    folder = Path(folder)
    stale = [p for p in folder.glob(f".*{TEMP_SUFFIX}") if p.is_file()] if folder.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` that never leaves a truncated file behind.

    Args:
        obj: what to save (a state dict or a dict of state dicts).
        path: destination file.

    Returns:
        The destination path.
    """
    return _atomic_replace(path, lambda f: torch.save(obj, f))


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> Path:
    """Write ``data`` to ``path`` atomically (a killed process leaves the old file or none, never half).

    Args:
        data: the content.
        path: destination file.

    Returns:
        The destination path.
    """
    return _atomic_replace(path, lambda f: f.write(data))


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically.

    Args:
        text: the content.
        path: destination file.

    Returns:
        The destination path.
    """
    return _atomic_replace(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(obj: Any, path: str | os.PathLike, indent: int = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically.

    Args:
        obj: a JSON-serialisable object.
        path: destination file.
        indent: JSON indentation.

    Returns:
        The destination path.
    """
    return atomic_write_text(json.dumps(obj, indent=indent) + "\n", path)


def is_rank0() -> bool:
    """Whether this process should write files (rank 0 of ``ignite.distributed``, or not distributed)."""
    return idist.get_rank() == 0


def parse_seeds(text: str, option: str = "--seeds") -> list[int]:
    """Comma-separated seeds of a command line, e.g. ``"0,1,2"``.

    Args:
        text: the option's value.
        option: the option's name, for the message.

    Returns:
        the seeds, in order.

    Raises:
        BadInputError: not a non-empty list of integers.
    """
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds:
        raise BadInputError(f"{option} '{text}': give comma-separated integers, e.g. 0,1,2.")
    return seeds

