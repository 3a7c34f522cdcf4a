"""Per-epoch loss history written to ``loss_history.csv``."""

from __future__ import annotations

import csv
import io
import os
from collections import defaultdict
from pathlib import Path

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events

from medcoss_monai.engines.pretext_trainer import PretextKeys
from medcoss_monai.utils import atomic_write_text

__all__ = ["LossHistoryHandler"]


class LossHistoryHandler:
    """Averages the loss and its named terms over each epoch and rewrites ``loss_history.csv``.

    The file has one row per finished epoch: ``epoch,loss`` followed by the loss terms the trainer
    reports in ``engine.state.output[PretextKeys.LOSS_TERMS]`` (``pretext_loss``, ``distill_loss``...). Terms
    a batch did not produce count as 0 for that batch, so a column is an epoch mean over all batches.
    Rows of epochs at or after the current one are replaced, so a resumed run neither loses nor
    repeats an epoch. Under ``torch.distributed`` the sums are reduced over ranks and rank 0 writes.

    Args:
        output_path: the CSV file.
        columns: term columns always written (in this order) even when no batch produced them.
    """

    def __init__(self, output_path: str | os.PathLike, columns: tuple[str, ...] = (PretextKeys.PRETEXT_LOSS,)) -> None:
        self.output_path = Path(output_path)
        self.columns = list(columns)
        self._sums: dict[str, float] = defaultdict(float)
        self._count = 0

    def attach(self, engine: Engine) -> None:
        """Register on the engine's iteration and epoch events.

        Args:
            engine: the trainer.
        """
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _reset(self, engine: Engine) -> None:
        self._sums = defaultdict(float)
        self._count = 0

    def _accumulate(self, engine: Engine) -> None:
        out = engine.state.output
        self._sums[PretextKeys.LOSS] += float(out[PretextKeys.LOSS])
        for name, value in out.get(PretextKeys.LOSS_TERMS, {}).items():
            self._sums[name] += float(value)
        self._count += 1

    def read_rows(self) -> list[dict[str, str]]:
        """The rows already in the file (empty when it does not exist).

        Returns:
            One dict per row, values as strings.
        """
        if not self.output_path.exists():
            return []
        with open(self.output_path, newline="") as f:
            return list(csv.DictReader(f))

    def __call__(self, engine: Engine) -> None:
        # the total loss is the first column, named as the engine names it
        names = [PretextKeys.LOSS] + sorted(set(self._sums) - {PretextKeys.LOSS} | set(self.columns), key=self._order)
        values = torch.tensor([self._sums.get(n, 0.0) for n in names] + [float(self._count)], dtype=torch.float64)
        if idist.get_world_size() > 1:
            # gloo and nccl both reduce a float64 tensor on the engine's device
            values = idist.all_reduce(values.to(engine.state.device)).cpu()
        count = max(values[-1].item(), 1.0)
        row = {"epoch": str(engine.state.epoch)}
        row.update({n: f"{v / count:.6g}" for n, v in zip(names, values[:-1].tolist())})
        if idist.get_rank() != 0:
            return
        rows = [r for r in self.read_rows() if int(r["epoch"]) < engine.state.epoch] + [row]
        header = ["epoch"] + names
        for r in rows:
            header += [k for k in r if k not in header]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=header, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(buf.getvalue(), self.output_path)

    def _order(self, name: str) -> tuple[int, str]:
        return (self.columns.index(name), name) if name in self.columns else (len(self.columns), name)
