"""The forgetting matrix of a run: probes and pretext scores after every stage, a heatmap and a summary.

``python -m medcoss_monai.bundle.forgetting --run_dir runs/medcoss`` evaluates a randomly initialised
network of the run's architecture (row ``scratch``, fixed seed) and the network saved by every finished
stage (rows ``stage_<m>``, in curriculum order) with :func:`medcoss_monai.handlers.probes.evaluate_stage`
and writes:

- ``<run>/forgetting.csv``: columns ``after``, the probe columns ``text, xray, ct, mri, pathology`` and the
  pretext columns ``text_mlm_acc, xray_mae_mse, ...`` (empty until that modality has been trained);
- ``<run>/forgetting.png``: a heatmap (colour per column, best = dark; numbers are the scores);
- ``<run>/forgetting_summary.json``: average forgetting and backward transfer.

Definitions (Chaudhry et al. 2018; Lopez-Paz & Ranzato 2017), per column ``c`` of a modality first
trained at stage ``k`` < the last stage ``T``, with ``a_t`` the score after stage ``t`` oriented so that
higher is better (MSE columns are negated):

- forgetting ``F_c = max_{k <= t < T} a_t - a_T`` (>= 0; for MSE columns the rise of the MSE over its best);
- backward transfer ``BWT_c = a_T - a_k`` (negative = forgetting, positive = later stages helped).

Averages are taken over the probe columns (AUC, one unit) and, separately, listed per pretext column.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medcoss_monai import MODALITIES
from medcoss_monai.networks.checkpoint import load_strict
from medcoss_monai.handlers.probes import (
    COLUMN_MODALITY,
    CSV_COLUMNS,
    PRETEXT_COLUMNS,
    PROBE_COLUMNS,
    evaluate_stage,
    probe_tokenizer,
    write_rows,
)
from medcoss_monai.utils import atomic_write_bytes, atomic_write_json

__all__ = [
    "stage_order",
    "stage_network_config",
    "build_network",
    "load_stage_network",
    "evaluate_run",
    "read_matrix",
    "forgetting_summary",
    "plot_matrix",
    "format_matrix",
    "main",
]

logger = logging.getLogger(__name__)

LOWER_IS_BETTER = {c for c in PRETEXT_COLUMNS.values() if c.endswith("_mse")}
"""Columns where a lower score is better."""

COLUMN_OF_MODALITY = {**{m: c for c, m in COLUMN_MODALITY.items()}}


def _stage_info(stage_dir: Path) -> dict[str, Any]:
    path = stage_dir / "stage.json"
    if not path.is_file():
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"Cannot read '{path}': {e}") from e


def stage_order(run_dir: str | os.PathLike) -> list[str]:
    """Modalities of the finished stages of a run (``stage_<m>/model.pt`` present), in curriculum order.

    The order follows the ``previous_stage`` chain of each ``stage.json``; stages without one are
    placed in :data:`MODALITIES` order.

    Args:
        run_dir: the run folder.

    Returns:
        e.g. ``["report", "xray", "ct"]``.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    done = {p.name[len("stage_"):]: p for p in run_dir.iterdir() if p.name.startswith("stage_") and (p / "model.pt").is_file()}
    previous = {m: str(_stage_info(p).get("previous_stage") or "") for m, p in done.items()}
    rank = {m: i for i, m in enumerate(MODALITIES)}
    order: list[str] = []
    # walk the chain from the stages whose predecessor is not a finished stage of this run
    heads = sorted((m for m in done if previous[m] not in done), key=lambda m: (rank.get(m, len(rank)), m))
    for head in heads:
        m = head
        while m is not None and m not in order:
            order.append(m)
            nxt = [n for n in done if previous[n] == m and n not in order]
            m = sorted(nxt, key=lambda n: (rank.get(n, len(rank)), n))[0] if nxt else None
    order += sorted((m for m in done if m not in order), key=lambda m: (rank.get(m, len(rank)), m))
    return order


def stage_network_config(run_dir: str | os.PathLike, stages: Sequence[str]) -> dict[str, Any] | None:
    """The network config (``{"_target_": ..., **kwargs}``) from the first ``stage.json`` that has one."""
    for m in stages:
        config = _stage_info(Path(run_dir) / f"stage_{m}").get("network")
        if isinstance(config, Mapping) and config.get("_target_"):
            return dict(config)
    return None


