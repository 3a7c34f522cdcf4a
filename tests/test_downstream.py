"""The downstream-table command (medcoss_monai/evaluation/downstream.py): table maths, skipping and reporting
with a fake fine-tuning runner, and one end-to-end run on miniatures of published layouts (real sample images)."""

from __future__ import annotations

import ast
import importlib
import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medcoss_monai.errors import BadInputError
from medcoss_monai.evaluation.downstream import finetune_command, read_metrics, run_suite
from medcoss_monai.evaluation.downstream_suites import MEDCOSS, MUSCLE, SUITES
from medcoss_monai.evaluation.downstream_table import summarise

CHESTXR_CLASSES = ("covid", "normal", "pneumonia")


def chestxr_root(root: Path, sample_data: Path, per_class: tuple[int, int] = (3, 1)) -> Path:
    """``root/chestxr`` in the grand challenge's layout (train/ and validation/ class folders) of real radiographs."""
    from medcoss_monai.samples.muscle_sample_tasks import load_mdmoco_items

    load_mdmoco_items()  # renders the sample radiographs (DRRs of the real CTs) when the cache has none yet
    pngs = sorted((sample_data / "muscle_mdmoco" / "images").glob("drr_*.png"))
    assert pngs, "no sample radiographs"
    k = 0
    for release, n in zip(("train", "validation"), per_class):
        for cls in CHESTXR_CLASSES:
            (root / "chestxr" / release / cls).mkdir(parents=True, exist_ok=True)
            for _ in range(n):
                Image.open(pngs[k % len(pngs)]).save(root / "chestxr" / release / cls / f"{cls}_{k:03d}.png")
                k += 1
    return root / "chestxr"


def random_stage(folder: Path) -> Path:
    """``folder/model.pt``: a randomly initialised MedCoSS network of the fine-tuning tests' demo size (seed 0)."""
    import torch

    from medcoss_monai.networks import MedCoSSModel

    sys.path.insert(0, str(Path(__file__).parent))
    from test_finetune import ENCODER  # the demo-sized encoder of the fine-tuning tests

    folder.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(MedCoSSModel(**ENCODER).state_dict(), folder / "model.pt")
    return folder / "model.pt"


def arg(cmd: list[str], flag: str) -> str:
    """The value after ``flag`` in a command line."""
    return cmd[cmd.index(flag) + 1]


class FakeRunner:
    """Stands in for ``monai.bundle run``: writes the metrics.json a fine-tuning would, from a formula of the seed."""

    def __init__(self, fail: set[tuple[str, int]] = frozenset()) -> None:
        self.calls: list[list[str]] = []
        self.fail = fail

    def __call__(self, title: str, cmd: list[str]) -> bool:
        self.calls.append(cmd)
        out, seed = Path(arg(cmd, "--output_dir")), int(arg(cmd, "--seed"))
        name = out.parent.name
        if (name, seed) in self.fail:
            return False
        out.mkdir(parents=True)
        metrics = {"ACC": 0.5 + 0.1 * seed, "AUC": None if seed == 2 else 0.9, "F1": 0.25 * seed}
        (out / "metrics.json").write_text(json.dumps({"task": name, "metrics": metrics}))
        return True


def test_summarise_mean_and_sample_sd_over_seeds():
    results = {"chestxr": {0: {"ACC": 0.5, "AUC": 0.9, "F1": 0.0}, 1: {"ACC": 0.7, "AUC": None, "F1": 0.5},
                           2: {"ACC": 0.9, "AUC": 0.7, "F1": 1.0}}, "glas": {3: {"Dice": 0.8, "HD95": 4.0}}}
    rows = {(r["dataset"], r["metric"]): r for r in summarise(MEDCOSS, results)}
    assert set(rows) == {("chestxr", m) for m in ("ACC", "AUC", "F1")} | {("glas", "Dice"), ("glas", "HD95")}
    acc = rows["chestxr", "ACC"]
    assert acc["mean"] == pytest.approx(0.7) and acc["std"] == pytest.approx(0.2)  # sample sd (ddof 1)
    assert acc["n"] == 3 and acc["seeds"] == [0, 1, 2]
    auc = rows["chestxr", "AUC"]  # a seed without the value is left out, not counted as 0
    assert auc["n"] == 2 and auc["seeds"] == [0, 2] and auc["mean"] == pytest.approx(0.8)
    assert rows["glas", "Dice"]["n"] == 1 and rows["glas", "Dice"]["std"] is None  # no spread from one seed
    assert [r["dataset"] for r in summarise(MEDCOSS, results)][0] == "chestxr"  # table order


