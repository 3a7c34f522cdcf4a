"""The BrainMVP released checkpoint formats and their conversion to :class:`BrainMVPStageNetwork` weights.

The authors release ``BrainMVP_uniformer.pt`` and ``BrainMVP_unet.pt`` (shaohao011/BrainMVP, README
"Download Model"). Both are ``torch.save`` of ``{"state_dict": RecModel.state_dict(), ...}`` as its
``main.py`` saves them (``current_epoch``, ``optimizer``, ``scheduler``, ``val_best`` beside it), the keys
prefixed ``module.`` when trained with DDP; its ``Downstream/train_script.py`` reads ``ck["state_dict"]``
and removes ``module.`` and ``uniformer.``. Either form, and a bare state dict, is accepted here.

``models/Uniformer.py`` ``RecModel`` (UniFormer-S: widths 64/128/320/512, depths 3/4/8/3, 2^3 patch
embeddings, head dimension 64, MLP ratio 4), keys under ``encoder.uniformer.``:

==========================================================  ======================================
key                                                         shape (C: the stage's width)
==========================================================  ======================================
``patch_embed{s}.proj.weight`` / ``.bias``                  (C, C_in, 2, 2, 2) / (C,)
``patch_embed{s}.norm.weight`` / ``.bias`` (layer norm)     (C,)
``blocks{1,2}.{j}.pos_embed.weight`` / ``.bias``             (C, 1, 3, 3, 3) / (C,)
``blocks{1,2}.{j}.norm1``, ``norm2`` (batch norms)           (C,) (and ``num_batches_tracked`` ())
``blocks{1,2}.{j}.conv1``, ``conv2`` / ``attn``              (C, C, 1, 1, 1) / (C, 1, 5, 5, 5)
``blocks{1,2}.{j}.mlp.fc1`` / ``fc2``                        (4C, C, 1, 1, 1) / (C, 4C, 1, 1, 1)
``blocks{3,4}.{j}.pos_embed``                               (C, 1, 3, 3, 3)
``blocks{3,4}.{j}.norm1``, ``norm2`` (layer norms, eps 1e-6)  (C,)
``blocks{3,4}.{j}.attn.qkv`` / ``attn.proj``                 (3C, C) / (C, C)
``blocks{3,4}.{j}.mlp.fc1`` / ``fc2``                        (4C, C) / (C, 4C)
``norm`` (batch norm of the last stage)                     (512,)
==========================================================  ======================================

then ``decoder.decoder{5,4,3,2}.transp_conv.conv.weight`` (512->320->128->64->64, 2^3 kernels, the only
part of each ``UnetrUpBlock`` the pre-training runs), ``decoder.out_1.conv.conv.weight`` / ``.bias``
(1, 64, 1, 1, 1) / (1,) and ``rep_template`` (8, 240, 240, 155): the templates of flair, t1, t1c, t2, mra,
pd, dwi, adc (``do_pretrain.sh --template_index``) in a 1 mm RAS box in which the reference centres each
study. ``decoder.decoder*.conv_block.*`` and ``decoder.proj1.*`` are built but never run; they are left out.

The reference's UniFormer permutes its ``(B, C, H, W, D)`` input to ``(B, C, D, H, W)``; this project keeps
its volumes' axis order, so the encoder's kernels are permuted to match (its features are the reference's,
permuted back). ``models/Unet.py`` ``RecModel`` (``init_channels`` 32, group norms of 8 groups) keeps the axes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from medcoss_monai.apps.brainmvp.stage_network import BrainMVPStageNetwork
from medcoss_monai.apps.brainmvp.templates import template_space_affine
from medcoss_monai.errors import BadInputError, CheckpointError
from medcoss_monai.networks.checkpoint import check_state_fits

__all__ = [
    "NETWORK_TARGET",
    "TEMPLATE_CONTRASTS",
    "TEMPLATE_CENTRE",
    "uniformer_key_table",
    "unet_key_table",
    "convert_brainmvp_uniformer",
    "convert_brainmvp_unet",
]

NETWORK_TARGET = f"{BrainMVPStageNetwork.__module__}.{BrainMVPStageNetwork.__name__}"

TEMPLATE_CONTRASTS: dict[int, tuple[str, ...]] = {
    8: ("flair", "t1", "t1ce", "t2", "mra", "pd", "dwi", "adc"),  # do_pretrain.sh, the released models
    4: ("flair", "t1", "t1ce", "t2"),  # main.py's default --template_index
}
"""The contrasts of the reference's ``rep_template`` rows, by row count (its ``t1c`` is this project's ``t1ce``)."""

TEMPLATE_SPACING = (1.0, 1.0, 1.0)
TEMPLATE_CENTRE = (0.0, -18.0, 18.0)
"""Where the imported template box is centred (mm): the centre of this project's MNI template box. The
reference centres every study in its box; fine-tuning here centres studies on this point, and a study
registered to MNI space finds the brain there."""

_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_UNIFORMER = "encoder.uniformer."

# entry: reference key -> (our key, shape, kernel axes permuted)
Table = dict[str, tuple[str, tuple[int, ...], bool]]


def _refuse(fmt: str, key: str, problem: str, where: str) -> CheckpointError:
    return CheckpointError(
        f"{where}: not a {fmt} checkpoint (the authors' '{{\"state_dict\": ...}}' of RecModel): {problem} '{key}'. "
        "Nothing was written."
    )


def _normalised(state: Mapping[str, Any]) -> dict[str, Any]:
    """Without a uniform DDP ``module.`` prefix, with the ``encoder.uniformer.`` the fine-tuning script strips."""
    state = dict(state)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    if any(k.startswith("encoder.") for k in state) and not any(k.startswith(_UNIFORMER) for k in state):
        state = {(_UNIFORMER + k[len("encoder.") :] if k.startswith("encoder.") else k): v for k, v in state.items()}
    return state


def _shape_of(fmt: str, state: Mapping[str, Any], key: str, where: str) -> tuple[int, ...]:
    value = state.get(key)
    if value is None:
        raise _refuse(fmt, key, "missing key", where)
    if not isinstance(value, torch.Tensor) or not (value.is_floating_point() or key.endswith("num_batches_tracked")):
        raise _refuse(fmt, key, f"not a float tensor ({type(value).__name__}) at key", where)
    return tuple(value.shape)


def _anchor(fmt: str, state: Mapping[str, Any], key: str, ndim: int, where: str) -> tuple[int, ...]:
    shape = _shape_of(fmt, state, key, where)
    if len(shape) != ndim:
        raise _refuse(fmt, key, f"misshaped {shape} key", where)
    return shape


def _count(state: Mapping[str, Any], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    return max(indices) + 1 if indices else 1  # a gap or a missing block 0 is named by the table check


def _templates(fmt: str, state: Mapping[str, Any], where: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    shape = _anchor(fmt, state, "rep_template", 4, where)
    if shape[0] not in TEMPLATE_CONTRASTS:
        raise _refuse(fmt, "rep_template", f"{shape[0]} template rows (the reference has 8 or 4) at key", where)
    return TEMPLATE_CONTRASTS[shape[0]], shape[1:]


_CONV_BLOCK = (  # reference name, our name, shape from (C, M), kernel axes permuted
    ("conv1", "aggregate.0", lambda c, m: (c, c, 1, 1, 1)),
    ("attn", "aggregate.1", lambda c, m: (c, 1, 5, 5, 5)),
    ("conv2", "aggregate.2", lambda c, m: (c, c, 1, 1, 1)),
    ("mlp.fc1", "mlp.0", lambda c, m: (m, c, 1, 1, 1)),
    ("mlp.fc2", "mlp.2", lambda c, m: (c, m, 1, 1, 1)),
)
_ATTENTION_BLOCK = (
    ("norm1", "transformer.norm1", lambda c, m: (c,)),
    ("attn.qkv", "transformer.attn.qkv", lambda c, m: (3 * c, c)),
    ("attn.proj", "transformer.attn.out_proj", lambda c, m: (c, c)),
    ("norm2", "transformer.norm2", lambda c, m: (c,)),
    ("mlp.fc1", "transformer.mlp.linear1", lambda c, m: (m, c)),
    ("mlp.fc2", "transformer.mlp.linear2", lambda c, m: (c, m)),
)


def _batch_norm(table: Table, ref: str, ours: str, c: int) -> None:
    for b in _BN:
        table[f"{ref}.{b}"] = (f"{ours}.{b}", () if b == "num_batches_tracked" else (c,), False)


def _block(table: Table, ref: str, ours: str, c: int, m: int, convolutional: bool) -> None:
    """One UniFormer block: ``CBlock`` (convolutional) or ``SABlock`` (attention)."""
    table[ref + "pos_embed.weight"] = (ours + "pos_embed.weight", (c, 1, 3, 3, 3), True)
    table[ref + "pos_embed.bias"] = (ours + "pos_embed.bias", (c,), False)
    if convolutional:
        _batch_norm(table, ref + "norm1", ours + "norm1", c)
        _batch_norm(table, ref + "norm2", ours + "norm2", c)
    for ref_name, our_name, shape in _CONV_BLOCK if convolutional else _ATTENTION_BLOCK:
        weight = shape(c, m)
        table[f"{ref}{ref_name}.weight"] = (f"{ours}{our_name}.weight", weight, len(weight) == 5)
        table[f"{ref}{ref_name}.bias"] = (f"{ours}{our_name}.bias", (weight[0],), False)


def uniformer_key_table(sizes: Mapping[str, Any]) -> Table:
    """Every key of the reference UniFormer format, in checking order, with this project's key and its shape.

    Args:
        sizes: ``in_channels``, ``widths``, ``depths``, ``patch``, ``mlp_ratio``, ``feature_size``, ``out_channels``.

    Returns:
        ``{reference key: (key in BrainMVPStageNetwork, shape, kernel axes permuted)}``.
    """
    table: Table = {}
    e, previous, p = _UNIFORMER, sizes["in_channels"], sizes["patch"]
    for s, (c, depth) in enumerate(zip(sizes["widths"], sizes["depths"])):
        ref, ours = f"{e}patch_embed{s + 1}.", f"backbone.encoder.embeddings.{s}."
        table[ref + "proj.weight"] = (ours + "0.weight", (c, previous, p, p, p), True)
        table[ref + "proj.bias"] = (ours + "0.bias", (c,), False)
        table[ref + "norm.weight"] = (ours + "1.weight", (c,), False)
        table[ref + "norm.bias"] = (ours + "1.bias", (c,), False)
        mlp = int(c * sizes["mlp_ratio"])
        for j in range(depth):  # stages 1 and 2 convolutional, 3 and 4 attention (the reference's UniFormer)
            _block(table, f"{e}blocks{s + 1}.{j}.", f"backbone.encoder.stages.{s}.{j}.", c, mlp, s < 2)
        previous = c
    _batch_norm(table, e + "norm", "backbone.encoder.norm", previous)
    widths = list(sizes["widths"])
    ups = list(zip(widths[::-1], widths[-2::-1] + [sizes["feature_size"]]))  # (in, out) of each up level, coarsest first
    for k, (i, o) in enumerate(ups):
        ref = f"decoder.decoder{len(ups) + 1 - k}.transp_conv.conv.weight"
        table[ref] = (f"backbone.decoder.{k}.transp_conv.conv.weight", (i, o, p, p, p), False)
    out, feature = sizes["out_channels"], sizes["feature_size"]
    table["decoder.out_1.conv.conv.weight"] = ("backbone.out.conv.conv.weight", (out, feature, 1, 1, 1), False)
    table["decoder.out_1.conv.conv.bias"] = ("backbone.out.conv.conv.bias", (out,), False)
    return table


def unet_key_table(sizes: Mapping[str, Any]) -> Table:
    """Every key of the reference U-Net format, in checking order, with this project's key and its shape.

    Args:
        sizes: ``in_channels``, ``init_channels``, ``out_channels``.

    Returns:
        ``{reference key: (key in BrainMVPStageNetwork, shape, False)}``.
    """
    c, table = sizes["init_channels"], {}

    def conv(ref: str, ours: str, shape: tuple[int, ...]) -> None:
        table[ref + ".weight"] = ("backbone." + ours + ".weight", shape, False)
        table[ref + ".bias"] = ("backbone." + ours + ".bias", (shape[0],), False)

    def block(ref: str, ours: str, width: int) -> None:
        for ref_norm, our_norm in (("gn1", "norm1"), ("gn2", "norm2")):
            conv(f"{ref}.{ref_norm}", f"{ours}.{our_norm}", (width,))
        for n in ("conv1", "conv2"):
            conv(f"{ref}.{n}", f"{ours}.{n}", (width, width, 3, 3, 3))

    conv("conv1a", "encoder.stem", (c, sizes["in_channels"], 3, 3, 3))
    names = (["conv1b"], ["conv2a", "conv2b"], ["conv3a", "conv3b"], ["conv4a", "conv4b", "conv4c", "conv4d"])
    widths = (c, 2 * c, 4 * c, 8 * c)
    for level, (refs, width) in enumerate(zip(names, widths)):
        for j, ref in enumerate(refs):
            block(ref, f"encoder.levels.{level}.{j}", width)
        if level < 3:
            conv(f"ds{level + 1}", f"encoder.downs.{level}", (widths[level + 1], width, 3, 3, 3))
    for k, (up, i, o) in enumerate((("up4", 8 * c, 4 * c), ("up3", 4 * c, 2 * c), ("up2", 2 * c, c))):
        conv(f"{up}conva", f"decoder.{k}.reduce", (o, i, 1, 1, 1))
        block(f"{up}convb", f"decoder.{k}.block", o)
    conv("up1conv", "out", (sizes["out_channels"], c, 1, 1, 1))
    return table


def _check_options(fmt: str, options: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(k for k, v in options.items() if v is not None and k not in allowed)
    if unknown:
        raise BadInputError(f"the {fmt} format takes no option {unknown} (it takes {list(allowed) or 'none'}).")


def _convert(fmt: str, state: Mapping[str, Any], table: Table, architecture: str, backbone: dict[str, Any],
             where: str) -> dict[str, Any]:
    """Check every key of ``table``, then build the converted state dict, the network record and the ignored keys."""
    for key, (_, shape, _) in table.items():
        found = _shape_of(fmt, state, key, where)
        if found != shape:
            raise _refuse(fmt, key, f"shape {found} where the format has {shape} for", where)
    contrasts, box = _templates(fmt, state, where)
    converted = {}
    for ref, (ours, _, permute) in table.items():
        value = state[ref].detach()
        converted[ours] = (value.permute(0, 1, 3, 4, 2) if permute else value).contiguous()  # (D, H, W) kernels -> (H, W, D)
    for k, name in enumerate(contrasts):
        converted[f"pretext.templates.templates.{name}"] = state["rep_template"][k].detach().clone()
    origin = [c - (n - 1) / 2 * s for c, n, s in zip(TEMPLATE_CENTRE, box, TEMPLATE_SPACING)]
    converted["pretext.templates.affine"] = torch.as_tensor(template_space_affine(TEMPLATE_SPACING, origin))
    config = {"architecture": architecture, "backbone": backbone, "contrasts": list(contrasts), "template_shape": list(box),
              "template_spacing": list(TEMPLATE_SPACING), "template_origin": origin}  # fmt: skip
    with torch.device("meta"):  # the architecture without allocating or initialising it
        network = BrainMVPStageNetwork(**config)
    # parameters the reference has no counterpart of, unused in its computation (MONAI's cross-attention norm)
    for key, value in network.state_dict().items():
        if key not in converted and "norm_cross_attn" in key:
            converted[key] = torch.ones(value.shape) if key.endswith("weight") else torch.zeros(value.shape)
    check_state_fits(converted, network, where, "The conversion table does not match the network (a bug).")
    return {
        "network": {"_target_": NETWORK_TARGET, **network.config},
        "state_dict": converted,
        "ignored_keys": sorted(k for k in state if k not in table and k != "rep_template"),
    }


def convert_brainmvp_uniformer(
    state: Mapping[str, Any], where: str = "checkpoint", head_dim: int = 64, **options: Any
) -> dict[str, Any]:
    """Turn a BrainMVP UniFormer ``RecModel`` state dict into :class:`BrainMVPStageNetwork` weights.

    Args:
        state: the reference state dict (the checkpoint's ``"state_dict"``).
        where: the file, for messages.
        head_dim: channels per attention head (64 in the reference; the shapes cannot tell).
        options: other importer options; none applies.

    Returns:
        ``{"network": {"_target_": ..., **config}, "state_dict": {...}, "ignored_keys": [...]}``.

    Raises:
        CheckpointError: the state dict is not of the format, naming the first missing or misshaped key.
    """
    fmt = "BrainMVP UniFormer"
    _check_options("brainmvp_uniformer", options, ())
    state = _normalised(state)
    shapes = [_anchor(fmt, state, f"{_UNIFORMER}patch_embed{s}.proj.weight", 5, where) for s in range(1, 5)]
    patch = shapes[0][2]
    first_mlp = _anchor(fmt, state, f"{_UNIFORMER}blocks1.0.mlp.fc1.weight", 5, where)
    sizes = {
        "in_channels": shapes[0][1],
        "widths": [s[0] for s in shapes],
        "depths": [_count(state, f"{_UNIFORMER}blocks{s}.") for s in range(1, 5)],
        "patch": patch,
        "mlp_ratio": first_mlp[0] / shapes[0][0],
        "feature_size": _anchor(fmt, state, "decoder.decoder2.transp_conv.conv.weight", 5, where)[1],
        "out_channels": _anchor(fmt, state, "decoder.out_1.conv.conv.weight", 5, where)[0],
    }
    table = uniformer_key_table(sizes)
    bad = [w for w in sizes["widths"][2:] if w % head_dim]
    if bad:
        raise CheckpointError(f"{where}: attention width {bad[0]} is not a multiple of head_dim {head_dim}.")
    backbone = {
        "in_channels": sizes["in_channels"], "out_channels": sizes["out_channels"], "feature_size": sizes["feature_size"],
        "norm_name": "instance", "skips": False, "widths": sizes["widths"], "depths": sizes["depths"],
        "strides": [patch] * 4, "block_types": ["conv", "conv", "attention", "attention"], "head_dim": head_dim,
        "mlp_ratio": sizes["mlp_ratio"], "embed_norm": "layer", "final_norm": True, "attention_norm_eps": 1e-6,
    }  # fmt: skip
    return _convert(fmt, state, table, "uniformer", backbone, where)


def convert_brainmvp_unet(
    state: Mapping[str, Any], where: str = "checkpoint", groups: int = 8, **options: Any
) -> dict[str, Any]:
    """Turn a BrainMVP U-Net ``RecModel`` state dict into :class:`BrainMVPStageNetwork` weights.

    Args:
        state: the reference state dict (the checkpoint's ``"state_dict"``).
        where: the file, for messages.
        groups: groups of the group norms (8 in the reference; the shapes cannot tell).
        options: other importer options; none applies.

    Returns:
        ``{"network": {"_target_": ..., **config}, "state_dict": {...}, "ignored_keys": [...]}``.

    Raises:
        CheckpointError: the state dict is not of the format, naming the first missing or misshaped key.
    """
    fmt = "BrainMVP U-Net"
    _check_options("brainmvp_unet", options, ())
    state = _normalised(state)
    stem = _anchor(fmt, state, "conv1a.weight", 5, where)
    out = _anchor(fmt, state, "up1conv.weight", 5, where)
    sizes = {"in_channels": stem[1], "init_channels": stem[0], "out_channels": out[0]}
    if sizes["init_channels"] % groups:
        raise CheckpointError(f"{where}: {sizes['init_channels']} channels cannot be split into {groups} norm groups.")
    backbone = {**sizes, "groups": groups, "skips": False}
    return _convert(fmt, state, unet_key_table(sizes), "unet", backbone, where)
