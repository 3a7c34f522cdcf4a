"""The downstream table: mean and sample standard deviation over seeds, written as CSV, markdown and a bar chart."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medcoss_monai.utils import atomic_write_bytes, atomic_write_text

__all__ = ["COLUMNS", "summarise", "write_table"]

COLUMNS = ["suite", "dataset", "task", "metric", "mean", "std", "n", "seeds", "values", "pretrained", "label_fraction", "commit"]
"""The CSV's columns: one row per data set and metric."""


def summarise(table: Mapping[str, Any], results: Mapping[str, Mapping[int, Mapping[str, float | None]]]) -> list[dict[str, Any]]:
    """One row per data set and metric: mean and sample standard deviation over the seeds that have a value.

    Args:
        table: name -> the set's entry (``task`` and ``metrics``), in table order.
        results: name -> seed -> column -> value (None: the run has no value for it).

    Returns:
        Rows ``{"dataset", "task", "metric", "mean", "std", "n", "seeds", "values"}``; ``std`` is None
        below two values, ``mean`` None without any. Sets without results have no rows.
    """
    rows = []
    for name, spec in table.items():
        runs = results.get(name) or {}
        if not runs:
            continue
        for metric in spec.metrics:
            seeds = [s for s in sorted(runs) if runs[s].get(metric) is not None]
            values = [float(runs[s][metric]) for s in seeds]
            rows.append({
                "dataset": name, "task": spec.task, "metric": metric,
                "mean": float(np.mean(values)) if values else None,
                "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
                "n": len(values), "seeds": seeds, "values": values,
            })
    return rows


def _fmt(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def _markdown(rows: Sequence[dict[str, Any]], info: Mapping[str, Any]) -> str:
    lines = [
        f"# Downstream table: {info.get('suite', '')}", "",
        f"pretrained: `{info.get('pretrained', '')}`; label fraction: {info.get('label_fraction', '')}; "
        f"commit: `{info.get('commit', '')}`", "",
        "Test split of each data set; mean ± sample standard deviation over n fine-tuning seeds.", "",
        "| data set | task | metric | mean ± sd | n | seeds |", "|---|---|---|---|---|---|",
    ]
    for r in rows:
        spread = f"{_fmt(r['mean'])} ± {_fmt(r['std'])}" if r["std"] is not None else _fmt(r["mean"])
        lines.append(f"| {r['dataset']} | {r['task']} | {r['metric']} | {spread} | {r['n']} | {','.join(map(str, r['seeds']))} |")
    if not rows:
        lines.append("| (no data set present) | | | | | |")
    return "\n".join(lines) + "\n"


def _csv(rows: Sequence[dict[str, Any]], info: Mapping[str, Any]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({**{k: info.get(k, "") for k in ("suite", "pretrained", "label_fraction", "commit")}, **r,
                         "mean": "" if r["mean"] is None else r["mean"], "std": "" if r["std"] is None else r["std"],
                         "seeds": " ".join(map(str, r["seeds"])), "values": " ".join(f"{v:.6g}" for v in r["values"])})
    return buf.getvalue()


def _plot(rows: Sequence[dict[str, Any]], info: Mapping[str, Any]) -> bytes:
    """One panel per metric (scales differ: Dice vs HD95), a bar per data set, the sd as error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(dict.fromkeys(r["metric"] for r in rows if r["mean"] is not None)) or ["(none)"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics) + 1, 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        mine = [r for r in rows if r["metric"] == metric and r["mean"] is not None]
        ax.bar(range(len(mine)), [r["mean"] for r in mine], yerr=[r["std"] or 0.0 for r in mine], capsize=4, color="tab:blue")
        ax.set_xticks(range(len(mine)), [r["dataset"] for r in mine], rotation=30, ha="right")
        ax.set_title(metric)
    fig.suptitle(f"{info.get('suite', '')} downstream (mean ± sd over seeds), label fraction {info.get('label_fraction', '')}",
                 fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def write_table(rows: Sequence[dict[str, Any]], out: str | Path, info: Mapping[str, Any]) -> list[Path]:
    """Write ``downstream.csv``, ``downstream.md`` and ``downstream.png`` into ``out`` (each atomically).

    Args:
        rows: :func:`summarise`'s rows.
        out: the folder.
        info: ``suite``, ``pretrained``, ``label_fraction``, ``commit`` (in every CSV row and the markdown header).

    Returns:
        The three paths.
    """
    out = Path(out)
    paths = [out / "downstream.csv", out / "downstream.md", out / "downstream.png"]
    atomic_write_text(_csv(rows, info), paths[0])
    atomic_write_text(_markdown(rows, info), paths[1])
    atomic_write_bytes(_plot(rows, info), paths[2])
    return paths
