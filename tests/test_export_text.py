"""Model Zoo export of text networks: the report stage's encoder and the fine-tuned ``text_cls`` task.

``verify_net_in_out`` feeds random float images, so it cannot check a network on token ids. This
is the project's check instead (the bundle README points here): the bundle ships its tokenizer; the
scripted ``models/model.ts``, the eager ``network_def`` and the trained network agree on real
held-out reports tokenized with it; and ``configs/inference.json`` reads a ``.txt`` report and a
datalist of texts and writes one row per report.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medcoss_monai.bundle.export import PRETRAIN_WEIGHTS, main

sys.path.insert(0, str(Path(__file__).parent))
from stage_utils import run_stage
from test_export_tasks import check_task_bundle, finetune_and_export
from test_export_zoo import (
    check_layout_and_metadata,
    check_trained_network,
    check_zoo_network,
    read_csv_rows,
    run_inference,
)
from test_export_apps import run_without_medcoss  # noqa: E402


def csv_features(path: Path) -> tuple[list[str], np.ndarray]:
    """The rows of MONAI's ``ClassificationSaver`` CSV: names, and the values as an array."""
    rows = read_csv_rows(path)
    return [r[0] for r in rows], np.array([[float(v) for v in r[1:]] for r in rows])


@pytest.fixture(scope="module")
def report(sample_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A one-epoch report stage on 48 reports (its tokenizer trained on them) and its bundle."""
    tmp = tmp_path_factory.mktemp("report")
    stage = run_stage("report", tmp / "run", rehearsal=False, select_buffer=False)
    return stage, main(["--stage_dir", str(stage), "--out", str(tmp / "zoo" / "medcoss_report")])


@pytest.fixture(scope="module")
def reports(datalist, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Held-out reports as the user gives them: one ``.txt`` file, and a datalist with a text and a file."""
    folder = tmp_path_factory.mktemp("reports")
    test = datalist("report")["test"]
    (folder / "report_0.txt").write_text(test[0]["text"] + "\n")
    (folder / "texts.json").write_text(json.dumps({"test": [{"text": test[1]["text"], "id": "second"},
                                                            {"text_file": "report_0.txt"}]}))
    return folder


def test_report_bundle_ships_its_tokenizer(report: tuple[Path, Path], reports: Path) -> None:
    from transformers import AutoTokenizer

    stage, bundle = report
    meta = check_layout_and_metadata(bundle)
    inputs = meta["network_data_format"]["inputs"]
    assert set(inputs) == {"input_ids", "attention_mask"} and inputs["input_ids"]["spatial_shape"] == [112]
    text = (reports / "report_0.txt").read_text()
    shipped = AutoTokenizer.from_pretrained(str(bundle / "models/tokenizer"))
    trained = AutoTokenizer.from_pretrained(str(stage / "tokenizer"))
    assert shipped(text)["input_ids"] == trained(text)["input_ids"]
    assert "verify_net_in_out" in (bundle / "docs/README.md").read_text()  # the README says how it is checked


@pytest.mark.slow
def test_report_bundle_scripted_network_and_inference(report: tuple[Path, Path], reports: Path, tmp_path: Path) -> None:
    _, bundle = report
    args, kwargs, expected = check_zoo_network(bundle, tmp_path, reports / "report_0.txt")
    assert kwargs["attention_mask"].sum() < kwargs["attention_mask"].numel()  # a real, padded report
    check_trained_network(bundle, bundle / PRETRAIN_WEIGHTS, args, kwargs, expected)
    run_inference(bundle, reports / "report_0.txt", tmp_path / "one")
    names, one = csv_features(tmp_path / "one/features.csv")
    assert names == ["report_0.txt"] and one.shape == (1, 192)
    np.testing.assert_allclose(one[0], expected[0].numpy(), rtol=1e-4, atol=1e-5)
    # MONAI, PyTorch and the shipped HF tokenizer only (a subprocess where medcoss_monai cannot be imported)
    run_without_medcoss(bundle, [("configs/inference.json", reports / "texts.json", tmp_path / "list")])
    names, rows = csv_features(tmp_path / "list/features.csv")
    assert names == ["second", str(reports / "report_0.txt")]
    assert rows.shape == (2, 192) and np.isfinite(rows).all()
    np.testing.assert_allclose(rows[1], one[0], rtol=1e-5, atol=1e-6)  # the same report, read from its file
    assert not np.allclose(rows[0], rows[1])


@pytest.mark.slow
def test_text_cls_bundle_writes_label_probabilities(report: tuple[Path, Path], reports: Path, tmp_path: Path) -> None:
    """text_cls fine-tuned from the report stage (whose tokenizer it uses) exports with that tokenizer."""
    stage, _ = report
    ft, bundle = finetune_and_export("text_cls", tmp_path, pretrained_ckpt=str(stage / "model.pt"),
                                     max_train_items=64, max_eval_items=64)
    assert (bundle / "models/tokenizer/tokenizer.json").read_bytes() == (stage / "tokenizer/tokenizer.json").read_bytes()
    meta, expected = check_task_bundle(ft, bundle, tmp_path, reports / "report_0.txt")
    classes = list(meta["network_data_format"]["outputs"]["pred"]["channel_def"].values())
    assert len(classes) == 8 and classes[0] == "normal"
    run_inference(bundle, reports / "texts.json", tmp_path / "eval")
    names, probs = csv_features(tmp_path / "eval/predictions.csv")  # MONAI's ClassificationSaver: classes in order
    assert names == ["second", str(reports / "report_0.txt")] and probs.shape == (2, len(classes))
    # multi-label: independent sigmoid probabilities, that of the file equal to the network's on it
    np.testing.assert_allclose(probs[1], torch.sigmoid(expected[0]).numpy(), atol=1e-5)
    # configs/evaluate.json, MONAI and PyTorch only: the macro-AUC fine-tuning measured on the same test items
    from medcoss_monai.bundle.finetune import task_items

    labelled = tmp_path / "labelled.json"
    labelled.write_text(json.dumps({"test": task_items("", "text_cls", "test", 64, 0)}))
    run_without_medcoss(bundle, [("configs/evaluate.json", labelled, tmp_path / "metrics")])
    with open(tmp_path / "metrics/metrics.csv") as f:
        exported = float(dict(line.strip().split(",") for line in f if line.strip())["auc"])
    measured = json.loads((ft / "metrics.json").read_text())["metrics"]["AUC"]
    assert exported == pytest.approx(measured, abs=1e-4)


@pytest.mark.slow
def test_single_label_text_cls_exports_softmax_and_accuracy(report: tuple[Path, Path], tmp_path: Path) -> None:
    """text_cls with ``--multi_label false`` (PubMed 20k's setting) exports softmax probabilities, and its
    evaluate.json, MONAI and PyTorch only, gives the test accuracy fine-tuning measured."""
    from monai.bundle import run

    from medcoss_monai.bundle.finetune import load_task
    from test_export_tasks import ROOT

    stage, _ = report
    sample = load_task("", "text_cls")  # real reports; one label each: the first of its findings
    single = {s: [{"text": i["text"], "label": int(np.argmax(i["label"])) % 3, "id": f"{s}_{k}"}
                  for k, i in enumerate(sample[s][:16])] for s in ("training", "validation", "test")}
    datalist = tmp_path / "single.json"
    datalist.write_text(json.dumps(single))
    ft = tmp_path / "ft"
    run(config_file=str(ROOT / "bundles/finetune_text_cls.json"), output_dir=str(ft), logging_file=False,
        pretrained_ckpt=str(stage / "model.pt"), multi_label=False, num_classes=3, dataset_dir=str(datalist),
        **{"train#trainer#max_epochs": 1})
    # the class count is an override of the training run, so of the export too; multi_label is read from metrics.json
    bundle = main(["--finetune_dir", str(ft), "--out", str(tmp_path / "zoo"), "--num_classes", "3"])
    run_without_medcoss(bundle, [("configs/inference.json", datalist, tmp_path / "pred"),
                                 ("configs/evaluate.json", datalist, tmp_path / "metrics")])
    names, probs = csv_features(tmp_path / "pred/predictions.csv")
    assert names == [i["id"] for i in single["test"]] and probs.shape == (16, 3)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)  # softmax over the classes
    with open(tmp_path / "metrics/metrics.csv") as f:
        accuracy = float(dict(line.strip().split(",") for line in f if line.strip())["accuracy"])
    assert accuracy == pytest.approx(json.loads((ft / "metrics.json").read_text())["metrics"]["ACC"], abs=1e-6)
    assert accuracy == pytest.approx(np.mean(probs.argmax(1) == [i["label"] for i in single["test"]]), abs=1e-6)
