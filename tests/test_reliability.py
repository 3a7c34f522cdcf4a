"""What happens when: bad inputs, bad checkpoints, a changed resume, NaN, a second writer, a full disk."""

import errno
import io
import json
import os
import pickle
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import run
from stage_utils import BUNDLES, REPO, TINY, run_stage

from medcoss_monai.data.checks import check_datalist
from medcoss_monai.errors import (
    BadInputError,
    CheckpointError,
    DivergenceError,
    OutputWriteError,
    ResumeError,
    RunLockedError,
    find_user_error,
)


def _bundle_process(bundle: str, env: dict | None = None, **args) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(BUNDLES / bundle)]
    for key, value in args.items():
        cmd += [f"--{key}", str(value)]
    return subprocess.run(cmd, cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=600)


def _last_lines(text: str, n: int = 6) -> str:
    return "\n".join([line for line in text.splitlines() if line.strip()][-n:])


def _user_error(excinfo) -> BaseException:
    err = find_user_error(excinfo.value)
    assert err is not None, f"not a user error: {excinfo.value!r}"
    return err


@pytest.fixture
def bad_ct_datalist(sample_data, datalist, tmp_path):
    good = datalist("ct")["training"]
    ref = nib.load(str(sample_data / "mri" / "MNI152_T1_1mm_brain.nii.gz"))  # a real header, zeroed voxels
    constant = tmp_path / "constant.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((40, 40, 20), np.float32), ref.affine), constant)
    items = [good[0], {"image": str(tmp_path / "missing.nrrd")}, {"image": str(constant)}, {"label": good[0]["image"]}]
    path = tmp_path / "ct.json"
    path.write_text(json.dumps({"training": items, "validation": good}))
    return path


@pytest.mark.slow
def test_bad_datalist_ends_with_the_problem_and_no_traceback(bad_ct_datalist, tmp_path):
    out = tmp_path / "run"
    result = _bundle_process("stage_ct.json", output_dir=out, dataset_dir=bad_ct_datalist, progress_bar="false")
    assert result.returncode != 0
    tail = _last_lines(result.stderr, 8)
    assert "3 of 4 'ct' datalist items" in tail and "missing.nrrd: file not found" in tail, tail
    assert "constant.nii.gz: image is constant" in tail and "has no 'image' key" in tail, tail
    assert "--skip_bad_inputs true" in tail
    assert "Traceback" not in result.stderr and "ConfigExpression" not in result.stderr
    assert "swigfaiss" not in result.stderr + result.stdout  # faiss's CPU probing is not shown at INFO
    assert not (out / "stage_ct" / "model.pt").exists()
    shown = _bundle_process(
        "stage_ct.json", env={"MEDCOSS_TRACEBACK": "1"}, output_dir=out, dataset_dir=bad_ct_datalist, progress_bar="false"
    )
    assert shown.returncode != 0 and "Traceback" in shown.stderr  # the traceback behind a flag


def test_skip_bad_inputs_drops_constant_and_keyless_items(bad_ct_datalist, tmp_path):
    folder = run_stage("ct", tmp_path / "run", dataset_dir=str(bad_ct_datalist), skip_bad_inputs="true", previous_stage="")
    rejected = json.loads((folder / "rejected_inputs.json").read_text())["rejected"]
    assert [r["index"] for r in rejected] == [1, 2, 3]
    assert (folder / "model.pt").is_file()


def test_report_items_without_words_and_unknown_modality(sample_data, tmp_path):
    items = [{"text": "Heart size normal. No effusion."}, {"text": "XXXX. XXXX"}, {"text": "  "}, {"id": "r9"}]
    with pytest.raises(BadInputError) as err:
        check_datalist(items, "report", datalist_path="reports.json")
    msg = str(err.value)
    assert "3 of 4 'report' datalist items in reports.json" in msg
    assert "item 1: 'text' has no words" in msg and "item 2: 'text' is empty" in msg and "item 3: item has no 'image' key" in msg
    with pytest.raises(Exception) as info:
        run(config_file=str(BUNDLES / "stage_ct.json"), output_dir=str(tmp_path / "run"), modality="dermatology")
    assert "Unknown modality 'dermatology'" in str(_user_error(info))


def test_foreign_garbage_and_malicious_checkpoints_are_refused(tmp_path):
    from medcoss_monai.networks.checkpoint import load_state

    garbage = tmp_path / "notes.pt"
    garbage.write_text("not a checkpoint")
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    malicious = tmp_path / "malicious.pt"
    malicious.write_bytes(pickle.dumps({"w": Exploit()}))
    for path in (garbage, malicious, tmp_path / "absent.pt"):
        with pytest.raises(CheckpointError, match=str(path.name)):
            load_state(path, "pretrained checkpoint")
    assert not marker.exists()  # nothing in the file ran
    buf = io.BytesIO()
    torch.save([torch.zeros(2)], buf)
    (tmp_path / "list.pt").write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_state(tmp_path / "list.pt")


