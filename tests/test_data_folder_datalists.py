"""Seeded splitting of task items (``split_items``): sizes, disjointness and reproducibility (pure mechanics)."""

from __future__ import annotations

import pytest

from medcoss_monai.data.folder_datalists import split_items


@pytest.mark.parametrize("n", [0, 1, 7, 10, 33, 101])
def test_split_sizes_are_the_rounded_fractions_and_nothing_is_lost_or_shared(n):
    items = [{"id": i} for i in range(n)]
    out = split_items(items, validation_fraction=0.1, test_fraction=0.3, seed=0)
    assert len(out["test"]) == round(0.3 * n) and len(out["validation"]) == round(0.1 * n)
    ids = [it["id"] for split in ("training", "validation", "test") for it in out[split]]
    assert sorted(ids) == list(range(n))  # each item in exactly one split


def test_split_is_seeded_and_shuffled():
    items = [{"id": i} for i in range(50)]
    a, b, c = split_items(items, seed=0), split_items(items, seed=0), split_items(items, seed=1)
    assert a == b and a["test"] != c["test"]
    # shuffled, not cut from the front: the test split is not the first 15 items
    assert [it["id"] for it in a["test"]] != list(range(15))
