"""Each stage bundle runs through MONAI's bundle API on the real sample data and writes its outputs."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from stage_utils import BUNDLES, read_history, run_stage

from medcoss_monai import MODALITIES
from medcoss_monai.layout import read_bundle


@pytest.fixture(scope="module")
def curriculum(sample_data, tmp_path_factory):
    """The five stages, one after another, one short epoch each (each starts from the previous)."""
    out = tmp_path_factory.mktemp("curriculum")
    return out, {m: run_stage(m, out) for m in MODALITIES}


@pytest.mark.parametrize("modality", MODALITIES)
def test_stage_outputs(curriculum, modality):
    _, stages = curriculum
    folder = stages[modality]
    for name in ("model.pt", "checkpoint_epoch=1.pt", "loss_history.csv", "stage.json", "buffer.json"):
        assert (folder / name).is_file(), name
    rows = read_history(folder)
    assert list(rows[0])[:2] == ["epoch", "loss"] and [r["epoch"] for r in rows] == ["1"]
    assert np.isfinite(float(rows[0]["loss"]))
    state = torch.load(folder / "model.pt", weights_only=True)
    assert any(k.startswith("encoder.") for k in state)
    info = json.loads((folder / "stage.json").read_text())
    assert info["modality"] == modality and info["network"]["hidden_size"] == 192
    if modality == "report":
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
        assert tok.mask_token == "<mask>"
        text = (folder / "recon_tokens.txt").read_text()
        assert "predicted" in text and "masked input" in text
    else:
        pngs = sorted(folder.glob("recon_*.png"))
        assert pngs
        img = np.asarray(Image.open(pngs[0]))
        third = (img.shape[1] - 8) // 3
        original, masked = img[:, :third].astype(float), img[:, third + 4 : 2 * third + 4].astype(float)
        # real anatomy/tissue has structure, and masking blanks most of it
        assert original.std() > 5 and not np.array_equal(original, masked)


def test_later_stage_starts_from_previous(curriculum):
    _, stages = curriculum
    prev = torch.load(stages["ct"] / "model.pt", weights_only=True)
    fresh = read_bundle(BUNDLES / "stage_mri.json")
    untrained = fresh.get_parsed_content("network_def").state_dict()
    # the MRI stage trained one short epoch from CT's weights: far closer to them than to a fresh init
    mri = torch.load(stages["mri"] / "model.pt", weights_only=True)
    key = "encoder.blocks.0.mlp.linear1.weight" if "encoder.blocks.0.mlp.linear1.weight" in mri else next(
        k for k in mri if k.startswith("encoder.blocks.0") and k.endswith("weight") and mri[k].ndim == 2
    )
    assert (mri[key] - prev[key]).norm() < (mri[key] - untrained[key]).norm()


def test_all_stage_bundles_share_one_architecture():
    nets = []
    for m in MODALITIES:
        parser = read_bundle(BUNDLES / f"stage_{m}.json")
        network_def = parser.get("network_def")
        sizes = {v[1:]: parser.get(v[1:]) for v in network_def.values() if isinstance(v, str) and v.startswith("@")}
        nets.append((network_def, sizes))
        for part in ("deterministic_transforms", "random_transforms", "preprocessing"):
            assert part in parser.get("train")
    assert all(n == nets[0] for n in nets)


def test_report_loss_falls(sample_data, tmp_path):
    folder = run_stage("report", tmp_path, epochs=4, max_items=128, base_lr=0.02)
    losses = [float(r["loss"]) for r in read_history(folder)]
    assert len(losses) == 4 and losses[-1] < losses[0] - 0.5, losses


def test_image_loss_falls(sample_data, tmp_path):
    folder = run_stage("xray", tmp_path, epochs=4, **{"train#repeats": 8})
    losses = [float(r["loss"]) for r in read_history(folder)]
    assert losses[-1] < losses[0], losses
