"""Measure the MedCoSS figures of ``docs/figures.md``: seeds, methods, fine-tuning, all on the sample data.

``python -m medcoss_monai.evaluation.figures --out runs/figures [--seeds 0 1 2] [--docs docs/figures.md]`` runs, skipping
whatever an earlier call already finished (so it can be stopped and started again):

1. the demo curriculum (``report,xray,ct,mri,pathology``) with ``--method medcoss`` and
   ``--method sequential`` for every seed, each writing its forgetting matrix
   (``<out>/<method>_s<seed>/forgetting.csv``; the ``scratch`` row is a random encoder of that seed);
2. the comparison of the two methods over the seeds (``<out>/compare/``: ``comparison.md`` and the
   mean matrices ``matrix_<method>.md``, cells ``mean ± sd``);
3. every fine-tuning task from scratch and from the matching stage of the ``medcoss`` run of the
   same seed (``<out>/finetune/<task>/<init>_s<seed>/metrics.json``), and the table
   ``<out>/finetune.md`` (mean ± sd over the seeds);
4. the text-probe table ``<out>/text_probe.md``: the ``text`` column of the random encoders and of
   the report stages.

With ``--docs`` the tables become the ``medcoss`` section of that document, generated from the files above
with the commit, torch build, machine, seeds and the time the runs took (:mod:`medcoss_monai.provenance`).

Every score is on held-out data (see :mod:`medcoss_monai.samples.sample_data`). The whole run takes about
three hours on two CPU cores; measure alone (other processes on the machine change the timings,
not the scores). A run stopped part-way continues from its last checkpoint when the command is started again;
every run records its commit, and a document section is written only from runs of one commit (so measure from a
checkout that stays there, e.g. ``git worktree add ../figures-run HEAD``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medcoss_monai.errors import BadInputError, install_run_hooks
from medcoss_monai.layout import FORGETTING_CSV, bundles_dir, stage_model
from medcoss_monai.evaluation.compare import compare_runs
from medcoss_monai.evaluation.matrix import SCRATCH_ROW, read_matrix, row_name
from medcoss_monai.provenance import commit, measured_section, write_section

__all__ = ["FINETUNE_TASKS", "run_figures", "figures_section", "measured_seconds", "measured_commit", "main"]

FINETUNE_TASKS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "text_cls": ("text_cls", "report", ()),
    "xray_cls": ("xray_cls", "xray", ()),
    "xray_seg": ("xray_seg", "xray", ()),
    "ct_cls": ("ct_cls", "ct", ()),
    "ct_seg": ("ct_seg", "ct", ()),
    "mri_seg": ("mri_seg", "mri", ()),
    "mri_tissue_seg": ("mri_seg", "mri", ("--task", "mri_tissue_seg", "--num_classes", "3", "--train#trainer#max_epochs", "20")),
    "pathology_cls": ("pathology_cls", "pathology", ()),
    "pathology_seg": ("pathology_seg", "pathology", ()),
}
"""Task -> (fine-tuning bundle, stage whose ``model.pt`` it starts from, extra overrides)."""

METHODS = ("medcoss", "sequential")
STAGES = "report,xray,ct,mri,pathology"


TIMINGS = "timings.jsonl"
"""One line per finished run of the figures (``seconds``, ``log``): the time a document states, resumes included."""


def _run(cmd: Sequence[str], log: Path, out: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    code = commit()  # a figures run spans sessions: each run records the code it ran (see measured_commit)
    start = time.time()
    with open(log, "w", encoding="utf-8") as f:
        result = subprocess.run(list(cmd), stdout=f, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise SystemExit(f"failed (exit {result.returncode}, see {log}): {' '.join(cmd)}")
    seconds = time.time() - start
    with open(out / TIMINGS, "a", encoding="utf-8") as f:
        f.write(json.dumps({"seconds": round(seconds, 1), "log": str(log.relative_to(out)), "commit": code}) + "\n")
    print(f"  {seconds:6.0f} s  {' '.join(cmd[2:6])} ... -> {log.parent}", flush=True)


def _last_runs(out: Path) -> dict[str, dict[str, Any]]:
    """The last finished run of each log in ``out``'s timings: ``{log: {"seconds", "log", "commit"}}``."""
    path = Path(out) / TIMINGS
    if not path.is_file():
        return {}
    last = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            last[row["log"]] = row
    return last


