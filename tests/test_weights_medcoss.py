"""The MedCoSS released-checkpoint format: import, rebuild, token features, text attention, refusals, CLI.

The checkpoints here are written with the key names and shapes of the authors' ``Unified_Model``
(reference: yeerwen/MedCoSS ``model/Unimodel.py``, ``model/Base_module.py``; facts, written out below),
at small sizes with random values, and saved as the reference saves them (``util/misc.py``
``save_model``: the state dict under ``"model"`` beside the ``argparse.Namespace`` of its arguments).
Inputs are the real sample data: report texts (tokenized with a WordPiece tokenizer built from them, as
Bio_ClinicalBERT's is WordPiece), a chest film and a CT volume.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import medcoss_monai
from medcoss_monai.errors import CheckpointError
from medcoss_monai.networks import MedCoSSModel, MedCoSSReferenceEncoder
from medcoss_monai.networks.reference_encoder import reference_text_attention_bias
from medcoss_monai.weights import convert_medcoss, import_checkpoint, load_pretrained

SMALL = dict(c=48, layers=2, mlp=96, vocab=600, text_len=64, rows_2d=64, rows_3d=27)
"""12 heads of 4 channels; 2D images up to 128x128 (64 patches), volumes up to 48^3 (27 patches)."""


def reference_shapes(c, layers, mlp, vocab, text_len, rows_2d, rows_3d, frames=8, p=16, heads_out=True):
    """Key -> shape of the reference ``Unified_Model.state_dict()`` (encoder, plus some keys it does not use)."""
    shapes = {"cls_token": (1, 1, c)}
    for i in range(layers):
        k = f"fused_encoder.layers.{i}."
        shapes.update({
            k + "gamma_1": (c,), k + "gamma_2": (c,),
            k + "self_attn.in_proj_weight": (3 * c, c), k + "self_attn.in_proj_bias": (3 * c,),
            k + "self_attn.out_proj.weight": (c, c), k + "self_attn.out_proj.bias": (c,),
            k + "linear1.weight": (mlp, c), k + "linear1.bias": (mlp,),
            k + "linear2.weight": (c, mlp), k + "linear2.bias": (c,),
            k + "norm1.weight": (c,), k + "norm1.bias": (c,), k + "norm2.weight": (c,), k + "norm2.bias": (c,),
        })  # fmt: skip
    shapes.update({
        "token_embed.embeddings.weight": (vocab, c),
        "token_embed.embeddings_norm.weight": (c,), "token_embed.embeddings_norm.bias": (c,),
        "token_embed.embeddings_pos.position_embeddings.weight": (text_len, c),
        "token_embed.embeddings_token_type.weight": (2, c),
        "video_embed.embeddings_norm.weight": (c,), "video_embed.embeddings_norm.bias": (c,),
        "video_embed.embeddings_pos.position_embeddings.weight": (1600, c),
        "video_embed.embeddings_type.weight": (1, c),
        "video_embed.embeddings_st_pos_2D.spatial_pos_embed.weight": (rows_2d, c),
        "video_embed.embeddings_st_pos_2D.temporal_pos_embed.weight": (frames, c),
        "video_embed.embeddings_st_pos_3D.spatial_pos_embed.weight": (rows_3d, c),
        "video_embed.embeddings_st_pos_3D.temporal_pos_embed.weight": (frames, c),
        "video_embed.embeddings.weight": (c, 3, p, p), "video_embed.embeddings.bias": (c,),
        "video_embed.embeddings_3D.weight": (c, 1, p, p, p), "video_embed.embeddings_3D.bias": (c,),
    })  # fmt: skip
    if heads_out:
        shapes.update({"decoder_embed.weight": (32, c), "mask_token": (1, 1, 32), "mlm_head.bias": (vocab,)})
    return shapes


def reference_state(seed: int = 0, **sizes) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(s, generator=g) * 0.2 for k, s in reference_shapes(**{**SMALL, **sizes}).items()}
    for k in state:  # layer scales and norms near their trained ranges, so no layer is a no-op
        if k.endswith(("gamma_1", "gamma_2")):
            state[k] = state[k].abs() + 0.5
    return state


def save_released(state, path: Path) -> Path:
    """Save as the reference does: weights under "model" beside the run's arguments."""
    torch.save({"model": state, "epoch": 299, "args": argparse.Namespace(model="unified_vit", mask_ratio=0.75)}, path)
    return path


@pytest.fixture(scope="module")
def reports(datalist) -> list[str]:
    return [it["text"] for it in datalist("report")["training"][:200]]


def wordpiece_folder(folder: Path, texts: list[str]) -> Path:
    """A WordPiece tokenizer folder laid out as Bio_ClinicalBERT's on the hub (``vocab.txt``, a BERT ``config.json``),
    over the 400 most frequent words of ``texts``."""
    words = collections.Counter(w for r in texts for w in re.findall(r"[a-z]+|[^a-z\s]", r.lower()))
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(w for w, _ in words.most_common(400))]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": len(vocab)}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True}))
    return folder


