"""The BrainMVP released-checkpoint formats: import, rebuild, the reference's axis order and norms, refusals,
and fine-tuning of an imported stage with a missing contrast filled by its imported template.

The checkpoints here are written with the key names and shapes of the authors' ``RecModel``
(reference: shaohao011/BrainMVP ``models/Uniformer.py``, ``models/uniformer_blocks.py``, ``models/Unet.py``;
facts, written out below), at small sizes with random values, and saved as its ``main.py`` saves them
(``{"state_dict": ..., "current_epoch", "optimizer", ...}``, keys prefixed ``module.`` by DDP). Fine-tuning
runs on the real sample task (ICBM 2009c T1 + T2 slabs with CerebrA regions).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from monai.bundle import ConfigWorkflow

import medcoss_monai
from medcoss_monai.apps.brainmvp.stage_network import BrainMVPStageNetwork
from medcoss_monai.apps.brainmvp.unet import BrainMVPUNet
from medcoss_monai.apps.brainmvp.uniformer import ChannelLayerNorm, UniFormerUNETR
from medcoss_monai.errors import BadInputError, CheckpointError
from medcoss_monai.weights import import_checkpoint
from tests.stage_utils import BUNDLES

FINETUNE = BUNDLES / "finetune_brainmvp_seg.json"
WIDTHS, FEATURE, BOX = (8, 16, 64, 64), 8, (40, 48, 36)
TEMPLATE_ORDER = ("flair", "t1", "t1ce", "t2", "mra", "pd", "dwi", "adc")  # the reference's rows; its t1c is t1ce
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def uniformer_shapes(widths=WIDTHS, depths=(1, 1, 1, 1), feature=FEATURE, rows=8, box=BOX) -> dict[str, tuple]:
    """Keys and shapes of the reference UniFormer ``RecModel`` (2^3 patch embeddings, MLP ratio 4)."""
    e, shapes, previous = "encoder.uniformer.", {}, 1
    for s, (c, depth) in enumerate(zip(widths, depths), start=1):
        shapes.update({f"{e}patch_embed{s}.proj.weight": (c, previous, 2, 2, 2), f"{e}patch_embed{s}.proj.bias": (c,),
                       f"{e}patch_embed{s}.norm.weight": (c,), f"{e}patch_embed{s}.norm.bias": (c,)})  # fmt: skip
        for j in range(depth):
            b = f"{e}blocks{s}.{j}."
            shapes.update({b + "pos_embed.weight": (c, 1, 3, 3, 3), b + "pos_embed.bias": (c,)})
            if s <= 2:  # CBlock
                shapes.update({f"{b}{n}.{k}": () if k == "num_batches_tracked" else (c,) for n in ("norm1", "norm2") for k in BN})
                shapes.update({b + "conv1.weight": (c, c, 1, 1, 1), b + "conv1.bias": (c,), b + "attn.weight": (c, 1, 5, 5, 5),
                               b + "attn.bias": (c,), b + "conv2.weight": (c, c, 1, 1, 1), b + "conv2.bias": (c,),
                               b + "mlp.fc1.weight": (4 * c, c, 1, 1, 1), b + "mlp.fc1.bias": (4 * c,),
                               b + "mlp.fc2.weight": (c, 4 * c, 1, 1, 1), b + "mlp.fc2.bias": (c,)})  # fmt: skip
            else:  # SABlock
                shapes.update({b + "norm1.weight": (c,), b + "norm1.bias": (c,), b + "attn.qkv.weight": (3 * c, c),
                               b + "attn.qkv.bias": (3 * c,), b + "attn.proj.weight": (c, c), b + "attn.proj.bias": (c,),
                               b + "norm2.weight": (c,), b + "norm2.bias": (c,), b + "mlp.fc1.weight": (4 * c, c),
                               b + "mlp.fc1.bias": (4 * c,), b + "mlp.fc2.weight": (c, 4 * c), b + "mlp.fc2.bias": (c,)})  # fmt: skip
        previous = c
    shapes.update({f"{e}norm.{k}": () if k == "num_batches_tracked" else (widths[-1],) for k in BN})
    levels = [(widths[3], widths[2]), (widths[2], widths[1]), (widths[1], widths[0]), (widths[0], feature)]
    for n, (i, o) in zip((5, 4, 3, 2), levels):
        shapes.update({f"decoder.decoder{n}.transp_conv.conv.weight": (i, o, 2, 2, 2),
                       f"decoder.decoder{n}.conv_block.conv1.conv.weight": (o, 2 * o, 3, 3, 3)})  # fmt: skip
    shapes.update({"decoder.proj1.proj.weight": (feature, 1, 3, 3, 3), "decoder.proj1.norm.weight": (feature,),
                   "decoder.out_1.conv.conv.weight": (1, feature, 1, 1, 1), "decoder.out_1.conv.conv.bias": (1,),
                   "rep_template": (rows, *box)})  # fmt: skip
    return shapes


def unet_shapes(c: int = 8, box=BOX) -> dict[str, tuple]:
    """Keys and shapes of the reference U-Net ``RecModel`` (group norms, 1/2/2/4 residual blocks)."""
    shapes: dict[str, tuple] = {"conv1a.weight": (c, 1, 3, 3, 3), "conv1a.bias": (c,)}

    def block(name, w):
        for n in ("gn1", "gn2"):
            shapes.update({f"{name}.{n}.weight": (w,), f"{name}.{n}.bias": (w,)})
        for n in ("conv1", "conv2"):
            shapes.update({f"{name}.{n}.weight": (w, w, 3, 3, 3), f"{name}.{n}.bias": (w,)})

    for names, w, down in ((["conv1b"], c, 2 * c), (["conv2a", "conv2b"], 2 * c, 4 * c), (["conv3a", "conv3b"], 4 * c, 8 * c),
                           (["conv4a", "conv4b", "conv4c", "conv4d"], 8 * c, None)):  # fmt: skip
        for name in names:
            block(name, w)
        if down:
            k = {c: 1, 2 * c: 2, 4 * c: 3}[w]
            shapes.update({f"ds{k}.weight": (down, w, 3, 3, 3), f"ds{k}.bias": (down,)})
    for up, i, o in (("up4", 8 * c, 4 * c), ("up3", 4 * c, 2 * c), ("up2", 2 * c, c)):
        shapes.update({f"{up}conva.weight": (o, i, 1, 1, 1), f"{up}conva.bias": (o,)})
        block(f"{up}convb", o)
    shapes.update({"up1conv.weight": (1, c, 1, 1, 1), "up1conv.bias": (1,), "rep_template": (8, *box)})
    return shapes


def random_state(shapes: dict[str, tuple], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, s in shapes.items():
        if k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(1500)
        elif k == "rep_template":
            state[k] = torch.rand(s, generator=g)
        elif k.endswith(("running_var",)) or re.search(r"(norm\w*|gn\d)\.weight$", k):
            state[k] = torch.rand(s, generator=g) + 0.5  # norms near their trained range, no layer a no-op
        else:
            state[k] = torch.randn(s, generator=g) * 0.2
    return state


def save_released(state: dict[str, torch.Tensor], path: Path, ddp: bool = True) -> Path:
    """Save as the reference's main.py does (after DDP wrapping: ``module.`` keys)."""
    weights = {("module." + k if ddp else k): v for k, v in state.items()}
    torch.save({"current_epoch": 1500, "state_dict": weights, "optimizer": {"state": {}, "param_groups": []}, "val_best": 1e8}, path)
    return path


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    folder = tmp_path_factory.mktemp("brainmvp")
    state = random_state(uniformer_shapes())
    return import_checkpoint("brainmvp_uniformer", save_released(state, folder / "BrainMVP_uniformer.pt"), folder / "stage"), state


