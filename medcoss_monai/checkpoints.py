"""Reading checkpoints safely, and saying clearly when one is not what it should be.

Every checkpoint the project reads (a stage's ``model.pt``, a ``checkpoint_epoch=N.pt``, a
``--pretrained_ckpt``) goes through :func:`load_state`: ``torch.load(..., weights_only=True)``, so a
pickle that would run code is refused without running it, and any failure names the file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from medcoss_monai.errors import CheckpointError

__all__ = ["load_state", "state_dict_mismatch", "check_state_fits"]


def load_state(path: str | os.PathLike, what: str = "checkpoint", mmap: bool = False) -> Mapping[str, Any]:
    """Load a checkpoint file as a mapping of plain tensors and values.

    Args:
        path: the file.
        what: what the file should be, for messages (``"model.pt of stage ct"``...).
        mmap: memory-map the file: tensors are read only when their values are used (enough to check
            keys, shapes and recorded settings of a large checkpoint).

    Returns:
        The loaded mapping (a state dict, or a dict of state dicts).

    Raises:
        CheckpointError: the file is missing, is not a torch checkpoint (text, truncated, another
            format), holds objects ``weights_only`` loading refuses (nothing in it is executed), or is
            not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: the {what} does not exist.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # every failure means the same to the user: this file cannot be used
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        raise CheckpointError(
            f"{path}: cannot be read as a {what} ({e.__class__.__name__}: {first}). "
            "It is not a PyTorch checkpoint, is truncated, or holds Python objects that safe loading "
            "(weights_only=True) refuses; nothing in it was run. Point to a file written by this project."
        ) from e
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict; it is not a {what}.")
    return obj


def state_dict_mismatch(state: Mapping[str, Any], expected: Mapping[str, torch.Tensor]) -> list[str]:
    """What keeps ``state`` from loading strictly into a module whose state dict is ``expected``.

    Args:
        state: the loaded state dict.
        expected: the module's own ``state_dict()``.

    Returns:
        Human-readable problems (empty when it fits): shape differences, missing and unexpected keys.
    """
    wrong = [
        f"{k}: file {tuple(v.shape)} vs network {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and isinstance(v, torch.Tensor) and v.shape != expected[k].shape
    ]
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    problems = []
    if wrong:
        problems.append(f"{len(wrong)} tensor(s) of another shape ({'; '.join(wrong[:3])})")
    if missing:
        problems.append(f"{len(missing)} missing key(s) {missing[:3]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s) {unexpected[:3]}")
    return problems


def check_state_fits(state: Mapping[str, Any], module: torch.nn.Module, path: str | os.PathLike, hint: str = "") -> None:
    """Refuse a state dict that would not load strictly into ``module``, naming the file.

    Args:
        state: the loaded state dict.
        module: the network it is meant for.
        path: the file it came from.
        hint: what to do, appended to the message.

    Raises:
        CheckpointError: when keys or shapes differ.
    """
    problems = state_dict_mismatch(state, module.state_dict())
    if problems:
        raise CheckpointError(f"'{path}' does not fit the network: {'; '.join(problems)}." + (f" {hint}" if hint else ""))
