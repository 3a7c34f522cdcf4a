"""One command for a paper's downstream table: prepare each data set, fine-tune it over seeds, tabulate.

Example::

    python -m medcoss_monai.evaluation.downstream --pretrained runs/medcoss/stage_pathology \\
        --suite medcoss --data_root /data --seeds 0,1,2 --out runs/downstream

``--data_root ROOT`` holds one folder per data set, named by its registry name (``ROOT/chestxr/``,
``ROOT/nct_crc_he/``, ...; ``python -m medcoss_monai.data.prepare --list``), each in its publisher's
layout. The suites and their sets are the tables of :mod:`medcoss_monai.evaluation.downstream_suites`
(``medcoss``: pudmed20k chestxr qata_cov19 ricord lits vs la nct_crc_he glas; ``brainmvp``: brats2023_ped
brats2023_met upenn_gbm isles22 mrbrains13 vs; ``muscle``: pneumonia mura montgomery tbx11k).

Per set: a set whose folder is absent is skipped with one line; a present set is converted once into
``<out>/datalists/<name>.json`` (converted files in ``<out>/cache/<name>``), then fine-tuned per seed with
``python -m monai.bundle run`` on its bundle (``--dataset_dir``, ``--pretrained_ckpt``, ``--seed``,
``--output_dir <out>/<name>/s<seed>``, the set's task overrides, ``--label_fraction`` when given, then
any extra ``--id value`` arguments of this command). Everything already there (a datalist, a seed's
``metrics.json``) is kept, so an interrupted command continues where it stopped. A set the converter
refuses, or a fine-tuning that fails, is reported with its message and the other sets still run; the
command exits non-zero at the end when any present set failed.

Outputs in ``--out``: ``downstream.csv`` and ``downstream.md`` (per set and metric: the mean and sample
standard deviation over seeds, the number of seeds, the pretrained weights, the label fraction and the
commit) and ``downstream.png`` (bars with the standard deviation as error bars). Run it from the
repository root, as the bundles are.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medcoss_monai import layout
from medcoss_monai.bundle.pipeline import bundle_command, run_command
from medcoss_monai.errors import BadInputError, MedcossError, install_run_hooks
from medcoss_monai.evaluation.downstream_suites import DATALIST, SUITES, DownstreamSet
from medcoss_monai.evaluation.downstream_table import summarise, write_table
from medcoss_monai.provenance import commit
from medcoss_monai.utils import atomic_write_json, parse_seeds

__all__ = ["SuiteReport", "finetune_command", "ensure_datalist", "read_metrics", "run_suite", "main"]

RUN_RECORD = "downstream.json"
"""What a table's folder was made with (suite, weights, label fraction, overrides): a rerun must match it."""

Runner = Callable[[str, Sequence[str]], bool]


