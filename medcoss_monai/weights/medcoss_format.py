"""The MedCoSS released checkpoint format and its conversion to :class:`MedCoSSReferenceEncoder` weights.

The authors' five-stage model (``MedCoSS_Report_Xray_CT_MR_Path_Buffer0.05``) is a ``torch.save`` of
``{"model": Unified_Model.state_dict(), ...}`` (reference: ``util/misc.py`` ``save_model``; the model is
built in ``main_pretrain_medcoss.py`` as ``Unified_Model(now_1D_input_size=(112, 1),
now_2D_input_size=(224, 224), now_3D_input_size=(16, 192, 192))``). Its keys and shapes, with
C = 768 channels, M = 3072 MLP width, 12 layers:

====================================================================  =====================
key                                                                   shape
====================================================================  =====================
``fused_encoder.layers.{0..11}.self_attn.in_proj_weight`` / ``_bias``   (3C, C) / (3C,)
``fused_encoder.layers.{i}.self_attn.out_proj.weight`` / ``.bias``      (C, C) / (C,)
``fused_encoder.layers.{i}.linear1.weight`` / ``.bias``                 (M, C) / (M,)
``fused_encoder.layers.{i}.linear2.weight`` / ``.bias``                 (C, M) / (C,)
``fused_encoder.layers.{i}.norm1``, ``norm2`` (weight, bias)            (C,)
``fused_encoder.layers.{i}.gamma_1``, ``gamma_2``                       (C,)
``token_embed.embeddings.weight``                                       (49411, C)
``token_embed.embeddings_norm`` (weight, bias)                          (C,)
``token_embed.embeddings_pos.position_embeddings.weight``               (512, C)
``token_embed.embeddings_token_type.weight``                            (2, C)
``video_embed.embeddings_norm`` (weight, bias)                          (C,)
``video_embed.embeddings_st_pos_2D.spatial_pos_embed.weight``           (1024, C)
``video_embed.embeddings_st_pos_2D.temporal_pos_embed.weight``          (8, C)
``video_embed.embeddings_st_pos_3D.spatial_pos_embed.weight``           (4096, C)
``video_embed.embeddings_st_pos_3D.temporal_pos_embed.weight``          (8, C)
``video_embed.embeddings.weight`` / ``.bias``                           (C, 3, 16, 16) / (C,)
``video_embed.embeddings_3D.weight`` / ``.bias``                        (C, 1, 16, 16, 16) / (C,)
``cls_token``                                                           (1, 1, C)
====================================================================  =====================

and, not used by the encoder's forward (left out of the import, see :data:`RELEASED_UNUSED_SHAPES`):
``video_embed.embeddings_pos`` and ``video_embed.embeddings_type`` (tables the reference builds but
never reads), the MAE decoder (``decoder_*``, ``mask_token``) and the MLM head (``mlm_head.*``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from medcoss_monai.errors import CheckpointError
from medcoss_monai.networks.checkpoint import check_state_fits
from medcoss_monai.networks.reference_encoder import MedCoSSReferenceEncoder

__all__ = [
    "RELEASED_SIZES",
    "RELEASED_UNUSED_SHAPES",
    "REFERENCE_SETTINGS",
    "NETWORK_TARGET",
    "encoder_key_shapes",
    "infer_sizes",
    "check_format",
    "convert_medcoss",
]

NETWORK_TARGET = f"{MedCoSSReferenceEncoder.__module__}.{MedCoSSReferenceEncoder.__name__}"

RELEASED_SIZES: dict[str, int] = {
    "hidden_size": 768,
    "num_layers": 12,
    "mlp_dim": 3072,
    "vocab_size": 49411,
    "max_text_len": 512,
    "token_types": 2,
    "spatial_rows_2d": 1024,
    "spatial_rows_3d": 4096,
    "temporal_rows": 8,
    "patch_size": 16,
    "in_channels_2d": 3,
    "in_channels_3d": 1,
}
"""The encoder sizes of the released checkpoint (reference: ``model/Unimodel.py``, ``model/Base_module.py``)."""

REFERENCE_SETTINGS: dict[str, Any] = {
    # The reference resamples every DeepLesion CT to 1 mm isotropic before cutting its pre-training tiles
    # (yeerwen/MedCoSS Preprocess/re_spacing_ITK.py: ``spacing = {0: [1.0, 1.0, 1.0]}``; the tiles are then
    # cut by splitting_to_patches.py and resized to 192 x 192 x 16 by DeepLesion_Resize.py). Its 3D
    # fine-tuning fixes no other spacing (Downstream/Dim_3: RICORD resizes each scan to 192 x 192 x 64,
    # LiTS takes nnU-Net's plans), so 1 mm is the CT grid the released encoder learnt on.
    "ct_spacing": [1.0, 1.0, 1.0],
}
"""The preprocessing the released weights were pre-trained with, recorded in the imported ``stage.json``'s
``settings`` as a stage trained here records its own (fine-tuning resamples CT to ``ct_spacing``)."""


def _released_unused_shapes() -> dict[str, tuple[int, ...]]:
    """Keys of the released checkpoint the encoder does not use, with their shapes (facts, for the record)."""
    c, d = 768, 512  # encoder and MAE decoder widths (reference: Unified_Model decoder_embed_dim=512, depth 8)
    shapes: dict[str, tuple[int, ...]] = {
        "video_embed.embeddings_pos.position_embeddings.weight": (1600, c),
        "video_embed.embeddings_type.weight": (1, c),
        "decoder_embed.weight": (d, c),
        "decoder_embed.bias": (d,),
        "mask_token": (1, 1, d),
        "decoder_pos_embed_1D.weight": (2, c),
        "decoder_pos_embed_2D": (1, 14 * 14 + 1, d),  # 224x224 images
        "decoder_pos_embed_3D": (1, 1 * 12 * 12 + 1, d),  # 16x192x192 volumes
    }
    for i in range(8):  # timm Block(512, 16, mlp_ratio=4, qkv_bias=True)
        p = f"decoder_blocks.{i}."
        shapes.update({
            p + "norm1.weight": (d,), p + "norm1.bias": (d,),
            p + "attn.qkv.weight": (3 * d, d), p + "attn.qkv.bias": (3 * d,),
            p + "attn.proj.weight": (d, d), p + "attn.proj.bias": (d,),
            p + "norm2.weight": (d,), p + "norm2.bias": (d,),
            p + "mlp.fc1.weight": (4 * d, d), p + "mlp.fc1.bias": (4 * d,),
            p + "mlp.fc2.weight": (d, 4 * d), p + "mlp.fc2.bias": (d,),
        })  # fmt: skip
    shapes.update({
        "decoder_norm.weight": (d,), "decoder_norm.bias": (d,),
        "decoder_pred_2D.weight": (16 * 16 * 3, d), "decoder_pred_2D.bias": (16 * 16 * 3,),
        "decoder_pred_3D.weight": (16**3, d), "decoder_pred_3D.bias": (16**3,),
        "mlm_head.bias": (49411,),
        "mlm_head.transform.dense.weight": (c, c), "mlm_head.transform.dense.bias": (c,),
        "mlm_head.transform.LayerNorm.weight": (c,), "mlm_head.transform.LayerNorm.bias": (c,),
        "mlm_head.decoder.weight": (49411, c),
    })  # fmt: skip
    return shapes


RELEASED_UNUSED_SHAPES = _released_unused_shapes()

# reference layer key suffix -> (this project's suffix, shape from (C, M))
_LAYER_KEYS: dict[str, tuple[str, Any]] = {
    "self_attn.in_proj_weight": ("attn.qkv.weight", lambda c, m: (3 * c, c)),
    "self_attn.in_proj_bias": ("attn.qkv.bias", lambda c, m: (3 * c,)),
    "self_attn.out_proj.weight": ("attn.out_proj.weight", lambda c, m: (c, c)),
    "self_attn.out_proj.bias": ("attn.out_proj.bias", lambda c, m: (c,)),
    "linear1.weight": ("mlp.linear1.weight", lambda c, m: (m, c)),
    "linear1.bias": ("mlp.linear1.bias", lambda c, m: (m,)),
    "linear2.weight": ("mlp.linear2.weight", lambda c, m: (c, m)),
    "linear2.bias": ("mlp.linear2.bias", lambda c, m: (c,)),
    "norm1.weight": ("norm1.weight", lambda c, m: (c,)),
    "norm1.bias": ("norm1.bias", lambda c, m: (c,)),
    "norm2.weight": ("norm2.weight", lambda c, m: (c,)),
    "norm2.bias": ("norm2.bias", lambda c, m: (c,)),
    "gamma_1": ("gamma_1", lambda c, m: (c,)),
    "gamma_2": ("gamma_2", lambda c, m: (c,)),
}

# where each size is read: (key, axis); hidden_size comes from cls_token (1, 1, C)
_SIZE_ANCHORS: dict[str, tuple[str, int]] = {
    "hidden_size": ("cls_token", 2),
    "mlp_dim": ("fused_encoder.layers.0.linear1.weight", 0),
    "vocab_size": ("token_embed.embeddings.weight", 0),
    "max_text_len": ("token_embed.embeddings_pos.position_embeddings.weight", 0),
    "token_types": ("token_embed.embeddings_token_type.weight", 0),
    "spatial_rows_2d": ("video_embed.embeddings_st_pos_2D.spatial_pos_embed.weight", 0),
    "temporal_rows": ("video_embed.embeddings_st_pos_2D.temporal_pos_embed.weight", 0),
    "spatial_rows_3d": ("video_embed.embeddings_st_pos_3D.spatial_pos_embed.weight", 0),
    "in_channels_2d": ("video_embed.embeddings.weight", 1),
    "patch_size": ("video_embed.embeddings.weight", 2),
    "in_channels_3d": ("video_embed.embeddings_3D.weight", 1),
}
_ANCHOR_NDIM = {"cls_token": 3, "video_embed.embeddings.weight": 4, "video_embed.embeddings_3D.weight": 5}


def encoder_key_shapes(sizes: Mapping[str, int]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Every encoder key of the reference format, in checking order, with this project's key and the shape.

    Args:
        sizes: the sizes of :data:`RELEASED_SIZES` (any values).

    Returns:
        ``{reference key: (key in MedCoSSReferenceEncoder, shape)}``.
    """
    c, m, p = sizes["hidden_size"], sizes["mlp_dim"], sizes["patch_size"]
    table: dict[str, tuple[str, tuple[int, ...]]] = {"cls_token": ("cls_token", (1, 1, c))}
    for i in range(sizes["num_layers"]):
        for suffix, (ours, shape) in _LAYER_KEYS.items():
            table[f"fused_encoder.layers.{i}.{suffix}"] = (f"blocks.{i}.{ours}", shape(c, m))
    t, v = "token_embed.", "video_embed."
    table.update({
        t + "embeddings.weight": ("text_embed.token.weight", (sizes["vocab_size"], c)),
        t + "embeddings_norm.weight": ("text_embed.norm.weight", (c,)),
        t + "embeddings_norm.bias": ("text_embed.norm.bias", (c,)),
        t + "embeddings_pos.position_embeddings.weight": ("text_embed.position.weight", (sizes["max_text_len"], c)),
        t + "embeddings_token_type.weight": ("text_embed.token_type.weight", (sizes["token_types"], c)),
        v + "embeddings_norm.weight": ("image_norm.weight", (c,)),
        v + "embeddings_norm.bias": ("image_norm.bias", (c,)),
        v + "embeddings_st_pos_2D.spatial_pos_embed.weight": ("pos_embed_2d.spatial.weight", (sizes["spatial_rows_2d"], c)),
        v + "embeddings_st_pos_2D.temporal_pos_embed.weight": ("pos_embed_2d.temporal.weight", (sizes["temporal_rows"], c)),
        v + "embeddings_st_pos_3D.spatial_pos_embed.weight": ("pos_embed_3d.spatial.weight", (sizes["spatial_rows_3d"], c)),
        v + "embeddings_st_pos_3D.temporal_pos_embed.weight": ("pos_embed_3d.temporal.weight", (sizes["temporal_rows"], c)),
        v + "embeddings.weight": ("patch_embed_2d.proj.weight", (c, sizes["in_channels_2d"], p, p)),
        v + "embeddings.bias": ("patch_embed_2d.proj.bias", (c,)),
        v + "embeddings_3D.weight": ("patch_embed_3d.proj.weight", (c, sizes["in_channels_3d"], p, p, p)),
        v + "embeddings_3D.bias": ("patch_embed_3d.proj.bias", (c,)),
    })  # fmt: skip
    return table


