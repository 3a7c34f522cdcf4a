"""Tensor-only inference networks: what an exported Model Zoo bundle's ``network_def`` builds.

The training networks (:class:`~medcoss_monai.networks.MedCoSSModel`,
:class:`~medcoss_monai.networks.EncoderClassifier`, :class:`~medcoss_monai.networks.UNETRStyleSegmenter`)
read the input kind from the input, return dicts and take pretext switches; TorchScript compiles
none of that. Each network here is built from a trained one for ONE input kind (``"text"``, ``"2d"``
or ``"3d"``), shares its modules, and maps tensors to one tensor, so ``torch.jit.script`` (MONAI's
``ckpt_export``) compiles it. Its state dict has the keys of the network it was built from (minus
the pretext heads of a pre-training network), so a fine-tuned task's weights load into it strictly.
Messages raised in ``forward`` are built with ``str.format``: TorchScript compiles no f-string.

The encoder of an imported MedCoSS stage (:class:`~medcoss_monai.networks.MedCoSSReferenceEncoder`, the
authors' released architecture) and the networks fine-tuned or pre-trained further on it get
:class:`ReferenceInferenceEncoder` in place of :class:`InferenceEncoder`: same outputs, same keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medcoss_monai.networks.blocks import key_padding_mask
from medcoss_monai.networks.encoder import (
    KINDS,
    PatchEmbed,
    UnifiedEncoder,
    pool_tokens,
)
from medcoss_monai.networks.heads import EncoderClassifier, as_encoder
from medcoss_monai.networks.pos_embed import PositionEmbedding
from medcoss_monai.networks.reference_blocks import MASK_FILL, LayerScaleBlock, ReferenceTextEmbedding, SplitPositionTable
from medcoss_monai.networks.reference_encoder import MedCoSSReferenceEncoder
from medcoss_monai.networks.segmentation import UNETRStyleSegmenter

__all__ = [
    "FeatureExtractor",
    "InferenceClassifier",
    "InferenceEncoder",
    "InferenceSegmenter",
    "PatchTokens",
    "PositionTable",
    "ReferenceInferenceEncoder",
    "inference_encoder",
    "inference_network",
]

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


class _KindEncoder(nn.Module):
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


class InferenceEncoder(_KindEncoder):
    """The :class:`~medcoss_monai.networks.UnifiedEncoder` run on one input kind, without masking.

    Holds every tokenizer of the encoder (its state dict keys are the encoder's) but runs only the
    one of ``kind``; the computation is the encoder's ``forward`` with ``mask_ratio=0``.

    Args:
        encoder: the trained encoder.
        kind: ``"text"`` ((B, L) token ids), ``"2d"`` ((B, C, H, W)) or ``"3d"`` ((B, C, H, W, D)).
    """

    def __init__(self, encoder: UnifiedEncoder, kind: str) -> None:
        super().__init__(encoder, kind, encoder.vocab_size)
        self.kind_index = KINDS.index(kind)
        self.flash = bool(encoder.use_flash_attention)
        self.text_embed = encoder.text_embed
        self.text_embed_scale = float(encoder.text_embed_scale)
        self.pos_embed_text = PositionTable(encoder.pos_embed_text)
        self.pos_embed_2d = PositionTable(encoder.pos_embed_2d)
        self.pos_embed_3d = PositionTable(encoder.pos_embed_3d)
        self.kind_embed = encoder.kind_embed
        self.embed_dropout = encoder.embed_dropout
        self.blocks = encoder.blocks
        self.norm = encoder.norm

    def encode(
        self, x: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[int]]:
        """``(final normed tokens (B, L, hidden), output of every block, token grid)`` of checked input."""
        if self.kind == "text":
            grid = [x.shape[1]]
            tokens = self.text_embed(x) * self.text_embed_scale + self.pos_embed_text(grid)
        elif self.kind == "2d":
            tokens, grid = self.patch_embed_2d(x)
            tokens = tokens + self.pos_embed_2d(grid)
        else:
            tokens, grid = self.patch_embed_3d(x)
            tokens = tokens + self.pos_embed_3d(grid)
        if self.kind_embed is not None:
            tokens = tokens + self.kind_embed.weight[self.kind_index]
        tokens = self.embed_dropout(tokens)
        attn = key_padding_mask(attention_mask, self.flash)
        hidden_states: list[torch.Tensor] = []
        for block in self.blocks:
            tokens = block(tokens, attn_mask=attn)
            hidden_states.append(tokens)
        return self.norm(tokens), hidden_states, grid


class _ReferenceText(nn.Module):
    """The tables of a :class:`~medcoss_monai.networks.reference_blocks.ReferenceTextEmbedding` (same keys),
    applied as it applies them: token + position + token-type row 0, then LayerNorm."""

    def __init__(self, embedding: ReferenceTextEmbedding) -> None:
        super().__init__()
        self.token, self.position = embedding.token, embedding.position
        self.token_type, self.norm = embedding.token_type, embedding.norm

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids (checked by the encoder) -> (B, L, hidden)."""
        length = ids.shape[1]
        if length > self.position.num_embeddings:
            raise ValueError("the text is longer than the {} positions of the model".format(self.position.num_embeddings))  # noqa: UP032
        return self.norm(self.token(ids) + self.position.weight[:length] + self.token_type.weight[0])


class _ReferencePositions(nn.Module):
    """A :class:`~medcoss_monai.networks.reference_blocks.SplitPositionTable` (same keys) as it runs in eval
    mode: the first ``N`` spatial rows plus temporal row 0."""

    def __init__(self, table: SplitPositionTable) -> None:
        super().__init__()
        self.spatial, self.temporal = table.spatial, table.temporal

    def forward(self, num_tokens: int) -> torch.Tensor:
        """The (num_tokens, hidden) positions of an image of ``num_tokens`` patches."""
        if num_tokens > self.spatial.num_embeddings:
            raise ValueError(
                "the image gives {} patches but the position table holds {}: use a smaller image".format(  # noqa: UP032
                    num_tokens, self.spatial.num_embeddings
                )
            )
        return self.temporal.weight[0] + self.spatial.weight[:num_tokens]


class _ReferenceLayer(nn.Module):
    """A :class:`~medcoss_monai.networks.reference_blocks.LayerScaleBlock` (same keys) as it runs in eval mode
    (drop path is the identity there)."""

    def __init__(self, block: LayerScaleBlock) -> None:
        super().__init__()
        self.norm1, self.attn, self.norm2, self.mlp = block.norm1, block.attn, block.norm2, block.mlp
        self.gamma_1, self.gamma_2 = block.gamma_1, block.gamma_2

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.gamma_1 * self.attn(self.norm1(x), attn_mask=attn_bias)
        return x + self.gamma_2 * self.mlp(self.norm2(x))


class ReferenceInferenceEncoder(_KindEncoder):
    """The :class:`~medcoss_monai.networks.MedCoSSReferenceEncoder` (an imported MedCoSS stage) run on one input
    kind, in eval mode, in the form of :class:`InferenceEncoder`.

    The computation is the encoder's ``forward_features``: images get the class token and the split positions,
    a grey 2D image is read as 3 equal channels (as the reference reads films), text gets the reference's causal
    and padding attention bias; there is no final norm. Its state dict keys are the encoder's.

    Args:
        encoder: the trained reference encoder.
        kind: ``"text"`` ((B, L) token ids), ``"2d"`` ((B, C, H, W)) or ``"3d"`` ((B, C, H, W, D)).
    """

    def __init__(self, encoder: MedCoSSReferenceEncoder, kind: str) -> None:
        super().__init__(encoder, kind, encoder.text_embed.token.num_embeddings)
        self.num_heads = int(encoder.num_heads)
        self.causal = encoder.text_attention == "causal"
        self.per_sample = encoder.text_mask_layout == "per_sample"
        self.mask_fill = float(MASK_FILL)  # an attribute: TorchScript reads no global float
        self.text_embed = _ReferenceText(encoder.text_embed)
        self.pos_embed_2d = _ReferencePositions(encoder.pos_embed_2d)
        self.pos_embed_3d = _ReferencePositions(encoder.pos_embed_3d)
        self.image_norm = encoder.image_norm
        self.cls_token = encoder.cls_token
        self.blocks = nn.ModuleList(_ReferenceLayer(b) for b in encoder.blocks)

    def _text_bias(self, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The (B, H, L, L) bias of :func:`~medcoss_monai.networks.reference_blocks.reference_text_attention_bias`."""
        b, length = attention_mask.shape[0], attention_mask.shape[1]
        allowed = attention_mask.to(dtype)[:, None, :].expand(b, length, length)
        if self.causal:
            allowed = allowed * torch.ones(length, length, dtype=dtype, device=allowed.device).tril()
        bias = (1.0 - allowed) * self.mask_fill
        if self.per_sample:
            return bias[:, None].expand(b, self.num_heads, length, length)
        # the reference's mask.repeat(num_heads, 1, 1) read sample-major: head h of sample b gets mask (b * H + h) % B
        rows = torch.arange(b, device=bias.device)[:, None] * self.num_heads + torch.arange(self.num_heads, device=bias.device)
        return bias[rows % b]

    def encode(
        self, x: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[int]]:
        """``(last layer's tokens (B, L, hidden), output of every layer, token grid)`` of checked input, the class
        token left out."""
        bias: torch.Tensor | None = None
        start = 1
        if self.kind == "text":
            mask = torch.ones_like(x) if attention_mask is None else attention_mask
            tokens = self.text_embed(x)
            bias = self._text_bias(mask, tokens.dtype)
            grid = [x.shape[1]]
            start = 0
        else:
            if self.kind == "2d":
                if x.dim() == 4 and x.shape[1] == 1 and self.patch_embed_2d.in_channels == 3:
                    x = x.expand(-1, 3, -1, -1)  # a grey film read as RGB, as the reference reads it
                tokens, grid = self.patch_embed_2d(x)
                tokens = self.image_norm(tokens + self.pos_embed_2d(tokens.shape[1]))
            else:
                tokens, grid = self.patch_embed_3d(x)
                tokens = self.image_norm(tokens + self.pos_embed_3d(tokens.shape[1]))
            tokens = torch.cat([self.cls_token.to(tokens.dtype).expand(tokens.shape[0], -1, -1), tokens], dim=1)
        hidden_states: list[torch.Tensor] = []
        for block in self.blocks:
            tokens = block(tokens, bias)
            hidden_states.append(tokens[:, start:])
        return tokens[:, start:], hidden_states, grid


def inference_encoder(encoder: nn.Module, kind: str) -> nn.Module:
    """The tensor-only form of a trained encoder for one input kind.

    Args:
        encoder: a :class:`~medcoss_monai.networks.UnifiedEncoder` or a
            :class:`~medcoss_monai.networks.MedCoSSReferenceEncoder` (an imported stage).
        kind: ``"text"``, ``"2d"`` or ``"3d"``.

    Returns:
        :class:`InferenceEncoder` or :class:`ReferenceInferenceEncoder`, sharing the encoder's modules.

    Raises:
        TypeError: another encoder.
    """
    if isinstance(encoder, MedCoSSReferenceEncoder):
        return ReferenceInferenceEncoder(encoder, kind)
    if isinstance(encoder, UnifiedEncoder):
        return InferenceEncoder(encoder, kind)
    raise TypeError(f"no inference form of a {type(encoder).__name__} encoder (a UnifiedEncoder or a "
                    "MedCoSSReferenceEncoder is needed).")


class FeatureExtractor(nn.Module):
    """Pooled encoder features (mean of the final tokens, over real tokens for text): what a stage bundle exports.

    Args:
        network: a :class:`~medcoss_monai.networks.UnifiedEncoder` or a network holding one
            (``MedCoSSModel``); its pretext heads are left out.
        kind: the input kind, see :class:`InferenceEncoder`.
    """

    def __init__(self, network: nn.Module, kind: str) -> None:
        super().__init__()
        self.encoder = inference_encoder(as_encoder(network), kind)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids (with their mask) or images -> (B, hidden) features."""
        tokens, _, _ = self.encoder(x, attention_mask)
        return pool_tokens(tokens, attention_mask)


class InferenceClassifier(nn.Module):
    """A fine-tuned :class:`~medcoss_monai.networks.EncoderClassifier` on one input kind: inputs -> logits.

    Args:
        network: the trained classifier.
        kind: the input kind, see :class:`InferenceEncoder`.
    """

    def __init__(self, network: EncoderClassifier, kind: str) -> None:
        super().__init__()
        self.encoder = inference_encoder(network.encoder, kind)
        self.head = network.head

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids (with their mask) or images -> (B, num_classes) logits."""
        tokens, _, _ = self.encoder(x, attention_mask)
        return self.head(pool_tokens(tokens, attention_mask))


class InferenceSegmenter(nn.Module):
    """A fine-tuned :class:`~medcoss_monai.networks.UNETRStyleSegmenter`: images -> logits on the input grid.

    Args:
        network: the trained segmenter.
    """

    def __init__(self, network: UNETRStyleSegmenter) -> None:
        super().__init__()
        self.spatial_dims = int(network.spatial_dims)
        self.encoder = inference_encoder(network.encoder, f"{self.spatial_dims}d")
        self.hidden_layers = [int(i) for i in network.hidden_layers]
        self.native = bool(network.native)
        self.mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
        for name in ("encoder1", "encoder2", "encoder3", "encoder4", "decoder5", "decoder4", "decoder3", "decoder2", "out"):
            setattr(self, name, getattr(network, name))

    @staticmethod
    def _to_grid(tokens: torch.Tensor, grid: list[int]) -> torch.Tensor:
        """(B, L, C) tokens -> (B, C, *grid) feature map."""
        return tokens.transpose(1, 2).reshape([tokens.shape[0], tokens.shape[2]] + grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *spatial) images -> (B, out_channels, *spatial) logits."""
        tokens, hs, grid = self.encoder(x)
        image = x
        if not self.native:  # the decoder reaches grid * 16, not the input size
            image = F.interpolate(x, size=[g * 16 for g in grid], mode=self.mode)
        enc1 = self.encoder1(image)
        enc2 = self.encoder2(self._to_grid(hs[self.hidden_layers[0]], grid))
        enc3 = self.encoder3(self._to_grid(hs[self.hidden_layers[1]], grid))
        enc4 = self.encoder4(self._to_grid(hs[self.hidden_layers[2]], grid))
        dec4 = self.decoder5(self._to_grid(tokens, grid), enc4)
        dec3 = self.decoder4(dec4, enc3)
        dec2 = self.decoder3(dec3, enc2)
        dec1 = self.decoder2(dec2, enc1)
        logits = self.out(dec1)
        if not self.native:
            logits = F.interpolate(logits, size=list(x.shape[2:]), mode=self.mode)
        return logits


def inference_network(network: nn.Module, kind: str | None = None) -> nn.Module:
    """The inference network of a trained one: segmenter, classifier, or pooled features of an encoder.

    Args:
        network: a trained ``UNETRStyleSegmenter``, ``EncoderClassifier``, ``MedCoSSModel`` or ``UnifiedEncoder``.
        kind: the input kind (not needed for a segmenter, whose dimensionality fixes it).

    Returns:
        The :class:`InferenceSegmenter`, :class:`InferenceClassifier` or :class:`FeatureExtractor`,
        sharing the trained network's modules.
    """
    if isinstance(network, UNETRStyleSegmenter):
        return InferenceSegmenter(network)
    if kind is None:
        raise ValueError(f"the input kind (one of {KINDS}) is needed for a {type(network).__name__}.")
    if isinstance(network, EncoderClassifier):
        return InferenceClassifier(network, kind)
    return FeatureExtractor(network, kind)
