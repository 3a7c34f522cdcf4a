"""The run layout: where the bundles are, how they are read, and the folder and file names of a run.

A run folder (``output_dir``) holds one folder per stage and the run's evaluation::

    <output_dir>/
        stage_<name>/          one pre-training stage (``name`` is a modality, or ``joint``)
            model.pt           encoder + heads (plain state dict): what the next stage loads
            stage.json         what the stage was: modality, previous stage, network, settings
            buffer.json        its rehearsal buffer
            loss_history.csv   one row per epoch
            checkpoint_epoch=N.pt, tokenizer/, recon_*.png, tensorboard/, rejected_inputs.json
            .writer.lock       held by the one process writing the folder
        forgetting.csv / .png  the forgetting matrix of the run

A fine-tuning run (a task bundle's ``output_dir``) holds ``model_best.pt``, ``metrics.json``,
``tokenizer/`` (text tasks) and ``rejected_inputs_<split>.json``.

Every module that reads or writes these names takes them from here.

Stage and fine-tuning bundles write their shared recipe once, in ``bundles/common/``, and hold a
copy of it (kept up to date by ``python -m medcoss_monai.bundle.render``, which records the links in
``bundles/common/links.json``), so every bundle is self-contained and runs from any working
directory, in the checkout or installed. :func:`read_bundle` still resolves ``%bundles/...`` macros
(a user's own bundle may use them) from :func:`bundles_dir`, wherever Python runs.
"""

from __future__ import annotations

import difflib
import importlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.bundle.reference_resolver import ReferenceResolver

from medcoss_monai.errors import BadInputError, CheckpointError
from medcoss_monai.networks.encoder import KINDS

__all__ = [
    "MODEL_FILE",
    "STAGE_RECORD_FILE",
    "BUFFER_FILE",
    "LOSS_HISTORY_FILE",
    "TOKENIZER_DIR",
    "REJECTED_INPUTS_FILE",
    "FORGETTING_CSV",
    "FORGETTING_PNG",
    "WRITER_LOCK_FILE",
    "BEST_MODEL_FILE",
    "METRICS_FILE",
    "MACRO_PREFIX",
    "bundles_dir",
    "stage_bundle",
    "stage_modalities",
    "modality_card",
    "method_bundle",
    "methods",
    "stage_dir",
    "other_stage_folders",
    "is_plain_value",
    "stage_model",
    "read_stage_record",
    "recorded_settings",
    "read_bundle",
    "read_stage_bundle",
    "stage_network_class",
]

MODEL_FILE = "model.pt"
STAGE_RECORD_FILE = "stage.json"
BUFFER_FILE = "buffer.json"
LOSS_HISTORY_FILE = "loss_history.csv"
TOKENIZER_DIR = "tokenizer"
REJECTED_INPUTS_FILE = "rejected_inputs.json"
FORGETTING_CSV = "forgetting.csv"
FORGETTING_PNG = "forgetting.png"
WRITER_LOCK_FILE = ".writer.lock"
BEST_MODEL_FILE = "model_best.pt"
"""A fine-tuning run's weights of its best validation epoch (MONAI ``CheckpointSaver``, under ``"model"``)."""
METRICS_FILE = "metrics.json"
"""A fine-tuning run's test metrics."""

MACRO_PREFIX = "%bundles/"
"""How a bundle names a file of the bundles folder in a macro (MONAI reads it from the working directory;
:func:`read_bundle` and ``python -m medcoss_monai.bundle.render`` from :func:`bundles_dir`)."""


def bundles_dir() -> Path:
    """The folder holding the bundles: ``$MEDCOSS_BUNDLES``, else the installed package's ``bundles``
    (``medcoss_monai/bundles`` after ``pip install``), else the checkout's ``bundles/``.

    Returns:
        The folder path (absolute unless ``$MEDCOSS_BUNDLES`` is relative).
    """
    env = os.environ.get("MEDCOSS_BUNDLES")
    if env:
        return Path(env)
    package = Path(__file__).resolve().parent
    installed = package / "bundles"
    return installed if installed.is_dir() else package.parent / "bundles"