@dataclass
class SuiteReport:
    """What :func:`run_suite` did.

    Attributes:
        rows: one summary row per (set, metric) (:func:`~medcoss_monai.evaluation.downstream_table.summarise`).
        absent: the sets whose folder is not under the data root.
        failed: set -> why it failed (converter message, failed seeds).
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def _cli_value(value: Any) -> str:
    """A value as ``monai.bundle run`` (python-fire) reads it back: strings as they are, the rest as literals."""
    return value if isinstance(value, str) else repr(value)


def _fill(value: Any, datalist: str) -> Any:
    """``value`` with every :data:`DATALIST` placeholder replaced by the datalist path."""
    if isinstance(value, Mapping):
        return {k: _fill(v, datalist) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, datalist) for v in value]
    return datalist if value == DATALIST else value


def finetune_command(
    spec: DownstreamSet,
    datalist: str | Path,
    pretrained: str,
    seed: int,
    output_dir: str | Path,
    overrides: Mapping[str, Any] = (),
    bundles: str | Path | None = None,
) -> list[str]:
    """The ``monai.bundle run`` command fine-tuning one set for one seed.

    Args:
        spec: the set's table entry.
        datalist: its datalist JSON.
        pretrained: the pretrained weights (a stage folder or ``model.pt``; "" = from scratch).
        seed: the fine-tuning seed.
        output_dir: the seed's folder.
        overrides: more ``{id: value}`` after the set's own (label fraction, epochs, the user's).
        bundles: the bundles folder (default :func:`~medcoss_monai.layout.bundles_dir`).

    Returns:
        The argument list.
    """
    folder = Path(bundles) if bundles else layout.bundles_dir()
    ids: dict[str, Any] = {spec.data_id: str(datalist)} if spec.data_id else {}
    ids.update({"pretrained_ckpt": pretrained, "seed": seed, "output_dir": str(output_dir)})
    ids.update(_fill(dict(spec.overrides), str(datalist)))
    ids.update(dict(overrides))
    args = [a for key, value in ids.items() for a in (f"--{key}", _cli_value(value))]
    return bundle_command([folder / spec.bundle], args, folder)


def ensure_datalist(spec: DownstreamSet, root: Path, out: Path, workers: int = 1, progress: bool = True) -> Path:
    """Convert the set once: ``<out>/datalists/<name>.json`` (kept when it exists), files in ``<out>/cache/<name>``.

    Args:
        spec: the set's table entry.
        root: its folder in the publisher's layout.
        out: the table's folder.
        workers: processes for long conversions.
        progress: show progress bars.

    Returns:
        The datalist path.

    Raises:
        BadInputError: the converter refuses the folder, or its classes disagree with the table's ``num_classes``.
    """
    path = out / "datalists" / f"{spec.name}.json"
    if not path.is_file():
        module, function = spec.converter.split(":")
        convert = getattr(importlib.import_module(module), function)
        convert(spec.dataset or spec.name, root, path, cache_dir=out / "cache" / spec.name, workers=workers, progress=progress)
    with open(path, encoding="utf-8") as f:
        classes = json.load(f).get("classes")
    expected = spec.overrides.get("num_classes")
    if classes and expected and spec.overrides.get("label_mode", "classes") == "classes" and len(classes) != expected:
        raise BadInputError(f"{path}: {len(classes)} classes {classes}, the {spec.name} task has {expected}.")
    return path


def read_metrics(path: str | Path, spec: DownstreamSet) -> dict[str, float | None]:
    """The table's metrics of one fine-tuning: ``metrics.json``'s ``metrics`` entries named by ``spec.metrics``.

    Args:
        path: the ``metrics.json``.
        spec: the set's table entry.

    Returns:
        column -> value (None where the file has none, e.g. AUC of a one-class test split).

    Raises:
        BadInputError: the file is not readable JSON with a ``metrics`` dict.
    """
    try:
        with open(path, encoding="utf-8") as f:
            metrics = json.load(f)["metrics"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BadInputError(f"{path}: not a fine-tuning metrics file ({e.__class__.__name__}: {e}).") from e
    out: dict[str, float | None] = {}
    for column, key in spec.metrics.items():
        value: Any = metrics
        for part in key.split("#"):
            value = value.get(part) if isinstance(value, Mapping) else None
        out[column] = float(value) if isinstance(value, (int, float)) else None
    return out


def _run(title: str, cmd: Sequence[str]) -> bool:
    """Run a fine-tuning; False (its output above says why) instead of stopping the suite."""
    try:
        run_command(title, cmd, f"{title} failed")
    except SystemExit as e:
        print(e, file=sys.stderr, flush=True)
        return False
    return True


def _bundle_ids(path: Path) -> set[str]:
    """The top-level ids of a bundle file."""
    with open(path, encoding="utf-8") as f:
        return set(json.load(f))


def _weights_arg(pretrained: str, suite: str) -> str:
    """``--pretrained`` as the suite's bundles take it: MedCoSS bundles read a stage folder; BrainMVP and
    MUSCLE bundles read the ``model.pt`` inside it.

    Raises:
        BadInputError: a folder without ``model.pt`` given to a suite that needs the file.
    """
    if suite == "medcoss" or not pretrained or not Path(pretrained).is_dir():
        return pretrained
    weights = Path(pretrained) / layout.MODEL_FILE
    if not weights.is_file():
        raise BadInputError(
            f"--pretrained {pretrained}: the folder holds no {layout.MODEL_FILE} (the {suite} bundles load that file)."
        )
    return str(weights)


def _check_run_record(out: Path, record: dict[str, Any]) -> None:
    """Refuse to mix two runs' seeds in one table; write the record of this one."""
    path = out / RUN_RECORD
    if path.is_file():
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
        diff = [k for k in record if old.get(k) != record[k]]
        if diff:
            raise BadInputError(
                f"{path}: --out holds the table of another run ({', '.join(f'{k} {old.get(k)!r}' for k in diff)}; now "
                f"{', '.join(f'{k} {record[k]!r}' for k in diff)}): give another --out, or delete it to start over."
            )
    atomic_write_json(record, path)


