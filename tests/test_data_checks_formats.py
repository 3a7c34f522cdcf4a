"""The pre-training checks tell a plain TIFF tile from a slide, and a short volume from an RGB image."""

from __future__ import annotations

import nibabel as nib
import numpy as np
from PIL import Image

from medcoss_monai.data.checks import item_problems
from medcoss_monai.transforms.tissue import is_slide


def test_a_plain_tiff_tile_is_a_2d_image_and_a_pyramidal_slide_is_a_slide(sample_data, tmp_path):
    # NCT-CRC-HE-100K tiles are striped RGB TIFFs, which OpenSlide does not open
    tile = tmp_path / "ADI-0001.tif"
    Image.open(sample_data / "pathology" / "ihc.png").convert("RGB").save(tile)
    assert not is_slide(tile)
    assert item_problems({"image": str(tile)}, ("image",), 2) == []
    slide = sample_data / "pathology" / "cmu_small_region.svs"
    assert is_slide(slide)
    assert item_problems({"image": str(slide)}, ("image",), 2) == []


def test_a_volume_of_three_slices_is_3d(datalist, tmp_path):
    # a DeepLesion key-slice volume can be 3 slices thick; its last axis is not an RGB channel
    from monai.transforms import LoadImage

    ct = np.asarray(LoadImage(image_only=True)(datalist("ct")["training"][0]["image"]))  # the real CT (NRRD)
    middle = ct.shape[2] // 2
    short = nib.Nifti1Image(ct[:, :, middle - 1 : middle + 2].astype(np.int16), np.diag([0.9, 0.9, 2.5, 1.0]))
    path = tmp_path / "short.nii.gz"
    nib.save(short, path)
    assert item_problems({"image": str(path)}, ("image",), 3) == []
    assert any("has 3 spatial dimensions" in p for p in item_problems({"image": str(path)}, ("image",), 2))
