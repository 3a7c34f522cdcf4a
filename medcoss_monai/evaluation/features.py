"""Frozen-encoder features and the linear probe fitted on them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

__all__ = ["pooled_features", "linear_probe"]


def pooled_features(network: nn.Module, dataloader: Iterable[Mapping[str, Any]], device: torch.device | str) -> np.ndarray:
    """Pooled encoder features of every batch (eval mode, no gradients).

    Batches with ``input_ids`` are text (``network(input_ids, attention_mask=...)``), others images
    (``network(image)``); the network's ``pretext=None`` forward gives ``(B, hidden)``.

    Args:
        network: the network (its train/eval mode is restored afterwards).
        dataloader: an iterable of batch dicts.
        device: where to run.

    Returns:
        float32 array (N, hidden).

    Raises:
        ValueError: the dataloader yields no batch.
    """
    was_training = network.training
    network.eval()
    feats = []
    try:
        with torch.no_grad():
            for batch in dataloader:
                if "input_ids" in batch:
                    mask = batch.get("attention_mask")
                    out = network(
                        torch.as_tensor(batch["input_ids"]).to(device),
                        attention_mask=None if mask is None else torch.as_tensor(mask).to(device),
                    )
                else:
                    out = network(torch.as_tensor(batch["image"]).float().to(device))
                feats.append(out.detach().float().cpu().numpy())
    finally:
        network.train(was_training)
    if not feats:
        raise ValueError("pooled_features got an empty dataloader.")
    return np.concatenate(feats, axis=0)


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    multilabel: bool = False,
    seed: int = 0,
    C: float = 1.0,
    max_iter: int = 2000,
) -> dict[str, Any]:
    """Logistic regression on standardised features; AUC (macro over labels / classes) and accuracy.

    Args:
        train_x: (N, D) features.
        train_y: (N,) class indices, or (N, K) 0/1 when ``multilabel``.
        test_x: (M, D) features.
        test_y: like ``train_y``.
        multilabel: one binary classifier per label.
        seed: the solver's random state.
        C: inverse regularisation strength.
        max_iter: solver iterations.

    Returns:
        dict with ``auc`` (binary AUC, or the macro mean over labels / one-vs-rest classes that have
        both values in the test set), ``acc`` (accuracy; multi-label: mean per-label accuracy),
        ``f1_macro``, and for multi-label ``per_label_auc`` (None where undefined).

    Raises:
        ValueError: features and labels differ in length, or single-label training data has one class.
    """
    train_x, test_x = np.asarray(train_x, np.float64), np.asarray(test_x, np.float64)
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise ValueError(f"Features and labels differ in length: {len(train_x)}/{len(train_y)}, {len(test_x)}/{len(test_y)}.")
    base = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
    if multilabel:
        model = make_pipeline(StandardScaler(), OneVsRestClassifier(base))
        model.fit(train_x, train_y.astype(int))
        scores = model.predict_proba(test_x)
        preds = (scores >= 0.5).astype(int)
        per_label = [
            float(roc_auc_score(test_y[:, k], scores[:, k])) if len(np.unique(test_y[:, k])) == 2 else None
            for k in range(test_y.shape[1])
        ]
        defined = [a for a in per_label if a is not None]
        return {
            "auc": float(np.mean(defined)) if defined else float("nan"),
            "acc": float((preds == test_y).mean()),
            "f1_macro": float(f1_score(test_y, preds, average="macro", zero_division=0)),
            "per_label_auc": per_label,
        }
    if len(np.unique(train_y)) < 2:
        raise ValueError("linear_probe needs at least two classes in the training labels.")
    model = make_pipeline(StandardScaler(), base)
    model.fit(train_x, train_y)
    scores = model.predict_proba(test_x)
    preds = model.classes_[np.argmax(scores, axis=1)]
    if len(np.unique(test_y)) < 2:
        auc = float("nan")
    elif scores.shape[1] == 2:
        auc = float(roc_auc_score(test_y, scores[:, 1]))
    else:
        auc = float(roc_auc_score(test_y, scores, multi_class="ovr", average="macro", labels=model.classes_))
    return {
        "auc": auc,
        "acc": float(accuracy_score(test_y, preds)),
        "f1_macro": float(f1_score(test_y, preds, average="macro", zero_division=0)),
    }
