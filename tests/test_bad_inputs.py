"""A stage checks its datalist before training: bad files are reported together, or dropped on request."""

import json
import os
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from stage_utils import read_history, run_stage

from medcoss_monai.data.checks import BadInputError, check_datalist


def _chain(err):
    msgs = []
    while err is not None:
        msgs.append(str(err))
        err = err.__cause__ or err.__context__
    return "\n".join(msgs)


@pytest.fixture
def bad_ct_datalist(sample_data, datalist, tmp_path):
    good = datalist("ct")["training"]
    corrupt = tmp_path / "corrupt.nrrd"
    corrupt.write_bytes(open(good[0]["image"], "rb").read()[:2000])  # header and a truncated body
    flat = tmp_path / "flat.png"
    shutil.copy(sample_data / "xray" / "RG1_J2KI.dcm", tmp_path / "film.dcm")
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)).save(flat)
    items = [good[0], {"image": str(tmp_path / "missing.nrrd")}, {"image": str(corrupt)}, {"image": str(flat)}]
    path = tmp_path / "ct.json"
    path.write_text(json.dumps({"training": items, "validation": good}))
    return path


def test_all_problems_reported_before_training(bad_ct_datalist, tmp_path):
    with pytest.raises(Exception) as info:
        run_stage("ct", tmp_path / "run", dataset_dir=str(bad_ct_datalist))
    msg = _chain(info.value)
    assert "3 of 4 'ct' datalist items" in msg
    assert "missing.nrrd: file not found" in msg
    assert "corrupt.nrrd: unreadable or corrupt" in msg
    assert "flat.png: has 2 spatial dimensions, this stage needs 3" in msg
    assert not (tmp_path / "run" / "stage_ct" / "model.pt").exists()


def test_skip_bad_inputs_drops_and_lists_them(bad_ct_datalist, tmp_path):
    folder = run_stage("ct", tmp_path / "run", dataset_dir=str(bad_ct_datalist), skip_bad_inputs="true")
    rejected = json.loads((folder / "rejected_inputs.json").read_text())
    assert len(rejected["rejected"]) == 3 and all(r["reasons"] for r in rejected["rejected"])
    assert len(read_history(folder)) == 1 and (folder / "model.pt").is_file()


def test_empty_datalist_and_unfetched_data(tmp_path, monkeypatch):
    with pytest.raises(BadInputError, match="has no items"):
        check_datalist([], "mri", datalist_path="x.json")
    monkeypatch.setenv("MEDCOSS_DATA", str(tmp_path / "empty"))
    with pytest.raises(Exception) as info:
        run_stage("mri", tmp_path / "run")
    assert "python -m medcoss_monai.samples.sample_data fetch" in _chain(info.value)


def test_volume_smaller_than_crop_is_padded(sample_data, tmp_path):
    img = nib.load(str(sample_data / "mri" / "MNI152_T1_1mm_brain.nii.gz"))
    small = nib.Nifti1Image(np.asarray(img.dataobj)[60:90, 70:100, 80:88].astype(np.float32), img.affine)
    nib.save(small, tmp_path / "small.nii.gz")
    path = tmp_path / "mri.json"
    item = {"image": str(tmp_path / "small.nii.gz")}
    path.write_text(json.dumps({"training": [item], "validation": [item]}))
    folder = run_stage("mri", tmp_path / "run", dataset_dir=str(path), previous_stage="")
    assert (folder / "model.pt").is_file()


_HOOK_STATE = (
    "import logging, sys\n"
    "before = sys.excepthook\n"
    "loggers = [logging.getLogger(n) for n in ('faiss.loader', 'monai.data.nvimgcodec_pydicom_plugin')]\n"
    "import medcoss_monai, medcoss_monai.bundle, medcoss_monai.bundle.export\n"
    "print(sys.excepthook is before, [len(l.filters) for l in loggers])\n"
    "medcoss_monai.errors.install_run_hooks()\n"
    "print(sys.excepthook is before, [len(l.filters) for l in loggers])\n"
)


@pytest.mark.slow
def test_import_changes_nothing_outside_the_package_and_the_entry_points_install_the_hooks():
    result = subprocess.run([sys.executable, "-c", _HOOK_STATE], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    imported, installed = result.stdout.strip().splitlines()[-2:]
    assert imported == "True [0, 0]"  # importing installs no excepthook and touches no other library's logger
    assert installed == "False [1, 1]"


@pytest.mark.slow
def test_the_export_command_line_ends_a_user_error_with_its_message(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "medcoss_monai.bundle.export", "--stage_dir", str(tmp_path), "--out", str(tmp_path / "b")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "MEDCOSS_TRACEBACK": ""},
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"{tmp_path} has no JSON file with a 'network' config")
