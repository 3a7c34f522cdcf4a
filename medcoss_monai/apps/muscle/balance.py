"""Sampling weights that give every dataset the same share of draws (MUSCLE step 1).

Pooled X-ray datasets differ in size by orders of magnitude (ChestX-ray14's 112,120 films against a
few hundred of Montgomery's); drawn uniformly, the small ones would barely be seen. With weight
``1 / (number of datasets * size of the item's dataset)`` per item, a weighted sampler (MONAI's
``DistributedWeightedRandomSampler``, which also shards across processes) draws each dataset
equally often, and the items of one dataset uniformly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from medcoss_monai.errors import BadInputError

__all__ = ["dataset_balance_weights"]


def dataset_balance_weights(items: Sequence[Mapping[str, Any]], key: str = "dataset") -> list[float]:
    """Per-item weights, summing to 1, under which every value of ``item[key]`` has equal total weight.

    Args:
        items: datalist items; items without ``key`` form one dataset together.
        key: the item key naming the dataset.

    Returns:
        One weight per item, in order.
    """
    if not items:
        raise BadInputError("no items to weight: the MD-MoCo datalist is empty.")
    names = [str(it.get(key, "")) for it in items]
    counts = Counter(names)
    return [1.0 / (len(counts) * counts[n]) for n in names]
