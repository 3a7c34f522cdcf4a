"""Small pieces shared by the encoder and the MAE decoder: transformer stacks, padding masks, MAE init."""

from __future__ import annotations

import torch
from monai.networks.blocks import TransformerBlock
from torch import nn

from medcoss_monai.networks.pos_embed import PositionEmbedding

__all__ = ["transformer_stack", "key_padding_mask", "init_mae_weights"]


def transformer_stack(
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    mlp_ratio: float = 4.0,
    dropout_rate: float = 0.0,
    qkv_bias: bool = True,
    use_flash_attention: bool = True,
) -> nn.ModuleList:
    """``num_layers`` pre-norm MONAI ``TransformerBlock`` s.

    Args:
        hidden_size: token size.
        num_layers: number of blocks.
        num_heads: attention heads.
        mlp_ratio: MLP width over ``hidden_size``.
        dropout_rate: dropout in attention and MLP.
        qkv_bias: bias in the query/key/value projection.
        use_flash_attention: attention through ``torch.nn.functional.scaled_dot_product_attention``
            (fused kernels; faster on CPU and GPU). The padding mask is shaped for it by :func:`key_padding_mask`.

    Returns:
        The blocks, to be run in order.
    """
    mlp_dim = int(hidden_size * mlp_ratio)
    return nn.ModuleList(
        TransformerBlock(
            hidden_size,
            mlp_dim,
            num_heads,
            dropout_rate=dropout_rate,
            qkv_bias=qkv_bias,
            use_flash_attention=use_flash_attention,
        )
        for _ in range(num_layers)
    )


def key_padding_mask(attention_mask: torch.Tensor | None, flash: bool) -> torch.Tensor | None:
    """Turn a (B, L) 1 = token / 0 = padding mask into what MONAI's ``SABlock`` expects.

    MONAI's fused path hands ``attn_mask`` to ``scaled_dot_product_attention`` unchanged (a boolean
    ``(B, 1, 1, L)`` mask broadcasts over heads and queries, True = attend); its einsum path expands a
    ``(B, L)`` mask itself. A sequence with no token at all would give NaNs, so it attends to everything.

    Args:
        attention_mask: (B, L) mask, or None.
        flash: whether the blocks use the fused attention path.

    Returns:
        The mask for ``TransformerBlock.forward(attn_mask=...)``, or None when nothing is padded.
    """
    if attention_mask is None:
        return None
    keep = attention_mask.to(torch.bool)  # (not .bool(): TorchScript lacks it)
    if bool(keep.all()):
        return None  # nothing padded: the unmasked path is faster
    keep = keep | ~keep.any(dim=1, keepdim=True)
    return keep[:, None, None, :] if flash else keep.long()


def init_mae_weights(module: nn.Module) -> None:
    """MAE initialisation, applied with ``model.apply``: xavier-uniform linear (and patch-projection)
    weights, zero biases, unit LayerNorms, normal(0.02) token embeddings.

    Fixed sine-cosine position tables and mask tokens are left alone (their owners set them).

    Args:
        module: one sub-module.
    """
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.Conv2d, nn.Conv3d)) and getattr(module, "_is_patch_projection", False):
        # MAE treats the patch projection like a linear layer over the flattened patch
        nn.init.xavier_uniform_(module.weight.view(module.weight.shape[0], -1))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
    elif isinstance(module, PositionEmbedding) and module.weight.requires_grad:
        nn.init.trunc_normal_(module.weight, std=0.02)
