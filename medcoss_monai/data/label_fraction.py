"""A seeded, class-stratified fraction of a training split, for label-efficiency curves.

BrainMVP reports its downstream results with 40% of the labelled training data, MedCoSS with 100%;
``--label_fraction F`` of a fine-tuning bundle keeps that fraction of each class (segmentation items,
whose label is a mask file, form one group), so a curve over F compares the same classes throughout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from medcoss_monai.errors import BadInputError

__all__ = ["label_fraction_items"]


def _class_of(label: Any) -> str:
    """The stratum of an item: its class (or multi-hot labels) when the label is a class, else one group."""
    if isinstance(label, (bool, int, np.integer)) or (isinstance(label, Sequence) and not isinstance(label, str)):
        return repr(np.asarray(label).tolist())
    return "one group"  # a mask path, or no label


def label_fraction_items(
    items: Sequence[dict[str, Any]], fraction: float, seed: int = 0, label_key: str = "label"
) -> list[dict[str, Any]]:
    """The items of ``fraction`` of each class, drawn with ``seed``, in their original order.

    Each class keeps ``ceil(fraction * n_class)`` items (at least one: no class vanishes from a small
    split), so the total can exceed ``fraction * len(items)`` by at most one item per class.

    Args:
        items: a training split.
        fraction: in (0, 1]; 1 keeps every item.
        seed: the draw's seed (the same seed gives the same subset).
        label_key: the key of the class label.

    Returns:
        The kept items.

    Raises:
        BadInputError: ``fraction`` is not in (0, 1].
    """
    fraction = float(fraction)
    if not 0.0 < fraction <= 1.0:
        raise BadInputError(f"--label_fraction {fraction}: give a fraction in (0, 1] of the training split (0.4 = 40%).")
    if fraction == 1.0:
        return list(items)
    strata: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        strata.setdefault(_class_of(item.get(label_key)), []).append(index)
    rng = np.random.default_rng(seed)
    kept: list[int] = []
    for name in sorted(strata):  # a fixed order of classes, so the draw depends on the seed only
        members = strata[name]
        kept += rng.permutation(members)[: math.ceil(fraction * len(members))].tolist()
    return [items[i] for i in sorted(kept)]
