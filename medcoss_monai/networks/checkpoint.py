"""The one place that reads checkpoints and puts weights into networks.

Every checkpoint the project reads (a stage's ``model.pt``, a ``checkpoint_epoch=N.pt``, a
``--pretrained_ckpt``, an exported bundle's weights) goes through :func:`load_state`:
``torch.load(..., weights_only=True)``, so a pickle that would run code is refused without running
it, and any failure names the file. Weights go into a network in one of two ways:

- :func:`load_strict`: every key and shape must match (a teacher, a forgetting-matrix row, an
  exported model): a file that does not fit is refused, never half-loaded;
- :func:`load_adapted`: keys are matched and position embeddings resized to the network's input
  size (:func:`~medcoss_monai.networks.pos_embed.adapt_state_dict`), for a stage that starts from
  the previous stage and for fine-tuning.

:func:`unwrap_network` removes ``DistributedDataParallel`` / ``torch.compile`` wrappers wherever a
plain module is needed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from medcoss_monai.errors import CheckpointError
from medcoss_monai.networks.pos_embed import StateDictReport, adapt_state_dict

__all__ = [
    "load_state",
    "state_dict_of",
    "state_dict_mismatch",
    "check_state_fits",
    "unwrap_network",
    "load_strict",
    "load_adapted",
]

STATE_DICT_KEYS = ("network", "model", "state_dict", "model_state_dict")
"""Keys under which checkpoints of other tools nest the network's state dict."""


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


def state_dict_of(obj: Mapping[str, Any], path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The network tensors of a loaded checkpoint: a plain state dict, or one nested under a usual key.

    A stage's ``model.pt`` is a plain state dict; a ``checkpoint_epoch=N.pt`` nests it under
    ``"network"``; checkpoints of other tools use ``"model"``, ``"state_dict"`` or
    ``"model_state_dict"``.

    Args:
        obj: what :func:`load_state` returned.
        path: the file, for messages.

    Returns:
        The state dict.

    Raises:
        CheckpointError: no state dict of tensors is found.
    """
    for key in STATE_DICT_KEYS:
        if isinstance(obj.get(key), Mapping):
            return dict(obj[key])
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    raise CheckpointError(
        f"{path}: not a model checkpoint (expected a state dict of tensors, or one under {list(STATE_DICT_KEYS)})."
    )


def unwrap_network(network: torch.nn.Module) -> torch.nn.Module:
    """The module inside a ``DistributedDataParallel``/``DataParallel``/compiled wrapper.

    Args:
        network: a network, possibly wrapped.

    Returns:
        The plain module whose ``state_dict`` has no ``module.`` prefixes.
    """
    while hasattr(network, "module") and isinstance(network.module, torch.nn.Module):
        network = network.module
    return getattr(network, "_orig_mod", network)


def load_strict(network: torch.nn.Module, path: str | os.PathLike, what: str = "checkpoint", hint: str = "") -> torch.nn.Module:
    """Load a checkpoint into ``network`` with every key and shape matching, or refuse it.

    Args:
        network: the network (wrappers are removed before loading).
        path: the checkpoint file.
        what: what the file should be, for messages.
        hint: what to do when it does not fit, appended to the message.

    Returns:
        ``network``, loaded.

    Raises:
        CheckpointError: the file cannot be read, or its keys or shapes differ from the network's.
    """
    state = state_dict_of(load_state(path, what), path)
    target = unwrap_network(network)
    check_state_fits(state, target, path, hint)
    target.load_state_dict(state, strict=True)
    return network


def load_adapted(
    network: torch.nn.Module, path: str | os.PathLike, what: str = "checkpoint", prefixes: Sequence[str] | None = None
) -> StateDictReport:
    """Load what fits of a checkpoint into ``network``, resizing position embeddings to its input size.

    Args:
        network: the network (wrappers are removed before loading).
        path: the checkpoint file.
        what: what the file should be, for messages.
        prefixes: load only the keys starting with one of these (e.g. ``("encoder.",)``: the encoder
            without the pretext heads); None loads every key that fits.

    Returns:
        What was loaded, resized, skipped and left at its initial values (``str()`` is one log line).

    Raises:
        CheckpointError: the file cannot be read or holds no state dict.
    """
    target = unwrap_network(network)
    state = state_dict_of(load_state(path, what), path)
    if prefixes is not None:
        state = {k: v for k, v in state.items() if k.startswith(tuple(prefixes))}
    state, report = adapt_state_dict(state, target)
    target.load_state_dict(state, strict=False)
    return report
