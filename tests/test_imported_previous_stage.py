"""An imported MedCoSS stage (the authors' released format) continues the curriculum as a previous stage.

The released checkpoint is stood in for by a randomly initialised :class:`MedCoSSReferenceEncoder` of small
sizes, saved as the reference saves it (``{"model": state_dict}`` with the reference key names) and imported
with ``python -m medcoss_monai.weights import``. A CT stage on the real sample volumes then continues it.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from stage_utils import BUNDLES, REPO, run_stage

from medcoss_monai.bundle import find_buffers
from medcoss_monai.layout import read_bundle
from medcoss_monai.networks.heads import as_encoder
from medcoss_monai.networks import MedCoSSModel, MedCoSSReferenceEncoder
from medcoss_monai.weights import load_pretrained
from medcoss_monai.weights.medcoss_format import encoder_key_shapes

SIZES = dict(hidden_size=32, num_layers=2, num_heads=4, mlp_dim=64, vocab_size=120, max_text_len=32,
             spatial_rows_2d=64, spatial_rows_3d=32)
"""Small sizes: 4 heads of 8 channels; 2D images up to 128x128, volumes up to 32 patches of 16^3."""
TARGET = "medcoss_monai.networks.reference_encoder.MedCoSSReferenceEncoder"


def released_checkpoint(path: Path, seed: int = 0) -> MedCoSSReferenceEncoder:
    """A random reference encoder saved in the released format; returns the encoder."""
    torch.manual_seed(seed)
    encoder = MedCoSSReferenceEncoder(**SIZES)
    ours = encoder.state_dict()
    state = {ref: ours[key].clone() for ref, (key, _) in encoder_key_shapes(encoder.config).items()}
    torch.save({"model": state}, path)
    return encoder


def _encoder_def(encoder: MedCoSSReferenceEncoder) -> dict:
    return {"_target_": TARGET, **encoder.config}


# ----- the reference encoder under MAE masking (mechanics: synthetic tensors)


def test_masked_encoder_sees_only_the_visible_patches():
    torch.manual_seed(1)
    encoder = MedCoSSReferenceEncoder(**SIZES).eval()
    x = torch.rand(2, 1, 64, 64, 16)
    noise = torch.rand(2, 16)
    out = encoder.forward_masked(x, mask_ratio=0.75, noise=noise)
    assert out["tokens"].shape == (2, 4, 32) and out["cls_token"].shape == (2, 32)
    assert out["mask"].sum(1).tolist() == [12.0, 12.0] and out["grid"] == (4, 4, 1)
    patches = encoder.patchify(x)
    masked, visible = out["mask"][0].bool(), ~out["mask"][0].bool()
    changed = patches.clone()
    changed[0, masked] = torch.rand_like(changed[0, masked])  # only what the encoder must not see
    same = encoder.forward_masked(encoder.unpatchify(changed, (4, 4, 1)), mask_ratio=0.75, noise=noise)
    assert torch.allclose(same["tokens"], out["tokens"], atol=1e-6)
    changed[0, visible] = torch.rand_like(changed[0, visible])
    other = encoder.forward_masked(encoder.unpatchify(changed, (4, 4, 1)), mask_ratio=0.75, noise=noise)
    assert not torch.allclose(other["tokens"][0], out["tokens"][0], atol=1e-4)
    assert torch.allclose(other["tokens"][1], out["tokens"][1], atol=1e-6), "one sample never sees another"
    unmasked = encoder.forward_masked(x)  # mask_ratio 0: the unmasked features, in order
    assert torch.allclose(unmasked["tokens"], encoder.forward_features(x)["tokens"])


def test_pretext_network_on_the_reference_encoder():
    torch.manual_seed(2)
    encoder = MedCoSSReferenceEncoder(**SIZES)
    model = MedCoSSModel(encoder_def=_encoder_def(encoder), decoder_hidden_size=16, decoder_layers=1, decoder_heads=2)
    model.encoder.load_state_dict(encoder.state_dict())
    model.eval(), encoder.eval()
    x = torch.rand(2, 1, 64, 64, 16)
    mae = model(x, pretext="mae", mask_ratio=0.75)
    assert mae["pred"].shape == mae["target"].shape == (2, 16, 16**3)
    enc = model(x, pretext="encode", mask_ratio=0.75, noise=mae["noise"])
    reference = encoder.forward_masked(x, mask_ratio=0.75, noise=mae["noise"])
    # the distilled tokens are the whole encoder output, class token first (reference: feature_embed)
    assert torch.allclose(enc["latent"], torch.cat([reference["cls_token"][:, None], reference["tokens"]], 1), atol=1e-6)
    assert torch.allclose(model(x), encoder(x)) and torch.equal(model.encode_tokens(x, "3d"), encoder.encode_tokens(x, "3d"))
    film = torch.rand(2, 1, 32, 32)  # a grey film: read as 3 equal channels, predicted as such
    assert model(film, pretext="mae")["target"].shape == (2, 4, 16 * 16 * 3)
    ids = torch.randint(0, SIZES["vocab_size"], (2, 12))
    assert model(ids, attention_mask=torch.ones_like(ids), pretext="mlm")["logits"].shape == (2, 12, SIZES["vocab_size"])
    assert model.mlm_head.decoder.weight is model.encoder.text_embed.token.weight
    assert as_encoder(model) is model.encoder  # fine-tuning and export of a stage trained after an imported one
    # rebuilt from its record, also where MONAI instantiates the nested encoder config (export, evaluation)
    record = json.loads(json.dumps({"_target_": "medcoss_monai.networks.medcoss.MedCoSSModel", **model.config}))
    for rebuilt in (MedCoSSModel.from_config(record), ConfigParser({"n": record}).get_parsed_content("n")):
        assert rebuilt.config == model.config
        rebuilt.load_state_dict(model.state_dict())


# ----- a CT stage continuing an imported stage (real sample volumes)


@pytest.fixture(scope="module")
def imported_run(tmp_path_factory, sample_data):
    run = tmp_path_factory.mktemp("imported_run")
    encoder = released_checkpoint(run / "released.pth")
    cmd = [sys.executable, "-m", "medcoss_monai.weights", "import", "--format", "medcoss", "--checkpoint",
           str(run / "released.pth"), "--out", str(run / "stage_released"), "--num_heads", str(SIZES["num_heads"])]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return run, encoder


CT = {"previous_stage": "released", "train#repeats": 1, "batch_size": 2, "crops_per_volume": 2, "progress_bar": False}


@pytest.mark.slow
def test_ct_stage_network_and_teacher_are_the_imported_model(imported_run, caplog):
    run, encoder = imported_run
    imported = torch.load(run / "stage_released" / "model.pt", weights_only=True)
    caplog.set_level(logging.INFO)
    parser = read_bundle(BUNDLES / "stage_ct.json", {**CT, "output_dir": str(run), "device": "$torch.device('cpu')"})
    parser.parse()
    network = parser.get_parsed_content("network")
    assert isinstance(network.encoder, MedCoSSReferenceEncoder) and network.config["encoder_def"] == _encoder_def(encoder)
    own = network.encoder.state_dict()
    assert own.keys() == imported.keys() and all(torch.equal(own[k], imported[k]) for k in own)
    assert "starts from the imported weights" in caplog.text

    teacher = parser.get_parsed_content("teacher")
    assert teacher is not network and not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    assert all(torch.equal(v, imported[k]) for k, v in teacher.encoder.state_dict().items())
    x, noise = torch.rand(2, 1, 64, 64, 16), torch.rand(2, 16)
    expected = load_pretrained(run / "stage_released").forward_masked(x, mask_ratio=0.75, noise=noise)
    latent = teacher(x, pretext="encode", mask_ratio=0.75, noise=noise)["latent"]
    assert torch.allclose(latent[:, 1:], expected["tokens"], atol=1e-6) and torch.allclose(latent[:, 0], expected["cls_token"])
    handlers = [h for h in parser.get("train#handlers") if isinstance(h, dict)]
    handler = next(h for h in handlers if "FeatureDistillation" in str(h.get("_target_")))
    assert handler["teacher"] == "@teacher"

    caplog.clear()
    assert find_buffers(run, "ct", "released") == {}
    assert "did not release the buffer" in caplog.text and "rehearses nothing" in caplog.text


@pytest.mark.slow
def test_ct_stage_continues_the_imported_stage_and_the_forgetting_matrix_scores_it(imported_run, datalist):
    from medcoss_monai.evaluation.forgetting import evaluate_run

    run, encoder = imported_run
    stage = run_stage("ct", run, epochs=1, **CT)
    record = json.loads((stage / "stage.json").read_text())
    assert record["previous_stage"] == "released" and record["network"]["encoder_def"] == _encoder_def(encoder)
    buffer = json.loads((stage / "buffer.json").read_text())
    ct_images = {Path(it["image"]).resolve() for it in datalist("ct")["training"]}
    assert buffer["items"] and {Path(it["image"]).resolve() for it in buffer["items"]} <= ct_images

    # trained from the imported weights: one epoch moved them a little, far less than a fresh start differs
    imported = torch.load(run / "stage_released" / "model.pt", weights_only=True)
    trained = {k[len("encoder."):]: v for k, v in torch.load(stage / "model.pt", weights_only=True).items()
               if k.startswith("encoder.")}
    fresh = MedCoSSReferenceEncoder(**SIZES).state_dict()
    moved = sum((trained[k] - imported[k]).abs().sum() for k in imported)
    elsewhere = sum((fresh[k] - imported[k]).abs().sum() for k in imported)
    assert trained.keys() == imported.keys() and 0 < moved < 0.05 * elsewhere
    assert isinstance(load_pretrained(stage).encoder, MedCoSSReferenceEncoder)

    rows, _ = evaluate_run(run, ["released", "ct"], probes=("ct",), write=False, verbose=False)
    assert [r["after"] for r in rows] == ["scratch", "stage_released", "stage_ct"]
    assert all(r["ct"] is not None for r in rows) and rows[2]["ct_mae_mse"] is not None
    assert rows[1]["ct_mae_mse"] is None  # the imported stage has no pretext column of its own
