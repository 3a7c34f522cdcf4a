"""The distillation teacher of a stage is the stage just before it, not the first stage of the curriculum."""

from __future__ import annotations

import subprocess

import torch
from stage_utils import BUNDLES, REPO, run_stage

from medcoss_monai import layout
from medcoss_monai.bundle import pipeline
from medcoss_monai.layout import read_bundle
from medcoss_monai.networks.checkpoint import load_state


def test_pipeline_names_the_immediate_previous_stage(tmp_path, monkeypatch):
    commands = []
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(pipeline.subprocess, "run", lambda cmd: commands.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    pipeline.run_pipeline(["report", "xray", "ct"], tmp_path)
    previous = [cmd[cmd.index("--previous_stage") + 1] for cmd in commands]
    assert previous == ["", "report", "xray"]


def test_third_stage_distills_from_the_second_stage(sample_data, tmp_path):
    run_stage("report", tmp_path, max_items=32)
    run_stage("xray", tmp_path)  # its bundle continues from report
    report, xray = (load_state(layout.stage_dir(tmp_path, m) / layout.MODEL_FILE, "model.pt") for m in ("report", "xray"))
    parser = read_bundle(BUNDLES / "stage_ct.json", {"output_dir": str(tmp_path)})  # the ct bundle's own previous_stage
    teacher = parser.get_parsed_content("teacher").state_dict()

    assert set(teacher) == set(xray)
    assert all(torch.equal(v.cpu(), xray[k]) for k, v in teacher.items()), "the teacher is stage_xray/model.pt"
    # the two stages' encoders differ, so a teacher read from the first stage would be caught above
    assert any(not torch.equal(xray[k], report[k]) for k in xray if k.startswith("encoder.") and k in report)
