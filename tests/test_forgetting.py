"""Forgetting matrix of a small run folder and the method comparison."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from medcoss_monai.layout import STAGE_RECORD_FILE, stage_dir, stage_model
from medcoss_monai.evaluation.compare import compare_runs, parse_runs
from medcoss_monai.evaluation.forgetting import evaluate_run, load_stage_network, stage_network_config, stage_order
from medcoss_monai.evaluation.heldout import held_out_mae_mse
from medcoss_monai.evaluation.matrix import CSV_COLUMNS, forgetting_summary, read_matrix
from medcoss_monai.evaluation.probes import image_probe
from medcoss_monai.evaluation.text_probe import probe_tokenizer, text_probe
from medcoss_monai.networks import MedCoSSModel
from medcoss_monai.networks.checkpoint import load_state

TINY = dict(hidden_size=48, num_layers=2, num_heads=2, decoder_hidden_size=32, decoder_layers=1, decoder_heads=2,
            img_size_2d=[64, 64], img_size_3d=[32, 32, 16])


def _fake_run(root, stages, seed=0, settings=None):
    """Stage folders as the stages write them: model.pt (random weights) and stage.json (``settings[m]`` recorded)."""
    previous = ""
    for i, m in enumerate(stages):
        torch.manual_seed(seed + i)
        net = MedCoSSModel(**TINY)
        stage = stage_dir(root, m)
        stage.mkdir(parents=True)
        torch.save(net.state_dict(), stage_model(root, m))
        info = {"modality": m, "previous_stage": previous, "settings": (settings or {}).get(m, {}),
                "network": {"_target_": "medcoss_monai.networks.MedCoSSModel", **net.config}}
        (stage / STAGE_RECORD_FILE).write_text(json.dumps(info))
        previous = m
    return root


@pytest.fixture(scope="module")
def run(sample_data, tmp_path_factory):
    root = _fake_run(tmp_path_factory.mktemp("run"), ["report", "ct"])
    rows, summary = evaluate_run(root, probes=["text", "ct"], text_n_test=200, mlm_n_items=40, verbose=False)
    return root, rows, summary


def test_stage_order_follows_chain(tmp_path):
    _fake_run(tmp_path, ["ct", "report"])
    assert stage_order(tmp_path) == ["ct", "report"]


@pytest.mark.slow
def test_forgetting_csv_rows_columns_and_png(run):
    root, rows, summary = run
    with open(root / "forgetting.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0]) == CSV_COLUMNS
    assert [r["after"] for r in table] == ["scratch", "stage_report", "stage_ct"]
    scratch, report, ct = table
    assert scratch["text_mlm_acc"] == "" and scratch["ct_mae_mse"] == ""
    assert report["text_mlm_acc"] != "" and report["ct_mae_mse"] == ""
    assert ct["text_mlm_acc"] != "" and ct["ct_mae_mse"] != ""
    assert all(r["xray"] == "" for r in table)  # not asked for
    assert 0.5 < float(scratch["text"]) < 0.95
    assert (root / "forgetting.png").stat().st_size > 5000
    assert "text_mlm_acc" in summary["per_column"] and "text" in summary["per_column"]
    assert json.loads((root / "forgetting_summary.json").read_text())["stages"] == ["report", "ct"]
    assert read_matrix(root / "forgetting.csv")[2]["ct_mae_mse"] == pytest.approx(rows[2]["ct_mae_mse"], rel=1e-5)


def test_forgetting_summary_definitions():
    rows = [
        {"after": "scratch", "text": 0.6, "text_mlm_acc": None, "xray_mae_mse": None},
        {"after": "stage_report", "text": 0.8, "text_mlm_acc": 0.5, "xray_mae_mse": None},
        {"after": "stage_xray", "text": 0.9, "text_mlm_acc": 0.4, "xray_mae_mse": 0.30},
        {"after": "stage_ct", "text": 0.7, "text_mlm_acc": 0.3, "xray_mae_mse": 0.45},
    ]
    s = forgetting_summary(rows)
    assert s["per_column"]["text"]["forgetting"] == pytest.approx(0.2)  # best 0.9 -> 0.7
    assert s["per_column"]["text"]["bwt"] == pytest.approx(-0.1)  # 0.8 right after its stage -> 0.7
    assert s["per_column"]["text_mlm_acc"]["forgetting"] == pytest.approx(0.2)
    # MSE: lower is better, forgetting is the rise over its best
    assert s["per_column"]["xray_mae_mse"]["forgetting"] == pytest.approx(0.15)
    assert s["per_column"]["xray_mae_mse"]["bwt"] == pytest.approx(-0.15)
    assert s["avg_forgetting"] == pytest.approx(0.2)


def test_compare_writes_table(run, tmp_path):
    root = run[0]
    other = tmp_path / "sequential"
    other.mkdir()
    rows = read_matrix(root / "forgetting.csv")
    rows[1]["text_mlm_acc"], rows[-1]["text_mlm_acc"] = 0.5, 0.1  # a method that forgets the reports
    with open(other / "forgetting.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    table = compare_runs(parse_runs([f"medcoss={root}", f"sequential={other}"]), tmp_path / "cmp")
    assert [r["method"] for r in table] == ["medcoss", "sequential"]
    assert table[1]["forgetting_text_mlm_acc"] > table[0]["forgetting_text_mlm_acc"]
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| medcoss |" in md and "avg forgetting" in md
    assert (tmp_path / "cmp" / "comparison.png").is_file() and (tmp_path / "cmp" / "comparison.csv").is_file()
    with pytest.raises(FileNotFoundError, match="no forgetting.csv"):
        compare_runs({"er": tmp_path / "missing"}, tmp_path / "cmp2")


def test_compare_aggregates_seeds(run, tmp_path):
    """Several runs of a method: every cell is the mean over the runs with its sample deviation."""
    root = run[0]
    rows = read_matrix(root / "forgetting.csv")
    seeds = []
    for k, value in enumerate((0.2, 0.4, 0.9)):
        folder = tmp_path / f"seed{k}"
        folder.mkdir()
        changed = [dict(r) for r in rows]
        changed[-1]["text"] = value
        with open(folder / "forgetting.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(changed)
        seeds.append(str(folder))
    runs = parse_runs(["medcoss=" + ",".join(seeds), f"single={root}"])
    assert [len(v) for v in runs.values()] == [3, 1]
    table = compare_runs(runs, tmp_path / "cmp")
    assert table[0]["n_runs"] == 3 and table[0]["text"] == pytest.approx(0.5)
    assert table[0]["text_sd"] == pytest.approx(np.std([0.2, 0.4, 0.9], ddof=1))
    assert table[1]["text_sd"] is None and table[1]["text"] == pytest.approx(rows[-1]["text"])
    matrix = (tmp_path / "cmp" / "matrix_medcoss.md").read_text()
    assert "0.5000 ± " in matrix and f"{rows[0]['text']:.4f} ± 0.0000" in matrix
    header = (tmp_path / "cmp" / "comparison.csv").read_text().splitlines()[0].split(",")
    assert "text_sd" in header and "n_runs" in header


def test_each_row_scores_that_stages_own_weights(run):
    """A row equals a direct probe of the stage's weights (not of scratch weights half-loaded)."""
    root, rows, _ = run
    config = stage_network_config(root, ["report"])
    tokenizer = probe_tokenizer(root, vocab_size=config["vocab_size"])
    for row, stage in zip(rows[1:], ("report", "ct")):
        network = load_stage_network(config, stage_model(root, stage))
        assert row["text"] == pytest.approx(text_probe(network, tokenizer, n_test=200)["auc"], abs=1e-6)
    ct = load_stage_network(config, stage_model(root, "ct"))
    assert rows[2]["ct_mae_mse"] == pytest.approx(held_out_mae_mse(ct, "ct"), rel=1e-5)
    assert rows[1]["text"] != rows[2]["text"]  # different weights, different rows