def measured_seconds(out: Path) -> float:
    """Total time of the runs behind the tables in ``out`` (each run counted once, its last time)."""
    return float(sum(row["seconds"] for row in _last_runs(out).values()))


def measured_commit(out: Path) -> str:
    """The one commit every run behind the tables in ``out`` ran at.

    A figures run is resumed across sessions; a table mixing runs of different code would name a commit
    that only part of it ran, so that is refused.

    Args:
        out: the folder of a figures run.

    Returns:
        the commit (``+changes`` when the runs ran uncommitted code); "unknown" when no run recorded one.

    Raises:
        BadInputError: the runs ran at more than one commit.
    """
    runs = _last_runs(out)
    commits = sorted({row.get("commit", "unknown") for row in runs.values()})
    if len(commits) > 1:
        by_commit = {c: [log for log, row in runs.items() if row.get("commit", "unknown") == c] for c in commits}
        detail = "; ".join(f"{c}: {len(logs)} runs, e.g. {logs[0]}" for c, logs in by_commit.items())
        raise BadInputError(
            f"the runs in {out} ran at {len(commits)} commits ({detail}): a table names one commit. Measure from a "
            "checkout that stays at one commit (e.g. 'git worktree add'), or remove the runs of the other commits."
        )
    return commits[0] if commits else "unknown"


def pretrain(out: Path, seeds: Sequence[int]) -> None:
    """The curriculum of each method and seed, with its forgetting matrix (skipped when already written)."""
    for seed in seeds:
        for method in METHODS:
            run_dir = out / f"{method}_s{seed}"
            if (run_dir / FORGETTING_CSV).is_file():
                continue
            # --resume: a run killed part-way continues from its last checkpoint (bit-exact) when started again
            cmd = [sys.executable, "-m", "medcoss_monai.bundle.pipeline", "--stages", STAGES, "--method", method,
                   "--output_dir", str(run_dir), "--seed", str(seed), "--progress_bar", "false", "--resume", "true"]
            _run(cmd, run_dir / "pipeline.log", out)


def compare(out: Path, seeds: Sequence[int]) -> None:
    """Mean matrices and the method table over the seeds."""
    compare_runs({m: [out / f"{m}_s{s}" for s in seeds] for m in METHODS}, out / "compare")


def finetune(out: Path, seeds: Sequence[int], tasks: Sequence[str]) -> None:
    """Every task from scratch and from the medcoss run's matching stage, per seed (skipped when done)."""
    bundles = bundles_dir()
    for task in tasks:
        bundle, stage, extra = FINETUNE_TASKS[task]
        for seed in seeds:
            for init in ("scratch", "pretrained"):
                folder = out / "finetune" / task / f"{init}_s{seed}"
                if (folder / "metrics.json").is_file():
                    continue
                cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundles / f"finetune_{bundle}.json"),
                       "--output_dir", str(folder), "--seed", str(seed), "--resume", "true", *extra]
                if init == "pretrained":
                    cmd += ["--pretrained_ckpt", str(stage_model(out / f"medcoss_s{seed}", stage))]
                _run(cmd, folder / "finetune.log", out)


