"""BrainMVP's standalone pre-training network: a volume backbone (UniFormer, or a MONAI network) and the pretext.

The backbone reconstructs each view; its deepest feature map is what the pretext's contrastive term
takes (averaged over space and projected, or flattened as in the reference). Templates, views, loss and gates are
:class:`~medcoss_monai.apps.brainmvp.pretext.BrainMVPPretext`'s, the same module a curriculum stage uses.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from medcoss_monai.apps.brainmvp.pretext import BrainMVPPretext
from medcoss_monai.apps.brainmvp.uniformer import UniFormerUNETR
from medcoss_monai.errors import BadInputError, CheckpointError
from medcoss_monai.networks.checkpoint import load_state, unwrap_network
from medcoss_monai.networks.param_groups import weight_decay_groups

__all__ = ["BrainMVPModel", "load_pretrained_backbone", "brainmvp_param_groups", "BACKBONE_PREFIX", "TEMPLATES_PREFIX"]

BACKBONE_PREFIX = "backbone."
TEMPLATES_PREFIX = "pretext.templates."
logger = logging.getLogger(__name__)


class BrainMVPModel(nn.Module):
    """Backbone + decoder (:class:`UniFormerUNETR`, or any MONAI 3D network) and the BrainMVP pretext.

    Called with a batch of views it returns their reconstruction and deepest feature map, which
    is what :meth:`BrainMVPPretext.forward` expects of a volume network; the trainer runs the pretext
    as its pretext head (``pretext_heads={"brainmvp": model.pretext}``), so ``model.pt`` holds the
    backbone (``backbone.*``) and the templates (``pretext.templates.*``) together.

    With ``network`` given (e.g. MONAI's ``SwinUNETR`` or ``UNet`` with one input and one output
    channel), the features are the output of its submodule ``feature_module`` (``"encoder10"`` for
    ``SwinUNETR``, ``"model.1.submodule.1.submodule"`` for a two-level ``UNet``), whose channels are
    the pretext's ``feature_channels``.

    The UniFormer is built without decoder skip connections unless ``backbone`` says ``skips: True``
    (reference: BrainMVP ``models/Uniformer.py``, "we do not use skip connection"): with them the
    visible voxels of a view reach the reconstruction without passing through the encoder.

    Args:
        pretext: the templates, projection and loss; its ``feature_channels`` is the backbone's deepest width.
        backbone: :class:`UniFormerUNETR` arguments (``widths``, ``depths``, ``strides``, ``feature_size``,
            ``skips`` (default False)...); input and output channels are 1. Ignored when ``network`` is given.
        network: another reconstruction network (1 channel in, 1 out) in place of the UniFormer.
        feature_module: with ``network``: dotted name of the submodule whose output feeds the contrastive term.

    Raises:
        BadInputError: ``network`` without ``feature_module``, or a ``feature_module`` it lacks.
    """

    def __init__(
        self,
        pretext: BrainMVPPretext,
        backbone: Mapping[str, Any] | None = None,
        network: nn.Module | None = None,
        feature_module: str | None = None,
    ) -> None:
        super().__init__()
        self._features: torch.Tensor | None = None
        if network is None:
            self.backbone = UniFormerUNETR(in_channels=1, out_channels=1, **{"skips": False, **dict(backbone or {})})
        else:
            if not feature_module:
                raise BadInputError("a BrainMVP network other than the UniFormer needs feature_module "
                                 "(e.g. SwinUNETR: 'encoder10', with feature_channels 16 * feature_size)")
            modules = dict(network.named_modules())
            if feature_module not in modules:
                raise BadInputError(f"feature_module: {type(network).__name__} has no submodule '{feature_module}' (some: {list(modules)[1:8]})")
            self.backbone = network
            modules[feature_module].register_forward_hook(self._keep_features)
        self.pretext = pretext

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruction and deepest feature map of a batch of views.

        Args:
            x: ``(B, 1, D, H, W)``.

        Returns:
            ``(B, 1, D, H, W)`` reconstruction and the ``(B, C, d, h, w)`` deepest features (the pretext
            pools or flattens them, see :class:`~medcoss_monai.apps.brainmvp.pretext.BrainMVPPretext`).
        """
        if isinstance(self.backbone, UniFormerUNETR):
            recon, features = self.backbone.forward_features(x)
            return recon, features[-1]
        recon = self.backbone(x)
        deepest, self._features = self._features, None
        return recon, deepest

    def _keep_features(self, module: nn.Module, args: Any, output: Any) -> None:
        # a hook on the feature submodule of a non-UniFormer network: keep its (last) output for this forward
        self._features = output[-1] if isinstance(output, (list, tuple)) else output


def load_pretrained_backbone(network: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load the backbone of a BrainMVP ``model.pt`` into a segmentation :class:`UniFormerUNETR` (or the
    same MONAI network the stage was given as ``network``, with other channel counts).

    Keys of the same shape are copied. A backbone pre-trained without decoder skips (the stage's
    default) brings the encoder and the decoder's transposed convolutions; the skip paths of a
    fine-tuning decoder (``image_skip``, each up block's ``conv_block``) start fresh, and the log says
    how many tensors did. The input convolutions were trained on one channel; for a
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
    fresh = [k for k in own if k not in loaded]
    fresh_decoder = [k for k in fresh if k.startswith(("decoder.", "image_skip."))]
    logger.info(f"loaded {len(loaded)} backbone tensors from {path}; {len(fresh)} start fresh, of them "
                f"{len(fresh_decoder)} of the decoder's skip paths (e.g. {fresh_decoder[:3]}); "
                f"{len(skipped)} checkpoint tensors unused: {skipped[:4]}")
    return network


def brainmvp_param_groups(network: nn.Module, weight_decay: float, template_lr: float) -> list[dict[str, Any]]:
    """Optimizer groups: the backbone's (decayed as in MAE) and the pretext's (:meth:`BrainMVPPretext.param_groups`).

    Args:
        network: a :class:`BrainMVPModel` (wrappers are removed).
        weight_decay: decay of the weight matrices.
        template_lr: learning rate of the templates.

    Returns:
        Groups for ``torch.optim.AdamW``.
    """
    model = unwrap_network(network)
    return weight_decay_groups(model.backbone, weight_decay) + model.pretext.param_groups(weight_decay, template_lr)
