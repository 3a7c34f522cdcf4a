"""Default CT and MRI chains (MONAI transforms only) on the real volumes: contract shapes, dtypes, intensities."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from stage_utils import bundle_section
from monai.data import DataLoader, Dataset
from monai.transforms import LoadImage

ROI = list(bundle_section("ct", "img_size_3d"))
SPACING = list(bundle_section("ct", "ct_spacing"))
CROPS = 4


def volume_chain(modality: str) -> tuple:
    """The stage bundle's own (deterministic, random) chains, with ``crops_per_volume`` = CROPS."""
    parts = ("train#deterministic_transforms", "train#random_transforms")
    return tuple(bundle_section(modality, p, crops_per_volume=CROPS) for p in parts)


def _compose(transforms: list):
    from monai.transforms import Compose

    return Compose(transforms)


@pytest.mark.parametrize("modality", ["ct", "mri"])
def test_volume_chain_batches_match_the_contract(modality, datalist):
    deterministic, random = volume_chain(modality)
    chain = _compose(deterministic + random)
    chain.set_random_state(0)
    items = datalist(modality)["training"][:2]
    batch = next(iter(DataLoader(Dataset(items, chain), batch_size=2)))
    assert set(batch) == {"image", "source_file"}  # the file of each crop, named if its loss diverges
    assert sorted(set(batch["source_file"])) == sorted(str(i["image"]) for i in items)
    image = batch["image"]
    assert type(image) is torch.Tensor and image.dtype == torch.float32
    assert image.shape == (2 * CROPS, 1, *ROI)
    assert torch.isfinite(image).all()
    if modality == "ct":
        assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0


def test_ct_deterministic_part_resamples_and_windows(datalist):
    item = datalist("ct")["training"][0]
    raw = LoadImage(image_only=True, ensure_channel_first=True)(item["image"])
    out = _compose(volume_chain("ct")[0])(item)["image"]
    expected = [round(n * s / t) for n, s, t in zip(raw.shape[1:], raw.pixdim.tolist(), SPACING)]
    assert all(abs(a - b) <= 1 for a, b in zip(out.shape[1:], expected)), (out.shape, expected)
    assert float(out.min()) == 0.0 and float(out.max()) <= 1.0
    # HU -> [0, 1]: air (< -1000 HU) is 0, water (0 HU) maps to 0.5; soft tissue sits near it
    assert float((out == 0.0).float().mean()) > 0.05
    body = out[(out > 0.45) & (out < 0.6)]
    assert body.numel() > 0.05 * out.numel()


def test_mri_deterministic_part_clips_and_zscores(datalist):
    for item in datalist("mri")["training"]:
        out = _compose(volume_chain("mri")[0])({"image": item["image"]})["image"]
        assert min(out.shape[1:]) >= 16
        assert abs(float(out.mean())) < 1e-3 and abs(float(out.std()) - 1.0) < 1e-2
        # clipped at the 99.5th percentile: nothing far above the bulk, many voxels exactly at the cap
        top = float(out.max())
        assert float((out >= top - 1e-5).float().mean()) >= 0.001
        assert np.isfinite(top) and top < 10
