"""Classification on pooled encoder tokens (fine-tuning and frozen-encoder probes).

The heads sit on any encoder of this package: this project's :class:`UnifiedEncoder` (or the
``MedCoSSModel`` holding it), or an encoder with ``encode_tokens(x, kind, attention_mask)`` such as
:class:`~medcoss_monai.networks.MedCoSSReferenceEncoder`, the architecture of the authors' released
weights (an imported stage). :func:`encoder_outputs` gives both the same form.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medcoss_monai.errors import BadInputError
from medcoss_monai.networks.blocks import init_mae_weights
from medcoss_monai.networks.encoder import UnifiedEncoder, pool_tokens

__all__ = ["HEADS", "ClassificationHead", "EncoderClassifier", "as_encoder", "input_kind", "encoder_outputs"]


def as_encoder(network: nn.Module) -> nn.Module:
    """The encoder a head sits on.

    Args:
        network: a :class:`UnifiedEncoder`, or an encoder with ``encode_tokens(x, kind, attention_mask)`` and
            ``hidden_size`` (``MedCoSSReferenceEncoder``: an imported MedCoSS stage), or a network holding
            either as ``.encoder`` (``MedCoSSModel``, also around an imported encoder).

    Returns:
        The encoder.

    Raises:
        TypeError: ``network`` is none of these.
    """
    def is_encoder(module: Any) -> bool:
        return isinstance(module, UnifiedEncoder) or (
            callable(getattr(module, "encode_tokens", None)) and isinstance(getattr(module, "hidden_size", None), int)
        )

    if isinstance(network, UnifiedEncoder):
        return network
    # a pre-training network (MedCoSSModel) holds its encoder, ours or the reference's, as .encoder
    for candidate in (getattr(network, "encoder", None), network):
        if is_encoder(candidate):
            return candidate
    raise TypeError(
        f"expected a UnifiedEncoder, a network with an .encoder, or an encoder with encode_tokens(x, kind, "
        f"attention_mask) and hidden_size, got {type(network).__name__}."
    )


def input_kind(x: torch.Tensor) -> str:
    """``"text"`` for integer token ids, ``"2d"`` for (B, C, H, W) images, ``"3d"`` for (B, C, D, H, W) volumes.

    Raises:
        ValueError: a float tensor of another rank.
    """
    if not x.is_floating_point():
        return "text"
    if x.ndim not in (4, 5):
        raise ValueError(f"expected token ids, (B, C, H, W) images or (B, C, D, H, W) volumes, got {tuple(x.shape)}.")
    return "2d" if x.ndim == 4 else "3d"


def encoder_outputs(encoder: nn.Module, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> dict[str, Any]:
    """The encoder's final tokens (class token left out), and its per-block outputs and token grid where it gives them.

    Args:
        encoder: an encoder :func:`as_encoder` accepts.
        x: token ids, images or volumes, unmasked.
        attention_mask: (B, L) text padding mask, 1 = token.

    Returns:
        ``tokens`` (B, N, hidden), ``attention_mask``; ``hidden_states`` (one per block) and ``grid`` when the
        encoder gives them (``UnifiedEncoder.forward``, ``forward_features`` of the reference encoder).
    """
    if isinstance(encoder, UnifiedEncoder):
        return encoder(x, attention_mask=attention_mask)
    if callable(getattr(encoder, "forward_features", None)):
        return encoder.forward_features(x, attention_mask)
    kind = input_kind(x)
    tokens = encoder.encode_tokens(x, kind, attention_mask)
    has_cls = getattr(encoder, "has_class_token", None)
    if callable(has_cls) and has_cls(kind):  # the class token leads; the heads pool the other tokens
        tokens = tokens[:, 1:]
    return {"tokens": tokens, "attention_mask": attention_mask}


HEADS = ("linear", "mlp")
"""Kinds of :class:`ClassificationHead`."""


class ClassificationHead(nn.Module):
    """A classifier on (B, hidden) pooled features: ``"linear"`` or ``"mlp"``.

    - ``"linear"``: LayerNorm -> dropout -> linear (MAE fine-tuning; the reference's X-ray and pathology
      classifiers: ``fc_norm`` then ``nn.Linear``, MedCoSS ``Downstream/Dim_2/Chest_XR/model/Unimodel.py``,
      ``Downstream/Dim_2/NCT_CRC_HE/model/Unimodel.py``).
    - ``"mlp"``: LayerNorm -> dropout -> linear -> LayerNorm -> GELU -> dropout -> linear (the reference's
      CT and text classifiers: ``Linear(768, 768), LayerNorm, GELU, Linear(768, classes)`` after ``fc_norm``,
      ``Downstream/Dim_3/RICORD/model/Unimodel.py``; ``Downstream/Dim_1/PudMed20k/model/Unimodel.py``).

    Linear layers start xavier-uniform with zero bias, LayerNorms at unit scale, as the reference's.
    The layers are one ``nn.Sequential`` (``layers.<i>``): a linear head's keys are those of the
    earlier versions of this class.

    Args:
        hidden_size: feature size.
        num_classes: outputs.
        hidden: width of the MLP's hidden layer (None: ``hidden_size``, as the reference's).
        dropout: dropout rate (the reference uses none).
        head: ``"linear"`` or ``"mlp"``; None: ``"mlp"`` when ``hidden`` is given, else ``"linear"``.

    Raises:
        ValueError: an unknown ``head``, or ``hidden`` given to a linear head.
    """

    def __init__(
        self, hidden_size: int, num_classes: int, hidden: int | None = None, dropout: float = 0.0, head: str | None = None
    ) -> None:
        super().__init__()
        head = head or ("mlp" if hidden else "linear")
        if head not in HEADS:
            raise BadInputError(f"head must be one of {HEADS}, got '{head}' (--head).")
        if head == "linear" and hidden:
            raise BadInputError(f"a linear head has no hidden layer (hidden={hidden}): use head='mlp'.")
        self.kind = head
        layers: list[nn.Module] = [nn.LayerNorm(hidden_size), nn.Dropout(dropout)]
        width = hidden_size
        if head == "mlp":
            width = int(hidden or hidden_size)
            layers += [nn.Linear(hidden_size, width), nn.LayerNorm(width), nn.GELU(), nn.Dropout(dropout)]
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)
        self.apply(init_mae_weights)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, hidden) -> (B, num_classes) logits."""
        return self.layers(features)


