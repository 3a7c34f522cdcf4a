"""The stage's dataset cache switch: memory, disk (PersistentDataset, keyed by the stage settings) or none."""

from __future__ import annotations

import pytest
import torch
from stage_utils import BUNDLES

from medcoss_monai.data.caching import cache_folder, settings_digest, stage_dataset
from medcoss_monai.layout import read_bundle


def _ct_parser(tmp_path, **overrides):
    # the CT stage's own preprocessing on its real training volumes, two volumes only
    return read_bundle(BUNDLES / "stage_ct.json", {"output_dir": str(tmp_path / "run"), "max_items": 2, **overrides})


@pytest.mark.slow
@pytest.mark.usefixtures("sample_data")
def test_disk_cache_holds_the_deterministic_part_and_matches_memory(tmp_path):
    parser = _ct_parser(tmp_path, dataset_cache="disk")
    disk = parser.get_parsed_content("train#dataset")
    settings = dict(parser.get_parsed_content("settings"), modality="ct")
    folder = tmp_path / "run" / "dataset_cache" / f"ct_{settings_digest(settings)}"
    assert folder == cache_folder(tmp_path / "run" / "dataset_cache", settings)
    assert type(disk).__name__ == "PersistentDataset"
    assert not list(folder.glob("*.pt"))
    deterministic = parser.get_parsed_content("train#deterministic_transforms")
    memory = stage_dataset(disk.data, _compose(deterministic), cache="memory")
    uncached = stage_dataset(disk.data, _compose(deterministic), cache="none")
    cached_disk = stage_dataset(disk.data, _compose(deterministic), cache="disk", cache_dir=tmp_path / "det",
                                settings=settings)
    for i in range(len(disk.data)):
        expected = uncached[i]["image"]
        assert torch.equal(memory[i]["image"], expected)
        assert torch.equal(cached_disk[i]["image"], expected)  # first read: computed and written
        assert torch.equal(cached_disk[i]["image"], expected)  # second read: from the file
    assert len(list(cache_folder(tmp_path / "det", settings).glob("*.pt"))) == len(disk.data)
    # the stage's own dataset writes one file per volume the first time it is read, then random crops follow
    first = disk[0]
    assert len(list(folder.glob("*.pt"))) == 1
    assert tuple(first[0]["image"].shape[1:]) == tuple(parser.get_parsed_content("img_size_3d"))


def _compose(transforms):
    from monai.transforms import Compose

    return Compose(transforms)


def test_other_settings_use_another_cache_folder(tmp_path):
    fine = _ct_parser(tmp_path, dataset_cache="disk", ct_spacing=[1.0, 1.0, 1.0])
    coarse = _ct_parser(tmp_path, dataset_cache="disk")
    digests = {settings_digest(dict(p.get_parsed_content("settings"), modality="ct")) for p in (fine, coarse)}
    assert len(digests) == 2


def test_a_transform_changed_by_hand_does_not_read_the_cache(tmp_path):
    # same settings, other transform arguments: the items' cache keys differ, so nothing stale is read
    parser = _ct_parser(tmp_path)
    items = [{"image": "unused.nii.gz"}]
    settings = dict(parser.get_parsed_content("settings"), modality="ct")
    chain = parser.get_parsed_content("train#preprocessing")
    edited = _ct_parser(tmp_path, **{"load_transforms#3#b_max": 2.0}).get_parsed_content("train#preprocessing")
    # PersistentDataset names each item's file by the item's hash followed by this transform hash
    keys = [stage_dataset(items, c, cache="disk", cache_dir=tmp_path / "c", settings=settings).transform_hash
            for c in (chain, edited, chain)]
    assert keys[0] != keys[1] and keys[0] == keys[2]


def test_default_is_memory_and_unknown_cache_is_refused(tmp_path):
    parser = _ct_parser(tmp_path, **{"train#datalist": [{"image": "unused"}]})
    assert parser.get("dataset_cache") == "memory"
    paper = read_bundle([BUNDLES / "stage_ct.json", BUNDLES / "paper_scale.json"], {"output_dir": str(tmp_path)})
    assert paper.get("dataset_cache") == "disk"
    with pytest.raises(ValueError, match="dataset_cache must be one of"):
        stage_dataset([], lambda x: x, cache="ram")
    with pytest.raises(ValueError, match="needs a cache_dir"):
        stage_dataset([], lambda x: x, cache="disk")