def run_suite(
    suite: str,
    pretrained: str,
    data_root: str | Path,
    out: str | Path,
    seeds: Sequence[int] = (0, 1, 2),
    label_fraction: float | None = None,
    overrides: Mapping[str, Any] = (),
    runner: Runner = _run,
    bundles: str | Path | None = None,
    workers: int = 1,
    progress: bool = True,
) -> SuiteReport:
    """Prepare, fine-tune and tabulate every set of ``suite`` present under ``data_root``.

    Args:
        suite: a key of :data:`~medcoss_monai.evaluation.downstream_suites.SUITES`.
        pretrained: the weights every set fine-tunes from ("" = from scratch).
        data_root: the folder of the sets' folders.
        out: the table's folder.
        seeds: fine-tuning seeds.
        label_fraction: the fraction of each training split kept (None: the bundles' default, all).
        overrides: ``{id: value}`` passed to every fine-tuning, after the set's own.
        runner: runs one command, ``runner(title, cmd) -> succeeded``.
        bundles: the bundles folder.
        workers: processes of the converters.
        progress: show the converters' progress bars.

    Returns:
        The report; the table files are written into ``out``.

    Raises:
        BadInputError: an unknown suite, a bundle of the suite without ``label_fraction`` when one is
            given, or an ``out`` holding another run's table (before anything is run).
    """
    if suite not in SUITES:
        raise BadInputError(f"Unknown suite '{suite}': choose one of {', '.join(SUITES)}.")
    table, root, out = SUITES[suite], Path(data_root).absolute(), Path(out).absolute()
    folder = Path(bundles) if bundles else layout.bundles_dir()
    extra = dict(overrides)
    if label_fraction is not None:
        lacking = sorted({s.bundle for s in table.values() if "label_fraction" not in _bundle_ids(folder / s.bundle)})
        if lacking:
            raise BadInputError(f"--label_fraction: {', '.join(lacking)} in {folder} take no label_fraction; run without it.")
        extra = {"label_fraction": label_fraction, **extra}
    weights = _weights_arg(pretrained, suite)
    out.mkdir(parents=True, exist_ok=True)
    _check_run_record(out, {"suite": suite, "pretrained": pretrained, "label_fraction": label_fraction,
                            "overrides": {k: _cli_value(v) for k, v in extra.items()}})
    report, results = SuiteReport(), {}
    for name, spec in table.items():
        if not (root / name).is_dir():
            print(f"skip {name}: {root / name} absent", flush=True)
            report.absent.append(name)
            continue
        try:
            datalist = ensure_datalist(spec, root / name, out, workers, progress)
        except Exception as e:  # a refused folder (or a converter's own failure) ends this set only
            report.failed[name] = str(e) if isinstance(e, MedcossError) else f"{e.__class__.__name__}: {e}"
            print(f"FAILED {name}: {report.failed[name]}", file=sys.stderr, flush=True)
            continue
        runs, failed_seeds = {}, []
        for seed in seeds:
            seed_dir = out / name / f"s{seed}"
            metrics = seed_dir / layout.METRICS_FILE
            if not metrics.is_file():
                cmd = finetune_command(spec, datalist, weights, seed, seed_dir, extra, folder)
                if not runner(f"{suite}: fine-tune {name} ({spec.task}), seed {seed}", cmd) or not metrics.is_file():
                    failed_seeds.append(seed)
                    continue
            runs[seed] = read_metrics(metrics, spec)
        if failed_seeds:
            report.failed[name] = f"fine-tuning failed for seed(s) {', '.join(map(str, failed_seeds))}"
        results[name] = runs
    report.rows = summarise(table, results)
    write_table(report.rows, out, {"suite": suite, "pretrained": pretrained or "(scratch)",
                                   "label_fraction": 1.0 if label_fraction is None else label_fraction,
                                   "commit": commit()})
    return report


def _pairs(extra: Sequence[str]) -> dict[str, str]:
    """``--id value`` arguments as ``{id: value}``."""
    if len(extra) % 2 or any(not k.startswith("--") for k in extra[::2]):
        raise BadInputError(f"extra arguments {' '.join(extra)}: give bundle overrides as '--id value' pairs.")
    return {k[2:]: v for k, v in zip(extra[::2], extra[1::2])}


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point.

    Args:
        argv: arguments (default ``sys.argv[1:]``).

    Returns:
        0 when every present set gave its table rows, 1 when one failed.
    """
    install_run_hooks()
    parser = argparse.ArgumentParser(
        prog="python -m medcoss_monai.evaluation.downstream", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--pretrained", required=True, help="weights to fine-tune from: a stage folder or model.pt ('' = from scratch)"
    )
    parser.add_argument("--suite", required=True, choices=list(SUITES), help="the paper whose downstream table to make")
    parser.add_argument("--data_root", required=True, help="folder holding one folder per data set, named by its registry name")
    parser.add_argument("--label_fraction", type=float, default=None, help="fraction of each training split (default: all)")
    parser.add_argument(
        "--seeds", default="0,1,2", help="comma-separated fine-tuning seeds (default 0,1,2; MedCoSS's run_ds.sh uses 0,10,100)"
    )
    parser.add_argument("--out", default="runs/downstream", help="the table's folder (default runs/downstream)")
    parser.add_argument("--max_epochs", type=int, default=None, help="epochs of every fine-tuning (default: the bundles')")
    parser.add_argument("--workers", type=int, default=1, help="processes of the converters (default 1)")
    args, extra = parser.parse_known_args(argv)
    overrides: dict[str, Any] = {}
    if args.max_epochs is not None:
        overrides["train#trainer#max_epochs"] = args.max_epochs
    overrides.update(_pairs(extra))
    report = run_suite(args.suite, args.pretrained, args.data_root, args.out, parse_seeds(args.seeds, "--seeds"), args.label_fraction,
                       overrides, workers=args.workers)
    out = Path(args.out)
    print(f"\n=== {args.suite}: {len({r['dataset'] for r in report.rows})} set(s) tabulated, {len(report.absent)} absent, "
          f"{len(report.failed)} failed; {out / 'downstream.csv'}, downstream.md, downstream.png ===")
    for name, why in report.failed.items():
        print(f"  FAILED {name}: {why}", file=sys.stderr)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
