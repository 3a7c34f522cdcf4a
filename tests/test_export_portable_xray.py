"""Exported X-ray bundles read DICOM films with MONAI and PyTorch only, exactly as ``LoadXRayd`` reads them.

The MONAI-only loading (:func:`~medcoss_monai.bundle.export.portable.xray_loading`: ``LoadImaged`` with
``PILReader``/``PydicomReader`` and the ``xray_gray`` expression) runs where ``import medcoss_monai``
fails, on the real JPEG 2000 films (MONOCHROME1, 15 and 10 stored bits), a film without a suffix, a
film re-stored as signed MONOCHROME2 with a rescale, and PNGs of a film: every tensor must equal
``LoadXRay``'s. Then an X-ray stage (one tiny epoch) is exported; its ``configs/inference.json``, run
in a subprocess where ``import medcoss_monai`` fails, must write the features of the trained network
on the stage's own preprocessing of the held-out film.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image

from medcoss_monai.bundle.export import PRETRAIN_WEIGHTS, main
from medcoss_monai.bundle.export.portable import XRAY_IDS, needs_medcoss, xray_loading
from medcoss_monai.networks.checkpoint import load_state, state_dict_of
from medcoss_monai.transforms import LoadXRay

sys.path.insert(0, str(Path(__file__).parent))
from stage_utils import bundle_section, run_stage  # noqa: E402
from test_export_zoo import read_csv_rows, trained_network_config  # noqa: E402

RUN_WITHOUT_MEDCOSS = """
import sys
sys.modules["medcoss_monai"] = None
from monai.bundle import run
run(config_file="configs/inference.json", meta_file="configs/metadata.json", logging_file=False,
    dataset_dir=sys.argv[1], output_dir=sys.argv[2], device="$torch.device('cpu')")
"""


def _subprocess(code: str, *args: str, cwd: Path | None = None) -> None:
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def films(datalist) -> dict[str, Path]:
    items = datalist("xray")["training"] + datalist("xray")["validation"]
    return {it["body_part"]: Path(it["image"]) for it in items}


def _secondary_capture() -> pydicom.Dataset:
    """An empty uncompressed secondary-capture dataset (file meta and SOP identifiers set), pixels to be added."""
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    return ds


def _signed_rescaled_copy(film: Path, path: Path) -> tuple[np.ndarray, float, float]:
    """The film's stored values (a corner, every 4th pixel), re-stored uncompressed as signed 15-bit MONOCHROME2
    with a modality rescale: the branches the real films do not take."""
    src = pydicom.dcmread(film)
    raw = src.pixel_array[:512:4, :512:4].astype(np.int32) - 2**14  # 15 bits unsigned -> two's complement
    ds = _secondary_capture()
    ds.Rows, ds.Columns = raw.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 15, 14, 1
    slope, intercept = 2.0, -100.0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = raw.astype("<i2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return raw, slope, intercept


def test_monai_only_loading_equals_load_xray(films, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In process, ``import medcoss_monai`` (any module of it) failing while the config is parsed and run; the
    bundle test below runs a whole exported config in a subprocess."""
    from monai.bundle import ConfigParser

    chest, tibia = films["chest"], films["tibia"]
    shutil.copyfile(tibia, tmp_path / "tibia_film")  # DICOM without a suffix (found by PIL failing)
    raw, slope, intercept = _signed_rescaled_copy(chest, tmp_path / "signed.dcm")
    gray = LoadXRay()(chest).as_tensor()[0].numpy()
    Image.fromarray(np.round(gray * 65535).astype(np.uint16)).save(tmp_path / "chest16.png")
    Image.fromarray(np.round(gray * 255).astype(np.uint8)).convert("RGB").save(tmp_path / "chest_rgb.png")
    files = [str(chest), str(tibia), str(tmp_path / "tibia_film"), str(tmp_path / "signed.dcm"),
             str(tmp_path / "chest16.png"), str(tmp_path / "chest_rgb.png")]
    config = {"imports": ["$import torch", "$import monai"], **XRAY_IDS,
              "load": {"_target_": "Compose", "transforms": xray_loading("image")}}
    assert not needs_medcoss(config)
    expected = [LoadXRay()(f).as_tensor() for f in files]
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "medcoss_monai", None)
        load = ConfigParser(config).get_parsed_content("load")
        loaded = [load({"image": f})["image"].as_tensor() for f in files]
    for f, x, expected in zip(files, loaded, expected):
        assert x.shape == expected.shape and x.dtype == torch.float32, f
        assert torch.equal(x, expected), (f, float((x - expected).abs().max()))  # measured: bit-identical
    # the signed, rescaled copy: the stored range [-2**14, 2**14 - 1] mapped by the rescale, not inverted
    low, high = -(2**14) * slope + intercept, (2**14 - 1) * slope + intercept
    np.testing.assert_allclose(loaded[3][0].numpy(), (raw * slope + intercept - low) / (high - low), atol=1e-6)
    assert 0.0 < float(loaded[0].min()) and float(loaded[0].max()) < 1.0  # the chest film keeps its exposure


