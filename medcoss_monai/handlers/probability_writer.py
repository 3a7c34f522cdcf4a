"""Writing an evaluator's per-item class probabilities to ``predictions.csv``, one column per class."""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
from ignite.engine import Engine
from monai.utils import CommonKeys

from medcoss_monai.handlers.feature_writer import FeatureWriter
from medcoss_monai.utils import atomic_write_text

__all__ = ["ClassProbabilityWriter"]

logger = logging.getLogger(__name__)


class ClassProbabilityWriter(FeatureWriter):
    """Collects the evaluator's (post-processed) class probabilities per item and writes ``predictions.csv``.

    Columns: ``item`` (the item's first of ``name_keys``: its file or id), one column per class
    name, and ``predicted`` (the most probable class; for multi-label outputs every class at or above
    ``threshold``, joined by ``;``). The exported Model Zoo bundles of classification tasks run it at
    the end of ``configs/inference.json``.

    Args:
        output_dir: folder of the CSV (created).
        class_names: one name per output channel.
        items: the datalist items, in loader order.
        pred_key: key of the probabilities in the engine output.
        multilabel: independent labels (sigmoid outputs) rather than one class per item.
        threshold: multi-label decision threshold.
        name_keys: item keys that name an item, in order of preference.
    """

    PREDICTIONS_FILE = "predictions.csv"

    def __init__(
        self,
        output_dir: str | os.PathLike,
        class_names: Sequence[str],
        items: Sequence[Mapping[str, Any]] = (),
        pred_key: str = CommonKeys.PRED,
        multilabel: bool = False,
        threshold: float = 0.5,
        name_keys: Sequence[str] = ("image", "text_file", "id"),
    ) -> None:
        super().__init__(output_dir, items, pred_key)
        self.class_names = [str(c) for c in class_names]
        self.multilabel, self.threshold = multilabel, threshold
        self.name_keys = tuple(name_keys)

    def _name(self, index: int) -> str:
        item = self.items[index] if index < len(self.items) else {}
        return next((str(item[k]) for k in self.name_keys if item.get(k) is not None), str(index))

    def __call__(self, engine: Engine) -> None:
        if idist.get_rank() != 0 or not self._features:
            return
        probs = np.stack([np.asarray(p).reshape(-1) for p in self._features])
        if probs.shape[1] != len(self.class_names):
            raise ValueError(f"the network gives {probs.shape[1]} outputs, but {len(self.class_names)} class names were given.")
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["item", *self.class_names, "predicted"])
        for i, row in enumerate(probs):
            if self.multilabel:
                predicted = ";".join(c for c, p in zip(self.class_names, row) if p >= self.threshold)
            else:
                predicted = self.class_names[int(row.argmax())]
            writer.writerow([self._name(i), *(f"{p:.6f}" for p in row), predicted])
        path = Path(self.output_dir) / self.PREDICTIONS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(buffer.getvalue(), path)
        logger.info(f"class probabilities of {len(probs)} items written to {path}")
