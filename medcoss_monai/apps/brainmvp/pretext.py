"""BrainMVP's pretext, once: modality templates, the two masked views, the projection head, the loss and its gates.

Per sample one contrast ``m`` is the input. Blocks chosen by each view's own mask are replaced (not
zeroed): view A takes them from the learnable template of ``m`` at the crop's physical position, view B
from the same voxels of another contrast of the study (or from the template when the study has no
other contrast, or before ``other_contrast_start_epoch``). Both views go through the network, which
reconstructs ``m``; their deepest features feed the contrastive term (from ``contrastive_start_epoch``
on): averaged over space and projected (``contrastive_features="pooled"``), or flattened with no
head as in the reference (``"flattened"``, BrainMVP ``models/Uniformer.py``: ``feature_x4.flatten(1)``).

The epoch gates count epochs from 1 (the trainer's ``state.epoch``); the reference counts from 0, so
its ``--start_epoch 1000`` (``cur_epoch >= 1000``) is our ``contrastive_start_epoch`` 1001 and its
``cur_epoch <= 300`` template warm-up of view B is our ``other_contrast_start_epoch`` 302.

:class:`BrainMVPPretext` is a pretext head of :class:`~medcoss_monai.engines.PretextTrainer`, for two
kinds of network: the MedCoSS unified encoder of a curriculum stage (both views unmasked through the
encoder, the MAE decoder predicting every patch) and the volume networks of the standalone stage
(:class:`~medcoss_monai.apps.brainmvp.model.BrainMVPModel`: UniFormer, SwinUNETR, UNet).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from medcoss_monai.apps.brainmvp.contrastive import ModalityAwareInfoNCE
from medcoss_monai.apps.brainmvp.templates import ModalityTemplates
from medcoss_monai.errors import BadInputError
from medcoss_monai.networks.checkpoint import unwrap_network
from medcoss_monai.networks.param_groups import weight_decay_groups

__all__ = ["BrainMVPPretext", "BRAINMVP_INPUT_KEYS", "CONTRASTIVE_FEATURES", "masked_views"]

BRAINMVP_INPUT_KEYS = ("mask", "mask_b", "contrast", "other", "has_other", "affine", "study_id")
"""Batch keys a BrainMVP batch carries beside ``image`` (see :class:`~medcoss_monai.apps.brainmvp.multicontrast.RandContrastPaird`
and :class:`~medcoss_monai.apps.brainmvp.multicontrast.RandBlockMaskd`)."""
CONTRASTIVE_FEATURES = ("pooled", "flattened")
"""What the contrastive term compares: projected spatial means of the deepest features, or the
flattened deepest feature map itself (the reference)."""


def masked_views(
    templates: ModalityTemplates,
    image: torch.Tensor,
    mask: torch.Tensor,
    contrast: torch.Tensor,
    other: torch.Tensor,
    has_other: torch.Tensor,
    affine: torch.Tensor,
    use_other: bool = True,
    mask_b: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BrainMVP's two views of a batch: masked blocks from the template (A) or from another contrast (B).

    Args:
        templates: the modality templates.
        image: ``(B, 1, D, H, W)`` the input contrast.
        mask: ``(B, 1, D, H, W)`` bool, True where view A replaces a block.
        contrast: ``(B,)`` contrast index of ``image``.
        other: ``(B, 1, D, H, W)`` another contrast of the same study (ignored where ``has_other`` is False).
        has_other: ``(B,)`` bool.
        affine: ``(B, 4, 4)`` the crops' voxel -> world affines.
        use_other: False during the warm-up: view B takes the template too.
        mask_b: view B's own mask (the reference draws one per view); None: view B uses ``mask``.

    Returns:
        View A and view B, each ``(B, 1, D, H, W)``.
    """
    mask_b = mask if mask_b is None else mask_b
    template = templates.crop(contrast, affine, image.shape[2:]).to(image.dtype)
    view_a = torch.where(mask, template, image)
    take_other = has_other.bool().view(-1, 1, 1, 1, 1) & bool(use_other)
    view_b = torch.where(mask_b, torch.where(take_other, other, template), image)
    return view_a, view_b


