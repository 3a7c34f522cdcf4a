"""The public data sets of the papers: name -> where to get it, its licence, what to download, its converter.

The entries live in ``datasets.yaml`` beside this module (facts from the papers' repositories,
``yeerwen/MedCoSS`` README, ``Preprocess/``, ``Downstream/``; ``shaohao011/BrainMVP`` ``jsons/``, and the
publishers' pages). A converter is named as ``"module:function"`` inside this package and imported only
when used, so ``--list`` stays instant.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from medcoss_monai.errors import BadInputError

__all__ = ["DatasetSpec", "DATASETS", "CATALOGUE", "get_spec", "converter_of"]


@dataclass(frozen=True)
class DatasetSpec:
    """One data set of the registry.

    Args:
        name: the name on the command line (lower case).
        title: its usual name.
        use: which paper uses it and how (``"MedCoSS pre-training, report stage"``).
        source: publisher and URL.
        licence: the licence or access terms, in short.
        download: what the user downloads and unpacks into ``--root``.
        converter: ``"module:function"`` in this package, or ``""`` while not implemented.
        todo: what a converter still needs, for a data set without one.
    """

    name: str
    title: str
    use: str
    source: str
    licence: str
    download: str
    converter: str = ""
    todo: str = ""


CATALOGUE = Path(__file__).with_name("datasets.yaml")
"""The registry's data: one entry per data set, its fields those of :class:`DatasetSpec` (data, not code, so
that a reader finds every data set's source and licence in one file)."""


def _load(path: Path) -> list[DatasetSpec]:
    """The entries of the catalogue file, in file order."""
    entries = yaml.safe_load(path.read_text(encoding="utf-8"))
    return [DatasetSpec(name=name, **fields) for name, fields in entries.items()]


DATASETS: dict[str, DatasetSpec] = {s.name: s for s in _load(CATALOGUE)}
"""Every data set of the papers, by command-line name."""


def get_spec(name: str) -> DatasetSpec:
    """The registry entry of ``name``.

    Raises:
        BadInputError: an unknown name (the message lists the known ones).
    """
    if name not in DATASETS:
        raise BadInputError(f"Unknown data set '{name}'; known: {', '.join(DATASETS)} (see --list).")
    return DATASETS[name]


def converter_of(spec: DatasetSpec) -> Callable[..., dict[str, Any]]:
    """Import the converter of ``spec``.

    Raises:
        BadInputError: the data set has no converter yet.
    """
    if not spec.converter:
        raise BadInputError(
            f"{spec.name} ({spec.title}) is registered but its converter is not implemented yet (it needs "
            f"{spec.todo or 'writing'}): write its datalist by hand for now (see --list for its source and layout)."
        )
    module, function = spec.converter.split(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), function)