def stage_bundle(modality: str, bundles: str | os.PathLike | None = None) -> Path:
    """The bundle of a curriculum stage: ``bundles/curriculum_<name>.json`` when there is one, else
    ``bundles/stage_<name>.json``.

    A ``curriculum_<name>.json`` is the form of a method that runs on the unified encoder inside the
    MedCoSS curriculum where its ``stage_<name>.json`` trains the method's own network alone
    (``brainmvp``: the paper's UniFormer). The pipeline runs it, and later stages rehearse its buffer
    through it.

    Args:
        modality: the stage's modality (or name).
        bundles: the bundles folder (default :func:`bundles_dir`).

    Returns:
        Its path.

    Raises:
        FileNotFoundError: there is no such bundle.
    """
    folder = Path(bundles or bundles_dir())
    curriculum = folder / f"curriculum_{modality}.json"
    if curriculum.is_file():
        return curriculum
    path = folder / f"stage_{modality}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no stage bundle for modality '{modality}' (write bundles/stage_{modality}.json)")
    return path


def stage_modalities(bundles: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """The registered modalities: every stage bundle that declares its ``modality`` and ``input_kind``.

    A modality is registered by its bundle alone: ``bundles/stage_<name>.json`` (or
    ``curriculum_<name>.json``, which wins, as in :func:`stage_bundle`) with ``"modality"``,
    ``"input_kind"`` (``text``, ``2d`` or ``3d``: the encoder's tokenizer, the checked dimensionality,
    the exported network's input) and optionally ``"modality_card"``, the words an exported Model
    Zoo bundle uses to describe its inputs.

    Args:
        bundles: the bundles folder (default :func:`bundles_dir`).

    Returns:
        ``{modality: card}``, each card being the bundle's ``modality_card`` with ``modality``,
        ``input_kind`` and ``bundle`` (its path) set.

    Raises:
        BadInputError: a bundle declares an input kind the encoder has no tokenizer for.
    """
    folder = Path(bundles or bundles_dir())
    cards: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("stage_*.json")) + sorted(folder.glob("curriculum_*.json")):
        config = ConfigParser.load_config_file(str(path))
        kind = config.get("input_kind")
        if kind is None:  # a method's standalone recipe (stage_brainmvp.json), not a curriculum modality
            continue
        if kind not in KINDS:
            raise BadInputError(f"{path}: input_kind '{kind}' is not one of {list(KINDS)}.")
        modality = str(config.get("modality", path.stem.split("_", 1)[1]))
        cards[modality] = {**config.get("modality_card", {}), "modality": modality, "input_kind": kind, "bundle": str(path)}
    return cards


def modality_card(name: str, bundles: str | os.PathLike | None = None) -> dict[str, Any]:
    """The card of a registered modality (see :func:`stage_modalities`), or of a fine-tuning task's prefix.

    Fine-tuning tasks are named ``<prefix>_<task>``; a stage whose tasks use another prefix than its
    modality says so with ``"task_prefix"`` in its card (the report stage's tasks are ``text_*``).

    Args:
        name: a modality, or a task prefix.
        bundles: the bundles folder (default :func:`bundles_dir`).

    Returns:
        The card (``modality``, ``input_kind``, ``bundle`` and the bundle's descriptions).

    Raises:
        BadInputError: no stage bundle declares it, naming the registered modalities.
    """
    cards = stage_modalities(bundles)
    card = cards.get(name) or next((c for c in cards.values() if c.get("task_prefix") == name), None)
    if card is None:
        raise BadInputError(
            f"Unknown modality '{name}': no stage bundle in {Path(bundles or bundles_dir())} declares it "
            f"(registered: {sorted(cards)}). A modality is added by writing bundles/stage_{name}.json with "
            f'"modality": "{name}" and its "input_kind" (text, 2d or 3d).'
        )
    return card


def method_bundle(method: str, bundles: str | os.PathLike | None = None) -> Path:
    """The overlay of a continual-learning method, ``bundles/method_<method>.json``.

    Args:
        method: the method's name.
        bundles: the bundles folder.

    Returns:
        Its path.
    """
    return Path(bundles or bundles_dir()) / f"method_{method}.json"


def methods(bundles: str | os.PathLike | None = None) -> tuple[str, ...]:
    """The continual-learning methods: one per ``bundles/method_<name>.json`` (``medcoss`` first).

    Args:
        bundles: the bundles folder.

    Returns:
        The method names.
    """
    names = sorted(p.stem[len("method_") :] for p in Path(bundles or bundles_dir()).glob("method_*.json"))
    return tuple(sorted(names, key=lambda n: n != "medcoss"))


