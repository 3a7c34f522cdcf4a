"""X-ray loading on the real JPEG 2000 DICOM films (chest PA, tibia) and the default X-ray chain."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from stage_utils import bundle_section
from monai.data import DataLoader, Dataset
from PIL import Image

from medcoss_monai.transforms import LoadXRay, LoadXRayd


def xray_chain() -> tuple:
    """The X-ray stage bundle's own (deterministic, random) chains."""
    return tuple(bundle_section("xray", p) for p in ("train#deterministic_transforms", "train#random_transforms"))


@pytest.fixture(scope="module")
def films(datalist) -> dict[str, Path]:
    items = datalist("xray")["training"] + datalist("xray")["validation"]
    return {it["body_part"]: Path(it["image"]) for it in items}


@pytest.fixture(scope="module")
def chest(films):
    return LoadXRay()(films["chest"])


def test_dicom_loads_channel_first_in_unit_range(films, chest):
    ds = pydicom.dcmread(films["chest"], stop_before_pixels=True)
    assert chest.shape == (1, ds.Rows, ds.Columns)  # (1, H=rows, W=cols)
    assert chest.dtype == torch.float32
    assert 0.0 <= float(chest.min()) < float(chest.max()) <= 1.0
    assert chest.meta["photometric_interpretation"] == "MONOCHROME1"
    assert chest.meta["bits_stored"] == 15
    assert not any(k.isalnum() and len(k) == 8 and k.upper() == k for k in chest.meta if isinstance(k, str))


def test_bits_stored_scaling_and_monochrome1_inversion(films):
    """MONOCHROME1 films: out = 1 - stored / (2**BitsStored - 1), exactly, for both real films."""
    for part in ("chest", "tibia"):
        raw = pydicom.dcmread(films[part]).pixel_array.astype(np.float64)
        bits = int(pydicom.dcmread(films[part], stop_before_pixels=True).BitsStored)
        out = LoadXRay()(films[part])[0].numpy()
        np.testing.assert_allclose(out, 1.0 - raw / (2**bits - 1), atol=1e-6)


def test_bits_stored_changes_the_scale(films, chest, tmp_path):
    ds = pydicom.dcmread(films["chest"])
    raw = ds.pixel_array.astype(np.float64)
    ds.BitsStored, ds.HighBit = 16, 15  # same pixels, declared 16-bit
    ds.save_as(tmp_path / "bits16.dcm")
    out = LoadXRay()(tmp_path / "bits16.dcm")
    assert out.meta["bits_stored"] == 16
    np.testing.assert_allclose(out[0].numpy(), 1.0 - raw / 65535.0, atol=1e-6)
    assert float(out.min()) > float(chest.min())  # a wider range leaves the film less dark-to-bright


def test_monochrome2_copy_is_the_inverse(films, chest, tmp_path):
    ds = pydicom.dcmread(films["chest"])
    ds.PhotometricInterpretation = "MONOCHROME2"  # compressed pixel data kept as is
    ds.save_as(tmp_path / "mono2.dcm")
    mono2 = LoadXRay()(tmp_path / "mono2.dcm")
    assert mono2.meta["photometric_interpretation"] == "MONOCHROME2"
    torch.testing.assert_close(mono2, 1.0 - chest, atol=1e-6, rtol=0)


def test_chest_film_is_upright(chest):
    """Rows run head to feet: the bright diaphragm/abdomen is in the lower half, the dark lungs in the upper."""
    img = chest[0]
    h, w = img.shape
    lungs = img[int(0.25 * h) : int(0.5 * h), int(0.15 * w) : int(0.35 * w)].mean()
    abdomen = img[int(0.8 * h) : int(0.95 * h), int(0.15 * w) : int(0.35 * w)].mean()
    assert abdomen > lungs + 0.1


def test_png_and_jpeg_match_the_dicom(chest, tmp_path):
    gray = chest[0].numpy()
    Image.fromarray(np.round(gray * 65535).astype(np.uint16)).save(tmp_path / "chest16.png")
    Image.fromarray(np.round(gray * 255).astype(np.uint8)).convert("RGB").save(tmp_path / "chest_rgb.png")
    Image.fromarray(np.round(gray * 255).astype(np.uint8)).save(tmp_path / "chest8.jpg", quality=95)
    for name, atol in (("chest16.png", 1e-4), ("chest_rgb.png", 3e-3), ("chest8.jpg", 0.08)):
        out = LoadXRay()(tmp_path / name)
        assert out.shape == chest.shape and out.dtype == torch.float32, name
        assert out.meta["photometric_interpretation"] == "MONOCHROME2"
        np.testing.assert_allclose(out[0].numpy(), gray, atol=atol, err_msg=name)