@pytest.fixture(scope="module")
def wordpiece(tmp_path_factory, reports) -> Path:
    """The tokenizer folder over the real reports."""
    return wordpiece_folder(tmp_path_factory.mktemp("wordpiece"), reports)


@pytest.fixture(scope="module")
def imported(tmp_path_factory, wordpiece) -> tuple[Path, dict[str, torch.Tensor]]:
    folder = tmp_path_factory.mktemp("imported")
    state = reference_state()
    ckpt = save_released(state, folder / "checkpoint-299.pth")
    return import_checkpoint("medcoss", ckpt, folder / "stage", tokenizer=wordpiece), state


@pytest.fixture(scope="module")
def images(datalist) -> dict[str, torch.Tensor]:
    """A real chest film (2D, 3 channels as the reference reads it) and a crop of a real CT volume."""
    from monai.transforms import LoadImage

    from medcoss_monai.transforms import LoadXRay

    film = next(it["image"] for it in datalist("xray")["training"] + datalist("xray")["validation"])
    xray = F.interpolate(LoadXRay()(film).as_tensor()[None], size=(64, 96), mode="area")
    ct = LoadImage(ensure_channel_first=True, image_only=True)(datalist("ct")["training"][0]["image"]).as_tensor()
    c = [s // 2 for s in ct.shape[1:]]
    crop = ct[:, c[0] - 16 : c[0] + 16, c[1] - 24 : c[1] + 24, c[2] - 8 : c[2] + 8].float()
    crop = (crop.clamp(-1000, 1000) + 1000) / 2000
    return {"2d": xray.expand(-1, 3, -1, -1).float(), "3d": crop.permute(0, 3, 1, 2)[None].contiguous()}


def test_released_format_imports_to_a_stage_folder(imported):
    folder, state = imported
    assert sorted(p.name for p in folder.iterdir()) == ["model.pt", "stage.json", "tokenizer"]
    weights = torch.load(folder / "model.pt", weights_only=True)
    # the reference's fused projection and layer scales land where the encoder reads them
    assert torch.equal(weights["blocks.1.attn.qkv.weight"], state["fused_encoder.layers.1.self_attn.in_proj_weight"])
    assert torch.equal(weights["blocks.0.gamma_2"], state["fused_encoder.layers.0.gamma_2"])
    spatial_3d = state["video_embed.embeddings_st_pos_3D.spatial_pos_embed.weight"]
    assert torch.equal(weights["pos_embed_3d.spatial.weight"], spatial_3d)
    record = json.loads((folder / "stage.json").read_text())
    assert record["network"]["_target_"] == "medcoss_monai.networks.reference_encoder.MedCoSSReferenceEncoder"
    network = record["network"]
    assert (network["hidden_size"], network["num_layers"], network["vocab_size"]) == (48, 2, 600)
    # what the encoder does not use is named, not carried
    unused = {"decoder_embed.weight", "mlm_head.bias", "video_embed.embeddings_type.weight"}
    assert unused <= set(record["imported"]["ignored_keys"])
    assert "non-commercial" in record["imported"]["licence"]


def test_load_pretrained_rebuilds_the_network(imported):
    folder, state = imported
    for path in (folder, folder / "model.pt"):
        net = medcoss_monai.load_pretrained(path)
        assert isinstance(net, MedCoSSReferenceEncoder) and not net.training
        assert torch.equal(net.text_embed.token.weight, state["token_embed.embeddings.weight"])


def test_paper_size_format_maps_onto_the_reference_encoder():
    """The released sizes (768 channels, 12 layers, 49,411 text rows...) map onto the default encoder, key for key."""
    sizes = dict(c=768, layers=12, mlp=3072, vocab=49411, text_len=512, rows_2d=1024, rows_3d=4096)
    state = {k: torch.empty(s, device="meta") for k, s in reference_shapes(**sizes).items()}
    out = convert_medcoss(state)
    with torch.device("meta"):
        default = MedCoSSReferenceEncoder()
    assert {k: v.shape for k, v in out["state_dict"].items()} == {k: v.shape for k, v in default.state_dict().items()}
    assert {k: v for k, v in out["network"].items() if k != "_target_"} == default.config


def test_encode_tokens_of_real_inputs(imported, wordpiece, reports, images):
    from transformers import AutoTokenizer

    folder, _ = imported
    net = load_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
    batch = tok(reports[:3], padding="max_length", truncation=True, max_length=40, return_tensors="pt")
    assert int(batch["input_ids"][0, 0]) == tok.cls_token_id  # the text's class token is the tokenizer's [CLS]
    with torch.no_grad():
        text = net.encode_tokens(batch["input_ids"], "text", batch["attention_mask"])
        xray = net.encode_tokens(images["2d"], "2d")
        grey = net.encode_tokens(images["2d"][:, :1], "2d")
        ct = net.encode_tokens(images["3d"], "3d")
    assert text.shape == (3, 40, 48)
    assert xray.shape == (1, 1 + 4 * 6, 48) and ct.shape == (1, 1 + 1 * 2 * 3, 48)
    torch.testing.assert_close(grey, xray)  # a grey film is read as RGB
    # the class token leads: without layers the first output is the class token itself
    bare = MedCoSSReferenceEncoder(**{**net.config, "num_layers": 0}).eval()
    bare.load_state_dict(net.state_dict(), strict=False)
    for x, kind in ((images["2d"], "2d"), (images["3d"], "3d")):
        assert torch.equal(bare.encode_tokens(x, kind)[:, 0], net.cls_token[0].expand(1, -1))
    with pytest.raises(ValueError, match="kind '2d' takes"):
        net.encode_tokens(images["3d"], "2d")
    # the same outputs in the form of UnifiedEncoder's, for heads written for it; pooled without the class token
    with torch.no_grad():
        feats = net.forward_features(images["3d"])
        assert feats["grid"] == (1, 2, 3) and len(feats["hidden_states"]) == 2
        torch.testing.assert_close(feats["tokens"], ct[:, 1:])
        torch.testing.assert_close(feats["cls_token"], ct[:, 0])
        torch.testing.assert_close(net(images["3d"]), ct[:, 1:].mean(dim=1))
        real = batch["attention_mask"][..., None].float()
        torch.testing.assert_close(net(batch["input_ids"], batch["attention_mask"]), (text * real).sum(1) / real.sum(1))


def test_reference_mask_is_causal_and_padded_and_tiled_over_heads():
    """The bias equals the reference's construction, as nn.MultiheadAttention reads it (rows b * H + h)."""
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 1, 1, 0]])
    b, length, heads = 3, 5, 4
    causal = (torch.arange(length)[None, :] <= torch.arange(length)[:, None]).long()
    extended = (1.0 - causal[None] * mask[:, None, :]) * -10000.0  # (B, L, L)
    as_read = extended.repeat(heads, 1, 1).view(b, heads, length, length)
    assert torch.equal(reference_text_attention_bias(mask, heads), as_read)
    per_sample = reference_text_attention_bias(mask, heads, layout="per_sample")
    assert torch.equal(per_sample, extended[:, None].expand(-1, heads, -1, -1))
    padding_only = reference_text_attention_bias(mask, heads, causal=False, layout="per_sample")
    assert torch.equal(padding_only[:, 0, 0], (1.0 - mask) * -10000.0)


