"""What the tensor-only inference encoders are built of: a trained encoder's position tables and patch
projections as they run in eval mode, and :class:`KindEncoder`, the base of the inference encoders of
:mod:`medcoss_monai.networks.inference` and :mod:`medcoss_monai.networks.reference_inference`.

Messages raised in ``forward`` are built with ``str.format``: TorchScript compiles no f-string.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medcoss_monai.networks.encoder import KINDS, PatchEmbed
from medcoss_monai.networks.pos_embed import PositionEmbedding

__all__ = ["KindEncoder", "PatchTokens", "PositionTable"]

_MODES = {1: "linear", 2: "bicubic", 3: "trilinear"}


class PositionTable(nn.Module):
    """The table of a :class:`~medcoss_monai.networks.PositionEmbedding` (same ``weight`` and ``grid``
    tensors), served for a token grid as the embedding serves it.

    Args:
        embedding: the trained position embedding.
    """

    def __init__(self, embedding: PositionEmbedding) -> None:
        super().__init__()
        self.weight = embedding.weight
        self.register_buffer("grid", embedding.grid)
        self.own = [int(g) for g in embedding.grid_size]
        self.mode = _MODES[len(self.own)]

    def forward(self, grid: list[int]) -> torch.Tensor:
        """``(1, prod(grid), dim)`` table: the own one, its first positions (text), or interpolated (images)."""
        if grid == self.own:
            return self.weight
        if len(self.own) == 1 and len(grid) == 1:
            if grid[0] > self.own[0]:
                raise ValueError("the sequence is longer than the positions of the model")
            return self.weight[:, : grid[0]]
        if len(grid) != len(self.own):
            raise ValueError("the input has another number of spatial axes than the position table")
        # as resize_pos_embed: interpolate the table laid out on its grid
        channels = self.weight.shape[-1]
        table = self.weight.float().transpose(1, 2).reshape([1, channels] + self.own)
        table = F.interpolate(table, size=grid, mode=self.mode, align_corners=False)
        return table.reshape(1, channels, -1).transpose(1, 2).to(self.weight.dtype)

    def _load_from_state_dict(  # type: ignore[no-untyped-def]
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # a table made for another grid of the same length would load silently: refuse it, as PositionEmbedding does
        g_key = prefix + "grid"
        if g_key in state_dict and torch.as_tensor(state_dict[g_key]).tolist() != self.own:
            error_msgs.append(f"{prefix}weight was made for grid {state_dict[g_key].tolist()}, the model's is {self.own}.")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)


class PatchTokens(nn.Module):
    """The projection of a :class:`~medcoss_monai.networks.encoder.PatchEmbed` (same ``proj``): images to tokens.

    Args:
        patch_embed: the trained patch embedding.
    """

    def __init__(self, patch_embed: PatchEmbed) -> None:
        super().__init__()
        self.proj = patch_embed.proj
        self.in_channels = int(patch_embed.in_channels)
        self.patch_size = [int(p) for p in patch_embed.patch_size]
        self.to_rows = patch_embed.to_rows

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """(B, C, *spatial) images -> ((B, L, hidden) tokens, token grid)."""
        if x.dim() != len(self.patch_size) + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                "expected a (B, {}, {} spatial axes) image batch, got shape {}".format(  # noqa: UP032 (TorchScript: no f-strings)
                    self.in_channels, len(self.patch_size), x.shape
                )
            )
        for size, patch in zip(x.shape[2:], self.patch_size):
            if size % patch != 0 or size < patch:
                raise ValueError(
                    "each spatial size must be a positive multiple of the patch size {}, got {}".format(  # noqa: UP032
                        self.patch_size, x.shape[2:]
                    )
                )
        grid: list[int] = []
        for size, patch in zip(x.shape[2:], self.patch_size):
            grid.append(size // patch)
        # the projection as PatchEmbed runs it (one matrix product over the cut patches)
        weight = self.proj.weight.reshape(self.proj.out_channels, -1)
        return F.linear(self.to_rows(x), weight, self.proj.bias), grid


class KindEncoder(nn.Module):
    """What the two inference encoders share: the input kind, the check of text input, the patch projections
    (both encoders cut images alike), the forward contract.

    A subclass builds its other tables and implements ``encode`` (TorchScript compiles the inherited
    ``forward`` against it).

    Args:
        encoder: the trained encoder (its ``patch_embed_2d`` / ``patch_embed_3d`` are taken).
        kind: ``"text"``, ``"2d"`` or ``"3d"``.
        vocab_size: rows of the text table (token ids must be below it).
    """

    def __init__(self, encoder: nn.Module, kind: str, vocab_size: int) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
        self.kind = kind
        self.vocab_size = int(vocab_size)
        self.patch_embed_2d = PatchTokens(encoder.patch_embed_2d)
        self.patch_embed_3d = PatchTokens(encoder.patch_embed_3d)

    def forward(
        self, x: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[int]]:
        """Encode a batch of the encoder's kind.

        Args:
            x: (B, L) token ids, or (B, C, *spatial) float images.
            attention_mask: (B, L) text padding mask, 1 = token.

        Returns:
            ``(final tokens (B, L, hidden), output of every block, token grid)``: see the subclass for which tokens.
        """
        if self.kind == "text":
            if x.is_floating_point() or x.dim() != 2:
                raise ValueError("expected (B, L) integer token ids, got shape {}".format(x.shape))  # noqa: UP032
            if int(x.max()) >= self.vocab_size or int(x.min()) < 0:
                raise ValueError("token ids must be in [0, {})".format(self.vocab_size))  # noqa: UP032
        return self.encode(x, attention_mask)

    def encode(
        self, x: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[int]]:
        """The subclass's computation on checked input (see :meth:`forward`)."""
        raise NotImplementedError
