"""3D buffer items as crops (bundle switch ``buffer_crops``): chosen among grid crops, rehearsed as exactly that crop."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from stage_utils import BUNDLES, bundle_section, run_stage

from medcoss_monai.buffer import (
    LocatedCropd,
    VolumeCropsDataset,
    buffer_size,
    crop_rehearsal_transform,
    grid_starts,
    has_crops,
    load_buffer_manifest,
    write_buffer_manifest,
)
from medcoss_monai.buffer.crops import axis_starts
from medcoss_monai.layout import read_bundle


def test_grid_follows_the_reference_tiling():
    # reference Preprocess/splitting_to_patches.py: tiles of 24 slices, stride 12, the last one moved back to
    # end at the volume's end (a 50-slice volume: 0, 12, 24, 26)
    assert axis_starts(50, 24, 0.5) == [0, 12, 24, 26]
    # reference Preprocess/ADNI_split_slice.py: tiles of 16, stride 8
    assert axis_starts(40, 16, 0.5) == [0, 8, 16, 24]
    assert axis_starts(16, 16, 0.5) == [0] and axis_starts(10, 16, 0.5) == [0]
    assert axis_starts(100, 64, 0.0) == [0, 36]  # no overlap: abutting, the last one aligned to the end
    # the reference tiles the slices only: one centred crop in-plane per tile
    assert grid_starts((100, 70, 40), (64, 64, 16), 0.5, axes=[2]) == [(18, 3, 0), (18, 3, 8), (18, 3, 16), (18, 3, 24)]
    starts = grid_starts((100, 70, 40), (64, 64, 16), 0.0)  # every axis tiled: the whole volume covered
    assert len(starts) == 2 * 2 * 3 and starts[0] == (0, 0, 0) and starts[-1] == (36, 6, 24)
    with pytest.raises(ValueError, match="overlap"):
        axis_starts(10, 4, 1.0)


def _resolved(files, **overrides):
    parser = read_bundle([BUNDLES / f for f in files], {"output_dir": "/tmp/unused", "train#datalist": "$[]", **overrides})
    return parser


def test_switch_is_on_in_the_paper_overlay_for_3d_stages_and_off_in_the_demo():
    for modality in ("ct", "mri"):
        demo = _resolved([f"stage_{modality}.json"])
        assert demo.get_parsed_content("buffer_crops") is False
        assert type(demo.get_parsed_content("buffer#dataset")) is not VolumeCropsDataset
        paper = _resolved([f"stage_{modality}.json", "paper_scale.json"])
        assert paper.get_parsed_content("buffer_crops") is True
        dataset = paper.get_parsed_content("buffer#dataset")
        assert isinstance(dataset, VolumeCropsDataset)
        # the reference's sub-volume (16 x 192 x 192, here in RAS order), slices tiled with 50% overlap
        assert dataset.roi_size == (192, 192, 16) and dataset.overlap == 0.5 and dataset.axes == [2]
        assert paper.get_parsed_content("buffer#dataloader").batch_size == 1  # one volume's crops per batch
    # a 2D stage merged with the overlay keeps whole items
    xray = _resolved(["stage_xray.json", "paper_scale.json"])
    assert type(xray.get_parsed_content("buffer#dataset")) is not VolumeCropsDataset


def _volume(path, loaded):
    """The CT volume as the CT stage's own load_transforms leave it (demo sizes), read once per file."""
    if path not in loaded:
        load = bundle_section("ct", "load_transforms")
        data = {"image": path}
        for t in load:
            data = t(data)
        loaded[path] = torch.as_tensor(data["image"])
    return loaded[path]


def _variants(crop: torch.Tensor) -> list[torch.Tensor]:
    """The crop under every flip of the three axes and 90-degree turn in the first two (the stage's augmentations)."""
    out = []
    for turn in (0, 1):
        turned = torch.rot90(crop, turn, dims=(1, 2))
        for dims in itertools.chain.from_iterable(itertools.combinations((1, 2, 3), k) for k in range(4)):
            out.append(torch.flip(turned, dims=dims) if dims else turned)
    return out


def _matches(sample: torch.Tensor, crop: torch.Tensor) -> bool:
    return any(v.shape == sample.shape and torch.allclose(v, sample, atol=1e-5) for v in _variants(crop))


