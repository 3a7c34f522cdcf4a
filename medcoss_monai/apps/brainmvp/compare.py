"""BrainMVP pre-training against none, with every contrast and with one missing: the figures of ``docs/figures.md``.

``python -m medcoss_monai.apps.brainmvp.compare --output_dir runs/brainmvp_compare --seeds 0,1,2 [--docs docs/figures.md]``

1. pre-trains ``bundles/stage_brainmvp.json`` once (``--pretrain`` overrides; seed 0);
2. fine-tunes ``bundles/finetune_brainmvp_seg.json`` per seed from that stage (``pretrained``) and from random
   weights (``scratch``). Both take the stage's templates (substitution during training, filling at test), so the
   two rows differ only in the backbone's initial weights;
3. tests each selected model (``model_best.pt``) again with each contrast of ``--missing`` dropped and filled by
   its template or by zeros.

It writes ``compare.csv`` (one row per run) and ``compare.md`` (mean ± sample sd over seeds, and each seed's
value). A finished run (its ``metrics.json``) is not run again, so the command continues after a stop. Every score
is on the task's test studies (the held-out ICBM slabs with the sample data, or ``--dataset_dir``'s test split).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medcoss_monai import layout
from medcoss_monai.apps.brainmvp.multicontrast import CONTRASTS
from medcoss_monai.bundle.pipeline import bundle_command, run_command
from medcoss_monai.errors import BadInputError, install_run_hooks
from medcoss_monai.provenance import Measurement, add_figure_arguments, command_line
from medcoss_monai.utils import atomic_write_text, parse_seeds

__all__ = ["test_inputs", "run_compare", "compare_table", "main"]

STAGE_DIR = "pretrain"
INITS = ("pretrained", "scratch")
FILLS = ("template", "zero")
_FAILED = "the BrainMVP comparison stopped"


def test_inputs(missing: Sequence[str]) -> list[tuple[str, str]]:
    """The test conditions: every contrast (``("", "")``), then each of ``missing`` dropped and filled each way."""
    return [("", "")] + [(contrast, fill) for contrast in missing for fill in FILLS]


def _run_dir(out: Path, init: str, seed: int, contrast: str = "", fill: str = "") -> Path:
    return out / (f"{init}_s{seed}" + (f"_no_{contrast}_{fill}" if contrast else ""))


def _metrics(folder: Path) -> dict[str, Any] | None:
    path = folder / layout.METRICS_FILE
    return json.loads(path.read_text(encoding="utf-8"))["metrics"] if path.is_file() else None


def run_compare(
    output_dir: str | Path, seeds: Sequence[int], missing: Sequence[str] = ("t2", "t1"),
    pretrain: Sequence[str] = (), finetune: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Pre-train once, fine-tune both initialisations per seed, test each with contrasts missing.

    Args:
        output_dir: the comparison folder.
        seeds: fine-tuning seeds.
        missing: contrasts dropped one at a time at test (each filled by its template and by zeros).
        pretrain: overrides of the stage (``--id value`` strings).
        finetune: overrides of every fine-tuning and test run (e.g. ``--dataset_dir``).

    Returns:
        One row per run: ``init``, ``seed``, ``missing``, ``fill`` and the run's test metrics.
    """
    out = Path(output_dir)
    bundles = layout.bundles_dir()
    stage_model = out / STAGE_DIR / "stage_brainmvp" / layout.MODEL_FILE
    if not stage_model.is_file():
        cmd = bundle_command([bundles / "stage_brainmvp.json"], ["--output_dir", str(out / STAGE_DIR), "--seed", "0", *pretrain])
        run_command("pre-train BrainMVP", cmd, _FAILED)
    rows = []
    for seed in seeds:
        for init in INITS:
            ckpt = str(stage_model) if init == "pretrained" else ""
            trained = _run_dir(out, init, seed)
            for contrast, fill in test_inputs(missing):
                folder = _run_dir(out, init, seed, contrast, fill)
                if _metrics(folder) is None:
                    args = ["--output_dir", str(folder), "--seed", str(seed), "--pretrained_ckpt", ckpt,
                            "--templates_ckpt", str(stage_model), *finetune]
                    if contrast:
                        args += ["--finetuned_ckpt", str(trained / layout.BEST_MODEL_FILE), "--missing", f"['{contrast}']",
                                 "--fill", fill]
                    title = f"{init}, seed {seed}: " + (f"test without {contrast} ({fill} fill)" if contrast else "fine-tune")
                    run_command(title, bundle_command([bundles / "finetune_brainmvp_seg.json"], args), _FAILED)
                rows.append({"init": init, "seed": seed, "missing": contrast, "fill": fill, **_metrics(folder)})
    write_results(rows, out)
    return rows


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


