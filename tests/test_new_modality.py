"""A sixth modality is added by its stage bundle alone: ``bundles/stage_ultrasound.json``, after an X-ray stage.

The sample data holds no ultrasound. The frames used here are real gray PNG images but, honestly, not
ultrasound: 96 x 96 crops of a knee radiograph (tibia) that the sample tasks cut for ``xray_seg``
(``tasks/xray_seg/images/*.png``), copied into a folder as a user's ultrasound frames would be. What
is tested is the mechanism: no Python list names the modality, and its stage trains and chains as the
five others do (weights from the previous stage, the previous stage's buffer rehearsed through its
teacher, its own buffer selected).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import run
from stage_utils import BUNDLES, REPO, read_history, run_stage

from medcoss_monai import MODALITIES
from medcoss_monai.errors import BadInputError
from medcoss_monai.layout import modality_card, stage_modalities


def test_the_bundle_alone_registers_the_modality():
    card = stage_modalities()["ultrasound"]
    assert card["input_kind"] == "2d" and Path(card["bundle"]) == BUNDLES / "stage_ultrasound.json"
    assert "ultrasound" not in MODALITIES  # the default curriculum, not a registry
    sources = [p for p in (REPO / "medcoss_monai").rglob("*.py") if "ultrasound" in p.read_text(encoding="utf-8")]
    assert not sources, f"the modality is named in Python: {sources}"
    with pytest.raises(BadInputError, match="Unknown modality 'dermatology'.*stage_dermatology.json"):
        modality_card("dermatology")


@pytest.fixture
def frames(tasks_ready: Path, tmp_path: Path) -> Path:
    """A folder of 20 real gray PNG frames and its datalist (16 training, 4 validation and test)."""
    folder = tmp_path / "frames"
    folder.mkdir()
    sources = sorted((tasks_ready / "tasks" / "xray_seg" / "images").glob("*.png"))[:20]
    assert len(sources) == 20
    items = [{"image": str(shutil.copy(p, folder / f"frame_{i:02d}.png"))} for i, p in enumerate(sources)]
    datalist = folder / "ultrasound.json"
    datalist.write_text(json.dumps({"training": items[:16], "validation": items[16:], "test": items[16:]}))
    return folder


def test_ultrasound_stage_trains_after_xray(frames: Path, tmp_path: Path):
    out = tmp_path / "run"
    xray = run_stage("xray", out, previous_stage="")
    run(config_file=str(BUNDLES / "stage_ultrasound.json"), output_dir=str(out), previous_stage="xray",
        dataset_dir=str(frames), progress_bar=False, batch_size=4, rehearsal_ratio=1.0, warmup_epochs=0,
        **{"train#trainer#max_epochs": 1, "train#repeats": 1})
    stage = out / "stage_ultrasound"

    record = json.loads((stage / "stage.json").read_text())
    assert record["modality"] == "ultrasound" and record["previous_stage"] == "xray"
    rows = read_history(stage)
    assert [r["epoch"] for r in rows] == ["1"] and np.isfinite(float(rows[0]["loss"]))
    # the X-ray buffer was rehearsed and distilled against the X-ray stage's network
    assert float(rows[0]["distill_loss"]) > 0

    before = torch.load(xray / "model.pt", weights_only=True)
    after = torch.load(stage / "model.pt", weights_only=True)
    key = "encoder.patch_embed_2d.proj.weight"
    assert not torch.equal(before[key], after[key])  # trained from the X-ray weights ...
    assert (after[key] - before[key]).norm() < 0.5 * before[key].norm()  # ... not from a fresh start

    buffer = json.loads((stage / "buffer.json").read_text())
    assert buffer["modality"] == "ultrasound" and buffer["n_total"] == 16
    assert {Path(it["image"]).parent for it in buffer["items"]} == {frames}
