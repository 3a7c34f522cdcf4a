"""Writing an evaluator's per-item outputs (features) to ``features.npy``, with the items beside them."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.utils import CommonKeys

from medcoss_monai.utils import atomic_write_json, to_jsonable

__all__ = ["FeatureWriter"]

logger = logging.getLogger(__name__)


class FeatureWriter:
    """Collects the evaluator's prediction per item and writes ``features.npy`` and ``features.json``.

    ``features.npy`` stacks the predictions in loader order; ``features.json`` holds their shape and
    the datalist items (non-JSON values as strings), so row ``i`` can be traced to its file. The
    exported Model Zoo bundles run it at the end of ``configs/inference.json``.

    Args:
        output_dir: folder of the outputs (created).
        items: the datalist items, in loader order.
        pred_key: key of the network output in the engine output.
    """

    FEATURES_FILE = "features.npy"
    ITEMS_FILE = "features.json"

    def __init__(
        self, output_dir: str | os.PathLike, items: Sequence[Mapping[str, Any]] = (), pred_key: str = CommonKeys.PRED
    ) -> None:
        self.output_dir = Path(output_dir)
        self.items = [dict(i) for i in items]
        self.pred_key = pred_key
        self._features: list[np.ndarray] = []

    def attach(self, engine: Engine) -> None:
        """Register on ``STARTED`` (reset), ``ITERATION_COMPLETED`` (collect) and ``COMPLETED`` (write).

        Args:
            engine: the evaluator.
        """
        engine.add_event_handler(Events.STARTED, lambda _: self._features.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self)

    def _collect(self, engine: Engine) -> None:
        out = engine.state.output
        # a decollated output is a list of per-item dicts; otherwise one batched dict
        preds = [o[self.pred_key] for o in out] if isinstance(out, list) else list(out[self.pred_key])
        self._features += [torch.as_tensor(p).detach().float().cpu().numpy() for p in preds]

    def __call__(self, engine: Engine) -> None:
        if idist.get_rank() != 0 or not self._features:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        feats = np.stack(self._features)
        np.save(self.output_dir / self.FEATURES_FILE, feats)
        items = {"shape": list(feats.shape), "items": to_jsonable(self.items)}
        atomic_write_json(items, self.output_dir / self.ITEMS_FILE)
        logger.info(f"{feats.shape[0]} feature vectors written to {self.output_dir / self.FEATURES_FILE}")

