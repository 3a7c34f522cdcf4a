"""BrainMVP's pre-training network: modality templates, the two masked views, a UniFormer and a projection head.

Per sample one contrast ``m`` is the input. Blocks chosen by the mask are replaced (not zeroed):
view A takes them from the learnable template of ``m`` at the crop's physical position, view B from
the same voxels of another contrast of the study (or from the template when the study has no other
contrast, or during the warm-up). Both views go through the backbone, which reconstructs ``m``; the
pooled coarsest features, projected, feed the contrastive loss.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from medcoss_monai.networks.checkpoint import load_state
from medcoss_monai.apps.brainmvp.templates import ModalityTemplates
from medcoss_monai.apps.brainmvp.uniformer import UniFormerUNETR

__all__ = ["BrainMVPModel", "masked_views", "load_pretrained_backbone", "brainmvp_param_groups", "BACKBONE_PREFIX", "TEMPLATES_PREFIX"]

BACKBONE_PREFIX = "backbone."
TEMPLATES_PREFIX = "templates."
logger = logging.getLogger(__name__)


def masked_views(
    templates: ModalityTemplates,
    image: torch.Tensor,
    mask: torch.Tensor,
    contrast: torch.Tensor,
    other: torch.Tensor,
    has_other: torch.Tensor,
    affine: torch.Tensor,
    use_other: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BrainMVP's two views of a batch: masked blocks from the template (A) or from another contrast (B).

    Args:
        templates: the modality templates.
        image: ``(B, 1, D, H, W)`` the input contrast.
        mask: ``(B, 1, D, H, W)`` bool, True where a block is replaced.
        contrast: ``(B,)`` contrast index of ``image``.
        other: ``(B, 1, D, H, W)`` another contrast of the same study (ignored where ``has_other`` is False).
        has_other: ``(B,)`` bool.
        affine: ``(B, 4, 4)`` the crops' voxel -> world affines.
        use_other: False during the warm-up: view B takes the template too.

    Returns:
        View A and view B, each ``(B, 1, D, H, W)``.
    """
    template = templates.crop(contrast, affine, image.shape[2:]).to(image.dtype)
    view_a = torch.where(mask, template, image)
    take_other = has_other.bool().view(-1, 1, 1, 1, 1) & bool(use_other)
    view_b = torch.where(mask, torch.where(take_other, other, template), image)
    return view_a, view_b