def build_network(config: Mapping[str, Any] | None, seed: int = 0) -> nn.Module:
    """Instantiate a network from a ``{"_target_": ..., **kwargs}`` config (None: ``MedCoSSModel()``), seeded.

    Args:
        config: the config, as written in ``stage.json`` under ``"network"``.
        seed: ``torch.manual_seed`` before construction, so the random initialisation is fixed.

    Returns:
        the network.
    """
    from monai.bundle import ConfigParser

    torch.manual_seed(seed)
    if config is None:
        from medcoss_monai.networks import MedCoSSModel

        return MedCoSSModel()
    return ConfigParser({"network": dict(config)}).get_parsed_content("network")


def load_stage_network(config: Mapping[str, Any] | None, model_path: str | os.PathLike, seed: int = 0) -> nn.Module:
    """Build the network and load a stage's ``model.pt``, strictly.

    A row of the forgetting matrix must score the stage's weights: a file whose keys do not match the
    network (renamed, missing or extra) is refused, not half-loaded onto a random network.

    Raises:
        CheckpointError: the file cannot be read, or the weights do not fit the architecture (tensor
            shapes or key names differ), naming the file.
    """
    network = build_network(config, seed)
    return load_strict(network, model_path, "stage model.pt", "It was not written with the network of its stage.json.")


def _size(config: Mapping[str, Any] | None, key: str, default: Sequence[int]) -> tuple[int, ...]:
    value = (config or {}).get(key)
    return tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else tuple(default)


