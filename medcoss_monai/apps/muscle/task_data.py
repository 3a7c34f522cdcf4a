"""Helpers MUSCLE's step-2 and step-3 bundles call: checked task items, class names, task data loaders.

The bundles hold the choices (tasks, transforms, heads, losses, schedule, switches); these functions
hold the mechanisms that do not fit in a JSON expression. Task items come from
:func:`medcoss_monai.bundle.finetune.task_items` (the sample task when ``dataset_dir`` is empty, else
the user's datalist JSON) and are checked before training, every problem named with its file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from monai.data import DataLoader, Dataset
from torch.utils.data import DistributedSampler
from monai.data.utils import no_collation
from monai.transforms import Compose

from medcoss_monai.bundle.finetune import checked_items, load_task, task_items
from medcoss_monai.errors import BadInputError
from medcoss_monai.apps.muscle.replay import memory_items

__all__ = [
    "box_problems",
    "checked_task_items",
    "task_class_names",
    "items_by_task",
    "class_names_by_task",
    "task_loaders",
]

KINDS = ("classification", "segmentation", "detection")


def box_problems(item: Mapping[str, Any], num_classes: int, boxes_key: str = "boxes", labels_key: str = "labels") -> list[str]:
    """What is wrong with one detection item's boxes and labels (empty when nothing is).

    Boxes are ``[x1, y1, x2, y2]`` with ``x1 < x2`` and ``y1 < y2``, one label in ``[0, num_classes)``
    per box. An image without boxes is allowed (``[]`` and ``[]``).

    Args:
        item: a datalist item.
        num_classes: number of object classes.
        boxes_key: key of the boxes.
        labels_key: key of the labels.

    Returns:
        One message per problem, naming the image.
    """
    where = item.get("image", "item")
    if boxes_key not in item or labels_key not in item:
        return [f"{where}: a detection item needs '{boxes_key}' and '{labels_key}'"]
    try:
        boxes = np.asarray(item[boxes_key], dtype=float).reshape(-1, 4)
        labels = np.asarray(item[labels_key], dtype=float).reshape(-1)
    except (TypeError, ValueError):
        return [f"{where}: '{boxes_key}' is not a list of [x1, y1, x2, y2] boxes or '{labels_key}' not a list of ints"]
    problems = []
    if len(boxes) != len(labels):
        problems.append(f"{where}: {len(boxes)} boxes but {len(labels)} labels")
    if not np.isfinite(boxes).all() or (boxes[:, 2:] <= boxes[:, :2]).any():
        problems.append(f"{where}: a box is not finite or has x2 <= x1 or y2 <= y1 ({boxes.tolist()[:3]})")
    if ((labels < 0) | (labels >= num_classes) | (labels != np.round(labels))).any():
        problems.append(f"{where}: box labels {labels.tolist()} are not classes 0..{num_classes - 1}")
    return problems


def checked_task_items(
    dataset_dir: str | os.PathLike | None,
    task: str,
    split: str,
    kind: str,
    num_classes: int,
    max_items: int | None = None,
    seed: int = 0,
    mask_values: Sequence[int] | None = (0, 255),
    skip_bad_inputs: bool = False,
    rejected_path: str | os.PathLike | None = None,
    label_fraction: float = 1.0,
) -> list[dict[str, Any]]:
    """The items of one split of a MUSCLE task, checked before training.

    Images must be readable 2D images (not constant); labels: a class index (classification), a mask on
    the image's grid with ``mask_values`` (segmentation), boxes and labels (:func:`box_problems`); the
    checks are those of :func:`~medcoss_monai.bundle.finetune.checked_items`.

    Args:
        dataset_dir: "" for the sample task, else a datalist JSON (or a folder holding ``datalist.json``).
        task: the task name.
        split: ``training``, ``validation`` or ``test``.
        kind: ``classification``, ``segmentation`` or ``detection``.
        num_classes: classes of the task (segmentation: with background; detection: object classes).
        max_items: keep at most this many items (a fixed random subset; None: all).
        seed: the subset's seed.
        mask_values: allowed mask values (segmentation).
        skip_bad_inputs: drop bad items (listed in ``rejected_path``) instead of stopping.
        rejected_path: JSON file listing dropped items.
        label_fraction: the fraction of the training split kept, per class (segmentation and detection
            items, which have no class: of all items); other splits are whole
            (:func:`~medcoss_monai.data.label_fraction.label_fraction_items`).

    Returns:
        The good items.

    Raises:
        BadInputError: bad items (and ``skip_bad_inputs`` is False), each named with its problem.
    """
    if kind not in KINDS:
        raise BadInputError(f"Task '{task}': kind '{kind}' is not one of {KINDS}.")
    return checked_items(
        task_items(dataset_dir, task, split, max_items, seed, label_fraction), num_classes,
        mask_values if kind == "segmentation" else None, task=task, skip_bad_inputs=skip_bad_inputs,
        rejected_path=rejected_path, modality="xray", source=f"{task} ({split})",
        label_check=(lambda item: box_problems(item, num_classes)) if kind == "detection" else None,
    )


def task_class_names(dataset_dir: str | os.PathLike | None, task: str, num_classes: int) -> list[str]:
    """The datalist's ``classes`` (``class_<i>`` when it has none).

    Raises:
        BadInputError: the datalist names another number of classes than the bundle's ``num_classes``.
    """
    names = load_task(dataset_dir, task).get("classes")
    if names is None:
        return [f"class_{i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise BadInputError(f"Task '{task}': its datalist lists {len(names)} classes {names}, the bundle expects {num_classes}.")
    return [str(n) for n in names]


def items_by_task(
    tasks: Mapping[str, Mapping[str, Any]],
    split: str,
    max_items: int | None = None,
    seed: int = 0,
    skip_bad_inputs: bool = False,
    rejected_dir: str | os.PathLike | None = None,
    label_fraction: float = 1.0,
) -> dict[str, list[dict[str, Any]]]:
    """The checked items of one split of every task (:func:`checked_task_items`).

    Args:
        tasks: task -> ``{"kind", "num_classes", "dataset_dir"}`` (the bundle's ``tasks``).
        split: ``training``, ``validation`` or ``test``.
        max_items: at most this many items per task (None: all).
        seed: the subset's seed.
        skip_bad_inputs: drop bad items instead of stopping.
        rejected_dir: folder of ``rejected_inputs_<task>_<split>.json``.
        label_fraction: the fraction of each training split kept (:func:`checked_task_items`).

    Returns:
        task -> items.
    """
    return {
        name: checked_task_items(
            spec.get("dataset_dir", ""), name, split, spec["kind"], int(spec["num_classes"]), max_items, seed,
            mask_values=spec.get("mask_values", (0, 255)), skip_bad_inputs=skip_bad_inputs,
            rejected_path=os.path.join(rejected_dir, f"rejected_inputs_{name}_{split}.json") if rejected_dir else None,
            label_fraction=label_fraction,
        )
        for name, spec in tasks.items()
    }


def class_names_by_task(tasks: Mapping[str, Mapping[str, Any]]) -> dict[str, list[str]]:
    """task -> class names of its datalist (:func:`task_class_names`)."""
    return {name: task_class_names(spec.get("dataset_dir", ""), name, int(spec["num_classes"])) for name, spec in tasks.items()}


def task_loaders(
    items: Mapping[str, Sequence[dict[str, Any]]],
    tasks: Mapping[str, Mapping[str, Any]],
    transforms: Mapping[str, Sequence[Any]],
    batch_size: int,
    shuffle: bool,
    num_workers: int = 0,
    memory_size: int | None = None,
    seed: int = 0,
    distributed: bool = False,
) -> dict[str, DataLoader]:
    """One loader per task; detection batches are lists of items (their numbers of boxes differ).

    Args:
        items: task -> items (:func:`items_by_task`).
        tasks: task -> spec with its ``kind``.
        transforms: kind -> MONAI dict transforms.
        batch_size: items per batch.
        shuffle: reshuffle every pass (training); such a loader also drops a last incomplete batch when
            the items fill more than one batch.
        num_workers: loader workers.
        memory_size: when given, each loader holds only the task's replay memory
            (:func:`~medcoss_monai.apps.muscle.replay.memory_items` of this size, drawn with ``seed``).
        seed: the memory's (and the distributed sampler's) seed.
        distributed: shard every loader over the processes (``DistributedSampler``), for training data
            under ``torch.distributed``.

    Returns:
        task -> loader.
    """
    loaders = {}
    for name, task_items_ in items.items():
        kind = tasks[name]["kind"]
        chosen = memory_items(task_items_, int(memory_size), seed) if memory_size is not None else list(task_items_)
        collate = {"collate_fn": no_collation} if kind == "detection" else {}
        dataset = Dataset(chosen, Compose(list(transforms[kind])))
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed) if distributed else None
        # a training batch of one image breaks BatchNorm on 1x1 maps (DeepLab-v3's image pooling): drop
        # a last incomplete batch when the data fill at least one whole batch
        drop_last = shuffle and len(sampler if sampler is not None else dataset) > int(batch_size)
        loaders[name] = DataLoader(
            dataset, batch_size=int(batch_size), shuffle=shuffle and sampler is None, sampler=sampler,
            num_workers=int(num_workers), drop_last=drop_last, **collate,
        )
    return loaders