def test_text_attention_semantics(imported, wordpiece, reports):
    from transformers import AutoTokenizer

    folder, _ = imported
    tok = AutoTokenizer.from_pretrained(str(wordpiece))
    ids = tok(reports[3:5], padding="max_length", truncation=True, max_length=24, return_tensors="pt")["input_ids"]
    trained = load_pretrained(folder)
    nets = {
        (att, lay): MedCoSSReferenceEncoder.from_config({**trained.config, "text_attention": att, "text_mask_layout": lay})
        for att in ("causal", "padding") for lay in ("reference", "per_sample")
    }  # fmt: skip
    state = trained.state_dict()
    for net in nets.values():
        net.load_state_dict(state)
        net.eval()
    changed = ids.clone()
    changed[:, 10] = tok.convert_tokens_to_ids("[MASK]")
    full = torch.ones_like(ids)
    with torch.no_grad():
        causal = nets["causal", "per_sample"]
        a, b = causal.encode_tokens(ids, "text", full), causal.encode_tokens(changed, "text", full)
        # causal: a token sees only the tokens before it
        torch.testing.assert_close(a[:, :10], b[:, :10])
        assert not torch.allclose(a[:, 11:], b[:, 11:])
        bidir = nets["padding", "per_sample"]
        before = bidir.encode_tokens(ids, "text", full)[:, :10]
        assert not torch.allclose(before, bidir.encode_tokens(changed, "text", full)[:, :10])
        # a padded position is seen by no other token
        holed = full.clone()
        holed[:, 10] = 0
        a, b = causal.encode_tokens(ids, "text", holed), causal.encode_tokens(changed, "text", holed)
        keep = [i for i in range(24) if i != 10]
        torch.testing.assert_close(a[:, keep], b[:, keep])
        # reference layout: a text's features depend on the other texts' padding in its batch
        other = full.clone()
        other[1, 12:] = 0
        ref, own = nets["causal", "reference"], nets["causal", "per_sample"]
        assert not torch.allclose(ref.encode_tokens(ids, "text", full)[0], ref.encode_tokens(ids, "text", other)[0])
        torch.testing.assert_close(own.encode_tokens(ids, "text", full)[0], own.encode_tokens(ids, "text", other)[0])


