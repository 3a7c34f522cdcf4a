"""DeepLesion converter: a miniature of the published layout built from a real CT volume.

The slices of the sample head CT are written as DeepLesion writes them (16-bit PNG, HU + 32768, in
``Images_png/<patient>_<study>_<series>/<slice>.png``) with a ``DL_info.csv`` in the publisher's columns.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medcoss_monai.data.prepare import deeplesion, prepare
from medcoss_monai.data.prepare.__main__ import main
from medcoss_monai.errors import BadInputError

DL_COLUMNS = [
    "File_name", "Patient_index", "Study_index", "Series_ID", "Key_slice_index", "Measurement_coordinates",
    "Bounding_boxes", "Lesion_diameters_Pixel_", "Normalized_lesion_location", "Coarse_lesion_type", "Possibly_noisy",
    "Slice_range", "Spacing_mm_px_", "Image_size", "DICOM_windows", "Patient_gender", "Patient_age", "Train_Val_Test",
]
# series folder -> (slice indices written, Train_Val_Test); series 1 has two runs of slices (two volumes)
# (runs of 5+ slices: the stages' checker reads a NIfTI of 3 or 4 slices as an RGB(A) image)
SERIES = {"000001_01_01": (list(range(40, 46)) + list(range(60, 65)), "1"),
          "000002_01_01": (list(range(50, 55)), "3"),
          "000003_02_01": (list(range(30, 35)), "2")}


@pytest.fixture(scope="module")
def ct(sample_data: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    img = nib.load(str(sample_data / "ct" / "cranium_ct.nii.gz"))
    vol = img.get_fdata()
    assert np.array_equal(vol, np.round(vol))  # integral HU: the PNG round trip must be exact
    return vol.astype(np.int16), tuple(float(z) for z in img.header.get_zooms()[:3])


def make_deeplesion(root: Path, vol: np.ndarray, zooms: tuple[float, ...]) -> Path:
    """Write the miniature: PNG slices of ``vol`` (value + 32768) and DL_info.csv."""
    rows = []
    for folder, (slices, split) in SERIES.items():
        out = root / "Images_png" / folder
        out.mkdir(parents=True)
        for z in slices:
            Image.fromarray((vol[:, :, z].astype(np.int32) + 32768).astype(np.uint16)).save(out / f"{z:03d}.png")
        patient, study, series = (int(v) for v in folder.split("_"))
        key = slices[len(slices) // 2]
        rows.append({
            "File_name": f"{folder}_{key:03d}.png", "Patient_index": patient, "Study_index": study, "Series_ID": series,
            "Key_slice_index": key, "Measurement_coordinates": "1, 2, 3, 4", "Bounding_boxes": "1, 2, 3, 4",
            "Lesion_diameters_Pixel_": "10, 5", "Normalized_lesion_location": "0.5, 0.5, 0.5", "Coarse_lesion_type": -1,
            "Possibly_noisy": 0, "Slice_range": f"{slices[0]}, {slices[-1]}",
            "Spacing_mm_px_": f"{zooms[1]}, {zooms[0]}, {zooms[2]}", "Image_size": f"{vol.shape[1]}, {vol.shape[0]}",
            "DICOM_windows": "-175, 275", "Patient_gender": "F", "Patient_age": 50, "Train_Val_Test": split,
        })
    with open(root / "DL_info.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, DL_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.fixture
def dl_root(tmp_path: Path, ct) -> Path:
    return make_deeplesion(tmp_path / "DeepLesion", *ct)


def test_volumes_equal_the_original_voxels_and_spacing(dl_root: Path, tmp_path: Path, ct):
    vol, zooms = ct
    out = tmp_path / "deeplesion.json"
    assert main(["deeplesion", "--root", str(dl_root), "--out", str(out), "--cache_dir", str(tmp_path / "cache"),
                 "--no_progress"]) == 0
    data = json.loads(out.read_text())
    items = {Path(it["image"]).name: it for s in ("training", "validation", "test") for it in data[s]}
    assert sorted(items) == ["000001_01_01_040-045.nii.gz", "000001_01_01_060-064.nii.gz",
                             "000002_01_01_050-054.nii.gz", "000003_02_01_030-034.nii.gz"]
    for name, item in items.items():
        first, last = item["slices"]
        img = nib.load(item["image"])
        assert img.get_data_dtype() == np.int16
        np.testing.assert_array_equal(np.asarray(img.dataobj), vol[:, :, first:last + 1])
        np.testing.assert_allclose(img.header.get_zooms(), zooms, rtol=1e-5)
    # the official split of Train_Val_Test, patient kept as the group
    assert [Path(it["image"]).name for it in data["test"]] == ["000002_01_01_050-054.nii.gz"]
    assert [Path(it["image"]).name for it in data["validation"]] == ["000003_02_01_030-034.nii.gz"]
    assert {it["group"] for it in data["training"]} == {"deeplesion:1"}
    assert data["missing_series"] == 0


def test_datalist_is_accepted_by_the_ct_stage(dl_root: Path, tmp_path: Path):
    from medcoss_monai.bundle.stage import load_stage_datalist

    out = tmp_path / "ct.json"
    prepare("deeplesion", dl_root, out, cache_dir=tmp_path / "cache", progress=False)
    items = load_stage_datalist(out, "ct", "training", check=True)  # every file opened by the stage's reader
    assert len(items) == 2 and all(Path(it["image"]).is_file() for it in items)


def test_wrong_root_names_the_expected_file(tmp_path: Path):
    (tmp_path / "x").mkdir()
    with pytest.raises(BadInputError, match=r"DL_info.csv not found under .*x: is this the DeepLesion folder\?"):
        prepare("deeplesion", tmp_path / "x", tmp_path / "out.json", cache_dir=tmp_path / "c", progress=False)
    assert not (tmp_path / "out.json").exists()


def test_corrupt_slice_is_listed_and_dropped_only_when_asked(dl_root: Path, tmp_path: Path):
    bad = dl_root / "Images_png" / "000002_01_01" / "051.png"
    bad.write_bytes(b"not a png")
    out = tmp_path / "out.json"
    with pytest.raises(BadInputError) as err:
        prepare("deeplesion", dl_root, out, cache_dir=tmp_path / "cache", progress=False)
    assert f"{bad.parent} (slices 50-54): UnidentifiedImageError" in str(err.value) and str(bad) in str(err.value)
    assert "--skip_bad_inputs" in str(err.value)
    assert not out.exists()
    assert main(["deeplesion", "--root", str(dl_root), "--out", str(out), "--cache_dir", str(tmp_path / "cache"),
                 "--skip_bad_inputs", "--no_progress"]) == 0
    data = json.loads(out.read_text())
    assert data["test"] == [] and len(data["training"]) == 2
    assert [r["file"] for r in data["rejected"]] == [f"{bad.parent} (slices 50-54)"]
    assert "UnidentifiedImageError" in data["rejected"][0]["reason"]


def test_inconsistent_info_rows_are_listed(dl_root: Path, tmp_path: Path):
    info = dl_root / "DL_info.csv"
    rows = list(csv.DictReader(open(info)))
    extra = dict(rows[0], Spacing_mm_px_="0.5, 0.5, 5")  # a second lesion of series 1 with another spacing
    with open(info, "a", newline="") as f:
        csv.DictWriter(f, DL_COLUMNS).writerow(extra)
    with pytest.raises(BadInputError, match="series 000001_01_01: rows disagree on Spacing_mm_px_"):
        prepare("deeplesion", dl_root, tmp_path / "o.json", cache_dir=tmp_path / "cache", progress=False)


def test_a_killed_conversion_resumes_without_redoing_finished_volumes(dl_root: Path, tmp_path: Path, monkeypatch):
    real, done = deeplesion._write, []

    def killed_after_two(pngs, spacing, out):
        if len(done) == 2:
            raise KeyboardInterrupt  # as a kill mid-run: nothing after this item is converted
        real(pngs, spacing, out)
        done.append(out)

    monkeypatch.setattr(deeplesion, "_write", killed_after_two)
    cache, out = tmp_path / "cache", tmp_path / "out.json"
    with pytest.raises(KeyboardInterrupt):
        prepare("deeplesion", dl_root, out, cache_dir=cache, progress=False)
    assert not out.exists() and sorted(cache.glob("Images_nifti/*.nii.gz")) == sorted(done)
    stale = cache / "Images_nifti" / ".000002_01_01_050-054.nii.gz.x1y2.tmp"  # what a SIGKILL mid-write leaves
    stale.write_bytes(b"half a volume")

    redone = []
    monkeypatch.setattr(deeplesion, "_write", lambda pngs, spacing, o: (redone.append(o), real(pngs, spacing, o)))
    data = prepare("deeplesion", dl_root, out, cache_dir=cache, progress=False)
    assert len(redone) == 2 and not set(redone) & set(done)  # only the two unfinished volumes
    assert not stale.exists()
    assert sum(len(data[s]) for s in ("training", "validation", "test")) == 4
    redone.clear()
    prepare("deeplesion", dl_root, out, cache_dir=cache, progress=False)
    assert redone == []


def test_parallel_workers_give_the_same_volumes(dl_root: Path, tmp_path: Path):
    one = prepare("deeplesion", dl_root, tmp_path / "a.json", cache_dir=tmp_path / "c1", progress=False)
    two = prepare("deeplesion", dl_root, tmp_path / "b.json", cache_dir=tmp_path / "c2", workers=2, progress=False)
    for a, b in zip(one["training"] + one["test"], two["training"] + two["test"]):
        np.testing.assert_array_equal(np.asarray(nib.load(a["image"]).dataobj), np.asarray(nib.load(b["image"]).dataobj))