def test_bad_inputs_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.dcm"):
        LoadXRay()(tmp_path / "missing.dcm")
    (tmp_path / "broken.dcm").write_bytes(b"not a dicom file at all")
    with pytest.raises(ValueError, match="broken.dcm"):
        LoadXRay()(tmp_path / "broken.dcm")


def test_xray_chain_batches_match_the_contract(datalist):
    from monai.transforms import Compose

    deterministic, random = xray_chain()
    chain = Compose(deterministic + random)
    chain.set_random_state(0)
    items = datalist("xray")["training"] + datalist("xray")["validation"]
    batch = next(iter(DataLoader(Dataset(items, chain), batch_size=len(items))))
    assert set(batch) == {"image", "source_file"}  # the file of each crop, named if its loss diverges
    image = batch["image"]
    assert type(image) is torch.Tensor and image.dtype == torch.float32
    assert image.shape == (len(items), 3, 96, 96)
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert torch.equal(image[:, 0], image[:, 1]) and torch.equal(image[:, 0], image[:, 2])


def test_load_xrayd_replaces_paths(films):
    out = LoadXRayd("image")({"image": str(films["tibia"]), "body_part": "tibia"})
    assert out["body_part"] == "tibia"
    # the dictionary twin reads the same film as the array transform, not another one or a copy of the path
    assert torch.equal(torch.as_tensor(out["image"]), torch.as_tensor(LoadXRay()(films["tibia"])))
    assert not torch.equal(torch.as_tensor(out["image"])[:, :100, :100], torch.as_tensor(LoadXRay()(films["chest"]))[:, :100, :100])


def paper_xray_chain() -> tuple:
    """The X-ray stage's (deterministic, random) chains under the paper overlay ``bundles/paper_scale.json``."""
    from stage_utils import BUNDLES

    from medcoss_monai.layout import read_bundle

    parser = read_bundle([BUNDLES / "stage_xray.json", BUNDLES / "paper_scale.json"], {"output_dir": "."})
    parser.parse()
    return tuple(parser.get_parsed_content(p) for p in ("train#deterministic_transforms", "train#random_transforms"))


def test_paper_overlay_crops_as_the_reference(films):
    """Reference (MedCoSS ``dataloader/mimic_cxr_image_dataset.py`` and ``dataloader/Jointly_Dataset.py``,
    ``get_train_transform2D``): torchvision ``RandomResizedCrop(224, scale=(0.2, 1.0), interpolation=3)``
    (bicubic, aspect ratio (3/4, 4/3)) then ``RandomHorizontalFlip()``. The demo keeps its own crop."""
    from monai.transforms import Compose, RandFlipd

    from medcoss_monai.transforms import RandResizedCropd

    deterministic, random = paper_xray_chain()
    crops = [t for t in random if isinstance(t, RandResizedCropd)]
    assert len(crops) == 1
    crop = crops[0].cropper
    assert crop.spatial_size == (224, 224) and crop.scale == (0.2, 1.0)
    assert crop.ratio == pytest.approx((3 / 4, 4 / 3)) and crops[0].mode == ("bicubic",)  # the per-key resize
    flips = [t for t in random if isinstance(t, RandFlipd)]
    assert len(flips) == 1 and flips[0].prob == 0.5 and flips[0].flipper.spatial_axis == 1  # left-right
    demo = next(t for t in xray_chain()[1] if isinstance(t, RandResizedCropd))
    assert demo.cropper.scale == (0.05, 0.5) and demo.mode == ("bilinear",)

    # on the real chest film: 224 x 224 crops whose share of the film varies over the whole range
    film = Compose(deterministic)({"image": str(films["chest"])})
    height, width = (max(s, 224) for s in film["image"].shape[1:])  # the crop pads a film smaller than 224 first
    chain = Compose(random)
    chain.set_random_state(0)
    fractions = []
    for _ in range(60):
        out = chain(dict(film))
        assert tuple(out["image"].shape) == (3, 224, 224)
        top, left, h, w = crop._box
        fractions.append(h * w / (height * width))
    assert all(0.2 - 0.01 <= f <= 1.0 for f in fractions)
    assert min(fractions) < 0.35 and max(fractions) > 0.8 and np.std(fractions) > 0.15