def _refuse(key: str, problem: str, where: str) -> CheckpointError:
    return CheckpointError(
        f"{where}: not a MedCoSS checkpoint (the authors' '{{\"model\": state_dict}}' of Unified_Model): {problem} "
        f"'{key}'. Nothing was written."
    )


def _shape_of(state: Mapping[str, Any], key: str, where: str) -> tuple[int, ...]:
    value = state.get(key)
    if value is None:
        raise _refuse(key, "missing key", where)
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise _refuse(key, f"not a float tensor ({type(value).__name__}) at key", where)
    return tuple(value.shape)


def infer_sizes(state: Mapping[str, Any], where: str = "checkpoint") -> dict[str, int]:
    """The encoder sizes of a reference-format state dict, each read from one key.

    Args:
        state: the state dict.
        where: the file, for messages.

    Returns:
        the sizes of :data:`RELEASED_SIZES`.

    Raises:
        CheckpointError: a key a size is read from is missing or of the wrong rank, naming it.
    """
    sizes: dict[str, int] = {}
    for name, (key, axis) in _SIZE_ANCHORS.items():
        shape = _shape_of(state, key, where)
        if len(shape) != _ANCHOR_NDIM.get(key, 2):
            raise _refuse(key, f"misshaped {shape} key", where)
        sizes[name] = shape[axis]
    layer = re.compile(r"fused_encoder\.layers\.(\d+)\.")
    indices = {int(m.group(1)) for k in state if (m := layer.match(k))}
    sizes["num_layers"] = max(indices) + 1 if indices else 1  # a gap or a missing layer 0 is named by check_format
    return sizes


