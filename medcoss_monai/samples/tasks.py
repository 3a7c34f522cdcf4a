"""The downstream tasks of the sample data: their registry, datalists and ``prepare`` command.

``python -m medcoss_monai.samples.tasks prepare [--force]`` writes, for each task of :data:`TASKS`,
derived files and a decathlon-style ``datalist.json`` (fixed splits ``training`` / ``validation`` /
``test``) under ``sample_dir()/tasks/<task>/``; :func:`load_task_datalist` reads it, preparing it
first when missing. The tasks are cut from the held-out sample files by
:mod:`medcoss_monai.samples.sample_tasks` (what each task holds is described there); MUSCLE's tasks
(:mod:`medcoss_monai.samples.muscle_sample_tasks`) are held out of MUSCLE's own pre-training lists instead; datalists of
users' dataset layouts are built by :mod:`medcoss_monai.data.folder_datalists`.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from medcoss_monai.errors import install_run_hooks
from medcoss_monai.samples import muscle_sample_tasks as muscle_tasks
from medcoss_monai.samples import sample_tasks, sample_tile_tasks, sample_volume_tasks
from medcoss_monai.data.folder_datalists import SPLIT_SEED
from medcoss_monai.utils import atomic_write_json

__all__ = [
    "TASKS",
    "TASK_VERSION",
    "tasks_dir",
    "task_dir",
    "task_datalist_path",
    "load_task_datalist",
    "prepare_task",
    "prepare_tasks",
    "main",
]

TASK_VERSION = 3
"""Bumped when a task's derived files change, so ``prepare`` rewrites older ones."""

TASKS: dict[str, tuple[Callable[[Path], dict[str, Any]], str]] = {
    "text_cls": (sample_tasks.derive_text_cls,
                 f"Multi-label: the {sample_tasks.TEXT_NUM_CLASSES} most frequent major MeSH headings of held-out "
                 "Indiana reports."),
    "xray_cls": (sample_tile_tasks.derive_xray_cls,
                 "Tiles of the held-out tibia film: bone (1) / soft tissue (0), derived labels."),
    "xray_seg": (sample_tile_tasks.derive_xray_seg, "Tiles of the held-out tibia film and derived bone masks, 0/255 PNG."),
    "ct_cls": (sample_volume_tasks.derive_ct_cls, "Sub-volumes of the held-out chest CT in HU: heart (1) / no heart (0)."),
    "ct_seg": (sample_volume_tasks.derive_ct_seg,
               "Axial slabs of the held-out chest CT: lung, heart, liver, bone (TotalSegmentator)."),
    "mri_cls": (sample_volume_tasks.derive_mri_cls,
                "Sub-volumes of the held-out ICBM 2009c T1, normalised: cerebellum (1) / cerebrum (0)."),
    "mri_seg": (sample_volume_tasks.derive_mri_seg,
                "Held-out ICBM 2009c T1 with grouped CerebrA regions, split by hemisphere."),
    "mri_tissue_seg": (sample_volume_tasks.derive_mri_tissue_seg,
                       "Held-out ICBM 2009a T1 with grey / white matter labels, split by hemisphere."),
    "pathology_cls": (sample_tile_tasks.derive_pathology_cls,
                      "Tiles of the held-out H&E image: many (1) / few (0) nuclei."),
    "pathology_seg": (sample_tile_tasks.derive_pathology_seg,
                      "Tiles of the held-out H&E image and nuclei masks, 0/255 PNG."),
    # MUSCLE's tasks are held out of MUSCLE's own pre-training lists, by file (see muscle_tasks)
    "muscle_bodypart_cls": (muscle_tasks.derive_bodypart_cls,
                            "Tiles of real films and of DRRs: chest (1) / other body part (0); MUSCLE."),
    "muscle_lung_seg": (muscle_tasks.derive_lung_seg, "DRRs of the chest CTs and projected lung fields, 0/255 PNG; MUSCLE."),
    "muscle_chest_det": (muscle_tasks.derive_chest_det,
                         "DRRs of the chest CTs with boxes of the right lung, left lung and lesion; MUSCLE."),
}
"""Task name -> (function deriving its files and splits into a folder, one-line description)."""


def tasks_dir() -> Path:
    """``sample_dir()/tasks``."""
    from medcoss_monai.samples.sample_data import sample_dir

    return sample_dir() / "tasks"


