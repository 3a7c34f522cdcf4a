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

from medcoss_monai.samples.sample_data import (
    SampleDataFetchError,
    SampleDataMissingError,
    datalist_path,
    fetch,
    main,
    require_datalist,
    sample_dir,
    verify,
)
from medcoss_monai.samples.sample_sources import ATLAS_1MM, DISTRIBUTIONS, MADE_FILES, SHA256

PATH_KEYS = ("image", "label", "gm", "wm", "t2", "mask", "regions")


def _paths(item: dict) -> list[str]:
    return [item[k] for k in PATH_KEYS if k in item]


def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any download attempt fail loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network/pip used: {args[:1]}")

    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def test_datalists_counts_and_absolute_paths(sample_data: Path, datalist) -> None:
    debian = not (sample_data / ".debian_skipped.json").is_file()
    expected = {  # training / validation / test items
        "report": (2226, 700, 1001),
        "xray": (1, 1, 1),
        "ct": (3 if debian else 2, 1, 1),
        "mri": (6 if debian else 4, 4, 4),
        "pathology": (43, 16, 16),
    }
    for modality, counts in expected.items():
        assert datalist_path(modality) == sample_data / "datalists" / f"{modality}.json"
        data = datalist(modality)
        assert tuple(len(data[k]) for k in ("training", "validation", "test")) == counts, modality
        assert (data["numTraining"], data["numValidation"], data["numTest"]) == counts
        for item in data["training"] + data["validation"] + data["test"]:
            for p in _paths(item):
                assert Path(p).is_absolute() and Path(p).is_file(), p

    reports = datalist("report")
    items = reports["training"] + reports["validation"] + reports["test"]
    assert set(items[0]) == {"text", "id", "mesh"}
    assert len({i["id"] for i in items}) == 3927  # every report once
    assert sum(i["mesh"] == ["normal"] for i in items) == 1363

    xray = datalist("xray")
    assert [(Path(i["image"]).name, i["body_part"]) for i in xray["training"]] == [("RG1_J2KI.dcm", "chest")]
    assert [(Path(i["image"]).name, i["body_part"]) for i in xray["test"]] == [("RG3_J2KI.dcm", "tibia")]
    ct = datalist("ct")
    assert [Path(i["image"]).name for i in ct["training"]][:2] == ["lung1_image.nrrd", "lung2_image.nrrd"]
    assert [Path(i["label"]).name for i in ct["test"]] == ["cxr_mask.nii.gz"]
    assert ct["validation"] == ct["test"]  # one held-out volume

    mri = datalist("mri")
    assert {i["group"] for i in mri["test"]} == {"icbm152"}  # the population templates, all held out
    icbm09c = mri["test"][0]
    assert {"t2", "mask", "regions"} <= set(icbm09c) and "mni_icbm152_t1_tal_nlin_sym_09c" in icbm09c["image"]
    assert any(i.get("label") == str(sample_data / ATLAS_1MM) for i in mri["test"])

    path = datalist("pathology")
    assert {Path(t["image"]).name for t in path["training"]} == {"cmu_small_region.svs", "ihc.png"}
    assert {Path(t["image"]).name for t in path["test"]} == {"target_image.png"}
    svs = [t for t in path["training"] if t["image"].endswith(".svs")]
    assert len({tuple(t["location"]) for t in svs}) == 41
    assert all(t["size"] == [224, 224] and t["level"] == 0 for t in path["training"] + path["test"])


def test_report_twins_stay_on_one_side(datalist) -> None:
    from medcoss_monai.data.reports import text_group

    reports = datalist("report")
    sides = {}
    for split in ("training", "validation", "test"):
        for item in reports[split]:
            assert sides.setdefault(text_group(item["text"]), split) == split, item["id"]
    assert len(sides) < 3927  # identical reports exist, and each group sits in one split


def test_verify_all_ok_and_cli(sample_data: Path, capsys: pytest.CaptureFixture) -> None:
    status = verify()
    assert set(status) >= set(SHA256) | set(MADE_FILES)
    assert all(s in ("ok", "skipped") for s in status.values()), {k: v for k, v in status.items() if v != "ok"}
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


