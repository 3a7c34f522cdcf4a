"""Sample-data fetcher: datalists, hashes, offline re-fetch, error messages, slide tiles."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from medcoss_monai.data import samples
from medcoss_monai.data.samples import (
    ATLAS_1MM,
    SHA256,
    SampleDataFetchError,
    SampleDataMissingError,
    datalist_path,
    fetch,
    main,
    require_datalist,
    sample_dir,
    verify,
)

PATH_KEYS = ("image", "label", "gm", "wm")


def _paths(item: dict) -> list[str]:
    return [item[k] for k in PATH_KEYS if k in item]


def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any download attempt fail loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network/pip used: {args[:1]}")

    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def test_datalists_counts_and_absolute_paths(sample_data: Path, datalist) -> None:
    expected = {"report": (3534, 393), "xray": (2, 2), "ct": (2, 2), "mri": (4, 4), "pathology": (33, 8)}
    for modality, (n_train, n_val) in expected.items():
        assert datalist_path(modality) == sample_data / "datalists" / f"{modality}.json"
        data = datalist(modality)
        assert (len(data["training"]), len(data["validation"])) == (n_train, n_val), modality
        assert (data["numTraining"], data["numValidation"]) == (n_train, n_val)
        for item in data["training"] + data["validation"]:
            for p in _paths(item):
                assert Path(p).is_absolute() and Path(p).is_file(), p

    reports = datalist("report")
    items = reports["training"] + reports["validation"]
    assert set(items[0]) == {"text", "id", "mesh"}
    assert len({i["id"] for i in items}) == 3927  # held-out reports are not training reports
    assert sum(i["mesh"] == ["normal"] for i in items) == 1363

    xray = datalist("xray")["training"]
    names = [(Path(i["image"]).name, i["body_part"]) for i in xray]
    assert names == [("RG1_J2KI.dcm", "chest"), ("RG3_J2KI.dcm", "tibia")]
    ct = datalist("ct")
    assert [Path(i["label"]).name for i in ct["training"]] == ["lung1_label.nrrd", "lung2_label.nrrd"]
    assert ct["validation"] == ct["training"]  # too few items to hold any out

    mri = datalist("mri")["training"]
    assert {"gm", "wm"} <= set(mri[2]) and "mni_icbm152_t1" in mri[2]["image"]
    assert mri[3]["label"] == str(sample_data / ATLAS_1MM)

    path = datalist("pathology")
    tiles = path["training"] + path["validation"]
    assert len({tuple(t["location"]) for t in tiles}) == 41
    assert all(t["size"] == [224, 224] and t["level"] == 0 for t in tiles)


def test_verify_all_ok_and_cli(sample_data: Path, capsys: pytest.CaptureFixture) -> None:
    status = verify()
    assert set(status) >= set(SHA256) | {ATLAS_1MM}
    assert all(s == "ok" for s in status.values()), {k: v for k, v in status.items() if v != "ok"}
    assert main(["check"]) == 0
    assert main(["path"]) == 0
    assert capsys.readouterr().out.strip().endswith(str(sample_data))


def test_check_detects_corrupt_file(sample_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rel = "xray/RG3_J2KI.dcm"
    (tmp_path / "xray").mkdir()
    shutil.copy(sample_data / rel, tmp_path / rel)
    assert verify(tmp_path)[rel] == "ok"
    data = bytearray((tmp_path / rel).read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the pixel data
    (tmp_path / rel).write_bytes(bytes(data))
    status = verify(tmp_path)
    assert status[rel] == "corrupt"
    assert status["xray/RG1_J2KI.dcm"] == "missing"
    monkeypatch.setenv("MEDCOSS_DATA", str(tmp_path))
    assert main(["check"]) == 1
    assert verify(sample_data)[rel] == "ok"  # the real cache is untouched


def test_second_fetch_is_offline(sample_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_network(monkeypatch)
    assert fetch(verbose=False) == sample_data


def test_fetch_rebuilds_datalists_offline(sample_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Verified files are reused without any download; the atlas and datalists are remade for the new folder."""
    for rel in SHA256:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(sample_data / rel, tmp_path / rel)
    # what a fetch killed half-way leaves: a download folder and a half-written file
    (tmp_path / ".download-killed").mkdir()
    (tmp_path / "ct/.lung1_image.nrrd.k1ll3d.tmp.nrrd").write_bytes(b"NRRD000")
    monkeypatch.setenv("MEDCOSS_DATA", str(tmp_path))
    _no_network(monkeypatch)
    assert fetch(verbose=False) == tmp_path
    assert all(s == "ok" for s in verify(tmp_path).values())
    ct = json.loads((tmp_path / "datalists/ct.json").read_text())
    assert ct["training"][0]["image"] == str(tmp_path / "ct/lung1_image.nrrd")
    # same seeded split wherever the data lives
    a = json.loads((tmp_path / "datalists/report.json").read_text())["validation"]
    b = json.loads((sample_data / "datalists/report.json").read_text())["validation"]
    assert [i["id"] for i in a] == [i["id"] for i in b]
    assert not list(tmp_path.rglob(".*.tmp*")) and not list(tmp_path.glob(".download-*"))


