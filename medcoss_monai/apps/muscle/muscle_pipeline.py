"""Run MUSCLE's three steps, one bundle after another, or compare backbones over seeds.

One run (MD-MoCo, multi-task continual learning, fine-tuning of every task)::

    python -m medcoss_monai.apps.muscle.muscle_pipeline --output_dir runs/muscle

Each step is ``python -m monai.bundle run`` on its bundle, exactly as a user would run it alone:

1. ``bundles/muscle_mdmoco.json`` -> ``<output_dir>/muscle_mdmoco/model.pt``;
2. ``bundles/muscle_multitask.json`` (``--variant muscle--`` merges ``bundles/muscle_minus.json``) with
   ``--pretrained_ckpt`` step 1's model -> ``<output_dir>/muscle_multitask/`` (``model.pt``,
   ``visit_metrics.csv/.png``: every task's validation score after every visit);
3. ``bundles/finetune_muscle_{cls,seg,det}.json`` with ``--pretrained_ckpt`` step 2's model ->
   ``<output_dir>/finetune/<task>/metrics.json`` (test split).

``--compare`` runs, for every seed of ``--seeds``, step 1, step 2 as MUSCLE and as MUSCLE--, and
fine-tunes every task from four backbones (scratch, MD-MoCo, MUSCLE--, MUSCLE); it writes
``comparison.csv`` (one row per seed, backbone and task) and ``comparison.md`` (mean and standard
deviation over seeds) with step 2's table: every task's validation score after each visit or round of
MUSCLE and MUSCLE-- (``step2_visits.md``).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from medcoss_monai.errors import BadInputError, install_run_hooks
from medcoss_monai import layout
from medcoss_monai.bundle.pipeline import bundle_command, run_command
from medcoss_monai.provenance import Measurement, add_figure_arguments, command_line
from medcoss_monai.utils import atomic_write_text, parse_seeds

__all__ = ["FINETUNE_BUNDLES", "BACKBONES", "bundle_command", "run_steps", "compare", "write_step2_table", "main"]

FINETUNE_BUNDLES = {
    "muscle_bodypart_cls": "finetune_muscle_cls.json",
    "muscle_lung_seg": "finetune_muscle_seg.json",
    "muscle_chest_det": "finetune_muscle_det.json",
}
"""Task -> its step-3 bundle."""
BACKBONES = ("scratch", "mdmoco", "muscle--", "muscle")
"""The backbones ``--compare`` fine-tunes from."""
MDMOCO_DIR, MULTITASK_DIR = "muscle_mdmoco", "muscle_multitask"
STEP2_DIRS = {"muscle": MULTITASK_DIR, "muscle--": "muscle_multitask_minus"}
"""Step 2's folder of each variant in a run folder."""
_FAILED = "this step failed and later steps were not run"


def run_steps(
    output_dir: str | Path,
    variant: str = "muscle",
    seed: int = 0,
    step1: Sequence[str] = (),
    step2: Sequence[str] = (),
    step3: Sequence[str] = (),
    tasks: Sequence[str] = tuple(FINETUNE_BUNDLES),
    skip_step1: bool = False,
) -> dict[str, dict]:
    """Run steps 1, 2 and 3 into ``output_dir``; return each task's test metrics.

    Args:
        output_dir: the run folder.
        variant: ``muscle`` or ``muscle--`` (step 2 with ``bundles/muscle_minus.json``).
        seed: seed of every step.
        step1: extra ``--id value`` overrides of step 1 (MD-MoCo).
        step2: extra overrides of step 2 (multi-task).
        step3: extra overrides of every fine-tuning.
        tasks: the tasks fine-tuned in step 3.
        skip_step1: reuse ``<output_dir>/muscle_mdmoco/model.pt`` when it exists.

    Returns:
        task -> its ``metrics.json`` ``metrics`` entry.
    """
    bundles = layout.bundles_dir()
    out = Path(output_dir)
    common = ["--output_dir", str(out), "--seed", str(seed)]
    mdmoco = out / MDMOCO_DIR / layout.MODEL_FILE
    if not (skip_step1 and mdmoco.is_file()):
        run_command("step 1: MD-MoCo", bundle_command([bundles / "muscle_mdmoco.json"], [*common, *step1]), _FAILED)
    configs = [bundles / "muscle_multitask.json"] + ([bundles / "muscle_minus.json"] if variant == "muscle--" else [])
    step2_dir = out / STEP2_DIRS[variant]
    run_command(f"step 2: multi-task continual learning ({variant})",
                bundle_command(configs, [*common, "--stage_dir", str(step2_dir), "--pretrained_ckpt", str(mdmoco), *step2]), _FAILED)
    return finetune_all(step2_dir / layout.MODEL_FILE, out / "finetune" / variant, seed, step3, tasks)


