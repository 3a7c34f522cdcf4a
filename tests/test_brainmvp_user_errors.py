"""The BrainMVP bundles' own refusals reach the user as their message, without a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from medcoss_monai.apps.brainmvp.consistency import SubstitutionConsistencyLoss
from medcoss_monai.apps.brainmvp.contrastive import ModalityAwareInfoNCE
from medcoss_monai.apps.brainmvp.multicontrast import RandBlockMaskd, block_mask
from medcoss_monai.apps.brainmvp.pretext import BrainMVPPretext
from medcoss_monai.apps.brainmvp.template_fill import TemplateFilld
from medcoss_monai.apps.brainmvp.uniformer import UniFormer3D
from medcoss_monai.errors import BadInputError


@pytest.mark.slow
def test_stage_refusal_is_its_message_only(sample_data, tmp_path):
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "bundles/stage_brainmvp.json",
           "--output_dir", str(tmp_path), "--progress_bar", "false", "--mask_ratio", "1.5"]
    env = {k: v for k, v in os.environ.items() if k != "MEDCOSS_TRACEBACK"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "--mask_ratio must be in [0, 1], got 1.5" in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "Failed to instantiate" not in result.stderr, result.stderr[-3000:]


def test_settings_a_user_gives_are_refused_as_user_errors():
    """Each refusal of a bundle setting is a BadInputError (shown as its message alone) naming the setting."""
    import numpy as np

    refusals = [
        (lambda: RandBlockMaskd(ratio=-0.1), "--mask_ratio"),
        (lambda: block_mask((20, 16, 16), 8, 0.8, np.random.RandomState(0)), "roi_size"),
        (lambda: ModalityAwareInfoNCE(0.0), "--temperature"),
        (lambda: BrainMVPPretext(["t1"], (8, 8, 8), 8, contrastive_features="tokens"), "--contrastive_features"),
        (lambda: SubstitutionConsistencyLoss(None, weight=-1.0), "--consistency_weight"),
        (lambda: SubstitutionConsistencyLoss(None, weight=0.1, on="logits"), "--consistency_on"),
        (lambda: TemplateFilld(None, "template"), "--templates_ckpt"),
        (lambda: UniFormer3D(widths=[16], depths=[1], strides=[2], block_types=["attention"], head_dim=5), "backbone"),
    ]
    for make, setting in refusals:
        with pytest.raises(BadInputError, match=setting):
            make()
