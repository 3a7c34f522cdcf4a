"""BrainMVP mechanics: template crops at a physical position, the two views on real studies, the contrastive loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medcoss_monai.apps.brainmvp.contrastive import ModalityAwareInfoNCE
from medcoss_monai.apps.brainmvp.model import BrainMVPModel
from medcoss_monai.apps.brainmvp.pretext import BrainMVPPretext, masked_views
from medcoss_monai.apps.brainmvp.templates import ModalityTemplates, template_space_affine
from medcoss_monai.apps.brainmvp.multicontrast import RandBlockMaskd, RandContrastPaird, block_mask

TINY_BACKBONE = {"widths": [8, 16, 32, 32], "depths": [1, 1, 1, 1], "strides": [2, 2, 2, 2], "head_dim": 16, "feature_size": 8}


def _ramp_templates(shape=(20, 24, 18), spacing=(2.0, 2.0, 2.0), origin=(-20.0, -30.0, -10.0)) -> ModalityTemplates:
    t = ModalityTemplates(["t1", "t2"], shape, spacing, origin)
    i, j, k = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in shape], indexing="ij")
    with torch.no_grad():
        t.templates["t1"].copy_(i + 10 * j + 100 * k)  # linear: trilinear sampling is exact on it
        t.templates["t2"].copy_(-(i + 10 * j + 100 * k))
    return t


def test_template_crop_at_known_position():
    t = _ramp_templates()
    start = np.array([5, 7, 3])
    crop_affine = template_space_affine((2, 2, 2), (-20 + 2 * 5, -30 + 2 * 7, -10 + 2 * 3))
    out = t.crop(torch.tensor([0, 1]), torch.as_tensor(np.stack([crop_affine, crop_affine])), (4, 6, 8))
    expected = t.volume("t1")[5:9, 7:13, 3:11]
    assert out.shape == (2, 1, 4, 6, 8)
    torch.testing.assert_close(out[0, 0], expected)
    torch.testing.assert_close(out[1, 0], -expected)
    assert start.tolist() == [5, 7, 3]


def test_template_crop_at_another_spacing_and_outside_the_box():
    t = _ramp_templates()
    # a 1 mm crop whose voxel 0 sits on template voxel (2, 2, 2): voxel n reads template voxel 2 + n / 2
    fine = template_space_affine((1, 1, 1), (-20 + 4, -30 + 4, -10 + 4))
    out = t.crop([0], torch.as_tensor(fine)[None], (4, 4, 4))[0, 0]
    n = torch.arange(4, dtype=torch.float32) / 2 + 2
    expected = n[:, None, None] + 10 * n[None, :, None] + 100 * n[None, None, :]
    torch.testing.assert_close(out, expected)
    # a crop reaching past the box (and starting at negative indices) reads zeros there, no error
    outside = template_space_affine((2, 2, 2), (-20 - 2 * 3, -30, -10))
    out = t.crop([0], torch.as_tensor(outside)[None], (6, 2, 2))[0, 0]
    torch.testing.assert_close(out[:3], torch.zeros_like(out[:3]), atol=1e-3, rtol=0)  # float32 grid coordinates
    torch.testing.assert_close(out[3:], t.volume("t1")[0:3, 0:2, 0:2])


def test_template_gradient_reaches_only_the_used_contrast():
    t = _ramp_templates()
    out = t.crop([1, 1], torch.as_tensor(np.stack([template_space_affine((2, 2, 2), (-20, -30, -10))] * 2)), (2, 2, 2))
    out.sum().backward()
    assert t.templates["t1"].grad is None
    grad = t.templates["t2"].grad
    torch.testing.assert_close(grad[:2, :2, :2], torch.full((2, 2, 2), 2.0))  # each voxel read once per sample
    assert grad.sum().item() == pytest.approx(16, abs=1e-4)


def test_block_mask_is_made_of_whole_blocks():
    mask = block_mask((32, 16, 24), 8, 0.8, np.random.RandomState(0))[0]
    blocks = mask.reshape(4, 8, 2, 8, 3, 8)
    assert (blocks.all(axis=(1, 3, 5)) == blocks.any(axis=(1, 3, 5))).all()  # each block all or nothing
    assert blocks.any(axis=(1, 3, 5)).sum() == round(0.8 * 24)
    with pytest.raises(ValueError, match="multiple of the block size"):
        block_mask((30, 16, 16), 8, 0.8, np.random.RandomState(0))


def _icbm_study(datalist) -> dict:
    """The ICBM 2009c T1 + T2 (a test of mechanics only; it is never trained on) loaded as the stage loads studies."""
    from monai.transforms import Compose

    from tests.stage_utils import bundle_section

    item = next(it for it in datalist("mri")["test"] if it.get("t2"))
    load = bundle_section("brainmvp", "train#deterministic_transforms")
    return Compose(load)({"image": {"t1": item["image"], "t2": item["t2"]}, "study": "icbm"})


def test_views_on_a_real_two_contrast_study(datalist):
    study = _icbm_study(datalist)
    assert study["image"].shape[0] == 2 and study["contrasts"] == ["t1", "t2"]
    contrasts = ["t1", "t1ce", "t2"]
    pair = RandContrastPaird(contrasts)
    pair.set_random_state(3)
    masker = RandBlockMaskd("image", block=8, ratio=0.8)
    masker.set_random_state(4)
    crop = {**study, "image": study["image"][:, 16:48, 24:56, 20:52]}  # keeps the MetaTensor affine of the crop
    crop["image"].affine = torch.as_tensor(study["image"].affine).clone()
    crop["image"].affine[:3, 3] += torch.as_tensor(study["image"].affine[:3, :3]).double() @ torch.tensor([16.0, 24, 20], dtype=torch.float64)
    d = masker(pair(crop))
    m = d["contrast"].item()
    source = study["contrasts"].index(contrasts[m])
    torch.testing.assert_close(torch.as_tensor(d["image"]), torch.as_tensor(crop["image"][source : source + 1]))
    torch.testing.assert_close(torch.as_tensor(d["other"]), torch.as_tensor(crop["image"][1 - source : 2 - source]))
    assert bool(d["has_other"])

    pretext = BrainMVPPretext(contrasts, (96, 116, 96), TINY_BACKBONE["widths"][-1], template_spacing=(2, 2, 2))
    model = BrainMVPModel(pretext, backbone=TINY_BACKBONE)
    with torch.no_grad():
        for name in contrasts:
            pretext.templates.templates[name].fill_(0.25 + contrasts.index(name))  # distinct from every image value
    batch = {k: torch.as_tensor(d[k])[None] for k in ("image", "mask", "contrast", "other", "has_other", "affine")}
    image, mask = batch["image"].float(), batch["mask"].bool()
    view_a, view_b = masked_views(pretext.templates, image, mask, batch["contrast"], batch["other"].float(), batch["has_other"], batch["affine"])
    template = pretext.templates.crop(batch["contrast"], batch["affine"], image.shape[2:])
    assert mask.float().mean().item() == pytest.approx(0.8, abs=0.02)
    # outside the masked blocks both views are the input; inside, A is the template and B the other contrast
    assert torch.equal(view_a[~mask], image[~mask]) and torch.equal(view_b[~mask], image[~mask])
    assert torch.equal(view_a[mask], template[mask]) and (template[mask] == 0.25 + m).all()
    assert torch.equal(view_b[mask], batch["other"].float()[mask])
    assert not torch.equal(view_a, image) and not torch.equal(view_b, image)
    # during the warm-up (or for a single-contrast study) view B takes the template too
    _, warm_b = masked_views(pretext.templates, image, mask, batch["contrast"], batch["other"].float(), batch["has_other"], batch["affine"], use_other=False)
    assert torch.equal(warm_b, view_a)
    out = pretext(model, {**batch, "x": image}, epoch=1)
    assert torch.equal(out["view_a"], view_a) and torch.equal(out["view_b"], view_b)
    assert out["recon_a"].shape == image.shape and out["z_a"].shape == out["z_b"].shape == (1, 128)


def test_single_contrast_study_pairs_with_nothing():
    img = torch.rand(1, 16, 16, 16)
    d = RandContrastPaird(["t1", "t2"])({"image": img, "contrasts": ["t2"]})
    assert d["contrast"].item() == 1 and not bool(d["has_other"]) and torch.equal(d["other"], torch.zeros_like(img))


def test_info_nce_on_known_values():
    loss = ModalityAwareInfoNCE(temperature=1.0)
    eye = torch.eye(2)
    # logits are the identity: each row's CE is log(1 + e^-1)
    assert loss(eye, eye).item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    # swapped positives: the positive logit is 0 and the negative 1
    assert loss(eye, eye.flip(0)).item() == pytest.approx(math.log(1 + math.e), abs=1e-6)
    # features are L2-normalised and the temperature divides the cosine similarity
    a = torch.tensor([[3.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    cos = torch.nn.functional.normalize(a, dim=1) @ torch.nn.functional.normalize(a, dim=1).T
    expected = torch.nn.functional.cross_entropy(cos / 0.5, torch.arange(3))
    assert ModalityAwareInfoNCE(0.5)(a, a).item() == pytest.approx(expected.item(), abs=1e-6)
    with pytest.raises(ValueError):
        ModalityAwareInfoNCE(0.0)


def test_templates_get_their_own_learning_rate_and_no_decay():
    from medcoss_monai.apps.brainmvp.model import brainmvp_param_groups

    model = BrainMVPModel(BrainMVPPretext(["t1", "t2"], (8, 8, 8), TINY_BACKBONE["widths"][-1]), backbone=TINY_BACKBONE)
    groups = brainmvp_param_groups(model, 0.05, template_lr=0.02)
    template_group = [g for g in groups if any(p is model.pretext.templates.templates["t1"] for p in g["params"])]
    assert len(template_group) == 1 and template_group[0]["lr"] == 0.02 and template_group[0]["weight_decay"] == 0.0
    counted = [id(p) for g in groups for p in g["params"]]
    assert sorted(counted) == sorted(id(p) for p in model.parameters())  # every parameter exactly once