def finetune_all(
    ckpt: str | Path, output_dir: Path, seed: int, overrides: Sequence[str] = (), tasks: Sequence[str] = tuple(FINETUNE_BUNDLES)
) -> dict[str, dict]:
    """Step 3: fine-tune every task from ``ckpt`` ("" = scratch) into ``output_dir/<task>``; return their test metrics."""
    bundles = layout.bundles_dir()
    results = {}
    for task in tasks:
        folder = output_dir / task
        cmd = bundle_command([bundles / FINETUNE_BUNDLES[task]],
                             ["--output_dir", str(folder), "--pretrained_ckpt", str(ckpt), "--seed", str(seed), *overrides])
        run_command(f"step 3: fine-tune {task} from {ckpt or 'scratch'}", cmd, _FAILED)
        with open(folder / layout.METRICS_FILE, encoding="utf-8") as f:
            results[task] = json.load(f)["metrics"][task]
    return results


def compare(
    output_dir: str | Path, seeds: Sequence[int], step1: Sequence[str] = (), step2: Sequence[str] = (),
    step2_minus: Sequence[str] = (), step3: Sequence[str] = (),
) -> list[dict]:
    """Fine-tune every task from scratch, MD-MoCo, MUSCLE-- and MUSCLE backbones, for every seed.

    Args:
        output_dir: the comparison folder (``seed_<n>/`` per seed).
        seeds: the seeds (each seeds every step of its row).
        step1: overrides of step 1.
        step2: overrides of step 2 (both variants).
        step2_minus: more overrides of step 2 as MUSCLE-- (its budget).
        step3: overrides of every fine-tuning.

    Returns:
        Rows ``{"seed", "backbone", "task", <metrics>...}``; also written to ``comparison.csv`` / ``.md``.
    """
    rows = []
    for seed in seeds:
        out = Path(output_dir) / f"seed_{seed}"
        results = {"muscle": run_steps(out, "muscle", seed, step1, step2, step3)}
        results["muscle--"] = run_steps(out, "muscle--", seed, step1, [*step2, *step2_minus], step3, skip_step1=True)
        results["mdmoco"] = finetune_all(out / MDMOCO_DIR / layout.MODEL_FILE, out / "finetune" / "mdmoco", seed, step3)
        results["scratch"] = finetune_all("", out / "finetune" / "scratch", seed, step3)
        for backbone in BACKBONES:
            for task, metrics in results[backbone].items():
                rows.append({"seed": seed, "backbone": backbone, "task": task, **metrics})
        write_comparison(rows, Path(output_dir))
    write_step2_table(Path(output_dir), seeds)
    return rows


