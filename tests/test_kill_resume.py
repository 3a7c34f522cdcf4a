"""A stage killed with SIGKILL at any moment resumes to the weights of an uninterrupted run."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from stage_utils import BUNDLES, REPO, TINY, run_stage

KILL_HOOKS = Path(__file__).parent / "kill_hooks"
EPOCHS = 3


def _stage_process(output_dir: Path, kill_at: str | None, resume: bool) -> subprocess.CompletedProcess:
    """The MedCoSS CT stage (rehearsing the X-ray stage) as its own process, optionally killed at a moment."""
    env = dict(os.environ)
    env.pop("MEDCOSS_TEST_KILL_AT", None)
    if kill_at:
        env["MEDCOSS_TEST_KILL_AT"] = kill_at
        env["PYTHONPATH"] = os.pathsep.join([str(KILL_HOOKS), env.get("PYTHONPATH", "")])
    args = {"output_dir": str(output_dir), "progress_bar": "false", "train#trainer#max_epochs": str(EPOCHS),
            "previous_stage": "xray", "resume": str(resume).lower(), **{k: str(v) for k, v in TINY["ct"].items()}}
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(BUNDLES / "stage_ct.json")]
    for key, value in args.items():
        cmd += [f"--{key}", value]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
@pytest.mark.long
def test_sigkill_at_any_moment_then_resume_equals_uninterrupted_run(sample_data, tmp_path):
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    run_stage("xray", ref, previous_stage="")  # the stage whose buffer and weights the CT stage continues from
    shutil.copytree(ref / "stage_xray", killed / "stage_xray")
    done = _stage_process(ref, None, resume=False)
    assert done.returncode == 0, done.stderr[-3000:]

    moments = ["iteration:6", "write:checkpoint_epoch=2.pt", "write:model.pt", "buffer"]
    for moment in moments:
        result = _stage_process(killed, moment, resume=True)
        assert result.returncode == -9, f"{moment}: expected SIGKILL, got {result.returncode}\n{result.stderr[-3000:]}"
    final = _stage_process(killed, None, resume=True)
    assert final.returncode == 0, final.stderr[-3000:]

    a, b = ref / "stage_ct", killed / "stage_ct"
    assert not [p.name for p in b.iterdir() if p.name.endswith(".tmp")], "a half-written file was left behind"
    wa, wb = torch.load(a / "model.pt", weights_only=True), torch.load(b / "model.pt", weights_only=True)
    assert wa.keys() == wb.keys()
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differ, f"{len(differ)} tensors differ from the uninterrupted run, e.g. {differ[:3]}"
    assert [r["epoch"] for r in _rows(b / "loss_history.csv")] == [str(e) for e in range(1, EPOCHS + 1)]
    assert _rows(a / "loss_history.csv") == _rows(b / "loss_history.csv")
    buf_a, buf_b = json.loads((a / "buffer.json").read_text()), json.loads((b / "buffer.json").read_text())
    assert buf_a["items"] == buf_b["items"]
    last = torch.load(b / f"checkpoint_epoch={EPOCHS}.pt", weights_only=True)
    assert last["trainer"]["iteration"] == EPOCHS * last["trainer"]["epoch_length"]