def test_read_metrics_nested_keys_and_bad_file(tmp_path: Path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"metrics": {"muscle_lung_seg": {"dice": 0.75, "miou": 0.6}}}))
    assert read_metrics(path, MUSCLE["montgomery"]) == {"Dice": 0.75, "mIoU": 0.6}
    path.write_text(json.dumps({"metrics": {"ACC": 1, "F1": 0.5}}))
    assert read_metrics(path, MEDCOSS["chestxr"]) == {"ACC": 1.0, "AUC": None, "F1": 0.5}
    path.write_text("{not json")
    with pytest.raises(BadInputError, match="metrics.json: not a fine-tuning metrics file"):
        read_metrics(path, MEDCOSS["chestxr"])


def test_finetune_command_sets_the_task_and_the_datalist(tmp_path: Path):
    cmd = finetune_command(MEDCOSS["nct_crc_he"], tmp_path / "d.json", "stage/", 1, tmp_path / "s1",
                           {"label_fraction": 0.4, "train#trainer#max_epochs": 2, "head": "mlp"})
    assert arg(cmd, "--config_file").endswith("bundles/finetune_pathology_cls.json")
    assert arg(cmd, "--dataset_dir") == str(tmp_path / "d.json") and arg(cmd, "--pretrained_ckpt") == "stage/"
    assert arg(cmd, "--seed") == "1" and arg(cmd, "--num_classes") == "9" and arg(cmd, "--label_fraction") == "0.4"
    assert cmd.count("--head") == 1 and arg(cmd, "--head") == "mlp"  # the user's override wins, once
    # a bundle without dataset_dir (MUSCLE) gets the datalist inside its task dict
    cmd = finetune_command(MUSCLE["tbx11k"], "/d/t.json", "m.pt", 0, tmp_path / "s0")
    assert "--dataset_dir" not in cmd
    tasks = ast.literal_eval(arg(cmd, "--tasks"))  # python-fire reads it back as a literal
    assert tasks == {"muscle_chest_det": {"kind": "detection", "num_classes": 3, "dataset_dir": "/d/t.json"}}


def test_every_suite_names_existing_bundles_and_registered_sets():
    from medcoss_monai.data.prepare import DATASETS
    from medcoss_monai.layout import bundles_dir

    for suite, table in SUITES.items():
        for name, spec in table.items():
            assert (bundles_dir() / spec.bundle).is_file(), spec.bundle
            bundle = json.loads((bundles_dir() / spec.bundle).read_text())
            assert all(k.split("#")[0] in bundle for k in spec.overrides), (suite, name)
            if spec.converter.endswith(":prepare"):
                assert (spec.dataset or name) in DATASETS, (suite, name)
            module, function = spec.converter.split(":")
            assert callable(getattr(importlib.import_module(module), function)), (suite, name)
    assert SUITES["brainmvp"]["vs"].dataset == "vs_brainmvp"  # BrainMVP's VS task reads T2 studies
    assert SUITES["brainmvp"]["adni"].dataset == "adni_cls"  # labelled scans, not the pre-training set
    assert list(MEDCOSS) == ["pudmed20k", "chestxr", "qata_cov19", "ricord", "lits", "vs", "la", "nct_crc_he", "glas"]


