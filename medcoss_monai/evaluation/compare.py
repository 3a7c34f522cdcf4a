"""Side-by-side comparison of continual pre-training methods, in the shape of the MedCoSS paper's main table.

``python -m medcoss_monai.evaluation.compare --runs medcoss=runs/medcoss sequential=runs/seq er=runs/er --out D``
reads each run's ``forgetting.csv`` (evaluating the run first with ``--evaluate`` when it has none) and
writes to ``D``:

- ``comparison.csv`` and ``comparison.md``: one row per method; columns the final probe score of each
  modality, their average, the final pretext scores, average forgetting and backward transfer over the
  probe columns, and the forgetting of each pretext column;
- ``comparison.png``: bars of the final probe scores per modality and of the forgetting, per method;
- ``matrix_<method>.md``: the method's forgetting matrix.

Several runs of one method (seeds) are given comma-separated, ``--runs medcoss=runs/m0,runs/m1,runs/m2``:
every number is then the mean over the runs, with the sample standard deviation beside it
(``comparison.csv`` columns ``<column>_sd``; markdown cells ``mean ± sd``), and ``n_runs`` says how many.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medcoss_monai.errors import install_run_hooks
from medcoss_monai.layout import FORGETTING_CSV
from medcoss_monai.evaluation.forgetting import evaluate_run
from medcoss_monai.evaluation.matrix import CSV_COLUMNS, PRETEXT_COLUMNS, PROBE_COLUMNS, forgetting_summary, read_matrix
from medcoss_monai.utils import atomic_write_text

__all__ = ["parse_runs", "compare_runs", "mean_matrix", "matrix_markdown", "comparison_markdown", "plot_comparison", "main"]

logger = logging.getLogger(__name__)


def parse_runs(specs: Sequence[str]) -> dict[str, list[Path]]:
    """``["medcoss=runs/a,runs/a1", "runs/b"]`` -> ``{"medcoss": [runs/a, runs/a1], "b": [runs/b]}``.

    The name defaults to the folder name; several folders (seeds of one method) are comma-separated.

    Raises:
        ValueError: a name is given twice.
    """
    runs: dict[str, list[Path]] = {}
    for spec in specs:
        name, _, paths = spec.partition("=") if "=" in spec else (Path(spec).name, "", spec)
        if name in runs:
            raise ValueError(f"Method name '{name}' is given twice in --runs.")
        runs[name] = [Path(p) for p in paths.split(",") if p]
    return runs


def mean_matrix(matrices: Sequence[Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Cell-wise mean and sample standard deviation of forgetting matrices with the same rows.

    Args:
        matrices: rows of each run's ``forgetting.csv`` (:func:`read_matrix`).

    Returns:
        rows with the mean in ``<column>`` and the standard deviation in ``<column>_sd`` (None where a
        run lacks the cell; the deviation is None for a single run).

    Raises:
        ValueError: the runs do not have the same rows (other curricula).
    """
    names = [[str(r["after"]) for r in m] for m in matrices]
    if any(n != names[0] for n in names):
        raise ValueError(f"The runs have different stages: {names}.")
    rows = []
    for i, after in enumerate(names[0]):
        row: dict[str, Any] = {"after": after}
        for column in matrices[0][i]:
            if column == "after":
                continue
            values = [m[i].get(column) for m in matrices]
            row[column], row[f"{column}_sd"] = _mean_sd(values)
        rows.append(row)
    return rows


