"""Classification on pooled encoder tokens (fine-tuning and frozen-encoder probes)."""

from __future__ import annotations

import torch
from torch import nn

from medcoss_monai.networks.blocks import init_mae_weights
from medcoss_monai.networks.encoder import UnifiedEncoder

__all__ = ["ClassificationHead", "EncoderClassifier", "as_encoder"]


def as_encoder(network: nn.Module) -> UnifiedEncoder:
    """The :class:`UnifiedEncoder` itself, or the ``encoder`` of a network that holds one (``MedCoSSModel``)."""
    if isinstance(network, UnifiedEncoder):
        return network
    encoder = getattr(network, "encoder", None)
    if isinstance(encoder, UnifiedEncoder):
        return encoder
    raise TypeError(f"expected a UnifiedEncoder or a network with an .encoder, got {type(network).__name__}.")


class ClassificationHead(nn.Module):
    """LayerNorm -> dropout -> (linear -> GELU -> dropout) -> linear, on (B, hidden) pooled features.

    Args:
        hidden_size: feature size.
        num_classes: outputs.
        hidden: width of one hidden layer; None for a linear head (after the LayerNorm, as MAE fine-tuning).
        dropout: dropout rate.
    """

    def __init__(self, hidden_size: int, num_classes: int, hidden: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.LayerNorm(hidden_size), nn.Dropout(dropout)]
        if hidden:
            layers += [nn.Linear(hidden_size, hidden), nn.GELU(), nn.Dropout(dropout)]
        layers.append(nn.Linear(hidden or hidden_size, num_classes))
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
        hidden: hidden width of the head (None: linear).
        dropout: head dropout.
        freeze_encoder: keep the encoder frozen and in ``eval()`` mode (linear probing).
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        hidden: int | None = None,
        dropout: float = 0.0,
        freeze_encoder: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = as_encoder(encoder)
        self.head = ClassificationHead(self.encoder.hidden_size, num_classes, hidden, dropout)
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
