"""The MedCoSS pre-training network: unified encoder + MAE decoder + MLM head behind one forward."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from medcoss_monai.networks.encoder import UnifiedEncoder
from medcoss_monai.networks.mae import MAEDecoder
from medcoss_monai.networks.mlm import MLM_IGNORE_INDEX, MLMHead
from medcoss_monai.networks.reference_encoder import MedCoSSReferenceEncoder

__all__ = ["MedCoSSModel", "PRETEXTS", "ENCODERS", "build_encoder"]

PRETEXTS = (None, "encode", "mae", "mlm")

ENCODERS: dict[str, type[nn.Module]] = {
    f"{c.__module__}.{c.__name__}": c for c in (UnifiedEncoder, MedCoSSReferenceEncoder)
}
"""The encoders an ``encoder_def`` may name (a config names a class, it never runs code)."""


def build_encoder(encoder_def: Mapping[str, Any] | nn.Module) -> nn.Module:
    """An encoder from ``{"_target_": <a name of ENCODERS>, **arguments}`` (a stage's ``stage.json`` ``network``).

    An encoder already built from it (MONAI's ``ConfigParser`` instantiates a nested ``_target_``) is
    taken as it is, when it is one of :data:`ENCODERS`.

    Raises:
        ValueError: the target is not one of :data:`ENCODERS`.
    """
    if isinstance(encoder_def, nn.Module):
        if type(encoder_def) not in ENCODERS.values():
            raise ValueError(f"encoder_def is a {type(encoder_def).__name__}; one of {sorted(ENCODERS)} is needed.")
        return encoder_def
    target = str(encoder_def.get("_target_", ""))
    if target not in ENCODERS:
        raise ValueError(f"encoder_def names {target!r}; a MedCoSSModel encoder is one of {sorted(ENCODERS)}.")
    cls = ENCODERS[target]
    kwargs = {k: v for k, v in encoder_def.items() if k != "_target_"}
    builder = getattr(cls, "from_config", None)
    return builder(kwargs) if callable(builder) else cls(**kwargs)


def _token_table(encoder: nn.Module) -> nn.Embedding:
    """The text token embedding of an encoder (the MLM output weights are tied to it)."""
    table = encoder.text_embed
    return table.token if isinstance(table, nn.Module) and hasattr(table, "token") else table


class MedCoSSModel(nn.Module):
    """Unified encoder with the two pretext heads, one ``forward`` for every use (DDP friendly).

    ``model(x, attention_mask=None, pretext=None, mask_ratio=0.75, noise=None, labels=None)``:

    - ``pretext=None``: pooled features (B, hidden), mean of the final tokens of the unmasked input
      (text: over ``attention_mask``);
    - ``"mae"`` (2D/3D images): ``dict(pred, target, mask, latent, noise)``; ``pred``/``target``
      (B, L, patch_dim), ``target`` the patchified input, per-patch normalised when ``norm_pix_loss``;
    - ``"mlm"`` (text ids): ``dict(logits (B, L, vocab), latent (B, L, hidden))``; given MLM
      ``labels`` (B, L), the vocabulary head runs only at the masked positions (``labels != -100``):
      ``logits`` is then (N, vocab) with the matching ``labels`` (N,) in the dict (the head is about
      as costly as the encoder, and most of its outputs would be thrown away);
    - ``"encode"``: the encoder alone, masked as ``"mae"`` would be for images (unmasked text):
      ``dict(latent, mask, ids_restore, noise)`` (rehearsal batches that only get distillation).

    ``model.config`` holds the constructor arguments (``MedCoSSModel.from_config(model.config)`` rebuilds it).

    Args:
        decoder_hidden_size: MAE decoder token size.
        decoder_layers: MAE decoder blocks.
        decoder_heads: MAE decoder attention heads.
        norm_pix_loss: MAE targets normalised per patch (mean/variance over the patch, eps 1e-6).
        tie_mlm_weights: share the MLM output weights with the text token embedding.
        encoder_def: another encoder than :class:`~medcoss_monai.networks.UnifiedEncoder`, as
            ``{"_target_": ..., **arguments}`` (one of :data:`ENCODERS`; e.g. the ``network`` of an imported
            stage's ``stage.json``, :class:`~medcoss_monai.networks.MedCoSSReferenceEncoder`): its weights
            continue pre-training with fresh pretext heads. ``encoder_args`` must then be empty. Its
            ``latent`` (distilled) tokens include its class token (reference: the distilled features are
            the whole encoder output).
        encoder_args: the arguments of :class:`~medcoss_monai.networks.UnifiedEncoder` (``hidden_size``,
            ``num_layers``, image and patch sizes...); its ``mlp_ratio``, ``qkv_bias``, ``pos_embed_type``
            and ``use_flash_attention`` apply to the MAE decoder too.

    Raises:
        TypeError: an argument neither of these nor of the encoder.
    """

    def __init__(
        self,
        decoder_hidden_size: int = 128,
        decoder_layers: int = 2,
        decoder_heads: int = 4,
        norm_pix_loss: bool = True,
        tie_mlm_weights: bool = True,
        encoder_def: Mapping[str, Any] | nn.Module | None = None,
        **encoder_args: Any,
    ) -> None:
        super().__init__()
        if encoder_def is not None and encoder_args:
            raise TypeError(f"give encoder_def or encoder arguments, not both (got {sorted(encoder_args)} too).")
        if encoder_def is not None:
            enc = build_encoder(encoder_def)
            e = {"mlp_ratio": 4.0, "qkv_bias": True, "pos_embed_type": "sincos", "use_flash_attention": True}
            e.update(hidden_size=enc.hidden_size, vocab_size=_token_table(enc).num_embeddings)
            head = {"encoder_def": {"_target_": f"{type(enc).__module__}.{type(enc).__name__}", **enc.config}}
        else:
            bound = inspect.signature(UnifiedEncoder).bind(**encoder_args)  # TypeError names an unknown argument
            bound.apply_defaults()
            e = bound.arguments
            enc, head = UnifiedEncoder(**e), dict(e)
        args = {
            **head,
            "decoder_hidden_size": decoder_hidden_size,
            "decoder_layers": decoder_layers,
            "decoder_heads": decoder_heads,
            "norm_pix_loss": norm_pix_loss,
            "tie_mlm_weights": tie_mlm_weights,
        }
        self.config: dict[str, Any] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in args.items()}
        self.norm_pix_loss = norm_pix_loss
        self.encoder = enc
        self.mae_decoder = MAEDecoder(
            e["hidden_size"],
            decoder_hidden_size=decoder_hidden_size,
            decoder_layers=decoder_layers,
            decoder_heads=decoder_heads,
            patch_dim_2d=enc.patch_dim("2d"),
            patch_dim_3d=enc.patch_dim("3d"),
            grid_2d=enc.grid_size("2d"),
            grid_3d=enc.grid_size("3d"),
            mlp_ratio=e["mlp_ratio"],
            qkv_bias=e["qkv_bias"],
            pos_embed_type=e["pos_embed_type"],
            use_flash_attention=e["use_flash_attention"],
        )
        self.mlm_head = MLMHead(e["hidden_size"], e["vocab_size"])
        if tie_mlm_weights:
            self.mlm_head.tie_to(_token_table(enc))

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> MedCoSSModel:
        """Build from a dict of constructor arguments (``model.config``, a bundle's ``network_def``).

        A ``_target_`` key (bundle style) is ignored; unknown keys raise a ``TypeError`` naming them.
        """
        kwargs = {k: v for k, v in config.items() if k != "_target_"}
        return cls(**kwargs)

    def encoder_state_dict(self, prefix: str = "encoder.") -> dict[str, torch.Tensor]:
        """Weights of the encoder and its tokenizers only (no MAE decoder, no MLM head).

        Args:
            prefix: prepended to every key; the default loads into a ``MedCoSSModel`` or an
                ``EncoderClassifier``/``UNETRStyleSegmenter`` (``strict=False``); ``""`` into a bare encoder.

        Returns:
            A plain state dict of detached CPU tensors.
        """
        return {f"{prefix}{k}": v.detach().cpu() for k, v in self.encoder.state_dict().items()}

    def encode_tokens(self, x: torch.Tensor, kind: str, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Final token features of an unmasked input (the interface shared with the reference encoder).

        Args:
            x: ``"text"``: (B, L) token ids; ``"2d"``: (B, C, H, W) images (C = ``in_channels_2d``, 1 in the
                bundles); ``"3d"``: (B, 1, H, W, D) volumes.
            kind: ``"text"``, ``"2d"`` or ``"3d"``; must be what the input is.
            attention_mask: (B, L) 1 = token, 0 = padding, for text.

        Returns:
            (B, N, hidden) final tokens: normed tokens of the last block for this project's encoder (no
            class token), the encoder's own ``encode_tokens`` for another (``encoder_def``).

        Raises:
            ValueError: ``kind`` is not the kind of ``x``.
        """
        if hasattr(self.encoder, "encode_tokens"):
            return self.encoder.encode_tokens(x, kind, attention_mask)
        found = self.encoder.kind_of(x)
        if kind != found:
            raise ValueError(f"kind {kind!r} was given for a {found} input of shape {tuple(x.shape)}.")
        return self.encoder(x, attention_mask=attention_mask)["tokens"]

    @property
    def _encode(self) -> Callable[..., dict[str, Any]]:
        """The encoder's dict output (:meth:`UnifiedEncoder.forward`: ``x, attention_mask, mask_ratio, noise``),
        the visible patches only when masked; an encoder whose ``forward`` returns pooled features (the
        reference encoder) gives it with ``forward_masked``."""
        return getattr(self.encoder, "forward_masked", None) or self.encoder

    @staticmethod
    def latent(out: dict[str, Any]) -> torch.Tensor:
        """The distilled tokens of an encoder output: the class token first where the encoder has one."""
        cls_token = out.get("cls_token")
        return out["tokens"] if cls_token is None else torch.cat([cls_token[:, None], out["tokens"]], dim=1)

    def patch_target(self, x: torch.Tensor) -> torch.Tensor:
        """The MAE target of images: their patches, per-patch normalised when ``norm_pix_loss``.

        Args:
            x: (B, C, H, W) or (B, C, H, W, D) images.

        Returns:
            (B, L, patch_dim) targets.
        """
        target = self.encoder.patchify(x)  # a grey 2D image is read with the channels the projection takes
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        return target

    def forward(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pretext: str | None = None,
        mask_ratio: float = 0.75,
        noise: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """See the class docstring.

        Args:
            x: (B, L) token ids, (B, C, H, W) or (B, C, H, W, D) images.
            attention_mask: (B, L) text padding mask, 1 = token.
            pretext: ``None``, ``"encode"``, ``"mae"`` or ``"mlm"``.
            mask_ratio: MAE masking ratio (images only).
            noise: (B, L) MAE masking noise, to reproduce a mask.
            labels: (B, L) MLM labels, -100 where not masked: predict only the masked positions.

        Returns:
            (B, hidden) features for ``pretext=None``, else a dict.
        """
        if pretext not in PRETEXTS:
            raise ValueError(f"pretext must be one of {PRETEXTS}, got {pretext!r}.")
        kind = self.encoder.kind_of(x)
        if pretext is None:
            out = self._encode(x, attention_mask=attention_mask)
            return self.encoder.pool(out["tokens"], out["attention_mask"])
        if pretext == "encode":
            ratio = mask_ratio if kind != "text" else 0.0  # text is masked at the token level, by the transforms
            out = self._encode(x, attention_mask=attention_mask, mask_ratio=ratio, noise=noise)
            return {
                "latent": self.latent(out),
                "mask": out["mask"],
                "ids_restore": out["ids_restore"],
                "noise": out["noise"],
            }
        if pretext == "mae":
            if kind == "text":
                raise ValueError(
                    "pretext 'mae' needs a (B, C, H, W) or (B, C, H, W, D) float image; got token ids (use 'mlm')."
                )
            out = self._encode(x, mask_ratio=mask_ratio, noise=noise)
            pred = self.mae_decoder(out["tokens"], out["ids_restore"], kind, out["grid"])
            return {
                "pred": pred,
                "target": self.patch_target(x),
                "mask": out["mask"],
                "latent": self.latent(out),
                "noise": out["noise"],
            }
        if kind != "text":
            raise ValueError(f"pretext 'mlm' needs (B, L) integer token ids; got a {kind} image (use 'mae').")
        out = self._encode(x, attention_mask=attention_mask)
        if labels is None:
            return {"logits": self.mlm_head(out["tokens"]), "latent": out["tokens"]}
        if tuple(labels.shape) != tuple(x.shape):
            raise ValueError(f"MLM labels {tuple(labels.shape)} must match input_ids {tuple(x.shape)}.")
        masked = labels != MLM_IGNORE_INDEX
        return {"logits": self.mlm_head(out["tokens"][masked]), "labels": labels[masked], "latent": out["tokens"]}