def _mean_sd(values: Sequence[Any]) -> tuple[float | None, float | None]:
    if any(v is None for v in values) or not values:
        return None, None
    values = [float(v) for v in values]
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def matrix_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """A (mean) forgetting matrix as GitHub markdown, ``mean ± sd`` where a deviation is known."""
    columns = [c for c in CSV_COLUMNS if c != "after" and any(r.get(c) is not None for r in rows)]
    lines = ["| after | " + " | ".join(columns) + " |", "| --- |" + " ---: |" * len(columns)]
    for r in rows:
        lines.append("| " + str(r["after"]) + " | " + " | ".join(_cell(r, c) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _cell(row: Mapping[str, Any], column: str) -> str:
    value, sd = row.get(column), row.get(f"{column}_sd")
    if value is None:
        return ""
    return f"{value:.4f}" if sd is None else f"{value:.4f} ± {sd:.4f}"


def _method_row(name: str, run_dirs: Sequence[Path]) -> dict[str, Any]:
    """One method's row: each run's scores, then their mean and deviation over the runs."""
    per_run = [_run_row(name, d) for d in run_dirs]
    row: dict[str, Any] = {"method": name, "run": ";".join(str(d) for d in run_dirs), "final_stage": per_run[0]["final_stage"],
                           "n_runs": len(per_run)}
    for key in per_run[0]:
        if key in row:
            continue
        row[key], row[f"{key}_sd"] = _mean_sd([r.get(key) for r in per_run])
    return row


def _run_row(name: str, run_dir: Path) -> dict[str, Any]:
    rows = read_matrix(run_dir / FORGETTING_CSV)
    summary = forgetting_summary(rows)
    final = rows[-1]
    probes = {c: final.get(c) for c in PROBE_COLUMNS}
    defined = [v for v in probes.values() if v is not None]
    row: dict[str, Any] = {"method": name, "run": str(run_dir), "final_stage": final["after"], **probes}
    row["average"] = sum(defined) / len(defined) if defined else None
    row["avg_forgetting"] = summary["avg_forgetting"]
    row["bwt"] = summary["bwt"]
    for column in PRETEXT_COLUMNS.values():
        row[column] = final.get(column)
        row[f"forgetting_{column}"] = summary["per_column"].get(column, {}).get("forgetting")
    return row


def compare_runs(
    runs: Mapping[str, str | os.PathLike | Sequence[str | os.PathLike]],
    out_dir: str | os.PathLike,
    evaluate: bool = False,
    **evaluate_kwargs: Any,
) -> list[dict[str, Any]]:
    """Write ``comparison.csv``, ``comparison.md``, ``comparison.png`` and ``matrix_<method>.md`` for several runs.

    Args:
        runs: method name -> run folder, or a list of run folders (seeds: their mean and deviation).
        out_dir: output folder.
        evaluate: run :func:`medcoss_monai.evaluation.forgetting.evaluate_run` on runs without ``forgetting.csv``.
        **evaluate_kwargs: passed to ``evaluate_run``.

    Returns:
        the table rows, one per method.

    Raises:
        FileNotFoundError: a run has no ``forgetting.csv`` and ``evaluate`` is False (names the run).
    """
    table, matrices = [], {}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, dirs in runs.items():
        dirs = [Path(dirs)] if isinstance(dirs, (str, os.PathLike)) else [Path(d) for d in dirs]
        for run_dir in dirs:
            if not (run_dir / FORGETTING_CSV).is_file():
                if not evaluate:
                    raise FileNotFoundError(
                        f"Run '{name}' ({run_dir}) has no {FORGETTING_CSV}: run "
                        f"`python -m medcoss_monai.evaluation.forgetting --run_dir {run_dir}` or pass --evaluate."
                    )
                evaluate_run(run_dir, **evaluate_kwargs)
        table.append(_method_row(name, dirs))
        matrices[name] = mean_matrix([read_matrix(d / FORGETTING_CSV) for d in dirs])
        atomic_write_text(matrix_markdown(matrices[name]), out / f"matrix_{name}.md")
    columns = _columns(table, with_sd=True)
    lines = [",".join(columns)] + [",".join(_csv(r.get(c)) for c in columns) for r in table]
    atomic_write_text("\n".join(lines) + "\n", out / "comparison.csv")
    atomic_write_text(comparison_markdown(table), out / "comparison.md")
    plot_comparison(table, out / "comparison.png")
    return table


def _columns(table: Sequence[Mapping[str, Any]], with_sd: bool = False) -> list[str]:
    keys = ["method"] + list(PROBE_COLUMNS) + ["average", "avg_forgetting", "bwt"]
    for column in PRETEXT_COLUMNS.values():
        keys += [column, f"forgetting_{column}"]
    # drop columns no run has a value for (modalities outside every curriculum)
    keys = [k for k in keys if k == "method" or any(r.get(k) is not None for r in table)]
    if with_sd:
        keys = [k for key in keys for k in ((key,) if key == "method" else (key, f"{key}_sd"))]
    return keys + ["n_runs", "final_stage", "run"]


def _csv(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.6f}" if isinstance(value, float) else str(value).replace(",", ";")


def comparison_markdown(table: Sequence[Mapping[str, Any]]) -> str:
    """The table as GitHub markdown: final probe AUC per modality, average, forgetting, BWT, pretext scores."""
    columns = [c for c in _columns(table) if c not in ("run", "final_stage", "n_runs")]
    head = ["method"] + [c.replace("_", " ") for c in columns[1:]] + ["runs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table:
        cells = [str(r["method"])] + [_cell(r, c) for c in columns[1:]] + [str(r.get("n_runs", 1))]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Cells are means over the runs of a method, ± their sample standard deviation when there are several. "
        "Probe columns: linear-probe AUC after the last stage (text: few-shot macro-AUC). avg forgetting / bwt: "
        "over the probe columns of modalities trained before the last stage (forgetting >= 0, lower is better; "
        "BWT < 0 means forgetting). Pretext columns: masked-token accuracy (higher is better) or masked-patch "
        "MSE (lower is better) with each modality's own head; forgetting of a pretext column is the loss from its best.",
    ]
    return "\n".join(lines) + "\n"


def plot_comparison(table: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Grouped bars: final probe scores per modality (left), average forgetting and pretext forgetting (right)."""
    import matplotlib

    matplotlib.use("Agg")  # before pyplot: no display is needed or assumed
    import matplotlib.pyplot as plt

    probe_cols = [c for c in list(PROBE_COLUMNS) + ["average"] if any(r.get(c) is not None for r in table)]
    forget_cols = [c for c in ["avg_forgetting"] + [f"forgetting_{c}" for c in PRETEXT_COLUMNS.values()]
                   if any(r.get(c) is not None for r in table)]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [max(len(probe_cols), 1), max(len(forget_cols), 1)]})
    width = 0.8 / max(len(table), 1)
    for ax, cols, title in ((axes[0], probe_cols, "final probe AUC"), (axes[1], forget_cols, "forgetting (lower is better)")):
        x = np.arange(len(cols))
        for i, r in enumerate(table):
            vals = [np.nan if r.get(c) is None else r[c] for c in cols]
            ax.bar(x + (i - (len(table) - 1) / 2) * width, vals, width, label=str(r["method"]))
        ax.set_xticks(x, [c.replace("forgetting_", "") for c in cols], rotation=30, ha="right")
        ax.set_title(title)
        ax.axhline(0, color="black", linewidth=0.5)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m medcoss_monai.evaluation.compare --runs name=DIR ... --out DIR [--evaluate]``."""
    install_run_hooks()  # user errors end with their message; library probes at DEBUG
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True,
                        help="method=run_dir pairs (or run dirs); several seeds of a method: method=dir1,dir2,dir3")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--evaluate", action="store_true", help="evaluate runs that have no forgetting.csv yet")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    table = compare_runs(parse_runs(args.runs), args.out, evaluate=args.evaluate)
    print(comparison_markdown(table))
    for name in parse_runs(args.runs):
        print(f"\n{name}:\n" + (Path(args.out) / f"matrix_{name}.md").read_text())
    print(f"wrote {Path(args.out) / 'comparison.csv'}, comparison.md, comparison.png and matrix_<method>.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