def evaluate_run(
    run_dir: str | os.PathLike,
    stages: Sequence[str] | None = None,
    device: torch.device | str = "cpu",
    img_size_2d: Sequence[int] | None = None,
    img_size_3d: Sequence[int] | None = None,
    probes: Sequence[str] = PROBE_COLUMNS,
    text_n_train: int = 100,
    text_n_test: int = 1000,
    mlm_n_items: int | None = None,
    seed: int = 0,
    write: bool = True,
    verbose: bool = True,
    joint_modalities: Sequence[str] = (),
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Evaluate ``scratch`` and every finished stage of a run; write the CSV, heatmap and summary.

    Args:
        run_dir: the run folder (``output_dir`` of the stages).
        stages: modalities in curriculum order; default :func:`stage_order`.
        device: where to run.
        img_size_2d: 2D input size; default the network config's ``img_size_2d`` or (96, 96).
        img_size_3d: 3D input size; default the config's ``img_size_3d`` or (64, 64, 16).
        probes: probe columns to compute.
        text_n_train: training reports of the text probe.
        text_n_test: test reports of the text probe.
        mlm_n_items: validation reports for ``text_mlm_acc`` (None: all).
        seed: seed of the scratch network, the probes and the masks.
        write: write ``forgetting.csv``, ``forgetting.png`` and ``forgetting_summary.json``.
        verbose: print the matrix and summary.
        joint_modalities: the modalities of a ``joint`` stage (stage name ``joint``): its row scores
            the pretext of each of them with the joint network's own heads.

    Returns:
        ``(rows, summary)``.

    Raises:
        FileNotFoundError: the run folder has no finished stage.
    """
    run_dir = Path(run_dir)
    stages = list(stages) if stages is not None else stage_order(run_dir)
    if not stages:
        raise FileNotFoundError(f"'{run_dir}' has no finished stage (no stage_<modality>/model.pt).")
    for m in stages:
        if not (run_dir / f"stage_{m}" / "model.pt").is_file():
            raise FileNotFoundError(f"Stage weights '{run_dir / f'stage_{m}' / 'model.pt'}' do not exist.")
    config = stage_network_config(run_dir, stages)
    if config is None:
        msg = f"no stage.json in {run_dir} gives the network config; using MedCoSSModel() defaults"
        logger.warning(msg)
        if verbose:
            print(msg)
    size_2d = tuple(img_size_2d) if img_size_2d is not None else _size(config, "img_size_2d", (96, 96))
    size_3d = tuple(img_size_3d) if img_size_3d is not None else _size(config, "img_size_3d", (64, 64, 16))
    vocab = int((config or {}).get("vocab_size", 8192))
    needs_text = "text" in probes or "report" in stages or "report" in joint_modalities
    tokenizer = probe_tokenizer(run_dir, vocab_size=vocab) if needs_text else None
    common = dict(device=device, img_size_2d=size_2d, img_size_3d=size_3d, probes=probes, tokenizer=tokenizer,
                  text_n_train=text_n_train, text_n_test=text_n_test, mlm_n_items=mlm_n_items, seed=seed)
    rows, timings = [], {}
    for index, name in enumerate(["scratch"] + [f"stage_{m}" for m in stages]):
        start = time.time()
        if name == "scratch":
            network, trained, current = build_network(config, seed), [], None
        else:
            network = load_stage_network(config, run_dir / name / "model.pt", seed)
            trained, current = stages[:index], stages[index - 1]
            if current == "joint":
                trained = current = list(joint_modalities)
        network = network.to(device)
        row_times: dict[str, float] = {}
        rows.append(evaluate_stage(network, run_dir, name, trained, timings=row_times, current=current, **common))
        timings[name] = {k: round(v, 2) for k, v in row_times.items()}
        if verbose:
            print(f"  {name}: {time.time() - start:.1f} s ({', '.join(f'{k} {v:.1f}s' for k, v in row_times.items())})")
        del network
    summary = forgetting_summary(rows, stages)
    summary["timings_s"] = timings
    summary["img_size_2d"], summary["img_size_3d"] = list(size_2d), list(size_3d)
    if write:
        write_rows(rows, run_dir / "forgetting.csv")  # one atomic write: a kill never leaves half a matrix
        plot_matrix(rows, run_dir / "forgetting.png", title=f"forgetting matrix: {run_dir.name}")
        atomic_write_json(summary, run_dir / "forgetting_summary.json")
    if verbose:
        print(format_matrix(rows, summary))
    return rows, summary


def read_matrix(csv_path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a ``forgetting.csv`` with numbers as floats and empty cells as None."""
    path = Path(csv_path)
    if not path.is_file():
        raise FileNotFoundError(f"No forgetting matrix at '{path}': run `python -m medcoss_monai.bundle.forgetting --run_dir {path.parent}`.")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or "after" not in rows[0]:
        raise ValueError(f"'{path}' is not a forgetting matrix (no 'after' column or no rows).")
    return [{k: (r[k] if k == "after" else (float(r[k]) if r.get(k) not in (None, "") else None)) for k in r} for r in rows]


def _oriented(value: float | None, column: str) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return -float(value) if column in LOWER_IS_BETTER else float(value)


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
    stage_rows = [r for r in rows if str(r["after"]).startswith("stage_")]
    stages = list(stages) if stages is not None else [str(r["after"])[len("stage_"):] for r in stage_rows]
    per_column: dict[str, dict[str, float]] = {}
    last = len(stage_rows) - 1
    for column in list(PROBE_COLUMNS) + list(PRETEXT_COLUMNS.values()):
        modality = COLUMN_MODALITY.get(column) or next(m for m, c in PRETEXT_COLUMNS.items() if c == column)
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
    """The matrix as aligned text, with the summary below it."""
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
    """Heatmap of the matrix: colour normalised per column (dark = best in that column), raw scores written in.

    Args:
        rows: the rows.
        path: the PNG to write.
        title: the figure title.

    Returns:
        the PNG path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

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


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m medcoss_monai.bundle.forgetting --run_dir D [--stages report xray ct]``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run_dir", required=True, help="the run folder (output_dir of the stages)")
    parser.add_argument("--stages", nargs="*", default=None, help="modalities in curriculum order (default: from stage.json)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--img_size_2d", nargs=2, type=int, default=None)
    parser.add_argument("--img_size_3d", nargs=3, type=int, default=None)
    parser.add_argument("--probes", nargs="*", default=list(PROBE_COLUMNS), choices=list(PROBE_COLUMNS))
    parser.add_argument("--text_n_train", type=int, default=100)
    parser.add_argument("--text_n_test", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    evaluate_run(
        args.run_dir, args.stages, args.device, args.img_size_2d, args.img_size_3d, args.probes,
        args.text_n_train, args.text_n_test, seed=args.seed,
    )
    print(f"wrote {Path(args.run_dir) / 'forgetting.csv'} and forgetting.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
