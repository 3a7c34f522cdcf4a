"""BrainMVP fine-tuning: consistency loss between two independently template-substituted copies of a crop."""

from __future__ import annotations

import json
import math

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow
from monai.data import list_data_collate
from monai.losses import DiceCELoss
from monai.transforms import Compose
from monai.utils import set_determinism

from medcoss_monai.apps.brainmvp.paired_copies import PairedCopiesBatch
from medcoss_monai.layout import read_bundle
from medcoss_monai.apps.brainmvp.consistency import SubstitutionConsistencyLoss
from medcoss_monai.apps.brainmvp.template_fill import TemplateBank
from tests.stage_utils import BUNDLES
from tests.test_brainmvp_finetune import stage_model  # noqa: F401  (fixture)

FINETUNE = BUNDLES / "finetune_brainmvp_seg.json"


def test_consistency_term_on_known_values():
    seg = DiceCELoss(to_onehot_y=True, softmax=True)
    target = torch.zeros(2, 1, 2, 2, 2)
    uniform = torch.zeros(1, 3, 2, 2, 2)  # softmax 1/3 each
    skewed = uniform.clone()
    skewed[:, 0] = math.log(2.0)  # softmax 1/2, 1/4, 1/4
    loss = SubstitutionConsistencyLoss(seg, weight=2.0)
    same = torch.cat([skewed, skewed])
    torch.testing.assert_close(loss(same, target), seg(same, target))  # identical copies: no extra term
    pair = torch.cat([uniform, skewed])
    mse = ((1 / 3 - 1 / 2) ** 2 + 2 * (1 / 3 - 1 / 4) ** 2) / 3  # = 1/72
    torch.testing.assert_close(loss(pair, target) - seg(pair, target), torch.tensor(2.0 * mse))
    # sigmoid (regions): 0.5 against 0.75
    bce = torch.nn.BCEWithLogitsLoss()
    regions = SubstitutionConsistencyLoss(bce, weight=1.0, activation="sigmoid")
    pair = torch.cat([torch.zeros(1, 3, 2, 2, 2), torch.full((1, 3, 2, 2, 2), math.log(3.0))])
    torch.testing.assert_close(regions(pair, torch.ones_like(pair)) - bce(pair, torch.ones_like(pair)), torch.tensor(1 / 16))
    # off by default: a batch is taken as it is, odd sizes included
    torch.testing.assert_close(SubstitutionConsistencyLoss(seg)(uniform, target[:1]), seg(uniform, target[:1]))
    with pytest.raises(ValueError, match="even size"):
        loss(uniform, target[:1])


def test_two_copies_are_independent_substitutions_of_one_crop(stage_model, tmp_path, sample_data):  # noqa: F811
    path, _ = stage_model
    overrides = {"output_dir": str(tmp_path), "templates_ckpt": str(path), "consistency_weight": 1.0, "substitute_prob": 1.0,
                 "crops_per_study": 8}
    parser = read_bundle(FINETUNE, overrides)
    parser.parse()
    set_determinism(seed=0)
    study = parser.get_parsed_content("train#datalist")[0]
    # the training chain up to the substitutions (MetaTensors keep each crop's affine to read the templates)
    chain = Compose(parser.get_parsed_content("train#deterministic_transforms") + parser.get_parsed_content("train#random_transforms"))
    crops = chain(study)
    bank = TemplateBank(path)

    def replaced(image) -> list[int]:
        """The channels of ``image`` equal to their contrast's template at the crop's position."""
        return [k for k, c in enumerate(("t1", "t2")) if torch.allclose(image[k], bank.at(c, image.affine, image.shape[1:])[0], atol=1e-6)]

    choices = []
    for c in crops:
        a, b = replaced(c["image"]), replaced(c["image_copy"])
        assert len(a) == 1 and len(b) == 1  # each copy has one of its two contrasts replaced (prob 1, at most 1)
        real = {0, 1} - set(a) - set(b)
        for k in real:  # a channel neither copy replaced is the same crop of the study in both
            torch.testing.assert_close(c["image"][k], c["image_copy"][k])
        choices.append((a[0], b[0]))
    assert any(a != b for a, b in choices)  # the two copies draw their substitutions independently

    to_tensors = Compose(parser.get_parsed_content("to_tensors"))
    crops = [to_tensors(c) for c in crops]
    batch = list_data_collate(crops[:4])
    image, label = PairedCopiesBatch("image_copy")(batch)
    assert image.shape[0] == 8 and torch.equal(label[:4], label[4:]) and torch.equal(image[4:], batch["image_copy"])
    network, loss = parser.get_parsed_content("network"), parser.get_parsed_content("loss")
    assert loss.on == "features"  # the reference's term: the encoder's deepest features of the two copies
    with torch.no_grad():
        pred = network(image)
        deepest = network.encoder(image)[-1]
        expected = torch.mean((deepest[:4] - deepest[4:]) ** 2)
        consistency = loss.consistency(pred)
        term = loss(pred, label) - loss.seg_loss(pred, label)
    assert expected > 0 and torch.isclose(consistency, expected) and torch.isclose(term, loss.weight * expected)


@pytest.mark.slow
def test_finetuning_with_the_consistency_loss_trains(stage_model, tmp_path, sample_data):  # noqa: F811
    path, _ = stage_model
    out = tmp_path / "consistency"
    workflow = ConfigWorkflow(
        config_file=str(FINETUNE), output_dir=str(out), pretrained_ckpt=str(path), substitute_prob=1.0,
        repeats=2, crops_per_study=2, batch_size=2, **{"train#trainer#max_epochs": 2},
    )
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    losses, sizes = [], []

    @trainer.on(Events.ITERATION_COMPLETED)
    def _record(engine):
        output = engine.state.output  # decollated: one dict per sample of the step
        losses.append(float(output[0]["loss"]))
        sizes.append(len(output))

    workflow.run()
    assert sizes == [2 * 2] * len(losses)  # every step saw its 2 crops and their second copies
    assert len(losses) == 2 * 4 and all(math.isfinite(v) for v in losses)  # 2 epochs of 2 studies x 2 repeats
    assert sum(losses[-2:]) < sum(losses[:2]), losses  # it learns
    metrics = json.loads((out / "metrics.json").read_text())
    # the bundle's default: the reference's 0.1 x MSE of the deepest features (Downstream trainer.py)
    assert metrics["consistency_weight"] == 0.1 and 0.0 <= metrics["metrics"]["mean_dice"] <= 1.0