@pytest.mark.slow
def test_fetch_rebuilds_datalists_offline(sample_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Verified files are reused without any download; the atlas and datalists are remade for the new folder."""
    for rel in SHA256:
        if (sample_data / rel).is_file():  # a Debian source may be skipped on this machine
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(sample_data / rel, tmp_path / rel)
    if (sample_data / ".debian_skipped.json").is_file():
        shutil.copy(sample_data / ".debian_skipped.json", tmp_path / ".debian_skipped.json")
    # what a fetch killed half-way leaves: a download folder and a half-written file
    (tmp_path / ".download-killed").mkdir()
    (tmp_path / "ct/.lung1_image.nrrd.k1ll3d.tmp.nrrd").write_bytes(b"NRRD000")
    monkeypatch.setenv("MEDCOSS_DATA", str(tmp_path))
    _no_network(monkeypatch)
    assert fetch(verbose=False) == tmp_path
    assert all(s in ("ok", "skipped") for s in verify(tmp_path).values())
    # the files made here are remade for the new folder, from the copied sources
    assert all((tmp_path / rel).is_file() for rel in MADE_FILES) or (tmp_path / ".debian_skipped.json").is_file()
    ct = json.loads((tmp_path / "datalists/ct.json").read_text())
    assert ct["training"][0]["image"] == str(tmp_path / "ct/lung1_image.nrrd")
    # same seeded split wherever the data lives
    a = json.loads((tmp_path / "datalists/report.json").read_text())["test"]
    b = json.loads((sample_data / "datalists/report.json").read_text())["test"]
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
        "Sample data for 'ct' is not fetched yet: run `python -m medcoss_monai.samples.sample_data fetch` "
        "(or pass --dataset_dir <your datalist>)"
    )
    with pytest.raises(ValueError, match="Unknown modality 'ultrasound'"):
        datalist_path("ultrasound")


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

    from medcoss_monai.transforms.tissue import tissue_mask, tissue_tile_locations

    slide = sample_data / "pathology/cmu_small_region.svs"
    mask, level, downsample = tissue_mask(slide)
    assert mask.shape == (2967, 2220) and level == 0 and downsample == 1.0  # (rows, cols) = (y, x)
    tiles = {tuple(t["location"]) for t in datalist("pathology")["training"] if t["image"].endswith(".svs")}
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


def test_debian_sources_skipped_without_apt(sample_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture) -> None:
    """A machine without apt-get (or root) gets everything from the Python index, says so once, and checks clean."""
    from medcoss_monai.samples import archives

    debian = {rel for d in DISTRIBUTIONS if d.registry == "debian" for rel in d.files.values()}
    for rel in set(SHA256) - debian:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(sample_data / rel, tmp_path / rel)
    monkeypatch.setenv("MEDCOSS_DATA", str(tmp_path))
    monkeypatch.setattr(archives.shutil, "which", lambda name: None)
    _no_network(monkeypatch)
    assert fetch(verbose=True) == tmp_path
    out = capsys.readouterr().out
    assert out.count("Skipping the Debian sources") == 1 and "apt-get is not available" in out
    status = verify(tmp_path)
    assert {status[rel] for rel in debian} == {"skipped"} and status["ct/cranium_ct.nii.gz"] == "skipped"
    ct = json.loads((tmp_path / "datalists/ct.json").read_text())
    assert [Path(i["image"]).name for i in ct["training"]] == ["lung1_image.nrrd", "lung2_image.nrrd"]
    assert [Path(i["image"]).name for i in ct["test"]] == ["cxr.nii.gz"]  # held-out files never depend on Debian
    assert main(["check"]) == 0
    assert "skipped on this machine" in capsys.readouterr().out
    assert fetch(verbose=True) == tmp_path  # recorded: not retried
    assert "complete and verified" in capsys.readouterr().out


def test_deb_members_read_from_the_ar_archive(tmp_path: Path) -> None:
    """A .deb is an ar archive holding data.tar.xz; members are read by their installed path."""
    import io
    import tarfile

    from medcoss_monai.samples.archives import Distribution, read_members

    payload = b"real bytes"
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w:xz") as tar:
        info = tarfile.TarInfo("./usr/share/doc/pkg/examples/file.dat")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    members = [(b"debian-binary", b"2.0\n"), (b"control.tar.xz", b"x" * 3), (b"data.tar.xz", tar_bytes.getvalue())]
    blob = b"!<arch>\n"
    for name, body in members:
        header = name.ljust(16) + b"0".ljust(12) + b"0".ljust(6) + b"0".ljust(6) + b"100644".ljust(8)
        blob += header + str(len(body)).encode().ljust(10) + b"`\n" + body + (b"\n" if len(body) % 2 else b"")
    deb = tmp_path / "pkg_1.0_all.deb"
    deb.write_bytes(blob)
    dist = Distribution("pkg", "1.0", {"usr/share/doc/pkg/examples/file.dat": "x/file.dat"}, registry="debian")
    assert read_members(deb, dist) == {"usr/share/doc/pkg/examples/file.dat": payload}
    with pytest.raises(SampleDataFetchError, match="does not contain"):
        read_members(deb, Distribution("pkg", "1.0", {"usr/missing": "x"}, registry="debian"))