def stage_dir(output_dir: str | os.PathLike, name: str) -> Path:
    """The folder of one stage of a run.

    Args:
        output_dir: the run folder.
        name: the stage's name (its modality, or ``joint``).

    Returns:
        ``<output_dir>/stage_<name>``.
    """
    return Path(output_dir) / f"stage_{name}"


def other_stage_folders(output_dir: str | os.PathLike, modality: str = "") -> list[Path]:
    """The stage folders of a run folder, this stage's own excluded.

    Args:
        output_dir: the run folder.
        modality: this stage's modality (its folder is not counted).

    Returns:
        ``<output_dir>/stage_*`` folders, sorted.
    """
    root = Path(output_dir)
    own = stage_dir(root, modality).name if modality else None
    return sorted(p for p in root.glob(stage_dir(root, "*").name) if p.is_dir() and p.name != own)


def stage_model(output_dir: str | os.PathLike, name: str) -> Path:
    """The weights a stage hands to the next one, ``<output_dir>/stage_<name>/model.pt``."""
    return stage_dir(output_dir, name) / MODEL_FILE


def read_stage_record(folder: str | os.PathLike) -> dict[str, Any]:
    """A stage folder's ``stage.json`` (empty when the stage has not finished an epoch).

    Args:
        folder: the stage folder.

    Returns:
        The record.

    Raises:
        BadInputError: the file exists but is not readable JSON, naming it.
    """
    path = Path(folder) / STAGE_RECORD_FILE
    if not path.is_file():
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError) as e:
        raise BadInputError(f"{path}: cannot be read ({e}); it is written by the stage at each epoch end.") from e
    if not isinstance(record, dict):
        raise BadInputError(f"{path}: holds a {type(record).__name__}, not the stage record.")
    return record


def is_plain_value(value: Any) -> bool:
    """A JSON value with no config syntax in it: a recorded setting that is safe to apply as an override."""
    if isinstance(value, str):
        return not value.startswith(("$", "@", "%"))
    if isinstance(value, (list, tuple)):
        return all(is_plain_value(v) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and is_plain_value(v) for k, v in value.items())
    return value is None or isinstance(value, (bool, int, float))


def recorded_settings(folder: str | os.PathLike) -> dict[str, Any]:
    """The size and preprocessing settings a stage ran with, as recorded in its ``stage.json``.

    Only plain values are returned (numbers, strings, lists): a recorded value that looks like a
    config expression or reference is refused, so nothing from a run folder is ever evaluated.

    Args:
        folder: the stage folder.

    Returns:
        ``{id: value}``, empty for a stage that recorded none.

    Raises:
        BadInputError: a recorded value is not plain, naming the file and the id.
    """
    settings = read_stage_record(folder).get("settings") or {}
    for key, value in settings.items():
        if not is_plain_value(value):
            raise BadInputError(f"{Path(folder) / STAGE_RECORD_FILE}: setting '{key}' is not a plain value ({value!r}).")
    return dict(settings)


def _absolute_macros(config: Any, bundles: Path) -> Any:
    """The config with every ``%bundles/...`` macro pointing into ``bundles`` (whatever the working directory)."""
    if isinstance(config, dict):
        return {k: _absolute_macros(v, bundles) for k, v in config.items()}
    if isinstance(config, list):
        return [_absolute_macros(v, bundles) for v in config]
    if isinstance(config, str) and config.startswith(MACRO_PREFIX):
        return "%" + str(bundles / config[len(MACRO_PREFIX) :])
    return config


def _config_ids(config: Any, prefix: str = "") -> Iterator[str]:
    """Every id of a config's nested dicts (``train#trainer#max_epochs``), the candidates of a suggestion."""
    if isinstance(config, dict):
        for key, value in config.items():
            yield f"{prefix}{key}"
            yield from _config_ids(value, f"{prefix}{key}#")


