"""Linear probes, pretext scores and the probe handler, with real sample data and a real MedCoSSModel."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from medcoss_monai.handlers.probes import (
    CSV_COLUMNS,
    ProbeHandler,
    image_probe,
    linear_probe,
    mae_mse,
    network_with_stage_heads,
    probe_tokenizer,
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
    res = image_probe(network, "xray", img_size_2d=(64, 64))
    assert 0.5 <= res["auc"] <= 1.0
    a = mae_mse(network, "ct", img_size_3d=(32, 32, 16))
    b = mae_mse(network, "ct", img_size_3d=(32, 32, 16))
    assert a == b and 0.0 < a < 10.0
    assert mae_mse(network, "ct", img_size_3d=(32, 32, 16), seed=1) != a


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


def test_probe_handler_appends_row(network, tmp_path):
    handler = ProbeHandler(network, tmp_path, "xray", trained=["xray"], probes=["xray"], img_size_2d=(64, 64))
    row = handler(None)
    assert row["after"] == "stage_xray" and row["xray"] is not None and row["xray_mae_mse"] is not None
    assert row["text"] is None and row["text_mlm_acc"] is None
    handler(None)  # the same stage again replaces its row
    with open(tmp_path / "probes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and tuple(rows[0]) == CSV_COLUMNS
