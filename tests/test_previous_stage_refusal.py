"""A stage never quietly becomes training from scratch: a missing previous stage in a used run folder is refused."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from stage_utils import BUNDLES, REPO, run_stage

from medcoss_monai.bundle.pipeline import run_pipeline
from medcoss_monai.errors import BadInputError, CheckpointError, find_user_error


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.slow
def test_missing_previous_stage_is_refused_in_a_used_run_folder(sample_data, tmp_path, capfd, monkeypatch):
    run = tmp_path / "run"
    # alone in an empty folder, a stage with a configured previous stage is a first stage, said at WARNING
    xray = run_stage("xray", run, **{"train#repeats": 1})
    logged = [line for line in capfd.readouterr().out.splitlines() if "runs as a first stage" in line]
    assert len(logged) == 1 and " - WARNING - " in logged[0] and "stage_report/model.pt does not exist" in logged[0]
    assert (xray / "model.pt").is_file()
    before = _digests(xray)

    # a typo in --previous_stage: the run folder holds stage_xray, so the ct stage must not start from scratch
    with pytest.raises(Exception) as failure:
        run_stage("ct", run, previous_stage="xary")
    error = find_user_error(failure.value)
    assert isinstance(error, CheckpointError)
    assert str(run / "stage_xary" / "model.pt") in str(error) and "stage_xray" in str(error)
    assert not (run / "stage_ct" / "model.pt").exists()
    assert not list((run / "stage_ct").glob("*.pt")) if (run / "stage_ct").exists() else True
    assert _digests(xray) == before  # nothing already written is touched

    # the pipeline does not guess either: its first stage would start a new chain beside stage_xray
    monkeypatch.chdir(REPO)
    with pytest.raises(BadInputError, match="already holds stage_xray: pass --previous_stage"):
        run_pipeline(["ct", "mri"], run)
    assert _digests(xray) == before

    # from the command line the user reads the message, not a traceback (in a copy: this process holds stage_ct's lock)
    other = tmp_path / "copy"
    shutil.copytree(xray, other / "stage_xray", ignore=shutil.ignore_patterns(".writer.lock"))
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(BUNDLES / "stage_ct.json"),
         "--output_dir", str(other), "--previous_stage", "xary", "--progress_bar", "false"],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert result.returncode != 0
    assert "stage_xary/model.pt not found" in result.stderr and "Traceback" not in result.stderr
