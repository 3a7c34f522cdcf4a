"""Every task's metric after every visit of MUSCLE's schedule: the forgetting across tasks, as a table and a plot."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
from ignite.engine import Engine, Events

from medcoss_monai.apps.muscle.task_evaluation import SCORE, evaluate_task
from medcoss_monai.utils import atomic_write_bytes, atomic_write_json, atomic_write_text

__all__ = ["VisitMetricsWriter", "TaskMetricsWriter", "plot_visit_metrics"]


def plot_visit_metrics(rows: Sequence[Mapping[str, Any]], tasks: Sequence[str], path: str | os.PathLike) -> Path:
    """Plot each task's score against the visit, the visited task marked on the axis.

    Args:
        rows: rows of ``visit_metrics.csv`` (``visit``, ``task`` and ``<task>`` score columns).
        tasks: the tasks to draw.
        path: the PNG to write (atomically).

    Returns:
        The path.
    """
    import matplotlib

    matplotlib.use("Agg")  # before pyplot: no display is needed or assumed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(rows) + 2), 3.5))
    visits = [int(r["visit"]) for r in rows]
    for task in tasks:
        ax.plot(visits, [float(r[task]) for r in rows], marker="o", label=task)
    prefix = os.path.commonprefix([str(t) for t in tasks]) if len(tasks) > 1 else ""  # "muscle_" of every task
    ax.set_xticks(visits, [f"{r['visit']}\n{str(r['task'])[len(prefix):][:14]}" for r in rows], fontsize=7)
    ax.set_xlabel("visit (task trained)")
    ax.set_ylabel("validation score (AUC / Dice / mAP@0.5)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(buf.getvalue(), path)


class VisitMetricsWriter:
    """At the end of every visit, scores every task on its evaluation loader; writes a CSV and a plot.

    ``visit_metrics.csv`` has one row per visit: ``visit``, ``round``, ``task`` (the task just trained)
    and one column per task with its key metric (:data:`~medcoss_monai.apps.muscle.task_evaluation.SCORE`:
    AUC, Dice, mAP@0.5); ``visit_metrics.png`` plots them. Rows of a resumed run's earlier visits are
    kept.

    Args:
        loaders: task -> evaluation loader (held-out items).
        schedule: the trainer's schedule (for the round of a visit).
        output_dir: folder of ``visit_metrics.csv`` / ``.png``.
        class_names: task -> detection class names.
        interval: evaluate every this many visits (the last visit is always evaluated).
    """

    def __init__(
        self,
        loaders: Mapping[str, Iterable],
        schedule: Any,
        output_dir: str | os.PathLike,
        class_names: Mapping[str, Sequence[str]] | None = None,
        interval: int = 1,
    ) -> None:
        self.loaders = dict(loaders)
        self.schedule = schedule
        self.csv_path = Path(output_dir) / "visit_metrics.csv"
        self.png_path = Path(output_dir) / "visit_metrics.png"
        self.class_names = dict(class_names or {})
        self.interval = max(1, int(interval))

    def attach(self, engine: Engine) -> None:
        """Register on ``EPOCH_COMPLETED``.

        Args:
            engine: the multi-task trainer.
        """
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def read_rows(self) -> list[dict[str, str]]:
        """The rows already written (empty when none)."""
        if not self.csv_path.is_file():
            return []
        with open(self.csv_path, newline="") as f:
            return list(csv.DictReader(f))

    def __call__(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        if epoch % self.interval and epoch != engine.state.max_epochs:
            return
        round_, task = self.schedule.visit(epoch)
        scores = {
            t: evaluate_task(engine.network, t, loader, engine.state.device, self.class_names.get(t))[SCORE]
            for t, loader in self.loaders.items()
        }
        if idist.get_rank() != 0:
            return
        rows = [r for r in self.read_rows() if int(r["visit"]) < epoch]
        rows.append({"visit": epoch, "round": round_, "task": task, **{t: f"{s:.4f}" for t, s in scores.items()}})
        columns = ["visit", "round", "task", *self.loaders]
        out = io.StringIO()
        writer = csv.DictWriter(out, columns)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(out.getvalue(), self.csv_path)
        plot_visit_metrics(rows, list(self.loaders), self.png_path)


class TaskMetricsWriter:
    """When training completes, writes every task's full metrics on its test loader to a JSON file.

    Args:
        loaders: task -> test loader.
        output_path: the JSON file (``metrics.json``), written atomically by rank 0.
        class_names: task -> detection class names.
        extra: more JSON-serialisable facts to record (split sizes, checkpoint, seed...).
    """

    def __init__(
        self,
        loaders: Mapping[str, Iterable],
        output_path: str | os.PathLike,
        class_names: Mapping[str, Sequence[str]] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.loaders = dict(loaders)
        self.output_path = Path(output_path)
        self.class_names = dict(class_names or {})
        self.extra = dict(extra or {})

    def attach(self, engine: Engine) -> None:
        """Register on ``COMPLETED``.

        Args:
            engine: the trainer.
        """
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        metrics = {
            t: evaluate_task(engine.network, t, loader, engine.state.device, self.class_names.get(t))
            for t, loader in self.loaders.items()
        }
        if idist.get_rank() == 0:
            atomic_write_json({"metrics": metrics, **self.extra}, self.output_path)
