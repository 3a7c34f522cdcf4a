"""Small shared helpers: atomic file writes and distributed-rank queries."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["atomic_torch_save", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "is_rank0", "get_rank", "get_world_size"]


def _atomic_replace(path: str | os.PathLike, write_fn) -> Path:
    """Write through a temporary file in the target folder, then rename over ``path``.

    A crash half-way leaves the previous file intact: readers see either the old or the new file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes the file private; outputs and caches may be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


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


def get_rank() -> int:
    """Rank of this process in the default process group, 0 when not distributed."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    """Number of processes in the default process group, 1 when not distributed."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_rank0() -> bool:
    """Whether this process should write files (rank 0, or not distributed)."""
    return get_rank() == 0