def test_absent_skipped_refused_reported_others_run_and_rerun_continues(tmp_path: Path, sample_data: Path, capsys):
    root = tmp_path / "root"
    chestxr_root(root, sample_data)
    (root / "lits").mkdir()  # present, but not the LiTS layout
    runner = FakeRunner(fail={("chestxr", 1)})
    report = run_suite("medcoss", "stage/", root, tmp_path / "out", seeds=[0, 1, 2], runner=runner, progress=False)
    out = capsys.readouterr()
    assert sorted(report.absent) == sorted(set(MEDCOSS) - {"chestxr", "lits"})
    assert out.out.count("skip ") == 7 and f"skip vs: {root / 'vs'} absent" in out.out
    assert "volume-*.nii or volume-*.nii.gz not found under" in report.failed["lits"]
    assert report.failed["chestxr"] == "fine-tuning failed for seed(s) 1"
    assert len(runner.calls) == 3
    datalist = json.loads((tmp_path / "out" / "datalists" / "chestxr.json").read_text())
    assert len(datalist["training"]) + len(datalist["validation"]) == 9 and len(datalist["test"]) == 3
    rows = {r["metric"]: r for r in report.rows}
    assert rows["ACC"]["seeds"] == [0, 2] and rows["ACC"]["mean"] == pytest.approx(0.6)
    assert rows["AUC"]["n"] == 1  # seed 2 wrote no AUC
    with open(tmp_path / "out" / "downstream.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert [(r["dataset"], r["metric"], r["n"], r["pretrained"], r["label_fraction"]) for r in csv_rows] == [
        ("chestxr", m, n, "stage/", "1.0") for m, n in (("ACC", "2"), ("AUC", "1"), ("F1", "2"))]
    assert float(csv_rows[0]["std"]) == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert "| chestxr | xray_cls | ACC | 0.6000 ± 0.1414 | 2 | 0,2 |" in (tmp_path / "out" / "downstream.md").read_text()
    assert (tmp_path / "out" / "downstream.png").read_bytes()[:4] == b"\x89PNG"
    # a rerun continues: only the failed seed runs again; the datalist is not rewritten
    stamp = (tmp_path / "out" / "datalists" / "chestxr.json").stat().st_mtime_ns
    runner2 = FakeRunner()
    report2 = run_suite("medcoss", "stage/", root, tmp_path / "out", seeds=[0, 1, 2], runner=runner2, progress=False)
    assert [arg(c, "--seed") for c in runner2.calls] == ["1"]
    assert (tmp_path / "out" / "datalists" / "chestxr.json").stat().st_mtime_ns == stamp
    assert {r["metric"]: r["n"] for r in report2.rows} == {"ACC": 3, "AUC": 2, "F1": 3}
    # another run's weights are refused before anything runs
    with pytest.raises(BadInputError, match="holds the table of another run"):
        run_suite("medcoss", "other/", root, tmp_path / "out", runner=FakeRunner(), progress=False)


def test_label_fraction_needs_bundles_that_take_it(tmp_path: Path, sample_data: Path):
    bundles = tmp_path / "bundles"
    bundles.mkdir()
    for spec in MEDCOSS.values():
        (bundles / spec.bundle).write_text(json.dumps({"label_fraction": 1.0}))
    (bundles / "finetune_ct_seg.json").write_text("{}")
    with pytest.raises(BadInputError, match="finetune_ct_seg.json in .* take no label_fraction"):
        run_suite("medcoss", "", tmp_path / "root", tmp_path / "out", label_fraction=0.4, bundles=bundles, runner=FakeRunner())
    assert not (tmp_path / "out").exists()  # refused before anything is written
    runner = FakeRunner()
    chestxr_root(tmp_path / "root", sample_data)
    (bundles / "finetune_ct_seg.json").write_text(json.dumps({"label_fraction": 1.0}))
    run_suite("medcoss", "", tmp_path / "root", tmp_path / "out", seeds=[0], label_fraction=0.4, bundles=bundles,
              runner=runner, progress=False)
    assert arg(runner.calls[0], "--label_fraction") == "0.4"
    assert "label fraction: 0.4" in (tmp_path / "out" / "downstream.md").read_text()


@pytest.mark.slow
def test_command_line_end_to_end_on_a_chestxr_miniature(tmp_path: Path, sample_data: Path, capfd):
    """The command on a root holding a ChestXR miniature and a refused folder: real fine-tuning, one seed, one epoch."""
    from medcoss_monai.evaluation.downstream import main

    model = random_stage(tmp_path / "stage")
    root = tmp_path / "root"
    chestxr_root(root, sample_data, per_class=(3, 2))
    (root / "glas").mkdir()  # present but empty: refused, reported, exit status 1
    out = tmp_path / "out"
    code = main(["--pretrained", str(model), "--suite", "medcoss", "--data_root", str(root), "--seeds", "0",
                 "--max_epochs", "1", "--out", str(out), "--batch_size", "4"])
    printed = capfd.readouterr()
    assert code == 1, printed.out[-3000:] + printed.err[-3000:]
    assert "FAILED glas: Grade.csv not found under" in printed.err
    assert "monai.bundle run --config_file" in printed.out and "finetune_xray_cls.json" in printed.out
    metrics = json.loads((out / "chestxr" / "s0" / "metrics.json").read_text())
    assert metrics["split_sizes"] == {"training": 6, "validation": 3, "test": 6} and metrics["max_epochs"] == 1
    with open(out / "downstream.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["dataset"], r["task"], r["metric"], r["n"]) for r in rows] == [
        ("chestxr", "xray_cls", m, "1") for m in ("ACC", "AUC", "F1")]
    for r in rows:
        assert float(r["mean"]) == pytest.approx(metrics["metrics"][r["metric"]])
    assert "| chestxr | xray_cls | ACC |" in (out / "downstream.md").read_text()