def test_uniformer_format_imports_to_a_stage_folder(imported):
    folder, state = imported
    assert sorted(p.name for p in folder.iterdir()) == ["model.pt", "stage.json"]
    weights = torch.load(folder / "model.pt", weights_only=True)
    e = "encoder.uniformer."
    torch.testing.assert_close(weights["backbone.encoder.stages.3.0.transformer.attn.qkv.weight"], state[e + "blocks4.0.attn.qkv.weight"])
    torch.testing.assert_close(weights["backbone.encoder.stages.1.0.mlp.2.weight"], state[e + "blocks2.0.mlp.fc2.weight"])
    torch.testing.assert_close(weights["backbone.encoder.norm.running_var"], state[e + "norm.running_var"])
    torch.testing.assert_close(weights["backbone.decoder.0.transp_conv.conv.weight"], state["decoder.decoder5.transp_conv.conv.weight"])
    # the encoder's kernels act on (H, W, D) here, on (D, H, W) in the reference
    kernel = state[e + "blocks1.0.attn.weight"]
    torch.testing.assert_close(weights["backbone.encoder.stages.0.0.aggregate.1.weight"], kernel.permute(0, 1, 3, 4, 2))
    # the templates under this project's contrast names, in a 1 mm box centred on the MNI box's centre
    for row, name in enumerate(TEMPLATE_ORDER):
        assert torch.equal(weights[f"pretext.templates.templates.{name}"], state["rep_template"][row])
    record = json.loads((folder / "stage.json").read_text())
    network = record["network"]
    assert network["_target_"] == "medcoss_monai.apps.brainmvp.stage_network.BrainMVPStageNetwork"
    assert network["backbone"]["widths"] == list(WIDTHS) and network["backbone"]["feature_size"] == FEATURE
    assert network["template_shape"] == list(BOX) and network["template_spacing"] == [1.0, 1.0, 1.0]
    centre = [o + (n - 1) / 2 for o, n in zip(network["template_origin"], BOX)]
    assert centre == [0.0, -18.0, 18.0]
    ignored = record["imported"]["ignored_keys"]
    assert "decoder.proj1.proj.weight" in ignored and "decoder.decoder5.conv_block.conv1.conv.weight" in ignored
    assert "licence" in record["imported"] and "BrainMVP" in record["imported"]["licence"]


