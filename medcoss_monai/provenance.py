"""Where a measured figure comes from, and the documents the measuring commands write.

A figures document (``docs/figures.md``, ``docs/benchmarks.md``) is written by the commands that measure it,
never typed: each command replaces its own section, delimited by ``<!-- section: NAME -->`` and
``<!-- end: NAME -->``, with its tables and a provenance line (commit, torch build, machine, seeds, time taken).
A section is stale once the recipe changed after its commit (:func:`recipe_changed_since`).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from medcoss_monai.utils import atomic_write_text

__all__ = ["RECIPE_PATHS", "CODE_PATHS", "commit", "code_during", "measurement_facts", "provenance_line", "measured_section", "add_figure_arguments", "command_line",
           "write_section", "Measurement", "read_sections", "recipe_changed_since"]

REPO = Path(__file__).resolve().parents[1]
RECIPE_PATHS = ("bundles/common", "bundles/stage_*.json", "bundles/method_*.json", ":(exclude)bundles/common/links.json")
"""What the figures depend on: a change here makes every section measured before it stale. ``links.json`` only
records which bundle ids are copies (``medcoss_monai.bundle.render``); a link that changes a stage's recipe changes
that ``stage_*.json`` itself, so a new task bundle's links leave the figures current."""

_SECTION = re.compile(r"<!-- section: (?P<name>[\w.-]+) -->\n(?P<body>.*?)<!-- end: (?P=name) -->\n", re.S)
_COMMIT = re.compile(r"commit `([0-9a-f]{7,40})(\+changes)?`")


def _git(*args: str) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None


CODE_PATHS = (".", ":(exclude)docs", ":(exclude)*.md")
"""What a measurement runs: every tracked file but the documents (a figures section written into them leaves the
code as it was)."""


def commit() -> str:
    """The checkout's commit, with ``+changes`` when tracked code differs from it; "unknown" outside a checkout."""
    head = _git("rev-parse", "HEAD")
    if head is None or head.returncode != 0 or not head.stdout.strip():
        return "unknown"
    dirty = _git("diff", "--quiet", "HEAD", "--", *CODE_PATHS)
    return head.stdout.strip() + ("+changes" if dirty is not None and dirty.returncode == 1 else "")