class EncoderClassifier(nn.Module):
    """A pre-trained encoder with a :class:`ClassificationHead` on its mean-pooled final tokens.

    Loads a stage's ``model.pt`` directly: its ``encoder.*`` keys match (use
    :func:`~medcoss_monai.networks.adapt_state_dict` and ``strict=False`` to drop the pretext heads).
    Images are pooled over their patch tokens (a class token is left out, as the reference's downstream
    heads pool), text over its real tokens.

    Args:
        encoder: an encoder :func:`as_encoder` accepts (this project's, or an imported MedCoSS stage's).
        num_classes: outputs.
        hidden: hidden width of an MLP head (None: the encoder's width).
        dropout: head dropout.
        freeze_encoder: keep the encoder frozen and in ``eval()`` mode (linear probing).
        head: ``"linear"`` or ``"mlp"`` (see :class:`ClassificationHead`); None: ``"mlp"`` when ``hidden`` is given.
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        hidden: int | None = None,
        dropout: float = 0.0,
        freeze_encoder: bool = False,
        head: str | None = None,
    ) -> None:
        super().__init__()
        self.encoder = as_encoder(encoder)
        self.head = ClassificationHead(self.encoder.hidden_size, num_classes, hidden, dropout, head)
        self.freeze_encoder = freeze_encoder
        if freeze_encoder:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True) -> EncoderClassifier:
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()  # a frozen feature extractor always runs in eval mode
        return self

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Text ids or images -> (B, num_classes) logits."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
            out = encoder_outputs(self.encoder, x, attention_mask)
            features = pool_tokens(out["tokens"], out["attention_mask"])
        return self.head(features)
