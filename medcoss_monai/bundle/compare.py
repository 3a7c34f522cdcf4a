"""Side-by-side comparison of continual pre-training methods, in the shape of the MedCoSS paper's main table.

``python -m medcoss_monai.bundle.compare --runs medcoss=runs/medcoss sequential=runs/seq er=runs/er --out D``
reads each run's ``forgetting.csv`` (evaluating the run first with ``--evaluate`` when it has none) and
writes to ``D``:

- ``comparison.csv`` and ``comparison.md``: one row per method; columns the final probe score of each
  modality, their average, the final pretext scores, average forgetting and backward transfer over the
  probe columns, and the forgetting of each pretext column;
- ``comparison.png``: bars of the final probe scores per modality and of the forgetting, per method.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medcoss_monai.bundle.forgetting import forgetting_summary, read_matrix
from medcoss_monai.handlers.probes import PRETEXT_COLUMNS, PROBE_COLUMNS
from medcoss_monai.utils import atomic_write_text

__all__ = ["parse_runs", "compare_runs", "comparison_markdown", "plot_comparison", "main"]

logger = logging.getLogger(__name__)


def parse_runs(specs: Sequence[str]) -> dict[str, Path]:
    """``["medcoss=runs/a", "runs/b"]`` -> ``{"medcoss": runs/a, "b": runs/b}`` (name defaults to the folder name).

    Raises:
        ValueError: a name is given twice.
    """
    runs: dict[str, Path] = {}
    for spec in specs:
        name, _, path = spec.partition("=") if "=" in spec else (Path(spec).name, "", spec)
        if name in runs:
            raise ValueError(f"Method name '{name}' is given twice in --runs.")
        runs[name] = Path(path)
    return runs


def _method_row(name: str, run_dir: Path) -> dict[str, Any]:
    rows = read_matrix(run_dir / "forgetting.csv")
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
    runs: Mapping[str, str | os.PathLike], out_dir: str | os.PathLike, evaluate: bool = False, **evaluate_kwargs: Any
) -> list[dict[str, Any]]:
    """Write ``comparison.csv``, ``comparison.md`` and ``comparison.png`` for several runs.

    Args:
        runs: method name -> run folder.
        out_dir: output folder.
        evaluate: run :func:`medcoss_monai.bundle.forgetting.evaluate_run` on runs without ``forgetting.csv``.
        **evaluate_kwargs: passed to ``evaluate_run``.

    Returns:
        the table rows, one per method.

    Raises:
        FileNotFoundError: a run has no ``forgetting.csv`` and ``evaluate`` is False (names the run).
    """
    table = []
    for name, run_dir in runs.items():
        run_dir = Path(run_dir)
        if not (run_dir / "forgetting.csv").is_file():
            if not evaluate:
                raise FileNotFoundError(
                    f"Run '{name}' ({run_dir}) has no forgetting.csv: run "
                    f"`python -m medcoss_monai.bundle.forgetting --run_dir {run_dir}` or pass --evaluate."
                )
            from medcoss_monai.bundle.forgetting import evaluate_run

            evaluate_run(run_dir, **evaluate_kwargs)
        table.append(_method_row(name, run_dir))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    columns = _columns(table)
    lines = [",".join(columns)] + [",".join(_csv(r.get(c)) for c in columns) for r in table]
    atomic_write_text("\n".join(lines) + "\n", out / "comparison.csv")
    atomic_write_text(comparison_markdown(table), out / "comparison.md")
    plot_comparison(table, out / "comparison.png")
    return table


def _columns(table: Sequence[Mapping[str, Any]]) -> list[str]:
    keys = ["method"] + list(PROBE_COLUMNS) + ["average", "avg_forgetting", "bwt"]
    for column in PRETEXT_COLUMNS.values():
        keys += [column, f"forgetting_{column}"]
    keys += ["final_stage", "run"]
    # drop columns no run has a value for (modalities outside every curriculum)
    return [k for k in keys if k in ("method", "run", "final_stage") or any(r.get(k) is not None for r in table)]


def _csv(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.6f}" if isinstance(value, float) else str(value).replace(",", ";")


def comparison_markdown(table: Sequence[Mapping[str, Any]]) -> str:
    """The table as GitHub markdown: final probe AUC per modality, average, forgetting, BWT, pretext scores."""
    columns = [c for c in _columns(table) if c not in ("run", "final_stage")]
    head = ["method"] + [c.replace("_", " ") for c in columns[1:]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table:
        cells = [str(r["method"])] + [("" if r.get(c) is None else f"{r[c]:.4f}") for c in columns[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Probe columns: linear-probe AUC after the last stage (text: few-shot macro-AUC). avg forgetting / bwt: "
        "over the probe columns of modalities trained before the last stage (forgetting >= 0, lower is better; "
        "BWT < 0 means forgetting). Pretext columns: masked-token accuracy (higher is better) or masked-patch "
        "MSE (lower is better) with each modality's own head; forgetting of a pretext column is the loss from its best.",
    ]
    return "\n".join(lines) + "\n"


def plot_comparison(table: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Grouped bars: final probe scores per modality (left), average forgetting and pretext forgetting (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

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
    """Command line: ``python -m medcoss_monai.bundle.compare --runs name=DIR ... --out DIR [--evaluate]``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, help="method=run_dir pairs (or run dirs)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--evaluate", action="store_true", help="evaluate runs that have no forgetting.csv yet")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    table = compare_runs(parse_runs(args.runs), args.out, evaluate=args.evaluate)
    print(comparison_markdown(table))
    print(f"wrote {Path(args.out) / 'comparison.csv'}, comparison.md and comparison.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