@pytest.mark.slow  # a CT stage on the three sample volumes, then its buffer rehearsed: ~80 s on 2 cores
def test_ct_stage_chooses_crops_and_the_next_stage_rehearses_exactly_them(sample_data, datalist, tmp_path):
    # a buffer of 20% (the recipe keeps 5%) so that several crops are checked
    stage = run_stage("ct", tmp_path, previous_stage="", buffer_crops=True, buffer_ratio=0.2, warmup_epochs=0)
    manifest = load_buffer_manifest(stage / "buffer.json")
    items = manifest["items"]
    volumes = datalist("ct")["training"]
    roi, overlap, axes = [64, 64, 16], 0.5, [2]
    assert has_crops(items)
    assert manifest["crop_grid"] == {"roi_size": roi, "overlap": overlap, "axes": axes, "n_volumes": len(volumes)}
    loaded: dict = {}
    # the candidates are every grid crop of every volume, and the buffer is its share of them
    n_crops = sum(len(grid_starts(_volume(v["image"], loaded).shape[1:], roi, overlap, axes)) for v in volumes)
    assert manifest["n_total"] == n_crops and len(items) == buffer_size(n_crops, 0.2)
    for it in items:
        shape = list(_volume(it["image"], loaded).shape[1:])
        assert it["volume_shape"] == shape and it["crop_size"] == roi
        assert all(0 <= s and s + r <= n for s, r, n in zip(it["crop_start"], roi, shape))
        assert tuple(it["crop_start"]) in grid_starts(shape, roi, overlap, axes)

    from medcoss_monai.bundle import buffer_loaders

    loaders = buffer_loaders(tmp_path, "mri", {"img_size_3d": roi}, batch_size=4, previous_stage="ct")
    batch = next(iter(loaders["ct"]))
    assert tuple(batch["image"].shape) == (4, 1, *roi)  # 4 crop items (a small buffer is repeated), not 4 // crops_per_volume volumes
    _check_rehearsed(items, loaders["ct"].dataset, roi, overlap, axes, loaded)


def _check_rehearsed(items, dataset, roi, overlap, axes, loaded):
    """Every crop item comes out of the rehearsal dataset as the crop at its location (up to the flips and turns)."""
    for i, it in enumerate(items):
        volume = _volume(it["image"], loaded)
        expected = volume[(slice(None), *(slice(s, s + r) for s, r in zip(it["crop_start"], roi)))]
        sample = torch.as_tensor(dataset[i]["image"])
        assert _matches(sample, expected), f"buffer item {i} is not the crop at {it['crop_start']}"
        # the check tells crops apart: other crops of the same volume do not pass it
        others = [s for s in grid_starts(volume.shape[1:], roi, overlap, axes) if list(s) != it["crop_start"]]
        assert not others or any(not _matches(sample, volume[(slice(None), *(slice(a, a + r) for a, r in zip(s, roi)))]) for s in others)


def test_real_ct_crops_chosen_by_the_bundle_are_rehearsed_exactly(datalist, tmp_path):
    """The CT bundle's buffer loader with the switch on, on a real volume (no training: a fresh demo network)."""
    from medcoss_monai.bundle import buffer_loaders
    from medcoss_monai.handlers import BufferSelectionHandler

    item = datalist("ct")["training"][-1]
    parser = read_bundle(BUNDLES / "stage_ct.json", {"output_dir": str(tmp_path), "buffer_crops": True,
                                                     "train#datalist": [item], "batch_size": 2})
    roi, overlap, axes = parser.get_parsed_content("img_size_3d"), 0.5, [2]
    stage = tmp_path / "stage_ct"
    stage.mkdir()
    (stage / "stage.json").write_text(json.dumps({"modality": "ct", "previous_stage": ""}))
    handler = BufferSelectionHandler(parser.get_parsed_content("buffer#dataloader"), stage, "ct", items=[item],
                                     cluster_ratio=0.5, buffer_ratio=0.4, network=parser.get_parsed_content("network_def"),
                                     chunk_size=2)
    handler(None)
    manifest = load_buffer_manifest(stage / "buffer.json")
    loaded: dict = {}
    shape = list(_volume(item["image"], loaded).shape[1:])
    n_crops = len(grid_starts(shape, roi, overlap, axes))
    assert manifest["n_total"] == n_crops > 1 and len(manifest["items"]) == buffer_size(n_crops, 0.4)
    for it in manifest["items"]:
        assert it["volume_shape"] == shape and tuple(it["crop_start"]) in grid_starts(shape, roi, overlap, axes)
    loaders = buffer_loaders(tmp_path, "mri", {"img_size_3d": roi}, batch_size=2, previous_stage="ct")
    assert tuple(next(iter(loaders["ct"]))["image"].shape) == (2, 1, *roi)  # one sample per crop item
    _check_rehearsed(manifest["items"], loaders["ct"].dataset, roi, overlap, axes, loaded)