def test_pudmed20k_overrides_switch_the_text_bundle_to_single_label(tasks_ready: Path, tmp_path: Path):
    """The suite's ``multi_label false`` gives cross-entropy on class indices, softmax and multiclass scores;
    the bundle's default stays multi-label (BCE on multi-hot labels, sigmoid). Real report texts, one batch."""
    import torch

    from medcoss_monai.bundle.finetune import load_task
    from medcoss_monai.layout import bundles_dir, read_bundle

    sample = load_task("", "text_cls")  # multi-hot labels; a single-label copy: each report's first label
    single = {s: [{"text": i["text"], "label": int(np.argmax(i["label"])) % 5} for i in sample[s][:12]]
              for s in ("training", "validation", "test")}
    (tmp_path / "single.json").write_text(json.dumps(single))

    def resolved(**overrides):
        parser = read_bundle(bundles_dir() / "finetune_text_cls.json", {"output_dir": str(tmp_path / "out"),
                             "max_text_len": 32, "batch_size": 4, **overrides})
        parser.parse()
        batch = next(iter(parser.get_parsed_content("train#dataloader")))
        logits = parser.get_parsed_content("network")(batch["input_ids"], attention_mask=batch["attention_mask"])
        post = parser.get_parsed_content("validate#postprocessing")({"pred": logits[0].detach(), "label": batch["label"][0]})
        writer = parser.get_parsed_content("evaluate#handlers")[1]
        return parser.get_parsed_content("loss"), batch["label"], logits, post, writer.classification

    overrides = {k: v for k, v in MEDCOSS["pudmed20k"].overrides.items() if k not in ("max_train_items", "max_eval_items")}
    loss, label, logits, post, mode = resolved(**overrides, dataset_dir=str(tmp_path / "single.json"))
    assert isinstance(loss, torch.nn.CrossEntropyLoss) and mode == "multiclass"
    assert label.dtype == torch.long and label.shape == (4,) and logits.shape == (4, 5)
    assert torch.isfinite(loss(logits, label))
    assert float(post["pred"].sum()) == pytest.approx(1.0, abs=1e-5)  # softmax
    assert post["label"].tolist() == [1.0 if c == int(label[0]) else 0.0 for c in range(5)]  # one-hot for AUC

    loss, label, logits, post, mode = resolved()  # the bundle's default on the multi-label sample task
    assert isinstance(loss, torch.nn.BCEWithLogitsLoss) and mode == "multilabel"
    assert label.dtype == torch.float32 and label.shape == logits.shape == (4, 8)
    assert torch.isfinite(loss(logits, label))
    assert torch.allclose(post["pred"], torch.sigmoid(logits[0].detach()))  # independent labels
    # on the command line the switch arrives as text
    assert arg(finetune_command(MEDCOSS["pudmed20k"], "/d.json", "", 0, tmp_path / "s0"), "--multi_label") == "False"
    as_text = read_bundle(bundles_dir() / "finetune_text_cls.json", {"output_dir": str(tmp_path / "out"), "multi_label": "false"})
    assert isinstance(as_text.get_parsed_content("loss"), torch.nn.CrossEntropyLoss)


def test_brainmvp_rows_read_dice_and_hd95(tmp_path: Path):
    from medcoss_monai.evaluation.downstream_suites import BRAINMVP

    path = tmp_path / "metrics.json"  # as finetune_brainmvp_seg.json writes it
    path.write_text(json.dumps({"metrics": {"mean_dice": 0.8, "channel_dice": [0.7, 0.9], "hd95": 3.5, "channel_hd95": [3, 4]}}))
    assert read_metrics(path, BRAINMVP["isles22"]) == {"Dice": 0.8, "HD95": 3.5}
