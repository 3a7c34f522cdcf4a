"""The README is a short user guide whose commands run as written.

Its commands are read from its ``bash`` blocks (continuation lines joined, comments dropped): every module it
starts with ``python -m`` exists, every bundle and document it names is there, and the cheap commands run
as written (a stage with tiny overrides appended, in the slow tier).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
MAX_LINES = 350


def readme_commands() -> list[str]:
    """The shell commands of the README's ``bash`` blocks, one string each."""
    commands, block, current = [], False, ""
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            block = line.strip() == "```bash"
            continue
        if not block:
            continue
        text = re.sub(r"\s+#\s.*$", "", line).rstrip()  # a trailing comment
        if text.startswith("#") or not text:
            continue
        current += text[:-1] + " " if text.endswith("\\") else text
        if not text.endswith("\\"):
            commands.append(" ".join(current.split()))
            current = ""
    return commands


def _run(command: str, tmp_path: Path, extra: list[str] = ()) -> subprocess.CompletedProcess:
    argv = shlex.split(command)
    assert argv[0] == "python", command
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, *argv[1:], *extra], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)


def test_readme_is_a_short_guide_linking_existing_documents():
    text = README.read_text()
    assert len(text.splitlines()) <= MAX_LINES
    links = re.findall(r"\]\(([^)#]+)\)", text)
    assert links and all((REPO / link).exists() for link in links), links
    for bundle in set(re.findall(r"bundles/[\w.]+\.json", text)):
        assert (REPO / bundle).is_file(), bundle


def test_every_module_the_readme_runs_exists():
    commands = readme_commands()
    modules = {m for c in commands for m in re.findall(r"(?:^|\s)-m ([A-Za-z_][\w.]*)", c)}
    assert {"medcoss_monai.bundle.pipeline", "medcoss_monai.data.prepare", "monai.bundle"} <= modules
    for module in modules:
        assert importlib.util.find_spec(module) is not None, f"README runs `python -m {module}`, which does not exist"


@pytest.mark.slow
def test_cheap_readme_commands_run_as_written(tmp_path):
    commands = readme_commands()
    listing = next(c for c in commands if c.startswith("python -m medcoss_monai.data.prepare --list"))
    result = _run(listing, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "deeplesion" in result.stdout and "brats2021" in result.stdout
    locate = next(c for c in commands if "medcoss_monai.bundle.locate finetune_xray_cls" in c)
    located = re.search(r"\$\((python -m medcoss_monai\.bundle\.locate [\w_]+)\)", locate).group(1)
    result = _run(located, tmp_path)
    assert result.returncode == 0 and Path(result.stdout.strip()).name == "finetune_xray_cls.json", result.stderr


@pytest.mark.slow
def test_the_readmes_first_stage_command_trains(sample_data, tmp_path):
    command = next(c for c in readme_commands() if c == "python -m monai.bundle run --config_file bundles/stage_mri.json")
    tiny = ["--output_dir", str(tmp_path), "--progress_bar", "false", "--train#trainer#max_epochs", "1",
            "--train#repeats", "1", "--batch_size", "2", "--crops_per_volume", "1", "--select_buffer", "false"]
    result = _run(command, tmp_path, tiny)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "stage_mri" / "model.pt").is_file()
