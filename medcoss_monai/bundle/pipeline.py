"""Run a curriculum of pre-training stages, one stage bundle after another.

Example::

    python -m medcoss_monai.bundle.pipeline --stages report,xray,ct,mri,pathology \\
        --method medcoss --output_dir runs/demo --max_epochs 3

Each stage runs ``python -m monai.bundle run`` on ``bundles/stage_<modality>.json`` (or
``bundles/curriculum_<name>.json`` where one exists: ``brainmvp``, BrainMVP's pretext on the unified
encoder) merged with the method's overlay ``bundles/method_<method>.json``, exactly as a user would
run it alone, with ``previous_stage`` set to the stage before it; then the forgetting matrix of the run is written by
``python -m medcoss_monai.evaluation.forgetting`` (``--forgetting false`` skips it). After a kill, the same
command with ``--resume true`` skips the finished stages, resumes the interrupted one from its last
checkpoint and runs the rest. It runs from any working directory (the bundles are self-contained;
``--output_dir`` is relative to it). Methods are switches of the same bundles, one ``bundles/method_<name>.json``
each: ``medcoss`` (k-means buffer, mixup, feature distillation), ``sequential`` (no buffer), ``er``
(buffer batches get the pretext loss), ``random_buffer`` (random sampler) and ``joint`` (one stage,
``stage_joint``, over all the listed modalities, each batch single-modality).
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from medcoss_monai import layout
from medcoss_monai.errors import BadInputError, install_run_hooks

__all__ = [
    "bundle_command",
    "stage_command",
    "forgetting_command",
    "run_command",
    "stage_complete",
    "run_pipeline",
    "main",
]


def stage_command(
    modality: str,
    output_dir: str | os.PathLike,
    previous_stage: str,
    overlays: Sequence[str | os.PathLike] = (),
    overrides: Sequence[str] = (),
    bundle_dir: str | os.PathLike | None = None,
) -> list[str]:
    """The ``monai.bundle run`` command line of one stage.

    Args:
        modality: the stage's modality (``bundles/stage_<modality>.json``).
        output_dir: the run folder.
        previous_stage: the modality of the stage before, or "" for the first.
        overlays: more config files merged after the stage bundle (method, paper scale...).
        overrides: extra ``--id value`` arguments, as strings.
        bundle_dir: where the bundles are (default :func:`~medcoss_monai.layout.bundles_dir`).

    Returns:
        The argument list for ``subprocess``.
    """
    folder = Path(bundle_dir) if bundle_dir else layout.bundles_dir()
    configs = [layout.stage_bundle(modality, folder), *overlays]
    return bundle_command(configs, ["--output_dir", str(output_dir), "--previous_stage", previous_stage, *overrides], folder)


def bundle_command(
    configs: Sequence[str | os.PathLike], overrides: Sequence[str] = (), bundle_dir: str | os.PathLike | None = None
) -> list[str]:
    """The ``monai.bundle run`` command line of a bundle merged with overlays, with the bundles' logging config.

    Args:
        configs: the bundle, then the overlays merged after it.
        overrides: ``--id value`` arguments, as strings.
        bundle_dir: where ``logging.conf`` is (default :func:`~medcoss_monai.layout.bundles_dir`).

    Returns:
        The argument list for ``subprocess``.
    """
    files = [str(c) for c in configs]
    config_arg = files[0] if len(files) == 1 else "[" + ",".join(repr(f) for f in files) + "]"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config_arg]
    logging_conf = (Path(bundle_dir) if bundle_dir else layout.bundles_dir()) / "logging.conf"
    if logging_conf.is_file():
        cmd += ["--logging_file", str(logging_conf)]
    return cmd + list(overrides)


def forgetting_command(
    output_dir: str | os.PathLike, stages: Sequence[str], joint_modalities: Sequence[str] = (), seed: int = 0,
    extra: Sequence[str] = (),
) -> list[str]:
    """The command line that writes the forgetting matrix of a run.

    Args:
        output_dir: the run folder.
        stages: the stage folders' names, in order (``stage_<name>``).
        joint_modalities: for a joint run, the modalities trained together.
        seed: seed of the randomly initialised encoder of the first row.
        extra: more options of ``medcoss_monai.evaluation.forgetting`` (e.g. ``--text_n_test 200``).

    Returns:
        The argument list for ``subprocess``.
    """
    cmd = [sys.executable, "-m", "medcoss_monai.evaluation.forgetting", "--run_dir", str(output_dir),
           "--stages", *stages, "--seed", str(seed)]
    return cmd + (["--joint_modalities", *joint_modalities] if joint_modalities else []) + list(extra)


def run_command(title: str, cmd: Sequence[str], failure: str) -> float:
    """Print ``title`` and the command line, run it, and stop the pipeline when it fails.

    Args:
        title: what the command does, printed as a header.
        cmd: the argument list.
        failure: the message ending the pipeline when the command exits non-zero (its exit code is added).

    Returns:
        The seconds the command ran.

    Raises:
        SystemExit: the command failed; the command's own output above says why.
    """
    print(f"\n=== {title} ===\n$ {' '.join(map(str, cmd))}", flush=True)
    start = time.time()
    code = subprocess.run(list(cmd)).returncode
    if code != 0:
        raise SystemExit(f"{failure} (exit {code}; its reason is printed above)")
    return time.time() - start


def _final_loss(stage_dir: Path) -> str:
    path = stage_dir / layout.LOSS_HISTORY_FILE
    if not path.is_file():
        return "-"
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return "-"
    return f"{float(rows[0]['loss']):.4f} -> {float(rows[-1]['loss']):.4f} ({len(rows)} epochs)"


def _first_previous_stage(
    output_dir: str | os.PathLike, stages: Sequence[str], method: str, previous_stage: str | None
) -> str:
    """The ``previous_stage`` of the first listed stage; refuses to guess in a run folder used before.

    Starting ``--stages ct,mri`` in a folder that holds stage_report and stage_xray would otherwise
    train ct as a first stage, without teacher or buffers, beside a chain it was likely meant to continue.
    """
    if previous_stage is not None:
        return previous_stage
    ours = {layout.stage_dir(output_dir, s).name for s in (*stages, "joint" if method == "joint" else "")}
    foreign = [p.name for p in layout.other_stage_folders(output_dir) if p.name not in ours]
    if foreign:
        raise BadInputError(
            f"{output_dir} already holds {', '.join(foreign)}: pass --previous_stage <modality> to continue that chain "
            f"with --stages {','.join(stages)}, or --previous_stage '' to start a new chain beside it on purpose."
        )
    return ""


def stage_complete(folder: str | os.PathLike) -> bool:
    """Whether a stage folder holds everything its stage writes at its end.

    ``model.pt`` and ``stage.json`` are written first when the stage completes, then its buffer
    (``buffer.json``) is chosen: a stage killed in between is not complete. A stage that chooses no buffer
    records ``"select_buffer": false`` in its ``stage.json``.

    Args:
        folder: a ``stage_<name>`` folder.

    Returns:
        True when ``model.pt``, ``stage.json`` and (unless it chose none) ``buffer.json`` are there.
    """
    folder = Path(folder)
    if not (folder / layout.MODEL_FILE).is_file() or not (folder / layout.STAGE_RECORD_FILE).is_file():
        return False
    return (folder / layout.BUFFER_FILE).is_file() or layout.read_stage_record(folder).get("select_buffer") is False


def _check_recorded_previous(folder: Path, previous: str) -> None:
    """Refuse to skip a finished stage that continued another stage than the one the pipeline now lists before it."""
    recorded = str(layout.read_stage_record(folder).get("previous_stage") or "")
    if recorded != previous:
        raise BadInputError(
            f"{folder} was trained after stage '{recorded or 'none'}', but the pipeline lists it after "
            f"'{previous or 'none'}': --resume continues the same curriculum; list the stages as they ran, or use "
            "another --output_dir."
        )


def run_pipeline(
    stages: Sequence[str],
    output_dir: str | os.PathLike,
    overlays: Sequence[str | os.PathLike] = (),
    overrides: Sequence[str] = (),
    bundle_dir: str | os.PathLike | None = None,
    method: str = "medcoss",
    previous_stage: str | None = None,
    resume: bool = False,
) -> list[dict]:
    """Run the stages in order; stop at the first that fails.

    With ``resume``, the run continues after a kill: a stage whose folder is complete
    (:func:`stage_complete`) is skipped, and the others run with ``--resume true`` (the interrupted one
    continues from its newest ``checkpoint_epoch=N.pt``; one that never started starts at epoch 1).

    Args:
        stages: modalities in curriculum order.
        output_dir: the run folder.
        overlays: config files merged onto every stage bundle (after the method's overlay).
        overrides: ``--id value`` arguments passed to every stage.
        bundle_dir: where the bundles are.
        method: one of :func:`~medcoss_monai.layout.methods` (a ``bundles/method_<name>.json``).
        previous_stage: the stage the first listed stage continues from (``""``: a new chain). None: a
            new chain, refused when ``output_dir`` already holds stages outside ``stages``.
        resume: continue an interrupted run (see above).

    Returns:
        One summary dict per stage (``stage``, ``folder``, ``seconds``, ``loss``).

    Raises:
        BadInputError: ``previous_stage`` is None and the run folder holds other stages, or (``resume``) a
            finished stage continued another stage than the one listed before it.
    """
    folder_of_bundles = Path(bundle_dir) if bundle_dir else layout.bundles_dir()
    known = layout.methods(folder_of_bundles)
    if method not in known:
        raise SystemExit(f"unknown --method '{method}': choose one of {', '.join(known)}")
    overlays = [layout.method_bundle(method, folder_of_bundles), *overlays]
    first_previous = _first_previous_stage(output_dir, stages, method, previous_stage)
    if method == "joint":
        # one stage: the last modality's bundle, with the others' training data interleaved
        joint = "[" + ",".join(repr(s) for s in stages) + "]"
        # the stage folder is claimed (one writer) as the stage bundles claim theirs
        stage_dir = "$medcoss_monai.bundle.claim_stage_dir(@output_dir, 'joint')"
        plan = [(stages[-1], "", ["--joint_modalities", joint, "--stage_dir", stage_dir])]
    else:
        plan = [(m, stages[i - 1] if i else first_previous, []) for i, m in enumerate(stages)]
    summary = []
    for modality, previous, extra in plan:
        name = "joint" if method == "joint" else modality
        folder = layout.stage_dir(output_dir, name)
        if resume and stage_complete(folder):
            _check_recorded_previous(folder, previous)
            print(f"\n=== stage {name}: complete in {folder} (model.pt, stage.json, buffer): skipped (--resume) ===")
            summary.append({"stage": name, "folder": str(folder), "seconds": 0.0, "loss": _final_loss(folder)})
            continue
        extra = [*extra, "--resume", "true"] if resume else extra
        cmd = stage_command(modality, output_dir, previous, overlays, list(overrides) + extra, bundle_dir)
        seconds = run_command(
            f"stage {name} (previous: {previous or 'none'}, method: {method})", cmd,
            f"stage '{name}' failed and later stages were not run",
        )
        summary.append({"stage": name, "folder": str(folder), "seconds": seconds, "loss": _final_loss(folder)})
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point.

    Args:
        argv: arguments (default ``sys.argv[1:]``).

    Returns:
        Process exit code.
    """
    install_run_hooks()  # user errors end with their message; library probes at DEBUG
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", default="report,xray,ct,mri,pathology", help="comma-separated modalities in order")
    parser.add_argument("--method", default="medcoss", choices=layout.methods(), help="continual-learning method")
    parser.add_argument("--output_dir", default="runs/medcoss", help="run folder (stage_<modality>/ inside)")
    parser.add_argument("--max_epochs", type=int, default=None, help="epochs of every stage (default: the bundle's)")
    parser.add_argument(
        "--seed", type=int, default=None,
        help="seed of every stage and of the forgetting matrix (its randomly initialised encoder); default: the bundles' 0",
    )
    parser.add_argument(
        "--previous_stage", default=None,
        help="the stage in --output_dir the first listed stage continues from ('' starts a new chain); needed when "
        "--output_dir already holds stages that are not listed",
    )
    parser.add_argument(
        "--resume", default="false", choices=("true", "false"),
        help="continue an interrupted run: skip complete stages, resume the interrupted one from its last checkpoint",
    )
    parser.add_argument("--config_file", action="append", default=[], help="extra overlay merged onto every stage")
    parser.add_argument("--bundles_dir", default=None, help="folder of the stage bundles")
    parser.add_argument(
        "--forgetting", default="true", choices=("true", "false"),
        help="after the last stage, write forgetting.csv/.png: probes of a random encoder and of every stage",
    )
    parser.add_argument(
        "--forgetting_args", default="",
        help="more options of the forgetting matrix, one string, e.g. \"--text_n_test 200\" (python -m "
        "medcoss_monai.evaluation.forgetting --help lists them)",
    )
    args, extra = parser.parse_known_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    overrides = list(extra)
    if args.max_epochs is not None:
        overrides += ["--train#trainer#max_epochs", str(args.max_epochs)]
    if args.seed is not None:
        overrides += ["--seed", str(args.seed)]
    start = time.time()
    summary = run_pipeline(
        stages, args.output_dir, args.config_file, overrides, args.bundles_dir, args.method, args.previous_stage,
        resume=args.resume == "true",
    )
    print(f"\n=== curriculum finished in {time.time() - start:.0f} s; outputs in {Path(args.output_dir).resolve()} ===")
    for row in summary:
        print(f"  stage_{row['stage']:<10} {row['seconds']:7.1f} s  loss {row['loss']}  -> {row['folder']}")
    if args.forgetting == "true":
        joint = stages if args.method == "joint" else ()
        seconds = run_command(
            "forgetting matrix: a randomly initialised encoder, then every stage",
            forgetting_command(args.output_dir, [row["stage"] for row in summary], joint, args.seed or 0,
                               shlex.split(args.forgetting_args)),
            "the forgetting matrix failed; the stages' outputs are complete",
        )
        out = Path(args.output_dir)
        print(f"wrote {out / layout.FORGETTING_CSV} and {layout.FORGETTING_PNG} in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