def test_old_whole_volume_manifest_still_loads(datalist, tmp_path):
    """A buffer.json written before crops existed (no crop keys, no crop_grid) is rehearsed as whole volumes."""
    from medcoss_monai.bundle import buffer_loaders

    folder = tmp_path / "run" / "stage_ct"
    folder.mkdir(parents=True)
    (folder / "stage.json").write_text(json.dumps({"modality": "ct", "previous_stage": ""}))
    item = datalist("ct")["training"][0]
    old = {"modality": "ct", "n_total": 1, "n_clusters": 1, "buffer_ratio": 1.0, "cluster_ratio": 1.0,
           "sampler": "kmeans", "items": [{**item, "cluster": 0, "distance": 0.0}]}
    (folder / "buffer.json").write_text(json.dumps(old))
    manifest = load_buffer_manifest(folder / "buffer.json")
    assert not has_crops(manifest["items"]) and "crop_grid" not in manifest
    loaders = buffer_loaders(tmp_path / "run", "mri", {"img_size_3d": [64, 64, 16]}, batch_size=4, previous_stage="ct",
                             dataset_cache="none")
    batch = next(iter(loaders["ct"]))
    assert tuple(batch["image"].shape) == (8, 1, 64, 64, 16)  # one volume, the CT stage's 8 random crops


def test_malformed_crop_locations_are_refused(datalist, tmp_path):
    item = datalist("ct")["training"][0]
    crop = {"crop_start": [0, 0, 40], "crop_size": [64, 64, 16], "volume_shape": [200, 200, 50]}
    path = tmp_path / "buffer.json"
    with pytest.raises(ValueError, match="outside its volume"):
        write_buffer_manifest(path, "ct", [{**item, **crop}], [0], 1, 1, 1.0, 1.0, "kmeans")
    with pytest.raises(ValueError, match="all crops or all whole items"):
        write_buffer_manifest(path, "ct", [{**item, **crop, "crop_start": [0, 0, 0]}, item], [0, 1], 2, 1, 1.0, 1.0, "kmeans")
    with pytest.raises(ValueError, match="malformed crop location"):
        write_buffer_manifest(path, "ct", [{**item, "crop_start": [0, -1, 0], "crop_size": [64, 64, 16]}], [0], 1, 1, 1.0, 1.0, "kmeans")


def test_located_crop_refuses_other_settings_and_sizes():
    volume = torch.arange(2 * 6 * 5 * 4, dtype=torch.float32).reshape(2, 6, 5, 4)  # mechanics: a known array
    crop = LocatedCropd(["image"], transform=lambda d: {"image": volume})
    item = {"image": "f.nii.gz", "crop_start": [1, 2, 0], "crop_size": [3, 3, 4], "volume_shape": [6, 5, 4]}
    assert torch.equal(crop(item)["image"], volume[:, 1:4, 2:5, 0:4])
    with pytest.raises(ValueError, match="select the buffer again"):
        crop({**item, "volume_shape": [7, 5, 4]})
    parser = _resolved(["stage_ct.json"], img_size_3d=[32, 32, 16])
    with pytest.raises(ValueError, match="img_size_3d"):
        crop_rehearsal_transform(parser, [{**item, "crop_size": [64, 64, 16]}], "buffer.json")


def test_volume_crops_dataset_gives_every_grid_crop_with_its_location():
    volume = torch.rand(1, 40, 30, 20)  # mechanics: where each crop comes from
    dataset = VolumeCropsDataset([{"image": "a"}, {"image": "b"}], lambda d: {"image": volume}, (16, 16, 8), 0.5)
    crops = dataset[1]
    starts = grid_starts((40, 30, 20), (16, 16, 8), 0.5)
    assert len(crops) == len(starts)
    for c, s in zip(crops, starts):
        assert c["index"] == 1 and tuple(c["crop_start"].tolist()) == s and c["volume_shape"].tolist() == [40, 30, 20]
        assert torch.equal(c["image"], volume[:, s[0] : s[0] + 16, s[1] : s[1] + 16, s[2] : s[2] + 8])
    np.testing.assert_array_equal(crops[-1]["crop_start"].numpy(), [24, 14, 12])