def code_during(started: str) -> str:
    """The code a measurement ran: the commit it ``started`` at, ``+changes`` when the code changed meanwhile.

    Args:
        started: :func:`commit` when the measurement began.

    Returns:
        ``started`` when the checkout is still at that code, else ``started`` marked ``+changes``.
    """
    return started if started == commit() or started.endswith("+changes") or started == "unknown" else started + "+changes"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measurement_facts(seeds: Sequence[int] | None, seconds: float, started: str | None = None) -> dict[str, Any]:
    """What a reader needs to judge a figure: code, build, machine, seeds and time.

    Args:
        seeds: the seeds the figure is a mean over (``None`` for a benchmark without seeds).
        seconds: wall-clock time of the measurement.
        started: :func:`commit` when the measurement began (``None``: the checkout's commit now).

    Returns:
        ``commit``, ``torch`` (version and CUDA build), ``device`` (GPU name or CPU model and core count),
        ``seeds``, ``seconds`` and ``date`` (UTC).
    """
    if torch.cuda.is_available():
        device = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    else:
        device = f"{_cpu_name()}, {os.cpu_count()} cores, no GPU"
    return {"commit": commit() if started is None else code_during(started), "torch": f"{torch.__version__} (CUDA build {torch.version.cuda or 'none'})",
            "device": device, "seeds": list(seeds) if seeds is not None else None, "seconds": round(seconds),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d")}


def provenance_line(facts: dict[str, Any]) -> str:
    """One markdown line stating the facts of :func:`measurement_facts`."""
    seeds = "seeds " + ", ".join(map(str, facts["seeds"])) if facts.get("seeds") else "no seeds"
    minutes = facts["seconds"] / 60
    return (f"_Measured {facts['date']} at commit `{facts['commit']}`, torch {facts['torch']}, {facts['device']}; "
            f"{seeds}; {minutes:.1f} min._")


def measured_section(
    heading: str, body: str, seeds: Sequence[int] | None, seconds: float, command: Sequence[str] = (),
    started: str | None = None,
) -> str:
    """A figures section: heading, provenance line, the command that measured it, then its tables.

    Args:
        heading: the section's heading (a level-2 markdown heading is made of it).
        body: the tables (markdown).
        seeds: the seeds of the figures (``None`` for a benchmark).
        seconds: the time the measurement took.
        command: the command line, shown as the user would type it.
        started: :func:`commit` when the measurement began; a commit made during it does not relabel it.

    Returns:
        the section's markdown.
    """
    lines = [f"## {heading}", "", provenance_line(measurement_facts(seeds, seconds, started)), ""]
    if command:
        lines += [f"`{shlex.join(command)}`", ""]
    return "\n".join(lines + [body.strip()])


@dataclass
class Measurement:
    """A measurement under way: the commit it started at and its clock, for the section its command writes.

    Create it before the runs start; a commit made meanwhile marks the section ``+changes`` (:func:`code_during`).
    """

    started: str = field(default_factory=lambda: commit())
    start: float = field(default_factory=time.time)

    def section(self, heading: str, body: str, seeds: Sequence[int] | None, command: Sequence[str] = ()) -> str:
        """:func:`measured_section` of this measurement (its time is the time since it started)."""
        return measured_section(heading, body, seeds, time.time() - self.start, command, self.started)

    def write(self, doc: str | os.PathLike, name: str, heading: str, body: str, seeds: Sequence[int] | None,
              command: Sequence[str] = (), title: str = "Measured figures") -> str:
        """Write :meth:`section` as section ``name`` of ``doc`` (:func:`write_section`) and return it."""
        section = self.section(heading, body, seeds, command)
        write_section(doc, name, section, title=title)
        return section


def add_figure_arguments(
    parser: argparse.ArgumentParser, section: str, output_dir: str, seeds_help: str, docs_when: str = ""
) -> None:
    """Add the options every figures command shares: ``--output_dir``, ``--seeds`` (comma-separated) and ``--docs``.

    Args:
        parser: the command's parser.
        section: the name of the section ``--docs`` writes.
        output_dir: the default run folder.
        seeds_help: what the seeds seed.
        docs_when: a condition on ``--docs`` put first in its help (``"with --compare: "``).
    """
    parser.add_argument("--output_dir", default=output_dir, help="run folder")
    parser.add_argument("--seeds", default="0,1,2", help=f"comma-separated {seeds_help}")
    parser.add_argument("--docs", default="", help=f"{docs_when}also write the table as the '{section}' section of this "
                        "document (e.g. docs/figures.md), with the command, commit, torch build, machine, seeds and time")


def command_line(module: str, argv: Sequence[str] | None) -> list[str]:
    """The command as the user typed it: ``python -m module`` and its arguments (``sys.argv[1:]`` when None)."""
    return ["python", "-m", module, *(sys.argv[1:] if argv is None else argv)]


def read_sections(doc: str | os.PathLike) -> dict[str, str]:
    """The sections of a figures document: ``{name: body}`` (empty when the file does not exist)."""
    path = Path(doc)
    if not path.is_file():
        return {}
    return {m["name"]: m["body"] for m in _SECTION.finditer(path.read_text(encoding="utf-8"))}


def write_section(doc: str | os.PathLike, name: str, markdown: str, title: str = "") -> None:
    """Replace (or append) section ``name`` of ``doc`` with ``markdown``; the rest of the file is kept.

    Args:
        doc: the document, created with ``title`` as its heading when missing.
        name: section name (letters, digits, ``_.-``).
        markdown: the section's body, provenance line included.
        title: the document's first line when it is created.
    """
    if not re.fullmatch(r"[\w.-]+", name):
        raise ValueError(f"section name {name!r}: letters, digits, '_', '.', '-' only")
    path = Path(doc)
    text = path.read_text(encoding="utf-8") if path.is_file() else (f"# {title}\n\n" if title else "")
    block = f"<!-- section: {name} -->\n{markdown.rstrip()}\n<!-- end: {name} -->\n"
    found = [m for m in _SECTION.finditer(text) if m["name"] == name]
    if found:
        text = text[: found[0].start()] + block + text[found[0].end():]
    else:
        text = text.rstrip("\n") + ("\n\n" if text.strip() else "") + block
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(text, path)


def recipe_changed_since(body: str) -> list[str]:
    """The recipe files changed since the commit named in a section's provenance line.

    Args:
        body: a section's markdown (its provenance line names the commit).

    Returns:
        the changed paths (``git diff --name-only <commit> HEAD -- RECIPE_PATHS``); ``["<no commit>"]`` when the
        section names none or it is not in this checkout's history, ``["<uncommitted code>"]`` when it was
        measured on changed files.
    """
    found = _COMMIT.search(body)
    if found is None:
        return ["<no commit>"]
    if found.group(2):
        return ["<uncommitted code>"]
    diff = _git("diff", "--name-only", found.group(1), "HEAD", "--", *RECIPE_PATHS)
    if diff is None or diff.returncode != 0:
        return ["<no commit>"]
    return diff.stdout.split()
