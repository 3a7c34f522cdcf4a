"""The forgetting matrix as a table: its columns, its CSV, its summary, its text and heatmap views.

A row is named after the network it scores (``scratch``, ``stage_<m>``); the columns are one linear
probe per modality (:data:`PROBE_COLUMNS`) and one pretext score per trained modality
(:data:`PRETEXT_COLUMNS`).

Summary definitions (Chaudhry et al. 2018; Lopez-Paz & Ranzato 2017), per column ``c`` of a modality
first trained at stage ``k`` < the last stage ``T``, with ``a_t`` the score after stage ``t`` oriented
so that higher is better (MSE columns are negated):

- forgetting ``F_c = max_{k <= t < T} a_t - a_T`` (>= 0; for MSE columns the rise of the MSE over its best);
- backward transfer ``BWT_c = a_T - a_k`` (negative = forgetting, positive = later stages helped).

Averages are taken over the probe columns (AUC, one unit) and, separately, listed per pretext column.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medcoss_monai.layout import stage_dir
from medcoss_monai.utils import atomic_write_bytes, atomic_write_text

__all__ = [
    "PROBE_COLUMNS",
    "COLUMN_MODALITY",
    "PRETEXT_COLUMNS",
    "CSV_COLUMNS",
    "LOWER_IS_BETTER",
    "SCRATCH_ROW",
    "row_name",
    "row_stage",
    "write_matrix",
    "read_matrix",
    "forgetting_summary",
    "format_matrix",
    "plot_matrix",
]

PROBE_COLUMNS = ("text", "xray", "ct", "mri", "pathology")
"""Linear-probe columns, one per modality (``text`` is the report modality)."""

COLUMN_MODALITY = {"text": "report", "xray": "xray", "ct": "ct", "mri": "mri", "pathology": "pathology"}
"""Probe column -> the modality (stage) it measures."""

PRETEXT_COLUMNS = {
    "report": "text_mlm_acc",
    "xray": "xray_mae_mse",
    "ct": "ct_mae_mse",
    "mri": "mri_mae_mse",
    "pathology": "pathology_mae_mse",
}
"""Modality -> its pretext-score column."""

CSV_COLUMNS = ("after",) + PROBE_COLUMNS + tuple(PRETEXT_COLUMNS.values())
"""Columns of ``forgetting.csv``, in order."""

LOWER_IS_BETTER = frozenset(c for c in PRETEXT_COLUMNS.values() if c.endswith("_mse"))
"""Columns where a lower score is better."""

SCRATCH_ROW = "scratch"
"""The row of the randomly initialised network."""


def row_name(stage: str) -> str:
    """The row of the network a stage saved: the stage folder's name (``stage_<stage>``).

    Args:
        stage: the stage's name (a modality, or ``joint``).

    Returns:
        the row name.
    """
    return stage_dir(".", stage).name


def row_stage(name: str) -> str | None:
    """The stage a row scores (the inverse of :func:`row_name`); None for :data:`SCRATCH_ROW` or another name."""
    prefix = row_name("")
    return name[len(prefix) :] if name.startswith(prefix) and name != prefix else None


def _fmt(value: Any) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6f}"
    return str(value)


def write_matrix(rows: Sequence[Mapping[str, Any]], csv_path: str | os.PathLike) -> Path:
    """Write the rows as one CSV (header :data:`CSV_COLUMNS`), atomically: a kill leaves the old file or the new.

    Args:
        rows: dicts over :data:`CSV_COLUMNS` (missing cells are written empty).
        csv_path: the CSV file.

    Returns:
        the CSV path.
    """
    lines = [",".join(CSV_COLUMNS)] + [",".join(_fmt(r.get(c)) for c in CSV_COLUMNS) for r in rows]
    return atomic_write_text("\n".join(lines) + "\n", Path(csv_path))


def read_matrix(csv_path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a ``forgetting.csv`` with numbers as floats and empty cells as None.

    Args:
        csv_path: the CSV file.

    Returns:
        the rows, in file order.

    Raises:
        FileNotFoundError: there is no such file (the message says how to write it).
        ValueError: the file has no ``after`` column or no rows.
    """
    path = Path(csv_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"No forgetting matrix at '{path}': run `python -m medcoss_monai.evaluation.forgetting --run_dir {path.parent}`."
        )
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or "after" not in rows[0]:
        raise ValueError(f"'{path}' is not a forgetting matrix (no 'after' column or no rows).")
    return [{k: (r[k] if k == "after" else (float(r[k]) if r.get(k) not in (None, "") else None)) for k in r} for r in rows]


def _oriented(value: float | None, column: str) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return -float(value) if column in LOWER_IS_BETTER else float(value)


def _column_modality(column: str) -> str:
    return COLUMN_MODALITY.get(column) or next(m for m, c in PRETEXT_COLUMNS.items() if c == column)