def test_fetch_unreachable_index_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_pip(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for " + cmd[-1])

    def failing_urlopen(*args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setenv("MEDCOSS_DATA", str(tmp_path))
    monkeypatch.setattr(subprocess, "run", failing_pip)
    monkeypatch.setattr(urllib.request, "urlopen", failing_urlopen)
    expected = r"Could not reach the Python package index to download torchxrayvision==1\.5\.7 \(pip said: ERROR"
    with pytest.raises(SampleDataFetchError, match=expected):
        fetch(verbose=False)
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p.name != ".fetch.lock"]
    assert main(["fetch"]) == 1


def test_missing_sample_data_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDCOSS_DATA", str(tmp_path))
    assert sample_dir() == tmp_path
    with pytest.raises(SampleDataMissingError) as err:
        require_datalist("ct")
    assert isinstance(err.value, FileNotFoundError)
    assert str(err.value) == (
        "Sample data for 'ct' is not fetched yet: run `python -m medcoss_monai.data.samples fetch` "
        "(or pass --dataset_dir <your datalist>)"
    )
    with pytest.raises(ValueError, match="Unknown modality 'ultrasound'"):
        datalist_path("ultrasound")


def test_split_is_seeded_and_small_lists_repeat() -> None:
    items = [{"id": i} for i in range(100)]
    a, b = samples._split(items, 0.1, 0), samples._split(items, 0.1, 0)
    assert a == b and len(a["validation"]) == 10
    assert not {i["id"] for i in a["training"]} & {i["id"] for i in a["validation"]}
    assert samples._split(items, 0.1, 1)["validation"] != a["validation"]
    small = samples._split(items[:3], 0.2, 0)
    assert small["training"] == small["validation"] == items[:3]


def test_atlas_resampled_onto_template_grid(sample_data: Path) -> None:
    nib = pytest.importorskip("nibabel")
    atlas_2mm = nib.load(sample_data / "mri/atlas_aal.nii.gz")
    atlas_1mm = nib.load(sample_data / ATLAS_1MM)
    template = nib.load(sample_data / "mri/MNI152_T1_1mm_brain.nii.gz")
    assert atlas_1mm.shape == template.shape and np.allclose(atlas_1mm.affine, template.affine)
    a2, a1 = np.asarray(atlas_2mm.dataobj), np.asarray(atlas_1mm.dataobj)
    assert set(np.unique(a1)) == set(np.unique(a2))  # nearest neighbour: no new labels
    # same brain volume in mm^3 (2 mm voxels hold 8 mm^3), within a few percent
    assert abs((a1 > 0).sum() - 8 * (a2 > 0).sum()) < 0.05 * (a1 > 0).sum()
    # labels sit on the brain of the template
    brain = np.asarray(template.dataobj) > 0
    assert (a1[brain] > 0).mean() > 0.7 and (a1[~brain] > 0).mean() < 0.05


def test_tissue_tiles_lie_on_tissue(sample_data: Path, datalist) -> None:
    pytest.importorskip("openslide")
    from monai.data import WSIReader

    from medcoss_monai.data.slides import tissue_mask, tissue_tile_locations

    slide = sample_data / "pathology/cmu_small_region.svs"
    mask, level, downsample = tissue_mask(slide)
    assert mask.shape == (2967, 2220) and level == 0 and downsample == 1.0  # (rows, cols) = (y, x)
    tiles = {tuple(t["location"]) for t in datalist("pathology")["training"] + datalist("pathology")["validation"]}
    assert tiles == set(tissue_tile_locations(slide))

    reader = WSIReader(backend="openslide")
    wsi = reader.read(str(slide))
    try:
        def gray(y: int, x: int) -> float:
            patch, _ = reader.get_data(wsi, location=(y, x), size=(224, 224), level=0)
            assert patch.shape == (3, 224, 224)
            return float(np.asarray(patch, dtype=np.float32).mean())

        background = [
            gray(r * 224, c * 224)
            for r in range(2967 // 224)
            for c in range(2220 // 224)
            if mask[r * 224 : (r + 1) * 224, c * 224 : (c + 1) * 224].mean() < 0.02
        ]
        assert len(background) >= 5
        tissue = [gray(y, x) for y, x in sorted(tiles)]
        # H&E tissue is darker than the glass around it, every single tile
        assert max(tissue) < min(background)

        # WSIReader's location is (y, x): the same pixels as OpenSlide's read_region((x, y))
        y, x = sorted(tiles)[0]
        ours, _ = reader.get_data(wsi, location=(y, x), size=(64, 96), level=0)
        theirs = np.asarray(wsi.read_region((x, y), 0, (96, 64)).convert("RGB")).transpose(2, 0, 1)
        np.testing.assert_array_equal(np.asarray(ours), theirs)
    finally:
        wsi.close()
