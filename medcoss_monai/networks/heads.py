"""Classification on pooled encoder tokens (fine-tuning and frozen-encoder probes)."""

from __future__ import annotations

import torch
from torch import nn

from medcoss_monai.errors import BadInputError
from medcoss_monai.networks.blocks import init_mae_weights
from medcoss_monai.networks.encoder import UnifiedEncoder

__all__ = ["HEADS", "ClassificationHead", "EncoderClassifier", "as_encoder"]


def as_encoder(network: nn.Module) -> UnifiedEncoder:
    """The :class:`UnifiedEncoder` itself, or the ``encoder`` of a network that holds one (``MedCoSSModel``)."""
    if isinstance(network, UnifiedEncoder):
        return network
    encoder = getattr(network, "encoder", None)
    if isinstance(encoder, UnifiedEncoder):
        return encoder
    raise TypeError(f"expected a UnifiedEncoder or a network with an .encoder, got {type(network).__name__}.")


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

    Args:
        encoder: a :class:`UnifiedEncoder` or a network holding one as ``.encoder``.
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
            out = self.encoder(x, attention_mask=attention_mask)
            features = self.encoder.pool(out["tokens"], out["attention_mask"])
        return self.head(features)