class BrainMVPPretext(nn.Module):
    """Templates, projection head, loss and epoch gates of BrainMVP.

    Loss: ``weight_a * MSE(A) + weight_b * MSE(B) + weight_contrastive * InfoNCE(z_A, z_B)``; each MSE
    compares a view's reconstruction with the input contrast (voxels for a volume network; every
    patch, per-patch normalised when the network's ``norm_pix_loss``, for the MedCoSS encoder). The
    InfoNCE masks the other crops of a sample's study out of its negatives (batch key ``study_id``).

    Args:
        contrasts: contrast names; a sample's ``contrast`` index points into this list.
        template_shape: template box shape (voxels).
        template_spacing: template voxel size (mm).
        template_origin: world position (mm) of template voxel (0, 0, 0).
        feature_channels: width of the pooled features (the encoder's token size, or the channels of
            the volume network's deepest features).
        projection_dim: size of the projected features of the contrastive term.
        weight_a: weight of view A's reconstruction (paper: 10).
        weight_b: weight of view B's reconstruction (paper: 1).
        weight_contrastive: weight of the contrastive term (reference: 1).
        temperature: InfoNCE temperature (reference: 1.0).
        contrastive_start_epoch: first epoch (1-based) with the contrastive term.
        other_contrast_start_epoch: first epoch in which view B takes another contrast (before: the template).
        contrastive_features: one of :data:`CONTRASTIVE_FEATURES`: ``"pooled"`` (spatial mean, then
            the projection head) or ``"flattened"`` (the deepest feature map flattened, no head: the
            reference).
    """

    batch_keys = BRAINMVP_INPUT_KEYS

    def __init__(
        self,
        contrasts: Sequence[str],
        template_shape: Sequence[int],
        feature_channels: int,
        template_spacing: Sequence[float] = (1.0, 1.0, 1.0),
        template_origin: Sequence[float] = (-96.0, -132.0, -78.0),
        projection_dim: int = 128,
        weight_a: float = 10.0,
        weight_b: float = 1.0,
        weight_contrastive: float = 0.1,
        temperature: float = 0.2,
        contrastive_start_epoch: int = 1,
        other_contrast_start_epoch: int = 1,
        contrastive_features: str = "pooled",
    ) -> None:
        super().__init__()
        if contrastive_features not in CONTRASTIVE_FEATURES:
            raise BadInputError(f"--contrastive_features {contrastive_features!r}: use one of {list(CONTRASTIVE_FEATURES)}")
        self.contrastive_features = contrastive_features
        width = int(feature_channels)
        self.templates = ModalityTemplates(contrasts, template_shape, template_spacing, template_origin)
        if contrastive_features == "pooled":
            self.projection = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, projection_dim))
        else:  # the reference compares the feature maps themselves: no head
            self.projection = nn.Identity()
        self.contrastive = ModalityAwareInfoNCE(temperature)
        self.weights = {"recon_a_loss": float(weight_a), "recon_b_loss": float(weight_b), "contrastive_loss": float(weight_contrastive)}
        self.contrastive_start_epoch = int(contrastive_start_epoch)
        self.other_contrast_start_epoch = int(other_contrast_start_epoch)

    def views(self, inputs: Mapping[str, torch.Tensor], epoch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """The two views of a batch (:func:`masked_views`), view B gated by ``other_contrast_start_epoch``.

        Args:
            inputs: ``x`` (the input contrast) and :data:`BRAINMVP_INPUT_KEYS`.
            epoch: the trainer's epoch.

        Returns:
            View A and view B, each ``(B, 1, D, H, W)``.
        """
        image = inputs["x"]
        mask_b = inputs.get("mask_b")
        return masked_views(
            self.templates, image, inputs["mask"].bool(), inputs["contrast"], inputs["other"].to(image.dtype),
            inputs["has_other"], inputs["affine"], use_other=epoch >= self.other_contrast_start_epoch,
            mask_b=None if mask_b is None else mask_b.bool(),
        )

    def features(self, deepest: torch.Tensor, tokens: bool = False) -> torch.Tensor:
        """The features the contrastive term compares, ``(B, C')``.

        Args:
            deepest: the deepest features, ``(B, C, *spatial)`` of a volume network or ``(B, N, C)``
                tokens of the MedCoSS encoder.
            tokens: ``deepest`` is a token sequence.

        Returns:
            Projected spatial (token) means, or the flattened map (``contrastive_features="flattened"``).
        """
        if self.contrastive_features == "flattened":
            return deepest.flatten(1)
        pooled = deepest.mean(dim=1) if tokens else deepest.mean(dim=tuple(range(2, deepest.dim())))
        return self.projection(pooled)

    def forward(self, network: nn.Module, inputs: Mapping[str, torch.Tensor], epoch: int = 1) -> dict[str, torch.Tensor]:
        """Both views through the network.

        Args:
            network: a MedCoSS model (has ``patch_target``) or a volume network returning
                ``(reconstruction, deepest feature map)`` (:class:`~medcoss_monai.apps.brainmvp.model.BrainMVPModel`);
                either may be wrapped by DDP.
            inputs: ``x`` (the input contrast, ``(B, 1, H, W, D)``) and :data:`BRAINMVP_INPUT_KEYS`.
            epoch: the trainer's epoch (view B's gate).

        Returns:
            ``pred_a``, ``pred_b``, ``target``, ``z_a``, ``z_b``, ``study_id`` (when the batch has it), for
            pictures detached volumes ``view_a``, ``view_b``, ``recon_a``, ``recon_b``, and with the
            MedCoSS encoder ``latent`` (view A's tokens).
        """
        image = inputs["x"]
        view_a, view_b = self.views(inputs, epoch)
        model = unwrap_network(network)
        if hasattr(model, "patch_target"):  # the unified encoder: no token dropped, the MAE decoder predicts every patch
            out = network(torch.cat([view_a, view_b]), pretext="mae", mask_ratio=0.0)
            pred, features, target = out["pred"], self.features(out["latent"], tokens=True), model.patch_target(image)
            pred_a, pred_b = pred.chunk(2)
            pictures = _patch_volumes(model, image, {"recon_a": pred_a, "recon_b": pred_b})
            pictures["latent"] = out["latent"].chunk(2)[0]  # view A's tokens, for feature distillation
        else:
            pred, deepest = network(torch.cat([view_a, view_b]))
            features, target = self.features(deepest), image.float()
            pred_a, pred_b = pred.chunk(2)
            pictures = {"recon_a": pred_a.detach(), "recon_b": pred_b.detach()}
        z_a, z_b = features.chunk(2)
        out = {"pred_a": pred_a, "pred_b": pred_b, "target": target, "z_a": z_a, "z_b": z_b,
               "view_a": view_a.detach(), "view_b": view_b.detach(), **pictures}
        if inputs.get("study_id") is not None:
            out["study_id"] = inputs["study_id"]
        return out

    def loss(self, pred: Mapping[str, torch.Tensor], epoch: int = 1) -> tuple[torch.Tensor, dict[str, float]]:
        """BrainMVP's loss of one batch; the contrastive term from ``contrastive_start_epoch`` on.

        Args:
            pred: :meth:`forward`'s output.
            epoch: the trainer's epoch.

        Returns:
            The weighted sum and its unweighted terms (floats, for the loss history).
        """
        target = pred["target"].float()
        terms = {
            "recon_a_loss": torch.mean((pred["pred_a"].float() - target) ** 2),
            "recon_b_loss": torch.mean((pred["pred_b"].float() - target) ** 2),
        }
        if epoch >= self.contrastive_start_epoch and self.weights["contrastive_loss"]:
            terms["contrastive_loss"] = self.contrastive(pred["z_a"].float(), pred["z_b"].float(), pred.get("study_id"))
        total = sum(self.weights[k] * v for k, v in terms.items())
        return total, {k: float(v.detach()) for k, v in terms.items()}

    def param_groups(self, weight_decay: float, template_lr: float) -> list[dict[str, Any]]:
        """Optimizer groups: the projection head (weight matrices decayed) and the templates at their own rate.

        A template voxel moves about one learning rate per Adam step, so at the network's rate (1e-4 to
        1e-3) a template stays near its initial value for thousands of steps; a volume of intensities
        in [0, 1] wants a larger rate. Weight decay would pull unseen regions to zero.

        Args:
            weight_decay: decay of the projection's weight matrices.
            template_lr: learning rate of the templates.

        Returns:
            Groups for ``torch.optim.AdamW``.
        """
        groups = [g for g in weight_decay_groups(self.projection, weight_decay) if g["params"]]  # none without a head
        return groups + [{"params": list(self.templates.parameters()), "weight_decay": 0.0, "lr": float(template_lr)}]


def _patch_volumes(model: nn.Module, image: torch.Tensor, preds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Patch predictions of the MedCoSS decoder as volumes on the input's intensity scale (for pictures)."""
    encoder = model.encoder
    with torch.no_grad():
        patches = encoder.patchify(image)
        grid = tuple(int(s) for s in encoder.grid_size_of(image))
        volumes = {}
        for name, pred in preds.items():
            pred = pred.detach().float()
            if getattr(model, "norm_pix_loss", True):
                pred = pred * (patches.var(dim=-1, keepdim=True) + 1.0e-6) ** 0.5 + patches.mean(dim=-1, keepdim=True)
            volumes[name] = encoder.unpatchify(pred, grid)
    return volumes