def _refuse_undefined(parser: ConfigParser, ids: Iterable[str], files: Sequence[Any]) -> None:
    """Refuse ids the bundle files do not define: MONAI would add a misspelt override that nothing reads."""
    problems = []
    for key in ids:
        parts = ReferenceResolver.split_id(key)
        # a nested id may add a key to a dict the bundle defines (an argument of a component), as in MONAI
        if key in parser or (len(parts) > 1 and isinstance(parser.get("#".join(parts[:-1])), dict)):
            continue
        close = difflib.get_close_matches(key, list(_config_ids(parser.config)), n=1)
        problems.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    if problems:
        raise BadInputError(f"{', '.join(str(f) for f in files)}: the bundle defines no id {', '.join(problems)}; an "
                            "override must name one of its ids (a misspelt one would be silently ignored).")


def read_bundle(
    config_files: str | os.PathLike | Sequence[str | os.PathLike],
    overrides: Mapping[str, Any] | Iterable[tuple[str, Any]] = (),
    bundles: str | os.PathLike | None = None,
    user_overrides: Mapping[str, Any] | None = None,
) -> ConfigParser:
    """Read bundle files as ``monai.bundle run`` does: merge, override, then resolve macros.

    Overrides are applied before macros are resolved, as on the command line; the ``%bundles/``
    macros are read from the bundles folder, so this works from any working directory.

    Args:
        config_files: one bundle file, or several merged in order (a stage bundle and overlays).
        overrides: ``{id: value}`` pairs set after merging (values are used as given).
        bundles: the bundles folder the macros refer to (default :func:`bundles_dir`).
        user_overrides: ``{id: value}`` pairs a user gave (``--id value``), set after ``overrides``;
            each id must be one the files define (a nested ``a#b`` may add a key to a dict ``a``).

    Returns:
        A parser holding the merged config, not yet parsed (``get_parsed_content`` parses it).

    Raises:
        BadInputError: an id of ``user_overrides`` is not defined by the files (checked before any is set),
            naming the id, the files and the closest defined id.
    """
    files = [config_files] if isinstance(config_files, (str, os.PathLike)) else list(config_files)
    config = ConfigParser.load_config_files([str(f) for f in files])
    parser = ConfigParser(_absolute_macros(config, Path(bundles or bundles_dir()).resolve()))
    _refuse_undefined(parser, user_overrides or {}, files)
    pairs = overrides.items() if isinstance(overrides, Mapping) else overrides
    for key, value in [*pairs, *(user_overrides or {}).items()]:
        parser[key] = value
    parser.resolve_macro_and_relative_ids()
    return parser


def read_stage_bundle(
    modality: str,
    settings: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    bundles: str | os.PathLike | None = None,
) -> ConfigParser:
    """A stage bundle with the settings a run's stage recorded (and further overrides) applied.

    This is how code outside the stage (rehearsal of its buffer, probes, the forgetting matrix)
    prepares that stage's data exactly as the stage did: ``--ct_spacing`` given to the stage reaches
    them through ``stage.json``.

    Args:
        modality: the stage's modality.
        settings: recorded settings (:func:`recorded_settings`); ids the bundle lacks are skipped.
        overrides: more ``{id: value}`` pairs, applied after ``settings`` (ids the bundle lacks are skipped).
        bundles: the bundles folder.

    Returns:
        The parser (not yet parsed).
    """
    path = stage_bundle(modality, bundles)
    own = ConfigParser.load_config_file(str(path))
    pairs = {k: v for k, v in {**(settings or {}), **(overrides or {})}.items() if k.split("#")[0] in own}
    return read_bundle(path, pairs, bundles)


TRUSTED_PREFIX = "medcoss_monai."
"""Only networks of this package are built from a ``stage.json``: a record names a class, never runs code."""


def stage_network_class(target: str, record_path: Path) -> type[torch.nn.Module]:
    """The network class a ``stage.json`` names in ``network._target_``.

    Args:
        target: the recorded ``_target_``.
        record_path: the ``stage.json``, named in messages.

    Returns:
        The class.

    Raises:
        CheckpointError: the name is outside this package or names no network class.
    """
    module_name, _, name = str(target).rpartition(".")
    if not target.startswith(TRUSTED_PREFIX) or not module_name:
        raise CheckpointError(f"{record_path}: network '{target}' is not a network of medcoss_monai; it is not built.")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as e:
        missing = f"network '{target}' does not exist in this version of medcoss_monai"
        raise CheckpointError(f"{record_path}: {missing}.") from e
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise CheckpointError(f"{record_path}: '{target}' is not a network class.")
    return cls
