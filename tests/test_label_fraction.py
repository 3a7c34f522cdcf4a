"""--label_fraction: a seeded, class-stratified subset of the training split."""

from __future__ import annotations

import pytest

from medcoss_monai.data.label_fraction import label_fraction_items
from medcoss_monai.errors import BadInputError


def _items():
    # 20 of class 0, 10 of class 1, 2 of class 2: a plain random 40% could drop class 2
    labels = [0] * 20 + [1] * 10 + [2] * 2
    return [{"image": f"img{i}.png", "label": c} for i, c in enumerate(labels)]


def test_each_class_keeps_its_fraction_and_none_vanishes():
    kept = label_fraction_items(_items(), 0.4, seed=0)
    counts = {c: sum(1 for i in kept if i["label"] == c) for c in (0, 1, 2)}
    assert counts == {0: 8, 1: 4, 2: 1}
    names = [i["image"] for i in kept]
    assert names == sorted(names, key=lambda n: int(n[3:-4]))  # original order kept


def test_same_seed_same_subset_other_seed_other_subset():
    a = label_fraction_items(_items(), 0.4, seed=1)
    assert a == label_fraction_items(_items(), 0.4, seed=1)
    assert a != label_fraction_items(_items(), 0.4, seed=2)


def test_multilabel_and_mask_items():
    multi = [{"text": str(i), "label": [i % 2, 1 - i % 2]} for i in range(10)]
    kept = label_fraction_items(multi, 0.5, seed=0)
    assert sorted(tuple(i["label"]) for i in kept) == [(0, 1)] * 3 + [(1, 0)] * 3
    masks = [{"image": f"{i}.nii.gz", "label": f"{i}_seg.nii.gz"} for i in range(10)]
    assert len(label_fraction_items(masks, 0.3, seed=0)) == 3


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5])
def test_a_fraction_outside_0_1_is_refused(fraction):
    with pytest.raises(BadInputError, match="label_fraction"):
        label_fraction_items(_items(), fraction)


def test_fraction_one_keeps_everything():
    assert label_fraction_items(_items(), 1.0) == _items()


def test_finetuning_bundle_trains_on_the_fraction_and_tests_on_the_whole_split(tasks_ready, tmp_path):
    from collections import Counter

    from medcoss_monai.layout import bundles_dir, read_bundle

    def splits(**overrides):
        parser = read_bundle(bundles_dir() / "finetune_xray_cls.json", {"output_dir": str(tmp_path), **overrides})
        parser.parse()
        return [parser.get_parsed_content(f"{s}#datalist") for s in ("train", "evaluate")]

    (train, test), (train_40, test_40) = splits(), splits(label_fraction=0.4)
    full, kept = Counter(i["label"] for i in train), Counter(i["label"] for i in train_40)
    assert set(kept) == set(full) and all(kept[c] == -(-4 * full[c] // 10) for c in full)  # ceil(0.4 n) each
    assert test_40 == test


@pytest.mark.parametrize("bundle, task", [("finetune_muscle_cls.json", "muscle_bodypart_cls"),
                                          ("finetune_muscle_seg.json", "muscle_lung_seg"),
                                          ("finetune_muscle_det.json", "muscle_chest_det")])
def test_muscle_bundles_train_on_the_fraction_and_test_on_the_whole_split(tasks_ready, tmp_path, bundle, task):
    from collections import Counter

    from medcoss_monai.layout import bundles_dir, read_bundle

    def splits(**overrides):
        parser = read_bundle(bundles_dir() / bundle, {"output_dir": str(tmp_path), **overrides})
        parser.parse()
        return [parser.get_parsed_content(f"{s}#items")[task] for s in ("train", "evaluate")]

    (train, test), (train_40, test_40) = splits(), splits(label_fraction=0.4)
    assert test_40 == test and 0 < len(train_40) < len(train)
    assert all(i in train for i in train_40)
    if task.endswith("_cls"):  # per class: ceil(0.4 n) of each
        full, kept = Counter(i["label"] for i in train), Counter(i["label"] for i in train_40)
        assert len(full) > 1 and all(kept[c] == -(-4 * full[c] // 10) for c in full)
    else:  # masks and boxes have no class: ceil(0.4 n) of all items
        assert len(train_40) == -(-4 * len(train) // 10)
    assert splits(label_fraction=0.4, seed=1)[0] != train_40  # another seed, another draw
