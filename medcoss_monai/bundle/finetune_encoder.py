"""The encoder a fine-tuning bundle builds: the pre-trained stage's own architecture, or the demo one.

A stage folder (trained here, or written by ``python -m medcoss_monai.weights import``) records its
network and sizes in ``stage.json``. When ``--pretrained_ckpt`` names such a stage (the folder, or
its ``model.pt`` with ``stage.json`` beside it) the fine-tuning encoder is built from that record, so a
paper-size or imported encoder fine-tunes without repeating its sizes; otherwise from the sizes of
``bundles/common/model.json`` (the bundle's ``demo_encoder``). A size given on the command line
(``--hidden_size 768``) is checked against the record: a different value is the user's error, named
before anything is built.

The bundle ids:

- ``encoder_spec``: :func:`encoder_spec` of ``pretrained_ckpt``, ``demo_encoder``, ``size_overrides``;
- ``network_def``: ``{"_target_": "medcoss_monai.bundle.finetune_encoder.build_encoder", "spec": "@encoder_spec"}``;
- input sizes (``img_size_2d`` ...) and the CT spacing read ``encoder_spec["sizes"]`` / ``["settings"]``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from medcoss_monai import layout
from medcoss_monai.errors import BadInputError, CheckpointError

__all__ = [
    "ARCHITECTURE_SIZES",
    "INPUT_SIZES",
    "stage_folder",
    "encoder_spec",
    "build_encoder",
    "stage_setting",
    "stage_chain",
    "chain_settings",
]

ARCHITECTURE_SIZES = ("hidden_size", "num_layers", "num_heads", "vocab_size", "patch_size_2d", "patch_size_3d")
"""Sizes that fix the encoder's weights: an override must equal the pre-trained stage's record."""

INPUT_SIZES = ("img_size_2d", "img_size_3d", "max_text_len")
"""Input sizes: from the stage when not given; another value is allowed (position tables are resized)."""


def stage_folder(pretrained_ckpt: str | os.PathLike | None) -> Path | None:
    """The stage folder ``--pretrained_ckpt`` names, or None for a bare weights file / from scratch.

    Args:
        pretrained_ckpt: a stage folder, a ``model.pt`` (with or without ``stage.json`` beside it), or "".

    Returns:
        The folder when its ``stage.json`` names a network, else None.

    Raises:
        BadInputError: a folder without a ``stage.json`` naming a network.
        CheckpointError: the path does not exist.
    """
    if not pretrained_ckpt:
        return None
    path = Path(pretrained_ckpt)
    if not path.exists():
        raise CheckpointError(f"pretrained_ckpt '{path}' does not exist: pass a stage folder or its {layout.MODEL_FILE}.")
    folder = path if path.is_dir() else path.parent
    network = layout.read_stage_record(folder).get("network")
    if isinstance(network, Mapping) and network.get("_target_"):
        return folder
    if path.is_dir():
        raise BadInputError(
            f"pretrained_ckpt '{path}' is a folder without a {layout.STAGE_RECORD_FILE} naming its network: pass a "
            f"stage folder (written by a stage or by 'python -m medcoss_monai.weights import') or a weights file."
        )
    return None


def stage_chain(folder: str | os.PathLike) -> list[Path]:
    """A stage folder and the stages before it in the same run folder (``stage.json``'s ``previous_stage``).

    Args:
        folder: the stage folder.

    Returns:
        The existing folders, nearest first (the stage itself first); a loop in the records ends the chain.
    """
    folder, chain = Path(folder), []
    while folder.is_dir() and folder.resolve() not in {f.resolve() for f in chain}:
        chain.append(folder)
        previous = layout.read_stage_record(folder).get("previous_stage")
        if not previous or not isinstance(previous, str):
            break
        folder = layout.stage_dir(folder.parent, previous)
    return chain


def chain_settings(folder: str | os.PathLike) -> dict[str, Any]:
    """The settings a stage recorded, completed by those of its previous stages in the same run folder.

    A chain's last stage (e.g. MRI) records only its own settings; the CT spacing of the chain is the
    one its CT stage recorded, so each setting is taken from the nearest stage that has it.

    Args:
        folder: the stage folder.

    Returns:
        ``{setting: value}`` (plain values, :func:`medcoss_monai.layout.recorded_settings`).
    """
    settings: dict[str, Any] = {}
    for stage in stage_chain(folder):
        settings = {**layout.recorded_settings(stage), **settings}
    return settings


def _plain(value: Any) -> Any:
    """Tuples as lists, so recorded and given sizes compare as JSON values."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _record_sizes(config: Mapping[str, Any]) -> dict[str, Any]:
    """The sizes of :data:`ARCHITECTURE_SIZES` and :data:`INPUT_SIZES` a network config holds.

    The reference encoder records one ``patch_size`` (16: 16x16 and 16^3 patches) and no image size.
    """
    sizes = {k: _plain(config[k]) for k in ARCHITECTURE_SIZES + INPUT_SIZES if k in config}
    if "patch_size" in config:
        p = int(config["patch_size"])
        sizes.setdefault("patch_size_2d", [p, p])
        sizes.setdefault("patch_size_3d", [p, p, p])
    return sizes


def _check_overrides(sizes: Mapping[str, Any], overrides: Mapping[str, Any], record_path: Path) -> None:
    """Refuse an explicit architecture size that differs from the pre-trained stage's, listing every one."""
    wrong = [
        f"--{k} {_plain(overrides[k])} but the stage has {sizes[k]}"
        for k in ARCHITECTURE_SIZES
        if overrides.get(k) is not None and k in sizes and _plain(overrides[k]) != sizes[k]
    ]
    if wrong:
        raise BadInputError(
            f"{record_path}: the pre-trained encoder does not have the sizes asked for ({'; '.join(wrong)}). "
            "The sizes come from the stage's record: drop these overrides, or pass another --pretrained_ckpt."
        )


def encoder_spec(
    pretrained_ckpt: str | os.PathLike | None,
    demo_encoder: Mapping[str, Any],
    size_overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What the fine-tuning encoder is: its class and arguments, its input sizes, and the stage's settings.

    Args:
        pretrained_ckpt: the bundle's ``pretrained_ckpt`` (a stage folder, a weights file, or "").
        demo_encoder: the demo network (bundle id ``demo_encoder``): ``target`` (class path) and its arguments,
            used when ``pretrained_ckpt`` names no stage.
        size_overrides: sizes given on the command line (bundle ids ``hidden_size``...; None = not given).

    Returns:
        ``{"target", "config", "sizes", "settings", "stage"}``: the network class path and arguments,
        the sizes of :data:`ARCHITECTURE_SIZES` + :data:`INPUT_SIZES` (the stage's, else the demo's, overrides
        applied), the stage's recorded settings (:func:`medcoss_monai.layout.recorded_settings`, e.g.
        ``ct_spacing``) and the stage folder (None without one). All plain JSON values.

    Raises:
        BadInputError: an override differs from the stage's record, or ``pretrained_ckpt`` is not usable.
    """
    overrides = {k: v for k, v in dict(size_overrides or {}).items() if v is not None}
    folder = stage_folder(pretrained_ckpt)
    demo = {k: _plain(v) for k, v in demo_encoder.items() if k != "target"}
    if folder is None:
        config = {**demo, **{k: _plain(v) for k, v in overrides.items() if k in demo}}
        sizes = {k: config[k] for k in ARCHITECTURE_SIZES + INPUT_SIZES if k in config}
        return {"target": str(demo_encoder["target"]), "config": config, "sizes": sizes, "settings": {}, "stage": None}
    record = layout.read_stage_record(folder)
    network = dict(record["network"])
    target = str(network.pop("_target_"))
    settings = chain_settings(folder)
    record_sizes = _record_sizes(network)
    _check_overrides(record_sizes, overrides, folder / layout.STAGE_RECORD_FILE)
    # input sizes: given > the network's > the stage's settings > the demo's
    inputs = {k: _plain(overrides.get(k, network.get(k, settings.get(k, demo.get(k))))) for k in INPUT_SIZES}
    sizes = {**{k: demo.get(k) for k in ARCHITECTURE_SIZES}, **record_sizes, **inputs}
    config = {k: _plain(v) for k, v in network.items()}
    return {"target": target, "config": config, "sizes": sizes, "settings": settings, "stage": str(folder)}


def build_encoder(
    spec: Mapping[str, Any],
    img_size_2d: Sequence[int] | None = None,
    img_size_3d: Sequence[int] | None = None,
    max_text_len: int | None = None,
) -> nn.Module:
    """The network :func:`encoder_spec` describes, freshly initialised (``load_pretrained`` loads its weights).

    Only classes of this package are built (a record names a class, it never runs code). The input
    sizes (the bundle's, which may be overrides) set the position tables of an encoder built for an
    input size (this project's: its tables are resized when the weights are loaded); an encoder with
    fixed-row tables (the reference's, indexed in flat token order) keeps its record.

    Args:
        spec: the output of :func:`encoder_spec` (``target`` and ``config`` are used).
        img_size_2d: the 2D input size (None: the spec's).
        img_size_3d: the 3D input size (None: the spec's).
        max_text_len: the longest text (None: the spec's).

    Returns:
        The network (``MedCoSSModel``, ``MedCoSSReferenceEncoder``...).
    """
    from medcoss_monai.layout import stage_network_class

    where = Path(spec.get("stage") or ".") / layout.STAGE_RECORD_FILE
    cls = stage_network_class(str(spec["target"]), where)
    config = dict(spec["config"])
    if "img_size_2d" in config:  # a grid-aware encoder: built for the input sizes
        given = {"img_size_2d": img_size_2d, "img_size_3d": img_size_3d, "max_text_len": max_text_len}
        config.update({k: _plain(v) for k, v in given.items() if v is not None and k in config})
    builder = getattr(cls, "from_config", None)
    return builder(config) if callable(builder) else cls(**config)


def stage_setting(spec: Mapping[str, Any], key: str, value: Any = None) -> Any:
    """A preprocessing setting: ``value`` when given, else what the pre-trained stage recorded (else None).

    Args:
        spec: the output of :func:`encoder_spec`.
        key: the setting, e.g. ``"ct_spacing"``.
        value: the bundle's own value (an override); None takes the stage's.

    Returns:
        The value to use, or None when neither gives one (the step is then left out).
    """
    if value is not None:
        return _plain(value)
    return _plain(spec.get("settings", {}).get(key))
