"""Run the benchmarks one after another, each alone, and write their output into ``docs/benchmarks.md``.

Usage::

    python benchmarks/run_benchmarks.py --docs docs/benchmarks.md [--only trainer_paper,data_loading]

Each benchmark runs in its own process (nothing else should run on the machine: two PyTorch processes on
the same cores distort every figure) and becomes the section of its name in the document: a heading, the
provenance line (commit, torch build, machine, time taken; :mod:`medcoss_monai.provenance`), the command and
what it printed. Figures are ratios against a baseline measured in the same process, as each script explains.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from medcoss_monai.provenance import Measurement

HERE = Path(__file__).resolve().parent

BENCHMARKS: dict[str, tuple[str, list[str]]] = {
    "buffer_selection": ("Buffer selection: our k-means sampler against scikit-learn", ["bench_buffer_selection.py"]),
    "buffer_selection_paper": ("Buffer selection at the paper's sizes", ["bench_buffer_selection.py", "--paper"]),
    "rehearsal": ("Training speed with and without rehearsal", ["bench_rehearsal.py"]),
    "trainer": ("Trainer overhead against a plain loop (demo sizes)", ["bench_trainer.py", "--steps", "6", "--repeats", "5"]),
    "trainer_paper": ("A paper-size step against MONAI's MAE", ["bench_trainer.py", "--paper"]),
    "data_loading": ("Data loading at paper size", ["bench_data_loading.py", "--paper"]),
    "prepare": ("Data set conversion throughput", ["bench_prepare.py"]),
}
"""Section name -> (heading, script and its arguments)."""


def run_benchmark(name: str, heading: str, argv: Sequence[str], docs: str | Path | None, timeout: float | None = None) -> str:
    """Run one benchmark script alone and write its section.

    Args:
        name: the section's name in the document.
        heading: the section's heading.
        argv: the script (relative to ``benchmarks/``) and its arguments.
        docs: the document to write the section into (``None``: only return it).
        timeout: seconds before the benchmark is stopped.

    Returns:
        the section's markdown.

    Raises:
        SystemExit: the benchmark failed; its output is shown.
    """
    command = [sys.executable, str(HERE / argv[0]), *argv[1:]]
    measurement = Measurement()
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise SystemExit(f"benchmark {name} failed (exit {result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    body, shown = "\n".join(["```text", result.stdout.strip(), "```"]), ["python", f"benchmarks/{argv[0]}", *argv[1:]]
    if docs:
        return measurement.write(docs, name, heading, body, None, shown, title="Benchmarks")
    return measurement.section(heading, body, None, shown)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", default="docs/benchmarks.md", help="document whose sections are written")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {', '.join(BENCHMARKS)}")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    for name in names:
        heading, script = BENCHMARKS[name]
        print(f"=== {name}: {shlex.join(script)}", flush=True)
        run_benchmark(name, heading, script, args.docs)
    print(f"sections {', '.join(names)} of {args.docs} written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