def check_format(state: Mapping[str, Any], sizes: Mapping[str, int], where: str = "checkpoint") -> None:
    """Refuse a state dict that lacks an encoder key of the reference format or holds one of another shape.

    Args:
        state: the state dict.
        sizes: its sizes (:func:`infer_sizes`).
        where: the file, for messages.

    Raises:
        CheckpointError: naming the first missing or misshaped key (in :func:`encoder_key_shapes` order).
    """
    for key, (_, shape) in encoder_key_shapes(sizes).items():
        found = _shape_of(state, key, where)
        if found != shape:
            raise _refuse(key, f"shape {found} where the format has {shape} for", where)


def convert_medcoss(state: Mapping[str, Any], where: str = "checkpoint", num_heads: int = 12) -> dict[str, Any]:
    """Turn a MedCoSS reference state dict into :class:`MedCoSSReferenceEncoder` weights.

    Args:
        state: the reference ``Unified_Model`` state dict (the checkpoint's ``"model"``); a uniform
            ``module.`` prefix (a DDP-wrapped save) is removed.
        where: the file, for messages.
        num_heads: attention heads (12 in the reference; the checkpoint's shapes cannot tell).

    Returns:
        ``{"network": {"_target_": ..., **config}, "state_dict": {...}, "ignored_keys": [...]}``.

    Raises:
        CheckpointError: the state dict is not of the format, naming the first missing or misshaped key.
    """
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    sizes = infer_sizes(state, where)
    check_format(state, sizes, where)
    if sizes["hidden_size"] % num_heads:
        raise CheckpointError(f"{where}: {sizes['hidden_size']} channels cannot be split into {num_heads} heads.")
    table = encoder_key_shapes(sizes)
    converted = {ours: state[ref].detach().contiguous() for ref, (ours, _) in table.items()}
    config = {**sizes, "num_heads": num_heads}
    with torch.device("meta"):  # the architecture without allocating or initialising it
        network = MedCoSSReferenceEncoder(**config)
    check_state_fits(converted, network, where, "The conversion table does not match the encoder (a bug).")
    return {
        "network": {"_target_": NETWORK_TARGET, **network.config},
        "state_dict": converted,
        "ignored_keys": sorted(k for k in state if k not in table),
    }