def test_weights_that_do_not_fit_are_refused(tmp_path, sample_data):
    root = _fake_run(tmp_path / "renamed", ["report", "ct"])
    state = load_state(stage_model(root, "ct"))
    torch.save({k.replace("encoder.", "backbone.", 1): v for k, v in state.items()}, stage_model(root, "ct"))
    with pytest.raises(ValueError, match=r"stage_ct/model\.pt' does not fit .*missing key"):
        evaluate_run(root, probes=["text"], text_n_test=50, mlm_n_items=8, verbose=False, write=False)
    # a stage's heads renamed: its pretext column is refused too, not scored with the current heads
    root = _fake_run(tmp_path / "heads", ["report", "ct"])
    state = load_state(stage_model(root, "report"))
    state = {k.replace("mlm_head.", "text_head.", 1): v for k, v in state.items()}
    torch.save(state, stage_model(root, "report"))
    with pytest.raises(ValueError, match="does not fit"):
        evaluate_run(root, probes=[], mlm_n_items=8, verbose=False, write=False)


def test_recorded_ct_settings_reach_the_matrix(sample_data, tmp_path):
    """A CT stage run with --ct_spacing 2 2 4 --hu_window -500 500 is probed and scored with those settings."""
    recorded = {"ct_spacing": [2.0, 2.0, 4.0], "hu_window": [-500, 500]}
    root = _fake_run(tmp_path / "run", ["ct"], settings={"ct": recorded})
    rows, summary = evaluate_run(root, probes=["ct"], verbose=False, write=False)
    assert summary["stage_settings"]["ct"] == recorded and summary["stage_settings"]["mri"] == {}
    network = load_stage_network(stage_network_config(root, ["ct"]), stage_model(root, "ct"))
    assert rows[1]["ct"] == pytest.approx(image_probe(network, "ct", settings=recorded)["auc"], abs=1e-9)
    assert rows[1]["ct_mae_mse"] == pytest.approx(held_out_mae_mse(network, "ct", settings=recorded), rel=1e-6)
    # the bundle's defaults (1.5 x 1.5 x 3 mm, [-1000, 1000] HU) cut other held-out crops: another score
    assert abs(rows[1]["ct_mae_mse"] - held_out_mae_mse(network, "ct")) > 1e-4


def test_command_line_takes_the_pipelines_arguments(sample_data, tmp_path, capsys):
    """``--output_dir`` and comma-separated ``--stages``, as the pipeline passes them, or ``--run_dir`` and spaces."""
    from medcoss_monai.evaluation.forgetting import main

    root = _fake_run(tmp_path / "run", ["report", "ct"])
    assert main(["--output_dir", str(root), "--stages", "report,ct", "--probes", "--mlm_n_items", "8", "--device", "cpu"]) == 0
    rows = read_matrix(root / "forgetting.csv")
    assert [r["after"] for r in rows] == ["scratch", "stage_report", "stage_ct"] and rows[2]["ct_mae_mse"] is not None
    assert main(["--run_dir", str(root), "--stages", "ct", "--probes", "--device", "cpu"]) == 0
    assert [r["after"] for r in read_matrix(root / "forgetting.csv")] == ["scratch", "stage_ct"]
