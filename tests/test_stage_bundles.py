"""Each stage bundle runs through MONAI's bundle API on the real sample data and writes its outputs."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from stage_utils import BUNDLES, read_history, run_stage

from medcoss_monai import MODALITIES
from medcoss_monai.errors import CheckpointError, find_user_error
from medcoss_monai.layout import read_bundle, stage_modalities


@pytest.fixture(scope="module")
def curriculum(sample_data, tmp_path_factory):
    """The five stages, one after another, one short epoch each (each starts from the previous)."""
    out = tmp_path_factory.mktemp("curriculum")
    return out, {m: run_stage(m, out) for m in MODALITIES}


@pytest.mark.slow
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


ARCHITECTURE_IDS = ("hidden_size", "num_layers", "num_heads", "decoder_hidden_size", "decoder_layers", "decoder_heads",
                    "vocab_size", "max_text_len", "img_size_2d", "patch_size_2d", "img_size_3d", "patch_size_3d",
                    "network_def")


@pytest.mark.parametrize("modality", sorted(stage_modalities()))
def test_every_stage_bundle_takes_the_architecture_from_the_shared_model(modality):
    """A size written into one stage bundle would break the chain: each id must be a copy linked to common/model.json
    (test_library_install checks that every linked copy equals its common entry)."""
    bundle = Path(stage_modalities()[modality]["bundle"])
    links = json.loads((bundle.parent / "common" / "links.json").read_text())["links"].get(bundle.name, {})
    own = {k for k in ARCHITECTURE_IDS if links.get(k) != f"common/model.json#{k}"}
    assert not own, f"{bundle.name} sets its own architecture: {sorted(own)}"


def test_chaining_a_stage_of_another_architecture_is_refused(curriculum, tmp_path):
    out, stages = curriculum
    shutil.copytree(stages["xray"], tmp_path / "stage_xray")
    with pytest.raises(Exception) as info:
        run_stage("ct", tmp_path, previous_stage="xray", hidden_size=96, num_heads=4)
    err = find_user_error(info.value)
    assert isinstance(err, CheckpointError), repr(info.value)
    message = str(err)
    assert str(tmp_path / "stage_xray" / "model.pt") in message and "(8192, 192) vs this stage (8192, 96)" in message, message
    assert not (tmp_path / "stage_ct" / "model.pt").exists()


@pytest.mark.slow
def test_report_loss_falls(sample_data, tmp_path):
    folder = run_stage("report", tmp_path, epochs=4, max_items=128, base_lr=0.02)
    losses = [float(r["loss"]) for r in read_history(folder)]
    assert len(losses) == 4 and losses[-1] < losses[0] - 0.5, losses


def test_image_loss_falls(sample_data, tmp_path):
    folder = run_stage("xray", tmp_path, epochs=4, **{"train#repeats": 8})
    losses = [float(r["loss"]) for r in read_history(folder)]
    assert losses[-1] < losses[0], losses