def _mean_sd(values: Sequence[float | None]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    mean = statistics.fmean(values)
    return f"{mean:.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{mean:.3f}"


def finetune_table(out: Path, seeds: Sequence[int], tasks: Sequence[str]) -> str:
    """Markdown: one row per task, scratch and pretrained metrics as mean ± sd over the seeds."""
    lines = ["| task | train / val / test items | metric | scratch | pretrained |", "| --- | --- | --- | ---: | ---: |"]
    for task in tasks:
        results: dict[str, list[dict[str, Any]]] = {"scratch": [], "pretrained": []}
        for init in results:
            for seed in seeds:
                path = out / "finetune" / task / f"{init}_s{seed}" / "metrics.json"
                if path.is_file():
                    results[init].append(json.loads(path.read_text()))
        if not results["scratch"]:
            continue
        sizes = results["scratch"][0]["split_sizes"]
        size_text = " / ".join(str(sizes[k]) for k in ("training", "validation", "test"))
        metrics = [k for k in ("AUC", "F1", "ACC", "Dice", "HD95") if k in results["scratch"][0]["metrics"]]
        for i, metric in enumerate(metrics):
            cells = [_mean_sd([r["metrics"].get(metric) for r in results[init]]) for init in ("scratch", "pretrained")]
            lines.append(f"| {task if i == 0 else ''} | {size_text if i == 0 else ''} | {metric} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def text_probe_table(out: Path, seeds: Sequence[int]) -> str:
    """Markdown: the text probe of the random encoders and of the report stages (medcoss runs), per seed and mean ± sd."""
    scores: dict[str, list[float]] = {SCRATCH_ROW: [], row_name("report"): []}
    for seed in seeds:
        rows = {r["after"]: r for r in read_matrix(out / f"medcoss_s{seed}" / FORGETTING_CSV)}
        for name in scores:
            scores[name].append(rows[name]["text"])
    lines = ["| encoder | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd |", "| --- |" + " ---: |" * (len(seeds) + 1)]
    for name, label in ((SCRATCH_ROW, "randomly initialised"), (row_name("report"), "after the report stage")):
        lines.append(f"| {label} | " + " | ".join(f"{v:.4f}" for v in scores[name]) + f" | {_mean_sd(scores[name])} |")
    return "\n".join(lines) + "\n"


def run_figures(out: str | Path, seeds: Sequence[int] = (0, 1, 2), steps: Sequence[str] = ("pretrain", "compare", "finetune"),
                tasks: Sequence[str] = tuple(FINETUNE_TASKS)) -> None:
    """Run the chosen steps and write the tables (see the module docstring)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if "pretrain" in steps:
        pretrain(out, seeds)
    if "compare" in steps:
        compare(out, seeds)
        (out / "text_probe.md").write_text(text_probe_table(out, seeds))
    if "finetune" in steps:
        finetune(out, seeds, tasks)
        (out / "finetune.md").write_text(finetune_table(out, seeds, tasks))
    for name in TABLES:
        if (out / name).is_file():
            print(f"\n{name}:\n{(out / name).read_text()}")


TABLES = {
    "text_probe.md": "Text probe: a random encoder against the report stage (macro-AUC, held-out reports)",
    "compare/comparison.md": "Forgetting: MedCoSS against sequential training",
    "compare/matrix_medcoss.md": "Forgetting matrix, MedCoSS (mean ± sd over seeds)",
    "compare/matrix_sequential.md": "Forgetting matrix, sequential (mean ± sd over seeds)",
    "finetune.md": "Fine-tuning: from scratch against the MedCoSS stage of the same seed (test split)",
}
"""The tables of a figures run, in the order a document shows them, with their headings."""


def figures_section(out: str | Path, seeds: Sequence[int]) -> str:
    """The MedCoSS section of ``docs/figures.md``, generated from the tables of ``out``.

    Args:
        out: the folder of a finished :func:`run_figures`.
        seeds: its seeds.

    Returns:
        markdown: a heading, the provenance line and every table found, each under its heading.
    """
    out = Path(out)
    lines = []
    for name, heading in TABLES.items():
        if (out / name).is_file():
            lines += [f"### {heading}", "", (out / name).read_text(encoding="utf-8").strip(), ""]
    command = ["python", "-m", "medcoss_monai.evaluation.figures", "--seeds", *map(str, seeds)]
    return measured_section("MedCoSS on the sample data: methods, forgetting, fine-tuning", "\n".join(lines), seeds,
                            measured_seconds(out), command, started=measured_commit(out))


def main(argv: Sequence[str] | None = None) -> int:
    """Command line (see the module docstring)."""
    install_run_hooks()  # user errors end with their message; library probes at DEBUG
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/figures", help="folder of every run and table")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", nargs="+", default=["pretrain", "compare", "finetune"], choices=["pretrain", "compare", "finetune"])
    parser.add_argument("--tasks", nargs="+", default=list(FINETUNE_TASKS), choices=list(FINETUNE_TASKS))
    parser.add_argument("--docs", default="", help="also write the tables as the 'medcoss' section of this document "
                        "(e.g. docs/figures.md), with the commit, torch build, machine, seeds and time")
    args = parser.parse_args(argv)
    run_figures(args.out, args.seeds, args.steps, args.tasks)
    if args.docs:
        write_section(args.docs, "medcoss", figures_section(args.out, args.seeds), title="Measured figures")
        print(f"section 'medcoss' of {args.docs} written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
