"""The MUSCLE bundles' own refusals reach the user as their message, without a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SMALL = ["--max_train_items", "4", "--max_eval_items", "2", "--batch_size", "2", "--progress_bar", "false"]
MOCO = ["--max_items", "8", "--batch_size", "8", "--samples_per_epoch", "8", "--queue_size", "64", "--image_size", "64",
        "--load_size", "96", "--train#trainer#max_epochs", "1", "--progress_bar", "false"]


def _run(bundle: str, args: list[str], tmp_path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", bundle, "--output_dir", str(tmp_path), *args]
    env = {k: v for k, v in os.environ.items() if k != "MEDCOSS_TRACEBACK"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.parametrize(
    "bundle, args, message",
    [
        ("bundles/muscle_multitask.json", [*SMALL, "--train#trainer#max_epochs", "1"],
         "the schedule has 9 visits (rounds x tasks): set max_epochs to their product"),
        pytest.param("bundles/finetune_muscle_seg.json", [*SMALL, "--backbone_output_stride", "4"],
                     "output_stride 4 is not one of", marks=pytest.mark.slow),
        pytest.param("bundles/muscle_mdmoco.json", [*MOCO, "--bn_splits", "3"],
                     "cannot be cut into bn_splits=3 equal BatchNorm groups", marks=pytest.mark.slow),
    ],
    ids=["multitask_max_epochs", "finetune_output_stride", "mdmoco_bn_splits"],
)
@pytest.mark.slow
def test_muscle_bundle_refusal_is_its_message_only(sample_data, tmp_path, bundle, args, message):
    """A refusal raised while MONAI instantiates a component (the trainer, the backbone) or inside the engine
    (the MoCo step) ends with its message: no traceback, no "Failed to instantiate component"."""
    result = _run(bundle, args, tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    assert message in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "Failed to instantiate" not in result.stderr, result.stderr[-3000:]
