"""``--resume true`` on a fine-tuning bundle continues from the newest checkpoint in output_dir, bit for bit.

The stages' mechanism is reused (``EpochSeedHandler``, ``AtomicCheckpointSaver``, ``StageResumeHandler``);
the checkpoint also holds the validator's best metric, so the resumed run keeps the same best model.
Runs on the real X-ray classification task, from an imported MedCoSS stage.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_finetune_imported import imported_stage  # noqa: F401  (the fixture)

torch.set_num_threads(2)

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "finetune_xray_cls.json"
KILL_HOOKS = Path(__file__).parent / "kill_hooks"
SMALL = {"max_train_items": 16, "max_eval_items": 4}


def _run(out: Path, epochs: int, stage: Path, **overrides) -> None:
    from monai.bundle import run

    run(config_file=str(BUNDLE), output_dir=str(out), pretrained_ckpt=str(stage), **SMALL,
        **{"train#trainer#max_epochs": epochs}, **overrides)  # fmt: skip


def _same_outputs(a: Path, b: Path, epochs: int) -> None:
    for name in ("model_best.pt",):
        wa, wb = torch.load(a / name, weights_only=True), torch.load(b / name, weights_only=True)
        assert wa.keys() == wb.keys() and not [k for k in wa if not torch.equal(wa[k], wb[k])], name
    ca = torch.load(a / f"checkpoint_epoch={epochs}.pt", weights_only=True)
    cb = torch.load(b / f"checkpoint_epoch={epochs}.pt", weights_only=True)
    assert not [k for k in ca["network"] if not torch.equal(ca["network"][k], cb["network"][k])]
    assert ca["validator"] == cb["validator"] and ca["trainer"] == cb["trainer"]
    assert json.loads((a / "metrics.json").read_text()) == json.loads((b / "metrics.json").read_text())


def test_stopped_after_epoch_one_resumes_to_the_uninterrupted_run(imported_stage, tmp_path):  # noqa: F811
    ref, stopped = tmp_path / "ref", tmp_path / "stopped"
    _run(ref, 2, imported_stage)
    _run(stopped, 1, imported_stage)
    first = torch.load(stopped / "checkpoint_epoch=1.pt", weights_only=True)
    assert first["trainer"]["epoch_length"] * 1 == first["trainer"]["iteration"]
    assert set(first["validator"]) >= {"best_metric", "best_metric_epoch"}  # the best so far is resumed too
    _run(stopped, 2, imported_stage, resume=True)
    assert sorted(p.name for p in stopped.glob("checkpoint_*.pt")) == ["checkpoint_epoch=2.pt"]
    _same_outputs(ref, stopped, 2)
    # without --resume the same folder trains afresh from epoch 1 (the checkpoint is not read)
    _run(stopped, 1, imported_stage)
    again = torch.load(stopped / "checkpoint_epoch=1.pt", weights_only=True)
    assert not [k for k in first["network"] if not torch.equal(first["network"][k], again["network"][k])]


def test_resume_refuses_a_checkpoint_of_another_network(imported_stage, tmp_path):  # noqa: F811
    _run(tmp_path, 1, imported_stage)
    with pytest.raises(Exception) as excinfo:
        _run(tmp_path, 2, imported_stage, resume=True, head="mlp")
    err = excinfo.value
    while err.__cause__ is not None:
        err = err.__cause__
    assert "checkpoint_epoch=1.pt" in str(err) and "does not fit" in str(err)


def _process(out: Path, stage: Path, resume: bool, kill_at: str | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("MEDCOSS_TEST_KILL_AT", None)
    if kill_at:
        env["MEDCOSS_TEST_KILL_AT"] = kill_at
        env["PYTHONPATH"] = os.pathsep.join([str(KILL_HOOKS), env.get("PYTHONPATH", "")])
    args = {"output_dir": str(out), "pretrained_ckpt": str(stage), "train#trainer#max_epochs": "2",
            "resume": str(resume).lower(), **{k: str(v) for k, v in SMALL.items()}}  # fmt: skip
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(BUNDLE)]
    for key, value in args.items():
        cmd += [f"--{key}", value]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_sigkill_in_epoch_two_then_resume_equals_uninterrupted_run(imported_stage, tmp_path):  # noqa: F811
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    done = _process(ref, imported_stage, False, None)
    assert done.returncode == 0, done.stderr[-3000:]
    dead = _process(killed, imported_stage, True, "write:checkpoint_epoch=2.pt")  # killed half-way through the write
    assert dead.returncode == -9, dead.stderr[-3000:]
    assert (killed / "checkpoint_epoch=1.pt").is_file() and not (killed / "metrics.json").exists()
    final = _process(killed, imported_stage, True, None)
    assert final.returncode == 0, final.stderr[-3000:]
    log = final.stdout + final.stderr
    assert "resuming from" in log and "checkpoint_epoch=1.pt" in log
    assert not [p.name for p in killed.iterdir() if p.name.endswith(".tmp")]
    _same_outputs(ref, killed, 2)