@pytest.mark.slow
def test_foreign_checkpoint_on_the_command_line_ends_with_the_file(sample_data, tmp_path):
    foreign = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(4, 3, 3, 3)}, foreign)
    from medcoss_monai.samples.tasks import prepare_tasks

    prepare_tasks(verbose=False)
    result = _bundle_process("finetune_pathology_cls.json", output_dir=tmp_path / "ft", pretrained_ckpt=foreign)
    assert result.returncode != 0
    tail = _last_lines(result.stderr, 4)
    assert str(foreign) in tail and "no encoder tensor fits" in tail, tail
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_resume_with_another_architecture_is_refused_before_training(sample_data, tmp_path):
    out = tmp_path / "run"
    folder = run_stage("ct", out, previous_stage="")
    before = (folder / "checkpoint_epoch=1.pt").read_bytes()
    with pytest.raises(Exception) as info:
        run_stage("ct", out, epochs=2, previous_stage="", resume=True, hidden_size=96)
    err = _user_error(info)
    assert isinstance(err, ResumeError) and "hidden_size: 192 in the checkpoint, 96 now" in str(err)
    assert (folder / "checkpoint_epoch=1.pt").read_bytes() == before
    assert not (folder / "checkpoint_epoch=2.pt").exists()
    other = tmp_path / "copy"  # this test process still owns `out` (one writer per stage folder)
    shutil.copytree(folder, other / "stage_ct", ignore=shutil.ignore_patterns(".writer.lock"))
    result = _bundle_process(
        "stage_ct.json", output_dir=other, previous_stage="", resume="true", hidden_size=96, progress_bar="false",
        **{"train#trainer#max_epochs": 2}, **{k: v for k, v in TINY["ct"].items()},
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "hidden_size: 192 in the checkpoint, 96 now" in _last_lines(result.stderr, 5)


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_the_last_good_outputs(sample_data, tmp_path):
    out = tmp_path / "run"
    folder = run_stage("ct", out, previous_stage="")
    kept = {name: (folder / name).read_bytes() for name in ("model.pt", "checkpoint_epoch=1.pt", "loss_history.csv")}
    with pytest.raises(Exception) as info:
        run_stage("ct", out, epochs=3, previous_stage="", base_lr=1e30)
    err = _user_error(info)
    assert isinstance(err, DivergenceError)
    msg = str(err)
    assert "The loss became nan" in msg or "The loss became inf" in msg
    assert "at epoch " in msg and "iteration " in msg
    assert ".nrrd" in msg or ".nii" in msg  # the batch's files are named
    assert {name: (folder / name).read_bytes() for name in kept} == kept
    assert not (folder / "checkpoint_epoch=2.pt").exists()


@pytest.mark.slow
def test_second_writer_is_refused_and_a_killed_one_leaves_no_lock(sample_data, tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from medcoss_monai.bundle import claim_stage_dir; "
         "claim_stage_dir(sys.argv[1], 'ct'); print('held', flush=True); time.sleep(300)", str(out)],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Exception) as info:
            run_stage("ct", out, previous_stage="")
        err = _user_error(info)
        assert isinstance(err, RunLockedError) and f"pid {holder.pid}" in str(err)
        assert not (out / "stage_ct" / "model.pt").exists()
    finally:
        holder.kill()  # SIGKILL: the kernel drops the lock with the process
        holder.wait()
    folder = run_stage("ct", out, previous_stage="")
    assert (folder / "model.pt").is_file()


@pytest.mark.slow
def test_full_disk_keeps_the_previous_checkpoint(sample_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    folder = run_stage("ct", out, previous_stage="")
    kept = {name: (folder / name).read_bytes() for name in ("model.pt", "checkpoint_epoch=1.pt")}
    real_save = torch.save

    def save_until_disk_full(obj, f, *args, **kwargs):
        if "checkpoint_epoch=2" in os.readlink(f"/proc/self/fd/{f.fileno()}"):
            f.write(b"\0" * 4096)  # some bytes reach the disk, then it is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_disk_full)
    with pytest.raises(Exception) as info:
        run_stage("ct", out, epochs=2, previous_stage="", resume=True)
    err = _user_error(info)
    assert isinstance(err, OutputWriteError) and err.errno == errno.ENOSPC
    assert "checkpoint_epoch=2.pt: could not be written" in str(err) and "No space left" in str(err)
    assert {name: (folder / name).read_bytes() for name in kept} == kept
    assert not (folder / "checkpoint_epoch=2.pt").exists()
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]