def forgetting_summary(rows: Sequence[Mapping[str, Any]], stages: Sequence[str] | None = None) -> dict[str, Any]:
    """Average forgetting and backward transfer of a forgetting matrix.

    Args:
        rows: ``scratch`` (optional) then ``stage_<m>`` rows, in curriculum order.
        stages: the curriculum; default read from the row names.

    Returns:
        dict with ``per_column`` (column -> ``{"forgetting", "bwt", "first", "last"}``),
        ``avg_forgetting`` and ``bwt`` (means over the probe columns with a defined value),
        ``avg_forgetting_pretext`` / ``bwt_pretext`` (means over pretext columns, mixed units: read per column),
        and ``stages``.
    """
    stage_rows = [r for r in rows if row_stage(str(r["after"])) is not None]
    stages = list(stages) if stages is not None else [row_stage(str(r["after"])) for r in stage_rows]
    per_column: dict[str, dict[str, float]] = {}
    last = len(stage_rows) - 1
    for column in list(PROBE_COLUMNS) + list(PRETEXT_COLUMNS.values()):
        modality = _column_modality(column)
        if modality not in stages:
            continue
        k = stages.index(modality)
        if k >= last:  # trained last: nothing to forget yet
            continue
        values = [_oriented(r.get(column), column) for r in stage_rows[k:]]
        if any(v is None for v in values):
            continue
        sign = -1.0 if column in LOWER_IS_BETTER else 1.0
        per_column[column] = {
            "forgetting": max(values[:-1]) - values[-1],
            "bwt": values[-1] - values[0],
            "first": sign * values[0],
            "last": sign * values[-1],
        }

    def mean(columns: Sequence[str], key: str) -> float | None:
        vals = [per_column[c][key] for c in columns if c in per_column]
        return sum(vals) / len(vals) if vals else None

    pretext = list(PRETEXT_COLUMNS.values())
    return {
        "stages": stages,
        "per_column": per_column,
        "avg_forgetting": mean(PROBE_COLUMNS, "forgetting"),
        "bwt": mean(PROBE_COLUMNS, "bwt"),
        "avg_forgetting_pretext": mean(pretext, "forgetting"),
        "bwt_pretext": mean(pretext, "bwt"),
    }


def _cell(value: Any) -> str:
    return "" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def format_matrix(rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any] | None = None) -> str:
    """The matrix as aligned text, with the summary below it.

    Args:
        rows: the rows.
        summary: :func:`forgetting_summary` of the rows, or None.

    Returns:
        the text.
    """
    columns = [c for c in CSV_COLUMNS if c == "after" or any(r.get(c) is not None for r in rows)]
    table = [columns] + [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    lines = ["  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(line, widths))) for line in table]
    if summary:
        lines.append(
            f"average forgetting (probe AUC): {_cell(summary.get('avg_forgetting')) or 'n/a'}   "
            f"backward transfer (probe AUC): {_cell(summary.get('bwt')) or 'n/a'}"
        )
        for column, facts in summary.get("per_column", {}).items():
            if column not in PROBE_COLUMNS:
                lines.append(
                    f"  {column}: {facts['first']:.4f} after its stage -> {facts['last']:.4f} at the end "
                    f"(forgetting {facts['forgetting']:.4f}, BWT {facts['bwt']:+.4f})"
                )
    return "\n".join(lines)


def plot_matrix(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, title: str = "forgetting matrix") -> Path:
    """Heatmap of the matrix: colour normalised per column (dark = worst in that column), raw scores written in.

    Args:
        rows: the rows.
        path: the PNG to write.
        title: the figure title.

    Returns:
        the PNG path.
    """
    import matplotlib

    matplotlib.use("Agg")  # before pyplot: no display is needed or assumed
    import matplotlib.pyplot as plt

    columns = [c for c in CSV_COLUMNS[1:] if any(r.get(c) is not None for r in rows)] or list(CSV_COLUMNS[1:])
    values = np.array([[np.nan if r.get(c) is None else float(r[c]) for c in columns] for r in rows], dtype=float)
    shade = np.full_like(values, np.nan)
    for j, c in enumerate(columns):
        col = values[:, j]
        if np.all(np.isnan(col)):
            continue
        lo, hi = np.nanmin(col), np.nanmax(col)
        norm = (col - lo) / (hi - lo) if hi > lo else np.full_like(col, 0.5)
        shade[:, j] = 1.0 - norm if c in LOWER_IS_BETTER else norm
    fig, ax = plt.subplots(figsize=(1.1 * len(columns) + 2.5, 0.55 * len(rows) + 1.8))
    ax.imshow(np.ma.masked_invalid(shade), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(columns)), columns, rotation=40, ha="right")
    ax.set_yticks(range(len(rows)), [str(r["after"]) for r in rows])
    for i in range(len(rows)):
        for j in range(len(columns)):
            if not np.isnan(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.3f}", ha="center", va="center", fontsize=8,
                        color="black" if shade[i, j] > 0.6 else "white")
    ax.set_title(title + "\n(colour per column, yellow = best; MSE columns: lower is better)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=120)
    plt.close(fig)
    return atomic_write_bytes(image.getvalue(), path)
