"""Write an evaluator's test metrics to ``metrics.json``: classification scores and the engine's metrics."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from monai.utils import optional_import

from medcoss_monai.utils import atomic_write_json, to_jsonable

Events, _ = optional_import("ignite.engine", name="Events")
idist, _ = optional_import("ignite.distributed")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", name="Engine")
metrics_module, _ = optional_import("sklearn.metrics")

__all__ = ["MetricsWriter", "classification_metrics"]


def _clean(value: Any) -> Any:
    """JSON-safe values (:func:`~medcoss_monai.utils.to_jsonable`), tensors as their values."""
    return to_jsonable(value.detach().cpu().tolist() if isinstance(value, torch.Tensor) else value)


def classification_metrics(probs: np.ndarray, labels: np.ndarray, multilabel: bool = False, threshold: float = 0.5) -> dict[str, Any]:
    """ACC, AUC and macro-F1 (scikit-learn) of predicted probabilities.

    Args:
        probs: (N, C) class probabilities (softmax) or, for ``multilabel``, per-label probabilities (sigmoid).
        labels: (N,) class indices, (N, C) one-hot, or (N, C) 0/1 multi-labels.
        multilabel: independent labels: macro-AUC (labels with one class in the split are left out),
            macro-F1 at ``threshold``, exact-match and mean per-label accuracy.
        threshold: multi-label decision threshold.

    Returns:
        a dict of floats (None where undefined, e.g. AUC of a split with a single class).
    """
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    if multilabel:
        pred = (probs >= threshold).astype(int)
        labels = labels.astype(int)
        ok = [c for c in range(labels.shape[1]) if len(np.unique(labels[:, c])) == 2]
        auc = metrics_module.roc_auc_score(labels[:, ok], probs[:, ok], average="macro") if ok else None
        per_label = (pred == labels).mean(axis=0)
        return {
            "AUC": auc,
            "F1": metrics_module.f1_score(labels, pred, average="macro", zero_division=0),
            "ACC": float(per_label.mean()),
            "exact_match_ACC": float((pred == labels).all(axis=1).mean()),
            "per_label_ACC": per_label.tolist(),
            "per_label_AUC": [
                metrics_module.roc_auc_score(labels[:, c], probs[:, c]) if c in ok else None for c in range(labels.shape[1])
            ],
        }
    y = labels.argmax(axis=1) if labels.ndim == 2 else labels.reshape(-1).astype(int)
    pred = probs.argmax(axis=1)
    num_classes = probs.shape[1]
    if len(np.unique(y)) < 2:
        auc = None
    elif num_classes == 2:
        auc = metrics_module.roc_auc_score(y, probs[:, 1])
    else:
        auc = metrics_module.roc_auc_score(y, probs, multi_class="ovr", labels=list(range(num_classes)))
    return {
        "ACC": metrics_module.accuracy_score(y, pred),
        "AUC": auc,
        "F1": metrics_module.f1_score(y, pred, average="macro", labels=list(range(num_classes)), zero_division=0),
    }


class MetricsWriter:
    """Writes ``output_path`` (JSON, atomically, from rank 0 only) when an evaluator completes.

    The file holds ``metrics``: the engine's metrics (e.g. MONAI ``MeanDice``, ``HausdorffDistance``) and,
    when ``classification`` is set, :func:`classification_metrics` of the collected predictions; and
    the entries of ``extra`` (task, split sizes, whether pretrained, ...).

    Args:
        output_path: the JSON file, e.g. ``<output_dir>/metrics.json``.
        extra: entries written beside ``metrics``.
        classification: None (only the engine's metrics), ``"multiclass"`` or ``"multilabel"``.
        pred_key: output key of the probabilities (after the evaluator's postprocessing).
        label_key: output key of the labels.
        threshold: multi-label decision threshold.
    """

    def __init__(
        self,
        output_path: str | os.PathLike,
        extra: Mapping[str, Any] | None = None,
        classification: str | None = None,
        pred_key: str = "pred",
        label_key: str = "label",
        threshold: float = 0.5,
    ) -> None:
        if classification not in (None, "multiclass", "multilabel"):
            raise ValueError(f"classification must be None, 'multiclass' or 'multilabel', got {classification!r}.")
        self.output_path = output_path
        self.extra = dict(extra or {})
        self.classification = classification
        self.pred_key, self.label_key = pred_key, label_key
        self.threshold = threshold
        self._probs: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self.metrics: dict[str, Any] = {}

    def attach(self, engine: Engine) -> None:
        """Collect on every iteration (classification) and write on completion."""
        engine.add_event_handler(Events.STARTED, self._reset)
        if self.classification:
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self)

    def _reset(self, engine: Engine) -> None:
        self._probs, self._labels = [], []

    def _collect(self, engine: Engine) -> None:
        output = engine.state.output
        items = output if isinstance(output, list) else [output]  # decollated or batched outputs
        for item in items:
            pred, label = torch.as_tensor(item[self.pred_key]), torch.as_tensor(item[self.label_key])
            if isinstance(output, list):
                pred, label = pred[None], label[None]
            self._probs.append(pred.detach().float().cpu().numpy().reshape(pred.shape[0], -1))
            self._labels.append(label.detach().cpu().numpy().reshape(label.shape[0], -1))

    def __call__(self, engine: Engine) -> None:
        metrics = {k: _clean(v) for k, v in engine.state.metrics.items()}
        if self.classification:
            labels = np.concatenate(self._labels)
            if labels.shape[1] == 1:
                labels = labels[:, 0]
            scores = classification_metrics(
                np.concatenate(self._probs), labels, self.classification == "multilabel", self.threshold
            )
            metrics.update({k: _clean(v) for k, v in scores.items()})
        self.metrics = metrics
        if idist.get_rank() == 0:  # under torchrun every process evaluates the whole split; one writes
            atomic_write_json({**{k: _clean(v) for k, v in self.extra.items()}, "metrics": metrics}, self.output_path)