def compare_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: per initialisation and test input, mean Dice and HD95 (mean ± sample sd over seeds) and each seed's Dice."""
    lines = ["| initialisation | test input | mean Dice | Dice per seed | HD95 |", "| --- | --- | ---: | --- | ---: |"]
    conditions = list(dict.fromkeys((r["init"], r["missing"], r["fill"]) for r in rows))
    for init, contrast, fill in sorted(conditions, key=lambda c: (c[1] != "", c[1], c[2], INITS.index(c[0]))):
        sel = sorted((r for r in rows if (r["init"], r["missing"], r["fill"]) == (init, contrast, fill)), key=lambda r: r["seed"])
        cells = []
        for key in ("mean_dice", "hd95"):
            values = [v for v in (_number(r.get(key)) for r in sel) if v is not None]
            sd = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
            cells.append(f"{statistics.fmean(values):.3f}{sd}" if values else "n/a")
        per_seed = " / ".join(f"{_number(r.get('mean_dice')) or 0.0:.3f}" for r in sel)
        condition = "every contrast" if not contrast else f"{contrast} missing, {fill}-filled"
        lines.append(f"| {init} | {condition} | {cells[0]} | {per_seed} (seeds {', '.join(str(r['seed']) for r in sel)}) | {cells[1]} |")
    return "\n".join(lines) + "\n"


def write_results(rows: Sequence[dict[str, Any]], out: Path) -> None:
    """``compare.csv`` (init, seed, missing, fill, mean_dice, hd95 per run) and ``compare.md``."""
    csv = ["init,seed,missing,fill,mean_dice,hd95"]
    csv += [f"{r['init']},{r['seed']},{r['missing']},{r['fill']},{r.get('mean_dice')},{r.get('hd95')}" for r in rows]
    atomic_write_text("\n".join(csv) + "\n", out / "compare.csv")
    atomic_write_text(compare_table(rows), out / "compare.md")


def main(argv: Sequence[str] | None = None) -> int:
    """Command line (see the module docstring).

    Args:
        argv: the command-line arguments; ``sys.argv[1:]`` when None.

    Returns:
        0 once every run has finished.
    """
    install_run_hooks()  # user errors end with their message; library probes at DEBUG
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_figure_arguments(parser, "brainmvp", "runs/brainmvp_compare", "fine-tuning seeds")
    parser.add_argument("--missing", default="t2,t1", help="contrasts dropped one at a time at test ('' for none)")
    parser.add_argument("--pretrain", default="", help="overrides of the stage, one string: \"--train#trainer#max_epochs 2\"")
    parser.add_argument("--finetune", default="", help="overrides of every fine-tuning and test, one string")
    args = parser.parse_args(argv)
    seeds = parse_seeds(args.seeds, "--seeds")
    missing = [c.strip() for c in args.missing.split(",") if c.strip()]
    unknown = sorted(set(missing) - set(CONTRASTS))
    if unknown:
        raise BadInputError(f"--missing {args.missing}: unknown contrast(s) {', '.join(unknown)}; "
                            f"choose from {', '.join(CONTRASTS)}.")
    measurement = Measurement()
    rows = run_compare(args.output_dir, seeds, missing, shlex.split(args.pretrain), shlex.split(args.finetune))
    table = compare_table(rows)
    print(table)
    if args.docs:
        measurement.write(args.docs, "brainmvp", "BrainMVP on the sample data: pre-trained against scratch, contrasts missing",
                          table, seeds, command_line("medcoss_monai.apps.brainmvp.compare", argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
