"""Converters of the papers' public data sets into decathlon-style datalists.

``python -m medcoss_monai.data.prepare DATASET --root DIR --out FILE`` reads a data set in the layout its
publisher distributes and writes ``training`` / ``validation`` / ``test`` (the official split where one
exists, else a seeded one recorded under ``split``); ``--list`` prints every data set, its source,
licence and what to download. The registry is :data:`~medcoss_monai.data.prepare.registry.DATASETS`;
each family of data sets has one module with its converter; the shared mechanisms are in
:mod:`~medcoss_monai.data.prepare.common`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from medcoss_monai.data.prepare.common import PrepareContext, finish
from medcoss_monai.data.prepare.registry import DATASETS, DatasetSpec, converter_of, get_spec

__all__ = ["DATASETS", "DatasetSpec", "prepare", "catalogue"]


def prepare(
    name: str,
    root: str | os.PathLike,
    out: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    workers: int = 1,
    skip_bad_inputs: bool = False,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Convert one data set and write its datalist.

    Args:
        name: the registry name (``deeplesion``, ``lits``...).
        root: the folder the publisher's download unpacks to.
        out: the datalist JSON to write (atomically; nothing is written when the input is refused).
        cache_dir: where converted files are written (needed by the converters that write files).
        workers: processes for long conversions.
        skip_bad_inputs: drop unreadable or inconsistent items (listed under ``rejected``) instead of stopping.
        seed: seed of the random splits of data sets without an official one.
        progress: show progress bars.

    Returns:
        The datalist written.

    Raises:
        BadInputError: an unknown or not yet implemented data set, a root that is not the data set,
            or bad items without ``skip_bad_inputs``.
    """
    spec = get_spec(name)
    convert = converter_of(spec)
    ctx = PrepareContext(
        name=spec.name, title=spec.title, root=Path(root).expanduser().absolute(),
        cache_dir=Path(cache_dir).expanduser().absolute() if cache_dir else None,
        workers=max(1, int(workers)), seed=int(seed), progress=progress,
    )
    datalist = convert(ctx)
    return finish(datalist, ctx, out, skip_bad_inputs)


def catalogue() -> str:
    """Every registered data set with its source, licence, download and whether it converts yet.

    Returns:
        The text ``--list`` prints.
    """
    blocks = []
    for spec in DATASETS.values():
        status = "" if spec.converter else "  [not implemented yet]"
        todo = f"\n  needs:    {spec.todo}" if spec.todo else ""
        blocks.append(
            f"{spec.name}{status}\n  {spec.title} - {spec.use}\n  source:   {spec.source}\n"
            f"  licence:  {spec.licence}\n  download: {spec.download}{todo}"
        )
    return "\n".join(blocks)
