"""MUSCLE's three steps end to end at tiny size: one command, each step's outputs, resume of step 2."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess

import pytest
import torch

from medcoss_monai.apps.muscle.muscle_pipeline import FINETUNE_BUNDLES, bundle_command, main, write_step2_table
from medcoss_monai.errors import BadInputError
from medcoss_monai.networks.checkpoint import load_state

STEP1 = "--train#trainer#max_epochs 1 --samples_per_epoch 16 --batch_size 8 --queue_size 64 --progress_bar false"
STEP2 = "--rounds 2 --steps_per_visit 2 --batch_size 4 --max_train_items 8 --max_eval_items 4 --replay_size 4"
STEP3 = "--train#trainer#max_epochs 1 --batch_size 4 --max_train_items 8 --max_eval_items 4"


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
@pytest.mark.long
def test_one_command_runs_the_three_steps(tmp_path, sample_data):
    out = tmp_path / "run"
    assert main(["--output_dir", str(out), "--step1", STEP1, "--step2", STEP2, "--step3", STEP3]) == 0
    step1 = load_state(out / "muscle_mdmoco" / "model.pt")
    step2_dir = out / "muscle_multitask"
    step2 = load_state(step2_dir / "model.pt")
    # step 2 started from step 1's backbone and trained it further, with a head per task
    key = "backbone.layer1.0.conv1.weight"
    assert not torch.equal(step1[key], step2[key])
    assert {k.split(".")[1] for k in step2 if k.startswith("heads.")} == set(FINETUNE_BUNDLES)
    record = json.loads((step2_dir / "stage.json").read_text())
    assert record["pretrained_ckpt"].endswith("muscle_mdmoco/model.pt")
    schedule = record["schedule"]
    assert len(schedule) == 6 and sorted(schedule[:3]) == sorted(schedule[3:]) == sorted(FINETUNE_BUNDLES)
    visits = _rows(step2_dir / "visit_metrics.csv")
    assert [r["task"] for r in visits] == schedule and (step2_dir / "visit_metrics.png").stat().st_size > 0
    history = _rows(step2_dir / "loss_history.csv")
    assert len(history) == 6
    # replay and L2-SP act from the second visit on
    assert float(history[0]["replay_loss"]) == 0 and all(float(r["replay_loss"]) > 0 for r in history[1:])
    assert all(float(r["l2sp_loss"]) >= 0 for r in history) and float(history[-1]["l2sp_loss"]) > 0
    for task in FINETUNE_BUNDLES:
        metrics = json.loads((out / "finetune" / "muscle" / task / "metrics.json").read_text())
        assert metrics["pretrained_ckpt"].endswith("muscle_multitask/model.pt") and metrics["split"] == "test"
        assert {"score"} < set(metrics["metrics"][task])
        assert (out / "finetune" / "muscle" / task / "model.pt").is_file()


@pytest.mark.slow
def test_step2_resumes_where_it_stopped(tmp_path, sample_data):
    out = tmp_path / "run"
    base = ["--output_dir", str(out), *STEP2.split(), "--steps_per_visit", "1", "--max_eval_items", "2", "--rounds", "1"]
    cmd = bundle_command(["bundles/muscle_multitask.json"], base)
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    first = _rows(out / "muscle_multitask" / "visit_metrics.csv")
    # two rounds, resumed: the first round's three visits are not trained again
    resumed = subprocess.run(bundle_command(["bundles/muscle_multitask.json"], base[:-2] + ["--rounds", "2", "--resume", "true"]),
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stderr + resumed.stdout
    rows = _rows(out / "muscle_multitask" / "visit_metrics.csv")
    assert len(rows) == 6 and rows[:3] == first
    assert len(_rows(out / "muscle_multitask" / "loss_history.csv")) == 6


def test_pipeline_refuses_bad_seeds_before_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # any working directory: the bundles are found through the package
    with pytest.raises(BadInputError, match="comma-separated integers"):
        main(["--output_dir", str(tmp_path / "x"), "--compare", "--seeds", "0,one"])
    with pytest.raises(BadInputError, match="add --compare"):
        main(["--output_dir", str(tmp_path / "x"), "--docs", str(tmp_path / "figures.md")])
    assert not (tmp_path / "figures.md").exists() and not (tmp_path / "x").exists()
    assert bundle_command(["a.json", "b.json"])[5] == "['a.json','b.json']"


def _visit_rows(folder, visits):
    """Write ``visit_metrics.csv``: ``visits`` = [(round, task visited, score of every task)]."""
    folder.mkdir(parents=True)
    tasks = list(FINETUNE_BUNDLES)
    lines = ["visit,round,task," + ",".join(tasks)]
    lines += [f"{i},{r},{task}," + ",".join(str(v) for v in scores) for i, (r, task, scores) in enumerate(visits, 1)]
    (folder / "visit_metrics.csv").write_text("\n".join(lines) + "\n")


def test_step2_table_rows_visits_only_where_every_seed_trained_the_same_task(tmp_path):
    cls, seg, det = FINETUNE_BUNDLES
    # MUSCLE: round 1 in another order per seed, round 2 in the same; MUSCLE--: one round, one order
    _visit_rows(tmp_path / "seed_0" / "muscle_multitask", [(1, cls, (0.1, 0, 0)), (1, seg, (0.2, 0.5, 0)),
                                                           (2, cls, (0.3, 0.6, 0.1)), (2, seg, (0.4, 0.7, 0.2))])
    _visit_rows(tmp_path / "seed_1" / "muscle_multitask", [(1, seg, (0.0, 0.4, 0)), (1, cls, (0.4, 0.3, 0)),
                                                           (2, cls, (0.5, 0.6, 0.3)), (2, seg, (0.6, 0.9, 0.4))])
    for seed, first in ((0, 0.2), (1, 0.4)):
        _visit_rows(tmp_path / f"seed_{seed}" / "muscle_multitask_minus", [(1, cls, (first, 0, 0)), (1, det, (0.1, 0, 0.5))])
    table = write_step2_table(tmp_path, [0, 1])
    assert (tmp_path / "step2_visits.md").read_text() == table
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in table.splitlines() if line.startswith("| muscle")]
    assert rows == [
        ["muscle", "round 1 (order differs by seed)", "0.300 ± 0.141", "0.400 ± 0.141", "0.000 ± 0.000"],  # the round's end
        ["muscle", f"round 2, visit of {cls}", "0.400 ± 0.141", "0.600 ± 0.000", "0.200 ± 0.141"],
        ["muscle", f"round 2, visit of {seg}", "0.500 ± 0.141", "0.800 ± 0.141", "0.300 ± 0.141"],
        ["muscle--", f"round 1, visit of {cls}", "0.300 ± 0.141", "0.000 ± 0.000", "0.000 ± 0.000"],
        ["muscle--", f"round 1, visit of {det}", "0.100 ± 0.000", "0.000 ± 0.000", "0.500 ± 0.000"],
    ]


@pytest.mark.slow
@pytest.mark.long  # the overlay under torchrun is also run in CI by test_multi_gpu (MedCoSS stage, fine-tuning)
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_step2_under_torchrun_with_the_multi_gpu_overlay(tmp_path, sample_data):
    """Two CPU processes (gloo) run the multi-task step with ``bundles/multi_gpu_muscle.json``: one schedule, files written once."""
    out = tmp_path / "run"
    configs = "['bundles/muscle_multitask.json','bundles/multi_gpu_muscle.json']"
    cmd = ["torchrun", "--nproc_per_node", "2", "--master_port", "29541", "-m", "monai.bundle", "run", "--config_file", configs,
           "--output_dir", str(out), *STEP2.split(), "--rounds", "1", "--steps_per_visit", "2", "--max_eval_items", "2"]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stage = out / "muscle_multitask"
    assert (stage / "model.pt").is_file()
    record = json.loads((stage / "stage.json").read_text())
    visits = _rows(stage / "visit_metrics.csv")
    assert [r["task"] for r in visits] == record["schedule"] and sorted(record["schedule"]) == sorted(FINETUNE_BUNDLES)
    assert len(_rows(stage / "loss_history.csv")) == 3  # one row per visit, written by rank 0 only
    state = load_state(stage / "model.pt")
    assert not any(k.startswith("module.") for k in state) and any(k.startswith("heads.") for k in state)
