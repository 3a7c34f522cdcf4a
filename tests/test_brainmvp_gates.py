"""BrainMVP's epoch gates, through the one pretext both recipes train with (mechanics on synthetic volumes)."""

from __future__ import annotations

import inspect
import json

import pytest
import torch
from monai.engines.utils import IterationEvents

from medcoss_monai.apps.brainmvp.model import BrainMVPModel, brainmvp_param_groups
from medcoss_monai.apps.brainmvp.pretext import BrainMVPPretext
from medcoss_monai.engines import PretextTrainer
from medcoss_monai.engines.pretext_trainer import PretextKeys
from tests.stage_utils import BUNDLES

TINY = {"widths": [8, 16, 32, 32], "depths": [1, 1, 1, 1], "strides": [2, 2, 2, 2], "head_dim": 16, "feature_size": 8}
SPACE = {"template_spacing": (1.0, 1.0, 1.0), "template_origin": (0.0, 0.0, 0.0)}  # identity affines read voxel (i, j, k)


def _batch(n: int = 2, side: int = 16, has_other: bool = True) -> dict[str, torch.Tensor]:
    image = torch.rand(n, 1, side, side, side, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros_like(image, dtype=torch.bool)
    mask[:, :, : side // 2] = True
    return {"image": image, "mask": mask, "mask_b": mask.clone(), "contrast": torch.zeros(n, dtype=torch.long),
            "other": torch.full_like(image, 0.75), "has_other": torch.full((n,), has_other),
            "affine": torch.eye(4).expand(n, 4, 4).clone(), "study_id": torch.arange(n)}


def test_view_b_takes_the_template_before_the_other_contrast_start_epoch():
    pretext = BrainMVPPretext(["t1", "t2"], (16, 16, 16), 32, other_contrast_start_epoch=3, **SPACE)
    with torch.no_grad():
        pretext.templates.templates["t1"].fill_(0.25)
    batch = _batch()
    inputs = {**batch, "x": batch["image"]}
    mask = batch["mask"]
    for epoch, expected_b in ((1, 0.25), (2, 0.25), (3, 0.75), (4, 0.75)):
        view_a, view_b = pretext.views(inputs, epoch)
        assert (view_a[mask] == 0.25).all() and (view_b[mask] == expected_b).all(), epoch
        assert torch.equal(view_a[~mask], batch["image"][~mask]) and torch.equal(view_b[~mask], batch["image"][~mask])
    # a study with one contrast has no other: view B keeps the template after the gate too
    lonely = _batch(has_other=False)
    _, view_b = pretext.views({**lonely, "x": lonely["image"]}, 4)
    assert (view_b[mask] == 0.25).all()


def test_no_contrastive_term_before_its_start_epoch():
    torch.manual_seed(0)
    model = BrainMVPModel(BrainMVPPretext(["t1", "t2"], (16, 16, 16), TINY["widths"][-1], contrastive_start_epoch=2, **SPACE), backbone=TINY)
    optimizer = torch.optim.AdamW(brainmvp_param_groups(model, 0.05, 0.02), lr=1e-3)
    trainer = PretextTrainer("cpu", 2, [_batch(), _batch()], model, optimizer, pretext_heads={"brainmvp": model.pretext})
    seen = []

    @trainer.on(IterationEvents.BACKWARD_COMPLETED)
    def record(engine):
        grad = model.pretext.projection[0].weight.grad
        seen.append((engine.state.epoch, "contrastive_loss" in engine.state.output[PretextKeys.PRED]["loss_components"],
                     grad is not None and bool(grad.abs().sum() > 0)))

    trainer.run()
    # the projection head learns only from the contrastive term: no gradient reaches it before epoch 2
    assert seen == [(1, False, False), (1, False, False), (2, True, True), (2, True, True)]
    assert trainer.state.output[PretextKeys.PRETEXT] == "brainmvp"


def test_one_set_of_defaults():
    common = json.loads((BUNDLES / "common" / "brainmvp.json").read_text())
    defaults = inspect.signature(BrainMVPPretext).parameters
    for name in ("weight_a", "weight_b", "weight_contrastive", "temperature", "contrastive_start_epoch"):
        assert defaults[name].default == pytest.approx(common[name]), name
