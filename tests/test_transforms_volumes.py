"""Default CT and MRI chains (MONAI transforms only) on the real volumes: contract shapes, dtypes, intensities."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import DataLoader, Dataset
from monai.transforms import LoadImage

ROI = [64, 64, 16]
SPACING = [1.5, 1.5, 3.0]
CROPS = 4


def volume_chain(modality: str) -> tuple[list[dict], list[dict]]:
    """Default CT/MRI chain in bundle syntax (deterministic, random) at demo size."""
    if modality == "ct":  # HU window [-1000, 1000] -> [0, 1]
        intensity = [
            {
                "_target_": "ScaleIntensityRanged",
                "keys": ["image"],
                "a_min": -1000,
                "a_max": 1000,
                "b_min": 0.0,
                "b_max": 1.0,
                "clip": True,
            }
        ]
    else:  # 0.5 / 99.5 percentile clip, then z-score (b_min/b_max must be numbers when clip=True)
        intensity = [
            {
                "_target_": "ScaleIntensityRangePercentilesd",
                "keys": ["image"],
                "lower": 0.5,
                "upper": 99.5,
                "b_min": 0.0,
                "b_max": 1.0,
                "clip": True,
            },
            {"_target_": "NormalizeIntensityd", "keys": ["image"]},
        ]
    deterministic = [
        {"_target_": "LoadImaged", "keys": ["image"], "image_only": True, "ensure_channel_first": True},
        {"_target_": "Orientationd", "keys": ["image"], "axcodes": "RAS"},
        {"_target_": "Spacingd", "keys": ["image"], "pixdim": SPACING, "mode": "bilinear"},
        *intensity,
        {"_target_": "SpatialPadd", "keys": ["image"], "spatial_size": ROI},
        {"_target_": "EnsureTyped", "keys": ["image"], "dtype": "$torch.float32", "track_meta": False},
        {"_target_": "SelectItemsd", "keys": ["image"]},
    ]
    random = [
        {
            "_target_": "RandSpatialCropSamplesd",
            "keys": ["image"],
            "roi_size": ROI,
            "num_samples": CROPS,
            "random_size": False,
        },
        {"_target_": "RandFlipd", "keys": ["image"], "prob": 0.5, "spatial_axis": 0},
        {"_target_": "EnsureTyped", "keys": ["image"], "dtype": "$torch.float32", "track_meta": False},
    ]
    return deterministic, random


def _compose(transforms: list[dict]):
    return ConfigParser(
        {"imports": ["$import torch"], "c": {"_target_": "Compose", "transforms": transforms}}
    ).get_parsed_content("c")


@pytest.mark.parametrize("modality", ["ct", "mri"])
def test_volume_chain_batches_match_the_contract(modality, datalist):
    deterministic, random = volume_chain(modality)
    chain = _compose(deterministic + random)
    chain.set_random_state(0)
    items = datalist(modality)["training"][:2]
    batch = next(iter(DataLoader(Dataset(items, chain), batch_size=2)))
    assert set(batch) == {"image"}
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
