"""The toolkit as a library: self-contained bundles, every subpackage packaged, a non-editable install
that runs a stage and a fine-tuning from a folder outside the checkout."""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medcoss_monai.bundle.render import LINKS_FILE, render_bundles
from medcoss_monai.bundle.render import main as render_main

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"


def test_bundles_are_up_to_date_with_their_common_recipe():
    """Every copy of a common entry equals it (an edit of bundles/common/ was rendered)."""
    assert render_bundles(BUNDLES, check=True) == []


def test_no_bundle_needs_the_working_directory():
    """No ``%bundles/...`` macro is left: MONAI would read its file from the working directory."""
    def macros(node):
        if isinstance(node, dict):
            node = list(node.values())
        if isinstance(node, list):
            return [m for v in node for m in macros(v)]
        return [node] if isinstance(node, str) and node.startswith("%bundles/") else []

    left = {p.name: macros(json.loads(p.read_text())) for p in BUNDLES.glob("*.json")}
    assert {name: found for name, found in left.items() if found} == {}


def _copy_bundles(tmp_path: Path) -> Path:
    folder = tmp_path / "bundles"
    (folder / "common").mkdir(parents=True)
    (folder / "common" / "model.json").write_text(json.dumps({"hidden_size": 192, "sizes": {"layers": [4, 4]}}))
    (folder / "stage_a.json").write_text(
        json.dumps({"hidden_size": "%bundles/common/model.json#hidden_size", "own": 1,
                    "net": {"layers": "%bundles/common/model.json#sizes#layers"}})
    )
    return folder


def test_render_turns_macros_into_links_and_follows_edits_of_the_common_file(tmp_path):
    folder = _copy_bundles(tmp_path)
    assert render_bundles(folder, check=True)  # the macros are reported, nothing written
    assert "%bundles" in (folder / "stage_a.json").read_text()

    render_bundles(folder)
    bundle = json.loads((folder / "stage_a.json").read_text())
    assert bundle == {"hidden_size": 192, "own": 1, "net": {"layers": [4, 4]}}
    links = json.loads((folder / "common" / LINKS_FILE).read_text())["links"]
    assert links == {"stage_a.json": {"hidden_size": "common/model.json#hidden_size",
                                      "net#layers": "common/model.json#sizes#layers"}}
    assert render_bundles(folder, check=True) == []

    (folder / "common" / "model.json").write_text(json.dumps({"hidden_size": 768, "sizes": {"layers": [12]}}))
    stale = render_bundles(folder, check=True)
    assert len(stale) == 1 and "hidden_size" in stale[0] and "net#layers" in stale[0]
    render_bundles(folder)
    assert json.loads((folder / "stage_a.json").read_text()) == {"hidden_size": 768, "own": 1, "net": {"layers": [12]}}


def test_render_refuses_a_link_to_an_id_that_does_not_exist(tmp_path):
    folder = _copy_bundles(tmp_path)
    (folder / "stage_a.json").write_text(json.dumps({"x": "%bundles/common/model.json#no_such_id"}))
    with pytest.raises(KeyError, match="no_such_id"):
        render_bundles(folder)


def test_render_check_command_exits_1_on_a_stale_bundle(tmp_path):
    folder = _copy_bundles(tmp_path)
    args = ["--bundles_dir", str(folder)]
    assert render_main(args + ["--check"]) == 1
    assert render_main(args) == 0
    assert render_main(args + ["--check"]) == 0


def test_every_subpackage_is_packaged():
    """A subpackage missing from setup.cfg works in the checkout and is absent after ``pip install``."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    listed = set(cfg["options"]["packages"].split())
    on_disk = {
        ".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "medcoss_monai").rglob("__init__.py")
    } | {"medcoss_monai.transforms"}
    assert on_disk <= listed, sorted(on_disk - listed)
    assert "medcoss_monai.bundles" in listed and (REPO / "LICENSE").read_text().lstrip().startswith("Apache License")


def _tracked_copy(target: Path) -> Path:
    """The checkout's files as a clean clone has them (what ``pip install`` of a release sees)."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name)
    return target


@pytest.mark.slow
def test_installed_package_runs_a_stage_and_a_finetuning_outside_the_checkout(tmp_path, tasks_ready):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    source = _tracked_copy(tmp_path / "source")
    dist = tmp_path / "dist"  # a wheel, as from a package index (the venv's own setuptools may lack bdist_wheel)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist),
                    str(source)], check=True)
    shutil.rmtree(source)  # nothing may come from a checkout
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", *map(str, dist.glob("*.whl"))], check=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MEDCOSS_BUNDLES")}

    def run(*args: str) -> str:
        done = subprocess.run([python, *args], cwd=work, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout

    package = Path(run("-c", "import medcoss_monai; print(medcoss_monai.__file__)").strip())
    assert venv in package.parents, package
    stage_bundle = Path(run("-m", "medcoss_monai.bundle.locate", "stage_xray").strip())
    assert venv in stage_bundle.parents
    assert "deeplesion  [" not in run("-m", "medcoss_monai.data.prepare", "--list")  # the catalogue file is packaged

    run("-m", "medcoss_monai.bundle.pipeline", "--stages", "xray", "--output_dir", "run", "--max_epochs", "1",
        "--forgetting", "false", "--progress_bar", "false", "--train#repeats", "4", "--batch_size", "4")
    stage = work / "run" / "stage_xray"
    assert (stage / "model.pt").is_file() and (stage / "buffer.json").is_file()

    task = Path(run("-m", "medcoss_monai.bundle.locate", "finetune_xray_cls").strip())
    run("-m", "monai.bundle", "run", "--config_file", str(task), "--output_dir", "ft",
        "--pretrained_ckpt", str(stage / "model.pt"), "--train#trainer#max_epochs", "1")
    metrics = json.loads((work / "ft" / "metrics.json").read_text())
    assert metrics["pretrained"] is True and metrics["split"] == "test" and {"ACC", "AUC"} <= set(metrics["metrics"])
