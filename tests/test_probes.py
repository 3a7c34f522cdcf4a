"""Linear probes, pretext scores and their preprocessing, with real sample data and a real MedCoSSModel."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import NormalizeIntensityd, ScaleIntensityRanged, Spacingd

from medcoss_monai.layout import STAGE_RECORD_FILE, stage_dir
from medcoss_monai.evaluation import (
    CSV_COLUMNS,
    evaluate_stage,
    held_out_mae_mse,
    image_probe,
    image_probe_transforms,
    linear_probe,
    network_with_stage_heads,
    probe_tokenizer,
    stage_settings,
    text_mlm_accuracy,
    text_probe,
)
from medcoss_monai.networks import MedCoSSModel

TINY = dict(hidden_size=48, num_layers=2, num_heads=2, decoder_hidden_size=32, decoder_layers=1, decoder_heads=2)


@pytest.fixture(scope="module")
def network(sample_data):
    torch.manual_seed(0)
    return MedCoSSModel(**TINY)


@pytest.fixture(scope="module")
def tokenizer(sample_data):
    return probe_tokenizer(None)


def _record_settings(run_dir, modality, settings):
    """A stage folder whose stage.json records ``settings``, as the stage bundles write it."""
    folder = stage_dir(run_dir, modality)
    folder.mkdir(parents=True)
    (folder / STAGE_RECORD_FILE).write_text(json.dumps({"modality": modality, "settings": settings}))


def _step(transforms, kind):
    (step,) = [t for t in transforms.transforms if isinstance(t, kind)]
    return step


def test_linear_probe_mechanics():
    rng = np.random.RandomState(0)
    x = rng.randn(200, 5)
    y = (x[:, 0] > 0).astype(int)
    res = linear_probe(x[:100], y[:100], x[100:], y[100:])
    assert res["auc"] > 0.95 and res["acc"] > 0.9
    noise = linear_probe(rng.randn(100, 5), y[:100], rng.randn(100, 5), y[100:])
    assert 0.3 < noise["auc"] < 0.7
    ym = np.stack([y, 1 - y, (x[:, 1] > 0).astype(int)], 1)
    multi = linear_probe(x[:100], ym[:100], x[100:], ym[100:], multilabel=True)
    assert len(multi["per_label_auc"]) == 3 and multi["auc"] > 0.95


def test_text_probe_random_init_is_sane_and_deterministic(network, tokenizer):
    first = text_probe(network, tokenizer, n_train=100, n_test=200)
    second = text_probe(network, tokenizer, n_train=100, n_test=200)
    assert first["auc"] == second["auc"]
    # a random encoder is far from chance on these reports (MeSH terms follow the words), below a lexical model
    assert 0.55 < first["auc"] < 0.95
    assert len(first["classes"]) == 8


def test_image_probe_and_mae_mse(network):
    res = image_probe(network, "xray", settings={"img_size_2d": [64, 64]})
    assert 0.5 <= res["auc"] <= 1.0
    small = {"img_size_3d": [32, 32, 16]}
    a = held_out_mae_mse(network, "ct", settings=small)
    b = held_out_mae_mse(network, "ct", settings=small)
    assert a == b and 0.0 < a < 10.0
    assert held_out_mae_mse(network, "ct", settings=small, seed=1) != a


def test_stage_heads_loaded_encoder_kept(network, tokenizer, tmp_path):
    torch.manual_seed(1)
    other = MedCoSSModel(**TINY)
    torch.save(other.state_dict(), tmp_path / "model.pt")
    scorer = network_with_stage_heads(network, tmp_path / "model.pt")
    assert torch.equal(scorer.mae_decoder.pred_3d.weight, other.mae_decoder.pred_3d.weight)
    assert torch.equal(scorer.mlm_head.dense.weight, other.mlm_head.dense.weight)
    # the tied MLM output weight is the current text embedding, not the saved one
    assert torch.equal(scorer.encoder.text_embed.weight, network.encoder.text_embed.weight)
    assert torch.equal(scorer.encoder.text_embed.weight, scorer.mlm_head.decoder.weight)
    acc = text_mlm_accuracy(scorer, tokenizer, n_items=40)
    assert acc == text_mlm_accuracy(scorer, tokenizer, n_items=40) and 0.0 <= acc < 0.2
    torch.save({"encoder.text_embed.weight": torch.zeros(3)}, tmp_path / "no_heads.pt")
    with pytest.raises(ValueError, match="no_heads.pt"):
        network_with_stage_heads(network, tmp_path / "no_heads.pt")


def test_evaluate_stage_fills_the_row_of_its_stage(network, tmp_path):
    row = evaluate_stage(network, tmp_path, "stage_xray", ["xray"], probes=["xray"], img_size_2d=(64, 64), current="xray")
    assert tuple(row) == CSV_COLUMNS and row["after"] == "stage_xray"
    assert row["xray"] is not None and row["xray_mae_mse"] is not None
    assert row["text"] is None and row["ct"] is None and row["text_mlm_acc"] is None


def test_ct_probe_preprocessing_follows_the_run_settings(sample_data, tmp_path):
    """--ct_spacing and --hu_window recorded by a run's CT stage reach its probe; without them, the bundle's defaults."""
    run = tmp_path / "run"
    _record_settings(run, "ct", {"ct_spacing": [2.0, 2.0, 4.0], "hu_window": [-500, 500]})
    recorded = stage_settings(run, "ct")
    assert recorded == {"ct_spacing": [2.0, 2.0, 4.0], "hu_window": [-500, 500]}
    assert stage_settings(tmp_path / "no_run", "ct") == {}

    overridden = image_probe_transforms("ct", recorded)
    default = image_probe_transforms("ct", stage_settings(tmp_path / "no_run", "ct"))
    assert np.allclose(_step(overridden, Spacingd).spacing_transform.pixdim, [2.0, 2.0, 4.0])
    assert np.allclose(_step(default, Spacingd).spacing_transform.pixdim, [1.5, 1.5, 3.0])
    assert _step(overridden, ScaleIntensityRanged).scaler.a_min == -500
    assert _step(default, ScaleIntensityRanged).scaler.a_min == -1000

    # a 64 x 64 x 16 sub-volume at 1.5 x 1.5 x 3 mm of 250 HU, as the ct_cls items are
    path = tmp_path / "sub_volume.nii.gz"
    nib.save(nib.Nifti1Image(np.full((64, 64, 16), 250.0, np.float32), np.diag([1.5, 1.5, 3.0, 1.0])), str(path))
    same = default({"image": str(path), "label": 1})["image"]
    assert same.shape == (1, 64, 64, 16) and torch.allclose(same, torch.tensor(0.625))  # 250 HU in [-1000, 1000]
    resampled = overridden({"image": str(path), "label": 1})["image"]
    # 96 x 96 x 48 mm at 2 x 2 x 4 mm is 48 x 48 x 12 voxels, padded to the network's 64 x 64 x 16
    assert resampled.shape == (1, 64, 64, 16)
    assert int(torch.isclose(resampled, torch.tensor(0.75)).sum()) == 48 * 48 * 12  # 250 HU in [-500, 500]
    assert int((resampled == 0).sum()) == 64 * 64 * 16 - 48 * 48 * 12


def test_mri_probe_items_are_resampled_but_not_normalised_again(sample_data, tmp_path):
    """MRI probe sub-volumes are normalised over their whole volume already: the bundle's spacing applies, its
    normalisation does not."""
    _record_settings(tmp_path, "mri", {"mri_spacing": [2.0, 2.0, 4.0]})
    transforms = image_probe_transforms("mri", stage_settings(tmp_path, "mri"))
    assert np.allclose(_step(transforms, Spacingd).spacing_transform.pixdim, [2.0, 2.0, 4.0])
    assert not any(isinstance(t, NormalizeIntensityd) for t in transforms.transforms)
