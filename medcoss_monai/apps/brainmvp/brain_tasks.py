"""The studies of a BrainMVP fine-tuning task: training / validation / test splits, checked before training.

With no ``--dataset_dir`` the task is the sample slab task of
:func:`~medcoss_monai.apps.brainmvp.studies.icbm_slab_task`; a study datalist JSON keeps its own splits;
a folder layout (BraTS, folder per study) is split by a hash of each study's name.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medcoss_monai.apps.brainmvp.studies import CONTRASTS, sample_task_datalist, study_datalist
from medcoss_monai.errors import BadInputError, install_run_hooks

__all__ = ["LABEL_MODES", "SPLITS", "task_datalist", "check_label_mode", "checked_task", "checked_classification_task",
           "write_splits", "main"]


def _folder_split(study: Mapping[str, Any]) -> str:
    """The split of a study of a folder layout, stable under adding studies: 10% validation, 20% test by name hash."""
    bucket = zlib.crc32(str(study["study"]).encode("utf-8")) % 10
    return "validation" if bucket == 0 else "test" if bucket in (1, 2) else "training"


def task_datalist(dataset_dir: str | os.PathLike | None, key: str, contrasts: Sequence[str] = CONTRASTS) -> list[dict[str, Any]]:
    """Studies of a fine-tuning bundle: the sample slab task when ``dataset_dir`` is empty, else :func:`study_datalist`.

    A folder layout (BraTS, folder per study) has no splits: its studies are split by a hash of their
    name, about 70% ``training``, 10% ``validation``, 20% ``test``. A datalist JSON keeps its own splits.

    Args:
        dataset_dir: as :func:`study_datalist`.
        key: ``training``, ``validation`` or ``test``.
        contrasts: allowed contrast names.

    Returns:
        The studies.
    """
    if dataset_dir and Path(dataset_dir).expanduser().is_dir():
        return [s for s in study_datalist(dataset_dir, "training", contrasts) if _folder_split(s) == key]
    return study_datalist(dataset_dir or sample_task_datalist(), key, contrasts)


LABEL_MODES = ("classes", "brats_regions")
"""How a fine-tuning bundle reads label maps: one class per value, or the BraTS regions TC / WT / ET."""
SPLITS = ("training", "validation", "test")


def check_label_mode(label_mode: str) -> str:
    """Refuse an unknown ``--label_mode`` before anything is loaded.

    Args:
        label_mode: the bundle's ``label_mode``.

    Returns:
        ``label_mode``.
    """
    if label_mode not in LABEL_MODES:
        raise BadInputError(f"--label_mode {label_mode!r}: use one of {list(LABEL_MODES)}")
    return label_mode


def checked_task(
    dataset_dir: str | os.PathLike | None,
    contrasts: Sequence[str],
    label_mode: str = "classes",
    num_classes: int = 2,
    et_label: int = 4,
) -> dict[str, list[dict[str, Any]]]:
    """The three splits of a fine-tuning task, refused before training if a split is empty or a label has unknown values.

    Args:
        dataset_dir: as :func:`task_datalist`.
        contrasts: the input contrasts.
        label_mode: ``"classes"`` (label values ``0 .. num_classes - 1``) or ``"brats_regions"``
            (BraTS values 0, 1, 2 and ``et_label``).
        num_classes: classes, background included (``"classes"`` mode).
        et_label: the enhancing-tumour value (4 in BraTS 2018-2022, 3 in BraTS 2023).

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}``.

    Raises:
        BadInputError: an unknown ``label_mode``, an empty split, a study without a label file, or a
            label file with values outside the allowed ones (every problem listed, files named).
    """
    from monai.transforms import LoadImage

    check_label_mode(label_mode)
    where = str(dataset_dir) if dataset_dir else "the sample slab task"
    task = {key: task_datalist(dataset_dir, key, contrasts) for key in SPLITS}
    empty = [key for key in SPLITS if not task[key]]
    if empty:
        raise BadInputError(
            f"{where}: no {' / '.join(empty)} studies. Fine-tuning selects its best epoch on 'validation' and "
            "reports on 'test': give a datalist JSON with 'training', 'validation' and 'test' lists."
        )
    allowed = set(range(int(num_classes))) if label_mode == "classes" else {0, 1, 2, int(et_label)}
    load = LoadImage(image_only=True)
    problems = []
    for key in SPLITS:
        for s in task[key]:
            if not s.get("label"):
                problems.append(f"{s.get('study', '?')} ({key}): no label file")
                continue
            values = np.unique(np.asarray(load(s["label"])))
            extra = [int(v) if float(v).is_integer() else v for v in values.tolist() if v not in allowed]
            if extra:
                problems.append(f"{s['label']}: label values {extra[:8]} are not among {sorted(allowed)} (--label_mode {label_mode})")
    if problems:
        raise BadInputError(f"{where}: {len(problems)} label problem(s):\n" + "\n".join(f"  {p}" for p in problems))
    return task


def checked_classification_task(
    dataset_dir: str | os.PathLike | None, contrasts: Sequence[str], num_classes: int
) -> dict[str, list[dict[str, Any]]]:
    """The three splits of a classification task (a class index per study), refused before training when wrong.

    Args:
        dataset_dir: a study datalist JSON (the ``abide``, ``adhd200`` or ``brats2018`` converters write one)
            whose studies carry an integer ``label``.
        contrasts: the input contrasts; every study must have each of them.
        num_classes: labels are ``0 .. num_classes - 1``.

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}``.

    Raises:
        BadInputError: no datalist, an empty split, a study without one of ``contrasts``, a label that is
            not a class index below ``num_classes``, or a validation split of one class (every problem listed,
            studies named).
    """
    if not dataset_dir:
        raise BadInputError("BrainMVP classification needs --dataset_dir: a study datalist JSON with an integer 'label' "
                            "per study (python -m medcoss_monai.data.prepare abide|adhd200|brats2018 writes one).")
    task = {key: task_datalist(dataset_dir, key, CONTRASTS) for key in SPLITS}
    empty = [key for key in SPLITS if not task[key]]
    if empty:
        raise BadInputError(f"{dataset_dir}: no {' / '.join(empty)} studies. Fine-tuning selects its best epoch on "
                            "'validation' and reports on 'test': give a datalist JSON with all three lists.")
    problems = []
    for key in SPLITS:
        for s in task[key]:
            name = f"{s.get('study', '?')} ({key})"
            label = s.get("label")
            if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < int(num_classes):
                problems.append(f"{name}: label {label!r} is not a class index 0 .. {int(num_classes) - 1} (--num_classes {num_classes})")
            absent = [c for c in contrasts if c not in s["image"]]
            if absent:
                problems.append(f"{name}: no {', '.join(absent)} image (--input_contrasts {list(contrasts)})")
    classes = {s.get("label") for s in task["validation"]}
    if len(classes) < 2:
        problems.append(f"validation: every study has label {sorted(classes, key=str)}; the best epoch is chosen by validation "
                        "AUC, which needs studies of two classes")
    if problems:
        raise BadInputError(f"{dataset_dir}: {len(problems)} problem(s):\n" + "\n".join(f"  {p}" for p in problems))
    return task


def write_splits(dataset_dir: str | os.PathLike, out: str | os.PathLike, contrasts: Sequence[str] = CONTRASTS) -> dict[str, int]:
    """Write the splits of a study folder as a datalist JSON, for the pre-training stage and the fine-tuning alike.

    A stage given the JSON trains on its ``training`` list only, so the studies a fine-tuned model is
    validated and tested on were never pre-trained on (a stage given the folder itself takes every study).

    Args:
        dataset_dir: a BraTS or folder-per-study folder.
        out: the JSON file.
        contrasts: allowed contrast names.

    Returns:
        The number of studies per split.
    """
    from medcoss_monai.utils import atomic_write_json

    if not Path(dataset_dir).expanduser().is_dir():
        raise BadInputError(f"--dataset_dir {dataset_dir}: not a folder of studies (BraTS or one folder per study)")
    task = {key: task_datalist(dataset_dir, key, contrasts) for key in SPLITS}
    atomic_write_json(task, out)
    return {key: len(v) for key, v in task.items()}


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m medcoss_monai.apps.brainmvp.brain_tasks --dataset_dir /data/BraTS2021 --out brats_splits.json``."""
    install_run_hooks()  # user errors end with their message; library probes at DEBUG
    import argparse

    parser = argparse.ArgumentParser(description=write_splits.__doc__.splitlines()[0])
    parser.add_argument("--dataset_dir", required=True, help="a BraTS or folder-per-study folder")
    parser.add_argument("--out", required=True, help="the datalist JSON to write")
    args = parser.parse_args(argv)
    sizes = write_splits(args.dataset_dir, args.out)
    print(f"{args.out}: " + ", ".join(f"{n} {key}" for key, n in sizes.items()))


if __name__ == "__main__":
    main()