class BrainMVPModel(nn.Module):
    """Backbone + decoder (:class:`UniFormerUNETR`, or any MONAI 3D network), :class:`ModalityTemplates` and a projection head.

    With ``network`` given (e.g. MONAI's ``SwinUNETR`` or ``UNet`` with one input and one output
    channel), it reconstructs the views, and the contrastive features are the output of its submodule
    ``feature_module`` (``"encoder10"`` for ``SwinUNETR``, ``"model.1.submodule.1.submodule"`` for a
    two-level ``UNet``), averaged over space, ``feature_channels`` wide.

    Args:
        contrasts: contrast names; a sample's contrast index points into this list.
        template_shape: template box shape (voxels).
        template_spacing: template voxel size (mm).
        template_origin: world position (mm) of template voxel (0, 0, 0).
        projection_dim: size of the projected features of the contrastive loss.
        backbone: :class:`UniFormerUNETR` arguments (``widths``, ``depths``, ``strides``, ``feature_size``...);
            input and output channels are 1. Ignored when ``network`` is given.
        network: another reconstruction network (1 channel in, 1 out) in place of the UniFormer.
        feature_module: with ``network``: dotted name of the submodule whose output feeds the contrastive term.
        feature_channels: with ``network``: the channels of that output.

    Raises:
        ValueError: ``network`` without ``feature_module`` / ``feature_channels``, or a ``feature_module`` it lacks.
    """

    def __init__(
        self,
        contrasts: Sequence[str],
        template_shape: Sequence[int],
        template_spacing: Sequence[float] = (1.0, 1.0, 1.0),
        template_origin: Sequence[float] = (-96.0, -132.0, -78.0),
        projection_dim: int = 128,
        backbone: Mapping[str, Any] | None = None,
        network: nn.Module | None = None,
        feature_module: str | None = None,
        feature_channels: int | None = None,
    ) -> None:
        super().__init__()
        backbone = dict(backbone or {}) if network is None else {}
        self.config = {"contrasts": list(contrasts), "template_shape": list(template_shape),
                       "template_spacing": list(template_spacing), "template_origin": list(template_origin),
                       "projection_dim": projection_dim, "backbone": backbone}
        self._features: torch.Tensor | None = None
        if network is None:
            self.backbone = UniFormerUNETR(in_channels=1, out_channels=1, **backbone)
            width = self.backbone.encoder.widths[-1]
        else:
            if not feature_module or not feature_channels:
                raise ValueError("a BrainMVP network other than the UniFormer needs feature_module and feature_channels "
                                 "(e.g. SwinUNETR: 'encoder10', 16 * feature_size)")
            modules = dict(network.named_modules())
            if feature_module not in modules:
                raise ValueError(f"{type(network).__name__} has no submodule '{feature_module}' (some: {list(modules)[1:8]})")
            self.backbone = network
            modules[feature_module].register_forward_hook(self._keep_features)
            width = int(feature_channels)
            self.config.update(network=type(network).__name__, feature_module=feature_module, feature_channels=width)
        self.templates = ModalityTemplates(contrasts, template_shape, template_spacing, template_origin)
        self.projection = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, projection_dim))

    def views(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The two views of a batch: :func:`masked_views` with this model's templates (its other arguments).

        Returns:
            View A and view B, each ``(B, 1, D, H, W)``.
        """
        return masked_views(self.templates, *args, **kwargs)

    def forward(
        self,
        image: torch.Tensor,
        mask: torch.Tensor,
        contrast: torch.Tensor,
        other: torch.Tensor,
        has_other: torch.Tensor,
        affine: torch.Tensor,
        use_other: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Both views, their reconstructions and projected features (arguments as in :func:`masked_views`).

        Returns:
            ``view_a``, ``view_b``, ``recon_a``, ``recon_b`` (``(B, 1, D, H, W)``), ``z_a``, ``z_b`` (``(B, P)``).
        """
        view_a, view_b = self.views(image, mask, contrast, other, has_other, affine, use_other)
        if isinstance(self.backbone, UniFormerUNETR):
            recon, features = self.backbone.forward_features(torch.cat([view_a, view_b]))
            deepest = features[-1]
        else:
            recon = self.backbone(torch.cat([view_a, view_b]))
            deepest, self._features = self._features, None
        z = self.projection(deepest.mean(dim=tuple(range(2, deepest.dim()))))
        recon_a, recon_b = recon.chunk(2)
        z_a, z_b = z.chunk(2)
        return {"view_a": view_a, "view_b": view_b, "recon_a": recon_a, "recon_b": recon_b, "z_a": z_a, "z_b": z_b}


    def _keep_features(self, module: nn.Module, args: Any, output: Any) -> None:
        # a hook on the feature submodule of a non-UniFormer network: keep its (last) output for this forward
        self._features = output[-1] if isinstance(output, (list, tuple)) else output


def load_pretrained_backbone(network: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load the backbone of a BrainMVP ``model.pt`` into a segmentation :class:`UniFormerUNETR` (or the
    same MONAI network the stage was given as ``network``, with other channel counts).

    Keys of the same shape are copied. The input convolutions were trained on one channel; for a
    network fed ``C`` contrasts their kernels are repeated over the channels and divided by ``C``, so a
    study whose contrasts look alike gives the pre-trained response. The output layer (another number
    of classes) starts fresh.

    Args:
        network: the fine-tuning network.
        path: the stage's ``model.pt`` (read with ``weights_only=True``).

    Returns:
        The same network.

    Raises:
        CheckpointError: the file is unreadable, holds no BrainMVP backbone, or one that does not fit: for the
            UniFormer every encoder tensor must load; for another network at least 90% of its tensors.
    """
    from medcoss_monai.errors import CheckpointError

    state = load_state(path, "BrainMVP model.pt")
    backbone = {k[len(BACKBONE_PREFIX):]: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
    if not backbone:
        raise CheckpointError(f"{path}: holds no '{BACKBONE_PREFIX}*' weights; it is not a BrainMVP stage's model.pt.")
    own = network.state_dict()
    loaded, skipped = {}, []
    for key, value in backbone.items():
        target = own.get(key)
        if target is None:
            skipped.append(key)
        elif target.shape == value.shape:
            loaded[key] = value
        elif value.dim() == 5 and value.shape[1] == 1 and target.shape[0] == value.shape[0] and target.shape[2:] == value.shape[2:]:
            loaded[key] = value.repeat(1, target.shape[1], 1, 1, 1) / target.shape[1]  # input conv: 1 -> C channels
        else:
            skipped.append(key)
    network.load_state_dict(loaded, strict=False)
    encoder_keys = [k for k in own if k.startswith("encoder.")]
    missing = [k for k in encoder_keys if k not in loaded]
    if not encoder_keys and len(loaded) < 0.9 * len(own):  # not a UniFormer: all but the output layers should fit
        missing = [k for k in own if k not in loaded]
    if missing:
        raise CheckpointError(f"{path}: its backbone does not fit the fine-tuning network's encoder ({len(missing)} "
                              f"encoder tensors missing or of another shape, e.g. {missing[:3]}); use the stage's sizes.")
    logger.info(f"loaded {len(loaded)} backbone tensors from {path} ({len(skipped)} left at initialisation: {skipped[:4]})")
    return network


def brainmvp_param_groups(network: nn.Module, weight_decay: float, template_lr: float) -> list[dict[str, Any]]:
    """Optimizer groups: the weights (decayed as in MAE), and the templates at their own learning rate, not decayed.

    A template voxel moves about one learning rate per Adam step, so at the network's rate (1e-4 to
    1e-3) a template stays near its initial value for thousands of steps; a volume of intensities in
    [0, 1] wants a larger rate. Weight decay would pull unseen regions to zero.

    Args:
        network: a :class:`BrainMVPModel` (wrappers are removed).
        weight_decay: decay of the weight matrices.
        template_lr: learning rate of the templates.

    Returns:
        Groups for ``torch.optim.AdamW``.
    """
    from medcoss_monai.networks.checkpoint import unwrap_network
    from medcoss_monai.networks.param_groups import NO_DECAY_NAMES, weight_decay_groups

    model = unwrap_network(network)
    templates = {id(p) for p in model.templates.parameters()}
    groups = weight_decay_groups(model, weight_decay, tuple(NO_DECAY_NAMES) + (TEMPLATES_PREFIX,))
    for group in groups:
        group["params"] = [p for p in group["params"] if id(p) not in templates]
    return groups + [{"params": list(model.templates.parameters()), "weight_decay": 0.0, "lr": float(template_lr)}]
