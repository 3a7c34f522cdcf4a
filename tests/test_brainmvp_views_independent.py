"""BrainMVP's two views and their InfoNCE as in the reference, on the sample studies: a mask per view, no negative
from the same study; fine-tuning reads the templates where pre-training learned them."""

from __future__ import annotations

import math

import pytest
import torch
from monai.data import MetaTensor, list_data_collate
from monai.transforms import Compose
from monai.utils import set_determinism

from medcoss_monai.apps.brainmvp.contrastive import ModalityAwareInfoNCE
from medcoss_monai.apps.brainmvp.multicontrast import CentreOnPointd
from medcoss_monai.apps.brainmvp.studies import study_datalist, sample_task_datalist
from medcoss_monai.bundle import flag
from medcoss_monai.engines.pretext_trainer import pretext_of_batch
from medcoss_monai.layout import read_bundle
from tests.stage_utils import BUNDLES

STAGE = BUNDLES / "stage_brainmvp.json"
FINETUNE = BUNDLES / "finetune_brainmvp_seg.json"
SMALL = {"roi_size": [32, 32, 32], "crops_per_study": 4, "progress_bar": False}


def _crops(parser, study, seed: int = 0) -> list[dict]:
    set_determinism(seed=seed)
    chain = Compose(parser.get_parsed_content("train#deterministic_transforms") + parser.get_parsed_content("train#random_transforms"))
    return chain(study)


def test_each_view_draws_its_own_mask(tmp_path, sample_data):
    parser = read_bundle(STAGE, {"output_dir": str(tmp_path), **SMALL})
    study = parser.get_parsed_content("train#datalist")[0]
    for crop in _crops(parser, study):
        mask, mask_b = crop["mask"].bool(), crop["mask_b"].bool()
        assert mask.float().mean().item() == pytest.approx(0.8, abs=0.01) and mask_b.float().mean().item() == pytest.approx(0.8, abs=0.01)
        assert not torch.equal(mask, mask_b)  # reference utils/ops.py: a fresh torch.randperm per view
    shared = read_bundle(STAGE, {"output_dir": str(tmp_path), **SMALL, "independent_masks": False})
    assert all(torch.equal(c["mask"], c["mask_b"]) for c in _crops(shared, study))  # the former behaviour, one switch away


def test_crops_of_one_study_are_not_each_others_negatives(tmp_path, sample_data):
    parser = read_bundle(STAGE, {"output_dir": str(tmp_path), **SMALL})
    studies = parser.get_parsed_content("train#datalist")
    first, second = _crops(parser, studies[0]), _crops(parser, studies[1])
    assert len({int(c["study_id"]) for c in first}) == 1 and {int(c["study_id"]) for c in first} != {int(c["study_id"]) for c in second}
    network = parser.get_parsed_content("network")
    pretext = network.pretext
    batch = list_data_collate(first)  # the four crops of one study: no negative left
    assert pretext_of_batch(batch, {"brainmvp": pretext}) == "brainmvp"
    inputs = {**{k: batch[k] for k in pretext.batch_keys}, "x": batch["image"]}
    with torch.no_grad():
        pred = pretext(network, inputs, epoch=pretext.contrastive_start_epoch)
        _, terms = pretext.loss(pred, epoch=pretext.contrastive_start_epoch)
        assert terms["contrastive_loss"] == pytest.approx(0.0, abs=1e-6)
        assert pretext.contrastive(pred["z_a"], pred["z_b"]).item() > 0.1  # all crops would be negatives without the ids
        mixed = list_data_collate(first[:2] + second[:2])  # two studies: each crop keeps the other study's two
        inputs = {**{k: mixed[k] for k in pretext.batch_keys}, "x": mixed["image"]}
        pred = pretext(network, inputs, epoch=pretext.contrastive_start_epoch)
        _, terms = pretext.loss(pred, epoch=pretext.contrastive_start_epoch)
        assert terms["contrastive_loss"] > 0.1


def test_info_nce_masks_the_same_study_on_known_values():
    z = torch.eye(3)
    loss = ModalityAwareInfoNCE(temperature=1.0)
    assert loss(z, z).item() == pytest.approx(math.log(1 + 2 / math.e), abs=1e-6)  # every other sample a negative
    # samples 0 and 1 are crops of one study: each keeps only sample 2 as its negative
    expected = (2 * math.log(1 + 1 / math.e) + math.log(1 + 2 / math.e)) / 3
    assert loss(z, z, torch.tensor([7, 7, 9])).item() == pytest.approx(expected, abs=1e-6)
    assert loss(z[:2], z[:2], torch.tensor([7, 7])).item() == pytest.approx(0.0, abs=1e-6)


def test_finetuning_reads_the_templates_where_pre_training_learned_them(tmp_path, sample_data):
    stage = read_bundle(STAGE, {"output_dir": str(tmp_path), **SMALL})
    study = study_datalist("", "training")[0]  # an unregistered sample study (scanner coordinates)
    contrasts = list(study["image"])
    finetune = read_bundle(FINETUNE, {"output_dir": str(tmp_path), "input_contrasts": contrasts, "roi_size": SMALL["roi_size"]})
    assert flag(stage.get_parsed_content("centre_studies")) and flag(finetune.get_parsed_content("centre_studies"))
    loaded_stage = Compose(stage.get_parsed_content("train#deterministic_transforms"))(dict(study))
    item = {**study, "label": study["image"][contrasts[0]]}  # any label map: only the grid matters here
    loaded_finetune = Compose(finetune.get_parsed_content("load_transforms"))(item)
    # the same study sits at the same world position in both, so it reads the same template voxels
    torch.testing.assert_close(torch.as_tensor(loaded_finetune["image"].affine), torch.as_tensor(loaded_stage["image"].affine))
    torch.testing.assert_close(torch.as_tensor(loaded_finetune["label"].affine), torch.as_tensor(loaded_stage["image"].affine))


def test_a_registered_study_keeps_its_position(sample_data):
    image = MetaTensor(torch.zeros(1, 4, 4, 4), affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    centre = CentreOnPointd("image", point=(0.0, -18.0, 18.0))
    assert not torch.equal(torch.as_tensor(centre({"image": image})["image"].affine), torch.as_tensor(image.affine))
    kept = centre({"image": image, "registered": True})["image"]
    torch.testing.assert_close(torch.as_tensor(kept.affine), torch.as_tensor(image.affine))
    # the sample fine-tuning slabs are cut from the MNI ICBM 2009c volume: flagged, never centred
    task = study_datalist(sample_task_datalist(), "training")
    assert task and all(s.get("registered") is True for s in task)
