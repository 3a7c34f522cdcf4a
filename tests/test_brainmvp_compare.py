"""The BrainMVP comparison command: pre-trained against scratch, with a contrast missing, written into the figures."""

from __future__ import annotations

import csv
import json
import os

import pytest

from medcoss_monai.apps.brainmvp import compare
from medcoss_monai.provenance import read_sections


def test_the_table_gives_mean_and_spread_per_condition_with_every_seed():
    rows = [{"init": i, "seed": s, "missing": m, "fill": f, "mean_dice": d, "hd95": h}
            for i, s, m, f, d, h in [("scratch", 1, "", "", 0.3, 10.0), ("scratch", 0, "", "", 0.1, None),
                                     ("pretrained", 0, "t2", "zero", 0.2, 5.0), ("pretrained", 0, "", "", 0.4, 4.0),
                                     ("pretrained", 1, "", "", 0.6, 6.0)]]
    lines = compare.compare_table(rows).splitlines()
    assert lines[2] == "| pretrained | every contrast | 0.500 ± 0.141 | 0.400 / 0.600 (seeds 0, 1) | 5.000 ± 1.414 |"
    assert lines[3] == "| scratch | every contrast | 0.200 ± 0.141 | 0.100 / 0.300 (seeds 0, 1) | 10.000 |"
    assert lines[4].startswith("| pretrained | t2 missing, zero-filled | 0.200 | 0.200 (seeds 0)")
    assert compare.test_inputs(["t2"]) == [("", ""), ("t2", "template"), ("t2", "zero")]


@pytest.mark.slow
@pytest.mark.long  # nine bundle runs, HD95 on every test: about 9 min on 2 busy cores
def test_the_comparison_runs_every_condition_and_writes_its_section(sample_data, tmp_path):
    out, doc = tmp_path / "cmp", tmp_path / "figures.md"
    pretrain = ("--train#trainer#max_epochs 1 --roi_size [16,16,16] --crops_per_study 2 --batch_size 4 "
                "--repeats 1 --progress_bar false")
    finetune = "--train#trainer#max_epochs 1 --repeats 1 --crops_per_study 2 --batch_size 2 --progress_bar false"
    argv = ["--output_dir", str(out), "--seeds", "0", "--missing", "t2", "--pretrain", pretrain, "--finetune", finetune,
            "--docs", str(doc)]
    assert compare.main(argv) == 0
    with open(out / "compare.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["init"], r["missing"], r["fill"]) for r in rows] == [
        (i, m, f) for i in compare.INITS for m, f in (("", ""), ("t2", "template"), ("t2", "zero"))]
    assert all(0.0 <= float(r["mean_dice"]) <= 1.0 for r in rows)
    dice = {(r["init"], r["missing"], r["fill"]): float(r["mean_dice"]) for r in rows}
    assert dice[("pretrained", "", "")] != dice[("scratch", "", "")]  # other initial weights, other model
    # the missing-contrast runs test the selected model without T2 (after one epoch the template may still equal zeros)
    assert dice[("pretrained", "t2", "zero")] != dice[("pretrained", "", "")]
    record = json.loads((out / "pretrained_s0_no_t2_zero" / "metrics.json").read_text())
    assert record["missing"] == ["t2"] and record["fill"] == "zero"
    assert record["tested_ckpt"] == str(out / "pretrained_s0" / "model_best.pt")
    section = read_sections(doc)["brainmvp"]
    assert "seeds 0;" in section and "| pretrained | t2 missing, template-filled |" in section
    stamp = os.stat(out / "scratch_s0" / "metrics.json").st_mtime_ns
    assert compare.main(argv) == 0  # a rerun finds every run finished and only rewrites the tables
    assert os.stat(out / "scratch_s0" / "metrics.json").st_mtime_ns == stamp