def _mean_sd(values: Sequence[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def write_step2_table(output_dir: Path, seeds: Sequence[int]) -> str:
    """``step2_visits.md``: every task's validation score during step 2, mean ± sd over seeds, per variant.

    A visit gets its own row where every seed trained the same task at that point of the round (MUSCLE--'s
    fixed order); where the seeds' reshuffled orders differ (MUSCLE), only the end of each round is comparable
    and gets a row.

    Args:
        output_dir: the comparison folder (``seed_<n>/<step 2 folder>/visit_metrics.csv``).
        seeds: the seeds whose runs are read.

    Returns:
        The markdown table (also written to ``output_dir/step2_visits.md``).
    """
    tasks = list(FINETUNE_BUNDLES)
    md = ["\nStep 2: each task's validation score (AUC, Dice, mAP@0.5) after training on a visit or a round; "
          "mean ± sd over seeds\n", "| variant | after | " + " | ".join(tasks) + " |", "|---|---|" + "---|" * len(tasks)]
    for variant, folder in STEP2_DIRS.items():
        runs = []
        for seed in seeds:
            with open(output_dir / f"seed_{seed}" / folder / "visit_metrics.csv", newline="", encoding="utf-8") as f:
                runs.append(list(csv.DictReader(f)))
        for r in sorted({int(row["round"]) for row in runs[0]}):
            rounds = [[row for row in rows if int(row["round"]) == r] for rows in runs]
            same_order = all([row["task"] for row in rr] == [row["task"] for row in rounds[0]] for rr in rounds)
            for i in range(len(rounds[0])) if same_order else [-1]:
                after = f"round {r}, visit of {rounds[0][i]['task']}" if same_order else f"round {r} (order differs by seed)"
                cells = [_mean_sd([float(rr[i][task]) for rr in rounds]) for task in tasks]
                md.append(f"| {variant} | {after} | " + " | ".join(cells) + " |")
    table = "\n".join(md) + "\n"
    atomic_write_text(table, output_dir / "step2_visits.md")
    return table


def write_comparison(rows: Sequence[dict], output_dir: Path) -> None:
    """``comparison.csv`` (every row) and ``comparison.md`` (mean ± sd over seeds per backbone and task)."""
    columns = sorted({k for r in rows for k in r} - {"seed", "backbone", "task"})
    lines = ["seed,backbone,task," + ",".join(columns)]
    lines += [f"{r['seed']},{r['backbone']},{r['task']}," + ",".join(f"{r[c]:.4f}" if c in r else "" for c in columns) for r in rows]
    atomic_write_text("\n".join(lines) + "\n", output_dir / "comparison.csv")
    md = []
    for task in dict.fromkeys(r["task"] for r in rows):
        metrics = [c for c in columns if all(c in r for r in rows if r["task"] == task)]
        md += [f"\n{task} (test split; mean ± sd over seeds)\n", "| backbone | n | " + " | ".join(metrics) + " |",
               "|---|---|" + "---|" * len(metrics)]
        for backbone in BACKBONES:
            sel = [r for r in rows if r["task"] == task and r["backbone"] == backbone]
            if not sel:
                continue
            cells = [_mean_sd([float(r[m]) for r in sel]) for m in metrics]
            md.append(f"| {backbone} | {len(sel)} | " + " | ".join(cells) + " |")
    atomic_write_text("\n".join(md) + "\n", output_dir / "comparison.md")


def main(argv: Sequence[str] | None = None) -> int:
    """Run MUSCLE's three steps, or ``--compare`` the backbones, from the command line.

    Args:
        argv: the command-line arguments; ``sys.argv[1:]`` when None.

    Returns:
        0 once every step has succeeded (a failed step ends the process with its message).
    """
    install_run_hooks()  # user errors end with their message; library probes at DEBUG
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="muscle", choices=("muscle", "muscle--"), help="step 2 with or without memorisation")
    parser.add_argument("--seed", type=int, default=0, help="seed of every step")
    parser.add_argument("--compare", action="store_true", help="scratch vs MD-MoCo vs MUSCLE-- vs MUSCLE over --seeds")
    add_figure_arguments(parser, "muscle", "runs/muscle", "seeds of --compare", docs_when="with --compare: ")
    parser.add_argument("--step1", default="", help="overrides of step 1, one string: \"--train#trainer#max_epochs 2\"")
    parser.add_argument("--step2", default="", help="overrides of step 2, e.g. \"--rounds 2 --steps_per_visit 5\"")
    parser.add_argument("--step2_minus", default="", help="more overrides of step 2 as MUSCLE-- (--compare), e.g. its budget")
    parser.add_argument("--step3", default="", help="overrides of every fine-tuning, e.g. \"--train#trainer#max_epochs 3\"")
    args = parser.parse_args(argv)
    measurement = Measurement()
    if args.compare:
        seeds = parse_seeds(args.seeds, "--seeds")
        compare(args.output_dir, seeds, args.step1.split(), args.step2.split(), args.step2_minus.split(), args.step3.split())
        table = "".join((Path(args.output_dir) / name).read_text() for name in ("comparison.md", "step2_visits.md"))
        print(table)
        if args.docs:
            measurement.write(args.docs, "muscle", "MUSCLE on the sample data: fine-tuned from four backbones", table, seeds,
                              command_line("medcoss_monai.apps.muscle.muscle_pipeline", argv))
    elif args.docs:
        raise BadInputError("--docs writes the table of --compare: add --compare.")
    else:
        results = run_steps(args.output_dir, args.variant, args.seed, args.step1.split(), args.step2.split(), args.step3.split())
        for task, metrics in results.items():
            print(f"  {task:<22} " + "  ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k != "score"))
    print(f"\n=== MUSCLE finished in {time.time() - measurement.start:.0f} s; outputs in {Path(args.output_dir).resolve()} ===")
    return 0


if __name__ == "__main__":
    sys.exit(main())
