"""RandResizedCrop (2D, MAE-style) mechanics and the pad-then-crop recipe for volumes smaller than the roi."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose, LoadImaged, RandSpatialCropSamplesd, SpatialPadd

from medcoss_monai.transforms import LoadXRay, RandResizedCrop, RandResizedCropd


def _coords(h: int, w: int) -> torch.Tensor:
    """(1, H, W) image whose value is the pixel's flat index: shows which pixels a crop took."""
    return torch.arange(h * w, dtype=torch.float32).reshape(1, h, w)


def test_box_area_and_ratio_within_range():
    crop = RandResizedCrop((32, 32), scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)).set_random_state(0)
    areas, ratios = [], []
    for _ in range(300):
        crop.randomize((240, 320))
        top, left, h, w = crop._box
        assert 0 <= top and top + h <= 240 and 0 <= left and left + w <= 320
        areas.append(h * w / (240 * 320))
        ratios.append(w / h)
    assert 0.2 - 0.01 <= min(areas) and max(areas) <= 1.0
    assert 3 / 4 - 0.02 <= min(ratios) and max(ratios) <= 4 / 3 + 0.02
    assert np.std(areas) > 0.1 and np.std(np.log(ratios)) > 0.05  # really random


def test_crop_takes_the_box_and_resizes():
    img = _coords(60, 80)
    crop = RandResizedCrop((20, 30), scale=(0.3, 0.3), ratio=(1.5, 1.5), mode="nearest").set_random_state(1)
    out = crop(img)
    assert out.shape == (1, 20, 30) and out.dtype == torch.float32
    top, left, h, w = crop._box
    assert math.isclose(h * w, 0.3 * 60 * 80, rel_tol=0.05) and math.isclose(w / h, 1.5, rel_tol=0.05)
    taken = img[0, top : top + h, left : left + w]
    assert set(out.unique().tolist()) <= set(taken.unique().tolist())
    assert out[0, 0, 0] == taken[0, 0]


def test_full_box_at_output_size_is_identity():
    img = torch.rand(3, 48, 48)
    out = RandResizedCrop((48, 48), scale=(1.0, 1.0), ratio=(1.0, 1.0))(img)
    torch.testing.assert_close(torch.as_tensor(out), img)


def test_small_image_is_padded_not_crashed():
    img = torch.rand(3, 40, 50) + 1.0
    out = RandResizedCrop((96, 96), scale=(1.0, 1.0), ratio=(1.0, 1.0))(img)
    assert out.shape == (3, 96, 96)
    assert float(out[:, 48, 48].min()) >= 1.0 and float(out[:, 0, 0].max()) == 0.0  # image centred, zero border


def test_fallback_when_no_draw_fits():
    # a 10:1 strip cannot hold a box of ratio <= 4/3 with area >= 90%: the centred fallback is used
    crop = RandResizedCrop((16, 16), scale=(0.9, 1.0)).set_random_state(0)
    crop.randomize((20, 200))
    assert crop._box == (0, 86, 20, 27)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="scale"):
        RandResizedCrop(32, scale=(0.5, 1.5))
    with pytest.raises(ValueError, match="ratio"):
        RandResizedCrop(32, ratio=(2.0, 1.0))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        RandResizedCrop(32)(torch.rand(1, 8, 8, 8))


def test_dict_crop_shares_the_box_and_is_reproducible(datalist):
    chest = LoadXRay()(datalist("xray")["training"][0]["image"])[:, ::8, ::8]  # real film, small
    data = {"image": chest, "copy": chest.clone(), "mask": (chest > 0.5).float()}
    crop = RandResizedCropd(["image", "copy", "mask"], (64, 64), mode=["bilinear", "bilinear", "nearest"])
    a = crop.set_random_state(3)(data)
    b = crop.set_random_state(3)(data)
    c = crop.set_random_state(4)(data)
    assert torch.equal(a["image"], a["copy"]) and torch.equal(a["image"], b["image"])
    assert not torch.equal(a["image"], c["image"])
    assert set(a["mask"].unique().tolist()) <= {0.0, 1.0}  # nearest keeps labels
    agree = ((a["image"] > 0.5).float() == a["mask"]).float().mean()
    assert agree > 0.9  # the mask was cut from the same box
    assert 0.0 <= float(a["image"].min()) and float(a["image"].max()) <= 1.0


def test_volume_smaller_than_roi_is_padded_then_cropped(datalist, tmp_path):
    """A real brain MRI cut to 30x20x6 voxels (smaller than the roi on every axis) still yields full crops."""
    item = datalist("mri")["training"][0]
    loaded = LoadImaged("image", image_only=True)(item)["image"]
    assert loaded.ndim == 3 and min(loaded.shape) >= 16
    centre = [s // 2 for s in loaded.shape]
    box = tuple(slice(c - n // 2, c - n // 2 + n) for c, n in zip(centre, (30, 20, 6)))
    small = nib.Nifti1Image(np.asarray(loaded)[box], np.asarray(loaded.affine))
    nib.save(small, tmp_path / "small.nii.gz")
    roi = (64, 64, 16)
    chain = Compose(
        [
            LoadImaged("image", image_only=True, ensure_channel_first=True),
            SpatialPadd("image", spatial_size=roi),
            RandSpatialCropSamplesd("image", roi_size=roi, num_samples=3, random_size=False),
        ]
    ).set_random_state(0)
    crops = chain({"image": str(tmp_path / "small.nii.gz")})
    assert len(crops) == 3 and all(c["image"].shape == (1, *roi) for c in crops)
    assert float(crops[0]["image"].abs().sum()) > 0  # the real voxels are inside
    # without the pad MONAI's crop silently returns the short volume, which would break collation
    no_pad = RandSpatialCropSamplesd("image", roi_size=roi, num_samples=2, random_size=False)
    short = no_pad(
        LoadImaged("image", image_only=True, ensure_channel_first=True)({"image": str(tmp_path / "small.nii.gz")})
    )
    assert short[0]["image"].shape == (1, 30, 20, 6)