def _colour_copy(film: Path, path: Path) -> None:
    """A corner of the film re-stored as an uncompressed RGB DICOM (a secondary capture, not a radiograph)."""
    gray = pydicom.dcmread(film).pixel_array[:64, :64]
    rgb = np.repeat((gray >> 7).astype(np.uint8)[..., None], 3, axis=-1)
    ds = _secondary_capture()
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = rgb.tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_monai_only_loading_refuses_a_colour_dicom_as_load_xray_does(films, tmp_path: Path) -> None:
    """A colour DICOM is no radiograph: both chains stop, naming the file, instead of converting it to gray."""
    from monai.bundle import ConfigParser

    colour = tmp_path / "colour.dcm"
    _colour_copy(films["chest"], colour)
    with pytest.raises(Exception, match=r"colour\.dcm.*PhotometricInterpretation RGB"):
        LoadXRay()(colour)
    config = {"imports": ["$import torch", "$import monai"], **XRAY_IDS,
              "load": {"_target_": "Compose", "transforms": xray_loading("image")}}
    load = ConfigParser(config).get_parsed_content("load")
    with pytest.raises(Exception) as raised:  # MONAI's Compose wraps it: the cause names the file
        load({"image": str(colour)})
    causes, error = [], raised.value
    while error is not None:
        causes, error = causes + [str(error)], error.__cause__
    assert any(re.search(r"colour\.dcm has PhotometricInterpretation RGB; a grayscale film is expected", c) for c in causes), causes
    assert load({"image": str(films["chest"])})["image"].shape[0] == 1  # the gray film still loads


@pytest.mark.slow  # 23 s (idle) to 61 s (loaded) on the shared 2-core machine: stage, export, subprocess
def test_xray_stage_bundle_reads_dicom_without_medcoss(datalist, sample_data: Path, tmp_path: Path) -> None:
    """The exported X-ray stage's inference (MONAI only) gives the trained network's features of the held-out film
    preprocessed by the stage's own chain (``LoadXRayd``)."""
    stage = run_stage("xray", tmp_path / "run", rehearsal=False, select_buffer=False)
    bundle = main(["--stage_dir", str(stage), "--out", str(tmp_path / "medcoss_xray")])
    inference = json.loads((bundle / "configs/inference.json").read_text())
    meta = json.loads((bundle / "configs/metadata.json").read_text())
    assert not needs_medcoss(inference) and inference["network_def"].startswith("$torch.jit.load(")
    assert "medcoss-monai" not in meta["required_packages_version"] and "pydicom" in meta["required_packages_version"]
    held_out = datalist("xray")["test"][0]["image"]
    assert held_out.endswith(".dcm")
    _subprocess(RUN_WITHOUT_MEDCOSS, held_out, str(tmp_path / "eval"), cwd=bundle)
    rows = read_csv_rows(tmp_path / "eval/features.csv")
    assert [r[0] for r in rows] == [held_out]
    feats = torch.tensor([float(v) for v in rows[0][1:]])
    # in process: the stage's own evaluation chain (LoadXRayd...) and the trained stage network
    image = bundle_section("xray", "eval#preprocessing")({"image": held_out})["image"]
    net = trained_network_config(bundle).eval()
    weights = bundle / PRETRAIN_WEIGHTS
    net.load_state_dict(state_dict_of(load_state(weights), weights), strict=True)
    with torch.no_grad():
        expected = net(torch.as_tensor(image)[None].float())[0]
    assert feats.shape == expected.shape
    torch.testing.assert_close(feats, expected, rtol=1e-4, atol=1e-5)
