"""Fine-tuning metrics against values computed by hand (pure mechanics: small known arrays).

A swapped label, a flipped AUC or a wrong average must turn these red: every expected value is
written out from its definition, not recomputed with the library under test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medcoss_monai.handlers.metrics_writer import MetricsWriter, classification_metrics


def _pair_auc(scores: list[float], labels: list[int]) -> float:
    """AUC as the share of (positive, negative) pairs ranked right, ties counting half."""
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_binary_with_index_and_one_hot_labels():
    p1 = [0.9, 0.8, 0.3, 0.6, 0.2, 0.4]  # probability of class 1
    y = [1, 1, 0, 0, 0, 1]
    probs = np.array([[1 - p, p] for p in p1])
    # predictions 1,1,0,1,0,0: TP 2, FN 1, FP 1, TN 2
    expected = {"ACC": 4 / 6, "AUC": _pair_auc(p1, y), "F1": (2 / 3 + 2 / 3) / 2}
    assert expected["AUC"] == pytest.approx(8 / 9)  # pairs of (0.9, 0.8, 0.4) vs (0.3, 0.6, 0.2): 0.4 < 0.6 only
    for labels in (np.array(y), np.eye(2)[y]):
        got = classification_metrics(probs, labels)
        for k, v in expected.items():
            assert got[k] == pytest.approx(v), k
    # the AUC is of class 1: scoring class 0 instead gives 1 - AUC
    assert classification_metrics(probs[:, ::-1], np.array(y))["AUC"] == pytest.approx(1 - 8 / 9)


def test_multiclass_macro_scores():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.5, 0.4, 0.1], [0.3, 0.3, 0.4], [0.1, 0.6, 0.3]])
    y = np.array([0, 1, 2, 1, 2, 2])
    got = classification_metrics(probs, y)
    assert got["ACC"] == pytest.approx(4 / 6)  # argmax 0,1,2,0,2,1
    # per class F1: class 0 P=1/2 R=1 -> 2/3; class 1 P=1/2 R=1/2 -> 1/2; class 2 P=1 R=2/3 -> 4/5
    assert got["F1"] == pytest.approx((2 / 3 + 1 / 2 + 4 / 5) / 3)
    one_vs_rest = [_pair_auc(list(probs[:, c]), list((y == c).astype(int))) for c in range(3)]
    assert got["AUC"] == pytest.approx(np.mean(one_vs_rest))
    assert classification_metrics(probs, np.eye(3)[y])["AUC"] == pytest.approx(got["AUC"])


def test_multilabel_and_a_label_with_one_class():
    probs = np.array([[0.9, 0.2, 0.6], [0.4, 0.7, 0.1], [0.8, 0.1, 0.3], [0.2, 0.6, 0.9]])
    labels = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])  # the third label never occurs
    got = classification_metrics(probs, labels, multilabel=True)
    auc0 = _pair_auc(list(probs[:, 0]), list(labels[:, 0]))
    auc1 = _pair_auc(list(probs[:, 1]), list(labels[:, 1]))
    assert (auc0, auc1) == (pytest.approx(1.0), pytest.approx(0.5))
    assert got["AUC"] == pytest.approx((auc0 + auc1) / 2)  # label 2 has one class: left out
    assert got["per_label_AUC"][2] is None
    pred = probs >= 0.5
    assert got["per_label_ACC"] == pytest.approx([1.0, 0.5, 0.5])
    assert got["ACC"] == pytest.approx(2 / 3) and got["exact_match_ACC"] == pytest.approx(np.mean((pred == labels).all(1)))
    # F1 per label: 1.0; TP1 FP1 FN1 -> 0.5; no positive and two false positives -> 0
    assert got["F1"] == pytest.approx((1.0 + 0.5 + 0.0) / 3)


def test_a_split_with_one_class_has_no_auc():
    got = classification_metrics(np.array([[0.2, 0.8], [0.6, 0.4]]), np.array([1, 1]))
    assert got["AUC"] is None and got["ACC"] == pytest.approx(0.5)


def test_metrics_writer_collects_decollated_outputs(tmp_path):
    """What the evaluator hands over (decollated items) reaches metrics.json as computed by hand."""
    writer = MetricsWriter(tmp_path / "metrics.json", extra={"task": "t"}, classification="multiclass")

    class Engine:
        state = type("S", (), {"metrics": {"val_acc": torch.tensor(0.5)}, "output": None})()

    engine = Engine()
    writer._reset(engine)
    p1, y = [0.9, 0.1, 0.7, 0.4], [1, 0, 0, 1]
    for batch in ((0, 2), (2, 4)):
        engine.state.output = [
            {"pred": torch.tensor([1 - p1[i], p1[i]]), "label": torch.tensor([y[i]])} for i in range(*batch)
        ]
        writer._collect(engine)
    writer(engine)
    import json

    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["task"] == "t" and written["metrics"]["val_acc"] == 0.5
    assert written["metrics"]["AUC"] == pytest.approx(_pair_auc(p1, y)) and written["metrics"]["ACC"] == pytest.approx(0.5)