def test_imported_uniformer_computes_as_the_reference(imported):
    """The reference's computation, from its formulas: 2^3 patch embedding of the (D, H, W)-ordered input with a
    channel-wise layer norm; layer norms of eps 1e-6 in the attention blocks; a batch norm on the last stage."""
    folder, state = imported
    net = medcoss_monai.load_pretrained(folder)
    assert isinstance(net, BrainMVPStageNetwork) and not net.training
    e = "encoder.uniformer."
    x = torch.rand(2, 1, 32, 48, 16, generator=torch.Generator().manual_seed(1))  # (B, 1, H, W, D), sides all different
    with torch.no_grad():
        ref = F.conv3d(x.permute(0, 1, 4, 2, 3), state[e + "patch_embed1.proj.weight"], state[e + "patch_embed1.proj.bias"], stride=2)
        ref = F.layer_norm(ref.movedim(1, -1), (WIDTHS[0],), state[e + "patch_embed1.norm.weight"], state[e + "patch_embed1.norm.bias"])
        torch.testing.assert_close(net.backbone.encoder.embeddings[0](x), ref.movedim(-1, 1).permute(0, 1, 3, 4, 2))
        stages = net.encode(x)
    assert [tuple(f.shape) for f in stages] == [(2, w, 32 // 2**k, 48 // 2**k, 16 // 2**k) for k, w in enumerate(WIDTHS, 1)]
    attention = net.backbone.encoder.stages[2][0].transformer
    assert attention.norm1.eps == attention.norm2.eps == 1e-6
    assert isinstance(net.backbone.encoder.embeddings[3][1], ChannelLayerNorm)
    # the last stage's output is batch-normed with the reference's running statistics
    before = net.backbone.encoder.stages[3](net.backbone.encoder.embeddings[3](stages[2])).detach()
    bn = (before - state[e + "norm.running_mean"].view(1, -1, 1, 1, 1)) / torch.sqrt(state[e + "norm.running_var"].view(1, -1, 1, 1, 1) + 1e-5)
    bn = bn * state[e + "norm.weight"].view(1, -1, 1, 1, 1) + state[e + "norm.bias"].view(1, -1, 1, 1, 1)
    torch.testing.assert_close(stages[3], bn)


def test_the_fine_tuning_script_form_imports_the_same(tmp_path, imported):
    """``Downstream/train_script.py`` reads the keys without ``module.`` and ``uniformer.``: that form is accepted too."""
    folder, state = imported
    stripped = {k.replace("uniformer.", ""): v for k, v in state.items()}
    other = import_checkpoint("brainmvp_uniformer", save_released(stripped, tmp_path / "ds.pt", ddp=False), tmp_path / "stage")
    a, b = torch.load(folder / "model.pt", weights_only=True), torch.load(other / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "fmt, shapes, key, damage",
    [
        ("brainmvp_uniformer", uniformer_shapes, "encoder.uniformer.blocks3.0.attn.proj.bias", "drop"),
        ("brainmvp_uniformer", uniformer_shapes, "encoder.uniformer.blocks1.0.attn.weight", lambda t: t[..., :3]),
        ("brainmvp_uniformer", uniformer_shapes, "encoder.uniformer.norm.running_mean", "drop"),
        ("brainmvp_uniformer", uniformer_shapes, "rep_template", lambda t: t[:5]),
        ("brainmvp_unet", unet_shapes, "conv4c.gn2.bias", "drop"),
        ("brainmvp_unet", unet_shapes, "ds2.weight", lambda t: t[:, :4]),
    ],
)
def test_a_checkpoint_not_of_the_format_is_refused_naming_the_key(tmp_path, fmt, shapes, key, damage):
    state = random_state(shapes())
    if damage == "drop":
        del state[key]
    else:
        state[key] = damage(state[key])
    ckpt = save_released(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=re.escape(f"'{key}'")):
        import_checkpoint(fmt, ckpt, tmp_path / "stage")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt"]  # no folder, no temporary left


def test_one_format_is_not_the_other(tmp_path):
    unet = save_released(random_state(unet_shapes()), tmp_path / "unet.pt")
    with pytest.raises(CheckpointError, match="not a BrainMVP UniFormer checkpoint.*'encoder.uniformer.patch_embed1.proj.weight'"):
        import_checkpoint("brainmvp_uniformer", unet, tmp_path / "a")
    with pytest.raises(BadInputError, match="no option"):
        import_checkpoint("brainmvp_unet", unet, tmp_path / "b", options={"num_heads": 12})


def test_unet_format_imports_through_the_command_line(tmp_path, monkeypatch, capsys):
    """The command line (in this process; its hooks are left out so pytest keeps its own)."""
    from medcoss_monai.weights import __main__ as cli

    monkeypatch.setattr(cli, "install_run_hooks", lambda: None)
    state = random_state(unet_shapes(), seed=4)
    ckpt = save_released(state, tmp_path / "BrainMVP_unet.pt")
    cli.main(["import", "--format", "brainmvp_unet", "--checkpoint", str(ckpt), "--out", str(tmp_path / "stage")])
    assert "BrainMVP weights" in capsys.readouterr().out  # the licence note
    net = medcoss_monai.load_pretrained(tmp_path / "stage")
    assert isinstance(net.backbone, BrainMVPUNet) and not net.backbone.skips
    torch.testing.assert_close(net.backbone.encoder.levels[3][3].conv2.weight, state["conv4d.conv2.weight"])
    torch.testing.assert_close(net.backbone.decoder[2].reduce.weight, state["up2conva.weight"])
    x = torch.rand(1, 1, 32, 24, 16)
    with torch.no_grad():
        maps, recon = net.encode(x), net(x)
        # the reference's first map: stem, one residual block, the strided convolution (formulas, by hand)
        stem = F.conv3d(x, state["conv1a.weight"], state["conv1a.bias"], padding=1)
        y = F.conv3d(F.relu(F.group_norm(stem, 8, state["conv1b.gn1.weight"], state["conv1b.gn1.bias"])),
                     state["conv1b.conv1.weight"], state["conv1b.conv1.bias"], padding=1)
        y = stem + F.conv3d(F.relu(F.group_norm(y, 8, state["conv1b.gn2.weight"], state["conv1b.gn2.bias"])),
                            state["conv1b.conv2.weight"], state["conv1b.conv2.bias"], padding=1)
        torch.testing.assert_close(maps[0], F.conv3d(y, state["ds1.weight"], state["ds1.bias"], stride=2, padding=1))
    assert [tuple(m.shape[1:]) for m in maps] == [(16, 16, 12, 8), (32, 8, 6, 4), (64, 4, 3, 2), (64, 4, 3, 2)]
    assert recon.shape == x.shape


def test_the_fine_tuning_network_follows_the_imported_stage(tmp_path, imported, sample_data):
    """Without the stage's sizes (the bundle's demo backbone) the pre-trained encoder would not load."""
    from medcoss_monai.layout import read_bundle

    folder, state = imported
    parser = read_bundle(FINETUNE, {"output_dir": str(tmp_path), "pretrained_ckpt": str(folder)})
    network = parser.get_parsed_content("network")
    assert isinstance(network, UniFormerUNETR) and network.skips and network.encoder.widths == WIDTHS
    torch.testing.assert_close(network.encoder.stages[2][0].transformer.mlp.linear1.weight,
                               state["encoder.uniformer.blocks3.0.mlp.fc1.weight"])
    assert parser.get_parsed_content("template_centre") == pytest.approx([0.0, -18.0, 18.0])
    unet = import_checkpoint("brainmvp_unet", save_released(random_state(unet_shapes()), tmp_path / "u.pt"), tmp_path / "unet")
    parser = read_bundle(FINETUNE, {"output_dir": str(tmp_path), "pretrained_ckpt": str(unet / "model.pt")})
    network = parser.get_parsed_content("network")
    assert isinstance(network, BrainMVPUNet) and network.skips and network.encoder.stem.weight.shape[1] == 2


@pytest.mark.slow
def test_an_imported_uniformer_fine_tunes_with_a_missing_contrast(tmp_path, imported, sample_data):
    """One epoch of the fine-tuning bundle from the imported folder, then the test without T2, filled by the
    imported T2 template."""
    folder, state = imported
    out = tmp_path / "ft"
    small = {"repeats": 1, "crops_per_study": 2, "batch_size": 2, "train#trainer#max_epochs": 1}
    workflow = ConfigWorkflow(config_file=str(FINETUNE), output_dir=str(out), pretrained_ckpt=str(folder),
                              missing="t2", fill="template", **small)  # fmt: skip
    workflow.initialize()
    bank = workflow.parser.get_parsed_content("templates")
    assert torch.equal(bank.volumes["t2"], state["rep_template"][TEMPLATE_ORDER.index("t2")].clamp(0, 1))
    workflow.run()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["missing"] == "t2" and metrics["fill"] == "template"
    assert metrics["pretrained_ckpt"] == str(folder) and metrics["network_backbone"]["embed_norm"] == "layer"
    assert 0.0 <= metrics["metrics"]["mean_dice"] <= 1.0
    assert (out / "model_best.pt").is_file()


@pytest.mark.slow
def test_an_imported_unet_fine_tunes_with_a_missing_contrast(tmp_path, sample_data):
    """The released U-Net's format, as the UniFormer's above: one epoch from its folder (a U-Net task network with the
    imported encoder), tested without T2, filled by the imported T2 template."""
    state = random_state(unet_shapes(), seed=3)
    folder = import_checkpoint("brainmvp_unet", save_released(state, tmp_path / "unet.pt"), tmp_path / "stage")
    out = tmp_path / "ft"
    workflow = ConfigWorkflow(config_file=str(FINETUNE), output_dir=str(out), pretrained_ckpt=str(folder), missing="t2",
                              fill="template", repeats=1, crops_per_study=2, batch_size=2,
                              **{"train#trainer#max_epochs": 1})
    workflow.initialize()
    network = workflow.parser.get_parsed_content("network")
    assert isinstance(network, BrainMVPUNet)
    imported = torch.load(folder / "model.pt", weights_only=True)
    torch.testing.assert_close(network.encoder.downs[0].weight, imported["backbone.encoder.downs.0.weight"])
    bank = workflow.parser.get_parsed_content("templates")
    assert torch.equal(bank.volumes["t2"], state["rep_template"][TEMPLATE_ORDER.index("t2")].clamp(0, 1))
    workflow.run()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["missing"] == "t2" and metrics["fill"] == "template"
    assert metrics["network_backbone"]["architecture"] == "unet" and 0.0 <= metrics["metrics"]["mean_dice"] <= 1.0
