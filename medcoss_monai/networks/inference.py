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
from medcoss_monai.networks.encoder import KINDS, UnifiedEncoder, pool_tokens
from medcoss_monai.networks.heads import EncoderClassifier, as_encoder
from medcoss_monai.networks.inference_base import KindEncoder, PatchTokens, PositionTable
from medcoss_monai.networks.reference_encoder import MedCoSSReferenceEncoder
from medcoss_monai.networks.reference_inference import ReferenceInferenceEncoder
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

class InferenceEncoder(KindEncoder):
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
