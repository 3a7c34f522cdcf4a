"""The shared recipe: each section written once (bundles/common/), each bundle still whole and runnable alone."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from monai.bundle import ConfigParser
from stage_utils import BUNDLES, run_stage

from medcoss_monai import layout
from medcoss_monai.bundle.previous_stages import _parse_stage_bundle
from medcoss_monai.errors import BadInputError

TASK_BUNDLES = sorted(BUNDLES.glob("finetune_*.json"))
STAGE_BUNDLES = sorted(Path(card["bundle"]) for card in layout.stage_modalities(BUNDLES).values())
"""Every registered modality's stage bundle (the default five and any other, such as ultrasound)."""


def _written(node):
    """What a config node writes itself: macros and references (pointers to a section written elsewhere) removed."""
    if isinstance(node, str) and node.startswith(("%", "@")):
        return None
    if isinstance(node, dict):
        kept = {k: _written(v) for k, v in node.items()}
        return {k: v for k, v in kept.items() if v not in (None, {}, [])}
    if isinstance(node, list):
        return [v for v in (_written(v) for v in node) if v not in (None, {}, [])]
    return node


def _sections(config: dict):
    """Top-level ids and the ids one level below them (``train#optimizer``...)."""
    for key, value in config.items():
        yield key, value
        if isinstance(value, dict):
            for sub, sub_value in value.items():
                yield f"{key}#{sub}", sub_value


def _own(path: Path) -> dict:
    """A bundle without its copies of bundles/common/ (the ids bundles/common/links.json links): what it writes."""
    config = json.loads(path.read_text())
    links = json.loads((path.parent / "common" / "links.json").read_text())["links"].get(path.name, {})
    for node_id in links:
        *parents, key = node_id.split("#")
        node = config
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        node[int(key) if isinstance(node, list) else key] = "%linked"
    return config


def test_no_section_written_in_two_bundles():
    where = collections.defaultdict(set)
    for path in STAGE_BUNDLES + TASK_BUNDLES:
        for section, value in _sections(_own(path)):
            text = json.dumps(_written(value), sort_keys=True)
            if len(text) >= 60:  # a section, not a setting such as "batch_size": 2
                where[text].add(f"{path.name}:{section}")
    repeated = {text[:80]: sorted(found) for text, found in where.items() if len({f.split(':')[0] for f in found}) > 1}
    assert not repeated, repeated


@pytest.mark.parametrize("path", STAGE_BUNDLES + TASK_BUNDLES, ids=lambda p: p.stem)
def test_bundle_resolves_to_a_whole_config(path):
    parser = layout.read_bundle(path, {"output_dir": "/tmp/unused"})
    text = json.dumps(parser.get())
    assert "%bundles/" not in text and "%network_def" not in text  # every macro was replaced by its section
    for section in ("network_def", "train#trainer", "train#optimizer", "train#handlers", "train#preprocessing"):
        assert parser.get(section) is not None, section
    assert parser.get("train#trainer#max_epochs") >= 1  # the documented override target is the bundle's own


def test_macros_resolve_from_the_repository_root_as_monai_reads_them():
    # monai.bundle run reads a macro's file from the working directory: the repository root, like a Zoo bundle root
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / "stage_ct.json"))
    parser["output_dir"] = "/tmp/unused"
    parser.parse()
    assert parser.get("train#optimizer#_target_") == "torch.optim.AdamW"
    assert parser.get("hidden_size") == json.loads((BUNDLES / "common" / "model.json").read_text())["hidden_size"]


def test_override_reaches_a_shared_section():
    parser = layout.read_bundle(BUNDLES / "stage_mri.json", {"output_dir": "/tmp/unused", "hidden_size": 96, "weight_decay": 0.5})
    network = parser.get_parsed_content("network_def")
    assert network.config["hidden_size"] == 96
    parser = layout.read_bundle(BUNDLES / "stage_mri.json", {"output_dir": "/tmp/unused", "weight_decay": 0.5})
    assert parser.get_parsed_content("train#optimizer").param_groups[0]["weight_decay"] == 0.5


def test_methods_are_the_method_bundles():
    files = {p.stem[len("method_") :] for p in BUNDLES.glob("method_*.json")}
    assert set(layout.methods()) == files and layout.methods()[0] == "medcoss"
    from medcoss_monai.bundle.pipeline import run_pipeline

    with pytest.raises(SystemExit, match="choose one of"):
        run_pipeline(["ct"], "/tmp/unused", method="no_such_method")


@pytest.mark.slow
def test_stage_bundle_runs_alone_from_the_command_line(sample_data, tmp_path):
    """The user's command, one file, from a folder outside the checkout: the bundle is self-contained."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(BUNDLES / "stage_xray.json"),
           "--output_dir", "out", "--progress_bar", "false", "--train#trainer#max_epochs", "1",
           "--train#repeats", "1", "--batch_size", "4", "--select_buffer", "false"]
    result = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "2"}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "out" / "stage_xray" / "model.pt").is_file()


def test_stage_records_its_settings_and_later_stages_prepare_its_data_the_same_way(sample_data, tmp_path):
    folder = run_stage("ct", tmp_path, ct_spacing=[2.0, 2.0, 4.0], hu_window=[-500, 500], select_buffer=False)
    settings = layout.recorded_settings(folder)
    assert settings["ct_spacing"] == [2.0, 2.0, 4.0] and settings["hu_window"] == [-500, 500]
    assert settings["img_size_3d"] == [64, 64, 16] and settings["crops_per_volume"] == 2
    # a later stage rehearsing CT prepares the buffer items with the recorded spacing and window, not the defaults
    parser = _parse_stage_bundle("ct", tmp_path, {"img_size_3d": [64, 64, 16]})
    steps = {type(t).__name__: t for t in parser.get_parsed_content("train#preprocessing").transforms}
    assert tuple(steps["Spacingd"].spacing_transform.pixdim) == (2.0, 2.0, 4.0)
    assert steps["ScaleIntensityRanged"].scaler.a_min == -500
    # a recorded value with config syntax is refused, never evaluated
    record = json.loads((folder / layout.STAGE_RECORD_FILE).read_text())
    record["settings"]["hu_window"] = "$__import__('os').getcwd()"
    (folder / layout.STAGE_RECORD_FILE).write_text(json.dumps(record))
    with pytest.raises(BadInputError, match="hu_window"):
        layout.recorded_settings(folder)


def test_read_bundle_works_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parser = layout.read_bundle(Path(layout.bundles_dir()) / "finetune_ct_seg.json", {"output_dir": str(tmp_path)})
    assert parser.get("model_def#_target_") == "medcoss_monai.networks.UNETRStyleSegmenter"
