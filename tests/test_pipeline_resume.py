"""``python -m medcoss_monai.bundle.pipeline ... --resume true`` continues a curriculum killed mid-way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from stage_utils import REPO

from medcoss_monai.bundle.pipeline import stage_complete

KILL_HOOKS = Path(__file__).parent / "kill_hooks"
# two real stages, small: X-ray (1 step per epoch), then CT rehearsing the X-ray buffer
TINY_PIPELINE = ["--stages", "xray,ct", "--max_epochs", "2", "--forgetting", "false", "--progress_bar", "false",
                 "--train#repeats", "2", "--batch_size", "2", "--crops_per_volume", "2"]


def _pipeline(output_dir: Path, *extra: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("MEDCOSS_TEST_KILL_AT", None)
    if kill_at:  # every stage process of this pipeline SIGKILLs itself at that moment (the first one does)
        env["MEDCOSS_TEST_KILL_AT"] = kill_at
        env["PYTHONPATH"] = os.pathsep.join([str(KILL_HOOKS), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "medcoss_monai.bundle.pipeline", "--output_dir", str(output_dir), *TINY_PIPELINE, *extra]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def _assert_same(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differ, f"{b}: {len(differ)} tensors differ from the uninterrupted run, e.g. {differ[:3]}"


def test_stage_complete_needs_the_buffer_unless_the_stage_chose_none(tmp_path):
    folder = tmp_path / "stage_xray"
    folder.mkdir()
    assert not stage_complete(folder)
    (folder / "model.pt").write_bytes(b"x")
    (folder / "stage.json").write_text(json.dumps({"modality": "xray", "select_buffer": True}))
    assert not stage_complete(folder), "killed between model.pt and its buffer: not complete"
    (folder / "buffer.json").write_text("{}")
    assert stage_complete(folder)
    (folder / "buffer.json").unlink()
    (folder / "stage.json").write_text(json.dumps({"modality": "xray", "select_buffer": False}))
    assert stage_complete(folder), "a stage of a method without buffer (sequential) is complete without one"


@pytest.mark.slow
@pytest.mark.long
def test_pipeline_killed_in_stage_one_resumes_to_the_uninterrupted_weights(sample_data, tmp_path):
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    done = _pipeline(ref)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    # SIGKILL at the second training step of the X-ray stage: in its epoch 2, after checkpoint_epoch=1.pt
    stopped = _pipeline(killed, kill_at="iteration:2")
    assert stopped.returncode != 0
    assert (killed / "stage_xray" / "checkpoint_epoch=1.pt").is_file()
    assert not (killed / "stage_xray" / "model.pt").exists() and not (killed / "stage_ct").exists()

    resumed = _pipeline(killed, "--resume", "true")
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert "resuming from" in log and "checkpoint_epoch=1.pt" in log
    for stage in ("stage_xray", "stage_ct"):
        _assert_same(ref / stage / "model.pt", killed / stage / "model.pt")
        assert stage_complete(killed / stage)
    buf_ref = json.loads((ref / "stage_xray" / "buffer.json").read_text())["items"]
    assert json.loads((killed / "stage_xray" / "buffer.json").read_text())["items"] == buf_ref

    # once complete, a resumed run trains nothing again: every stage is skipped, its weights untouched
    stamps = {s: (killed / s / "model.pt").stat().st_mtime_ns for s in ("stage_xray", "stage_ct")}
    again = _pipeline(killed, "--resume", "true")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("skipped (--resume)") == 2
    assert "monai.bundle" not in again.stdout, "no stage command should have run"
    assert stamps == {s: (killed / s / "model.pt").stat().st_mtime_ns for s in stamps}


@pytest.mark.slow
def test_resume_refuses_a_finished_stage_of_another_chain(tmp_path):
    folder = tmp_path / "stage_xray"
    folder.mkdir()
    (folder / "model.pt").write_bytes(b"x")
    (folder / "buffer.json").write_text("{}")
    (folder / "stage.json").write_text(json.dumps({"modality": "xray", "previous_stage": "report"}))
    out = subprocess.run(
        [sys.executable, "-m", "medcoss_monai.bundle.pipeline", "--output_dir", str(tmp_path), "--stages", "xray,ct",
         "--previous_stage", "", "--resume", "true", "--forgetting", "false"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode != 0
    assert "was trained after stage 'report'" in out.stderr
    assert not (tmp_path / "stage_ct").exists(), "nothing may run after the refusal"