def task_dir(task: str) -> Path:
    """Folder of one derived task, ``sample_dir()/tasks/<task>``."""
    _check_task(task)
    return tasks_dir() / task


def task_datalist_path(task: str) -> Path:
    """``sample_dir()/tasks/<task>/datalist.json`` (may not exist yet)."""
    return task_dir(task) / "datalist.json"


def load_task_datalist(task: str, prepare: bool = True) -> dict[str, Any]:
    """The parsed datalist of a derived task, preparing it first when missing.

    Args:
        task: one of :data:`TASKS`.
        prepare: run :func:`prepare_task` when the datalist is missing or stale.

    Returns:
        the datalist dict (``training``, ``validation``, ``test``; ``classes`` for classification).

    Raises:
        FileNotFoundError: the datalist is missing and ``prepare`` is False.
    """
    path = task_datalist_path(task)
    if prepare and not _is_fresh(path):
        prepare_task(task)
    if not path.is_file():
        raise FileNotFoundError(f"Task '{task}' is not prepared: run `python -m medcoss_monai.samples.tasks prepare`.")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"Unknown task '{task}'; expected one of {sorted(TASKS)}.")
    return task


def _is_fresh(path: Path) -> bool:
    from medcoss_monai.samples.sample_data import sample_dir

    if not path.is_file():
        return False
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return False
    return data.get("version") == TASK_VERSION and data.get("root") == str(sample_dir())


def _write_datalist(task: str, splits: dict[str, list], extra: dict[str, Any] | None = None) -> Path:
    from medcoss_monai.samples.sample_data import sample_dir

    data = {
        "name": f"medcoss_monai task: {task}",
        "description": f"Written by `python -m medcoss_monai.samples.tasks prepare`; paths are absolute. {TASKS[task][1]}",
        "version": TASK_VERSION,
        "root": str(sample_dir()),
        "seed": SPLIT_SEED,
        **(extra or {}),
        **{f"num{k[0].upper()}{k[1:]}": len(v) for k, v in splits.items()},
        **splits,
    }
    return atomic_write_json(data, task_datalist_path(task))


def prepare_task(task: str, force: bool = False) -> Path:
    """Write one task's derived files and datalist (skipped when already written by this version).

    Args:
        task: one of :data:`TASKS`.
        force: rewrite even when up to date.

    Returns:
        the datalist path.
    """
    path = task_datalist_path(task)
    if not force and _is_fresh(path):
        return path
    out = task_dir(task)
    if out.exists():
        shutil.rmtree(out)  # a rerun must not leave files of an older layout behind
    out.mkdir(parents=True)
    result = TASKS[task][0](out)
    return _write_datalist(task, result["splits"], result.get("extra"))


def prepare_tasks(tasks: Sequence[str] | None = None, force: bool = False, verbose: bool = True) -> dict[str, Path]:
    """Prepare several tasks (default: all), fetching the sample data first if needed.

    Args:
        tasks: task names; None for all of :data:`TASKS`.
        force: rewrite even when up to date.
        verbose: print one line per task.

    Returns:
        task -> datalist path.
    """
    from medcoss_monai.samples.sample_data import fetch

    fetch(verbose=False)
    paths = {}
    for task in tasks or list(TASKS):
        start = time.time()
        paths[task] = prepare_task(task, force=force)
        if verbose:
            with open(paths[task], encoding="utf-8") as f:
                data = json.load(f)
            counts = ", ".join(f"{k} {len(data[k])}" for k in ("training", "validation", "test"))
            print(f"{task:14s} {counts}  ({time.time() - start:.1f} s) -> {paths[task]}")
    return paths


# -------------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m medcoss_monai.samples.tasks prepare [--force] [--tasks a b]`` / ``list``."""
    install_run_hooks()  # user errors end with their message; library probes at DEBUG
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="write the derived task files and datalists")
    prep.add_argument("--force", action="store_true", help="rewrite even when up to date")
    prep.add_argument("--tasks", nargs="*", default=None, choices=sorted(TASKS), help="default: all")
    sub.add_parser("list", help="print the tasks")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.command == "list":
        for name, (_, text) in TASKS.items():
            print(f"{name:14s} {text}")
        return 0
    start = time.time()
    prepare_tasks(args.tasks, force=args.force)
    print(f"done in {time.time() - start:.1f} s; tasks under {tasks_dir()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
