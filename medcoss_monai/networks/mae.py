"""MAE decoder: from the kept encoder tokens to a prediction of every patch (2D or 3D)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medcoss_monai.networks.blocks import init_mae_weights, transformer_stack
from medcoss_monai.networks.pos_embed import PositionEmbedding

__all__ = ["MAEDecoder"]


class MAEDecoder(nn.Module):
    """Lightweight MAE decoder shared by 2D and 3D inputs.

    The kept tokens are projected to the decoder size, mask tokens fill the removed positions, the
    sequence is put back in grid order (``ids_restore``), the decoder's own position table of the
    input's kind is added (interpolated when the grid differs), and after the transformer a
    kind-specific linear layer predicts each patch's values.

    Args:
        hidden_size: encoder token size.
        decoder_hidden_size: decoder token size.
        decoder_layers: decoder blocks.
        decoder_heads: decoder attention heads.
        patch_dim_2d: values per 2D patch (patch pixels x channels).
        patch_dim_3d: values per 3D patch.
        grid_2d: 2D token grid at the built size.
        grid_3d: 3D token grid at the built size.
        mlp_ratio: MLP width over ``decoder_hidden_size``.
        qkv_bias: bias of the query/key/value projection.
        pos_embed_type: ``"sincos"`` (fixed) or ``"learnable"``.
        use_flash_attention: fused attention in MONAI's blocks.
    """

    def __init__(
        self,
        hidden_size: int,
        decoder_hidden_size: int = 128,
        decoder_layers: int = 2,
        decoder_heads: int = 4,
        patch_dim_2d: int = 16 * 16 * 3,
        patch_dim_3d: int = 16 * 16 * 8,
        grid_2d: Sequence[int] = (6, 6),
        grid_3d: Sequence[int] = (4, 4, 2),
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        pos_embed_type: str = "sincos",
        use_flash_attention: bool = True,
    ) -> None:
        super().__init__()
        learnable = pos_embed_type == "learnable"
        self.decoder_embed = nn.Linear(hidden_size, decoder_hidden_size)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_hidden_size))
        self.pos_embed_2d = PositionEmbedding(grid_2d, decoder_hidden_size, learnable)
        self.pos_embed_3d = PositionEmbedding(grid_3d, decoder_hidden_size, learnable)
        self.blocks = transformer_stack(
            decoder_hidden_size, decoder_layers, decoder_heads, mlp_ratio, 0.0, qkv_bias, use_flash_attention
        )
        self.norm = nn.LayerNorm(decoder_hidden_size)
        self.pred_2d = nn.Linear(decoder_hidden_size, patch_dim_2d)
        self.pred_3d = nn.Linear(decoder_hidden_size, patch_dim_3d)
        self.apply(init_mae_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor, kind: str, grid: Sequence[int]) -> torch.Tensor:
        """Predict every patch.

        Args:
            latent: (B, L_keep, hidden) final encoder tokens of the kept patches.
            ids_restore: (B, L) position of each grid token in the shuffled order (from the encoder).
            kind: ``"2d"`` or ``"3d"``.
            grid: the input's token grid (``prod(grid) == L``).

        Returns:
            (B, L, patch_dim) predictions in grid order.
        """
        if kind not in ("2d", "3d"):
            raise ValueError(f"the MAE decoder predicts image patches; got input kind {kind!r}.")
        x = self.decoder_embed(latent)
        b, keep, c = x.shape
        length = ids_restore.shape[1]
        x = torch.cat([x, self.mask_token.expand(b, length - keep, c).to(x.dtype)], dim=1)
        x = torch.gather(x, 1, ids_restore.unsqueeze(-1).expand(-1, -1, c))
        pos = self.pos_embed_2d if kind == "2d" else self.pos_embed_3d
        x = x + pos(grid)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return self.pred_2d(x) if kind == "2d" else self.pred_3d(x)
