"""Figures documents are written by the commands that measure them, and say when the recipe moved on."""

from __future__ import annotations

import importlib.util
import json
import subprocess

import pytest

from medcoss_monai import provenance
from medcoss_monai.errors import BadInputError
from medcoss_monai.evaluation import figures


def test_a_section_is_replaced_in_place_and_the_rest_of_the_document_kept(tmp_path):
    doc = tmp_path / "figures.md"
    provenance.write_section(doc, "medcoss", "old table", title="Measured figures")
    provenance.write_section(doc, "muscle", "muscle table")
    doc.write_text(doc.read_text() + "a note typed after the sections\n")
    provenance.write_section(doc, "medcoss", "new table")
    text = doc.read_text()
    assert text.startswith("# Measured figures\n")
    assert "old table" not in text and text.index("new table") < text.index("muscle table") < text.index("a note typed")
    assert provenance.read_sections(doc) == {"medcoss": "new table\n", "muscle": "muscle table\n"}
    with pytest.raises(ValueError):
        provenance.write_section(doc, "two words", "x")


def test_the_figures_section_is_generated_from_the_runs_tables_with_its_provenance(tmp_path):
    (tmp_path / "finetune.md").write_text("| task | metric |\n| --- | --- |\n| ct_seg | Dice |\n")
    here = provenance.commit()
    rows = (("a/pipeline.log", 100.0, "0123456"), ("a/pipeline.log", 60.0, here), ("b/finetune.log", 30.0, here))
    with open(tmp_path / figures.TIMINGS, "w") as f:  # a resumed run: the second time of a log replaces the first
        for log, seconds, code in rows:
            f.write(json.dumps({"seconds": seconds, "log": log, "commit": code}) + "\n")
    assert figures.measured_seconds(tmp_path) == 90.0
    assert figures.measured_commit(tmp_path) == here
    section = figures.figures_section(tmp_path, [0, 1, 2])
    assert "| ct_seg | Dice |" in section and "### Fine-tuning" in section and "Text probe" not in section
    assert "seeds 0, 1, 2; 1.5 min" in section and "torch " in section
    assert f"commit `{here}`" in section


def test_a_figures_section_is_refused_from_runs_of_two_commits(tmp_path):
    with open(tmp_path / figures.TIMINGS, "w") as f:  # resumed in a later session after a commit
        f.write(json.dumps({"seconds": 10.0, "log": "medcoss_s0/pipeline.log", "commit": "0123456"}) + "\n")
        f.write(json.dumps({"seconds": 20.0, "log": "finetune/ct_seg/scratch_s0/finetune.log", "commit": "89abcde"}) + "\n")
    with pytest.raises(BadInputError, match="2 commits.*0123456: 1 runs, e.g. medcoss_s0/pipeline.log.*89abcde"):
        figures.figures_section(tmp_path, [0])


def test_a_section_measured_before_a_recipe_change_is_stale():
    assert provenance.recipe_changed_since("no provenance line") == ["<no commit>"]
    assert provenance.recipe_changed_since("commit `0123456+changes`") == ["<uncommitted code>"]
    last = subprocess.run(["git", "rev-list", "-n", "1", "HEAD", "--", *provenance.RECIPE_PATHS], cwd=provenance.REPO,
                          capture_output=True, text=True)
    if last.returncode != 0 or not last.stdout.strip():
        pytest.skip("not a git checkout with history")
    commit = last.stdout.strip()
    parent = subprocess.run(["git", "rev-parse", "--verify", "-q", commit + "^"], cwd=provenance.REPO, capture_output=True, text=True)
    if parent.returncode != 0:
        pytest.skip("shallow history: the recipe change's parent is not here")
    assert provenance.recipe_changed_since(f"commit `{commit}`") == []
    assert provenance.recipe_changed_since(f"commit `{parent.stdout.strip()}`")


@pytest.mark.slow
def test_a_benchmark_becomes_its_section_with_what_it_printed(tmp_path):
    spec = importlib.util.spec_from_file_location("run_benchmarks", provenance.REPO / "benchmarks" / "run_benchmarks.py")
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    doc = tmp_path / "benchmarks.md"
    cheap = ["bench_buffer_selection.py", "--n", "2000", "--clusters", "20", "--skip_scaling"]
    runner.run_benchmark("buffer_selection", "Buffer selection", cheap, doc, timeout=600)
    section = provenance.read_sections(doc)["buffer_selection"]
    assert section.startswith("## Buffer selection\n") and "no seeds" in section
    assert "`python benchmarks/bench_buffer_selection.py --n 2000" in section and "kmeans_sample" in section
    with pytest.raises(SystemExit, match="benchmark broken failed"):
        runner.run_benchmark("broken", "x", ["bench_buffer_selection.py", "--no_such_option"], doc, timeout=600)
    assert set(provenance.read_sections(doc)) == {"buffer_selection"}


@pytest.mark.parametrize("doc", ["docs/figures.md", "docs/benchmarks.md"])
def test_every_shipped_measured_section_is_current(doc):
    """Each generated section names its commit, was measured on committed code, and no recipe file changed since."""
    sections = provenance.read_sections(provenance.REPO / doc)
    for name, body in sections.items():
        changed = provenance.recipe_changed_since(body)
        if changed == ["<no commit>"] and provenance._COMMIT.search(body):
            pytest.skip("the section's commit is not in this checkout's history (shallow clone)")
        assert changed == [], f"{doc} section {name!r} is stale: {changed}"


def test_the_commit_names_the_code_a_measurement_ran(tmp_path, monkeypatch):
    """A section written into a document leaves the code clean; a commit made during a run marks it changed."""
    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "docs").mkdir()
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "docs" / "figures.md").write_text("# Figures\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "first")
    monkeypatch.setattr(provenance, "REPO", tmp_path)
    first = provenance.commit()
    assert len(first) == 40 and "+" not in first
    (tmp_path / "docs" / "figures.md").write_text("# Figures\n\nmeasured\n")
    assert provenance.commit() == first  # a written section is no code change
    (tmp_path / "code.py").write_text("x = 2\n")
    assert provenance.commit() == first + "+changes"
    git("commit", "-qam", "second")
    second = provenance.commit()
    assert second != first and provenance.code_during(second) == second
    assert provenance.code_during(first) == first + "+changes"  # the code moved on while it ran
    facts = provenance.measurement_facts([0], 1.0, started=first)
    assert facts["commit"] == first + "+changes"