@pytest.mark.parametrize(
    "key, damage",
    [
        ("fused_encoder.layers.1.gamma_2", "drop"),
        ("video_embed.embeddings_3D.weight", lambda t: t[:, :, :8]),
        ("token_embed.embeddings_norm.bias", lambda t: t[:-1]),
        ("cls_token", "drop"),
    ],
)
def test_a_checkpoint_not_of_the_format_is_refused_naming_the_key(tmp_path, key, damage):
    state = reference_state()
    if damage == "drop":
        del state[key]
    else:
        state[key] = damage(state[key])
    ckpt = save_released(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=re.escape(f"'{key}'")):
        import_checkpoint("medcoss", ckpt, tmp_path / "stage")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pth"]  # no folder, no temporary left


def test_a_stage_of_this_project_is_not_the_released_format(tmp_path):
    torch.save(MedCoSSModel(hidden_size=48, num_layers=1).state_dict(), tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="not a MedCoSS checkpoint.*'cls_token'"):
        import_checkpoint("medcoss", tmp_path / "model.pt", tmp_path / "stage")


def test_medcoss_model_encode_tokens_and_load_pretrained_of_a_trained_stage(tmp_path, images, reports, wordpiece):
    """This project's own network: the same interface, and a stage folder as a stage writes it rebuilds."""
    from ignite.engine import Engine
    from transformers import AutoTokenizer

    from medcoss_monai.handlers.stage_outputs import StageModelSaver

    model = MedCoSSModel(hidden_size=48, num_layers=1, num_heads=4, vocab_size=600, in_channels_2d=1,
                         img_size_2d=(64, 96), img_size_3d=(32, 48, 16))  # fmt: skip
    engine = Engine(lambda e, b: None)
    engine.state.epoch, engine.state.iteration = 1, 1
    StageModelSaver(tmp_path / "stage_xray", model, stage_info={"modality": "xray"})(engine)
    net = load_pretrained(tmp_path / "stage_xray")
    assert isinstance(net, MedCoSSModel) and not net.training
    ids = AutoTokenizer.from_pretrained(str(wordpiece))(reports[:2], padding=True, return_tensors="pt")
    with torch.no_grad():
        text = net.encode_tokens(ids["input_ids"], "text", ids["attention_mask"])
        xray = net.encode_tokens(images["2d"][:, :1], "2d")
        ct = net.encode_tokens(images["3d"].permute(0, 1, 3, 4, 2).contiguous(), "3d")
    assert text.shape == (2, ids["input_ids"].shape[1], 48)
    assert xray.shape == (1, 4 * 6, 48) and ct.shape == (1, 2 * 3 * 2, 48)
    with pytest.raises(ValueError, match="kind 'text' was given for a 2d input"):
        net.encode_tokens(images["2d"][:, :1], "text")


@pytest.mark.slow
def test_cli_end_to_end(tmp_path, wordpiece):
    """``python -m medcoss_monai.weights import`` in its own process: a released file becomes a stage folder."""
    ckpt = save_released(reference_state(seed=3), tmp_path / "MedCoSS.pth")
    command = [sys.executable, "-m", "medcoss_monai.weights", "import", "--format", "medcoss", "--checkpoint", str(ckpt)]
    done = subprocess.run(
        [*command, "--out", str(tmp_path / "stage"), "--tokenizer", str(wordpiece)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "non-commercial" in done.stdout
    net = load_pretrained(tmp_path / "stage")
    assert torch.equal(net.blocks[1].mlp.linear2.bias, reference_state(seed=3)["fused_encoder.layers.1.linear2.bias"])
    assert (tmp_path / "stage" / "tokenizer" / "tokenizer.json").is_file()


def test_cli_refusals_name_the_problem(tmp_path, monkeypatch):
    """The command line's refusals (in this process; its hooks are left out so pytest keeps its own)."""
    from medcoss_monai.weights import __main__ as cli

    monkeypatch.setattr(cli, "install_run_hooks", lambda: None)
    state = reference_state()
    del state["token_embed.embeddings_pos.position_embeddings.weight"]
    bad = save_released(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="'token_embed.embeddings_pos.position_embeddings.weight'"):
        cli.main(["import", "--format", "medcoss", "--checkpoint", str(bad), "--out", str(tmp_path / "bad")])
    # a MedCoSS file given as BrainMVP's is refused by the BrainMVP converter, naming what it lacks
    with pytest.raises(CheckpointError, match="not a BrainMVP UniFormer checkpoint.*'encoder.uniformer.patch_embed1.proj.weight'"):
        cli.main(["import", "--format", "brainmvp_uniformer", "--checkpoint", str(bad), "--out", str(tmp_path / "brain")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pth"]
