"""BrainMVP's pretext on the MedCoSS unified encoder, so BrainMVP can be one stage of the continual curriculum.

The stage's network stays a :class:`~medcoss_monai.networks.MedCoSSModel` (its ``model.pt`` is what the
next stage, the teacher and the probes load); what BrainMVP adds (the modality templates, the
projection head of the contrastive term and the loss) lives in this separate module, which the
:class:`~medcoss_monai.engines.PretextTrainer` calls for batches that carry BrainMVP's keys. Both views
go through the encoder with no token dropped; the MAE decoder reconstructs every patch of the input
contrast from each view.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from medcoss_monai.apps.brainmvp.contrastive import ModalityAwareInfoNCE
from medcoss_monai.apps.brainmvp.model import masked_views
from medcoss_monai.networks.checkpoint import unwrap_network
from medcoss_monai.apps.brainmvp.templates import ModalityTemplates

__all__ = ["UnifiedBrainMVPHead", "BRAINMVP_PRETEXT", "BRAINMVP_INPUT_KEYS", "is_brainmvp_batch"]

BRAINMVP_PRETEXT = "brainmvp"
BRAINMVP_INPUT_KEYS = ("mask", "contrast", "other", "has_other", "affine")
"""Batch keys a BrainMVP batch carries beside ``image`` (see :class:`~medcoss_monai.apps.brainmvp.multicontrast.RandContrastPaird`)."""


def is_brainmvp_batch(batch: Mapping[str, Any]) -> bool:
    """Whether a collated batch holds the two-view inputs of BrainMVP (not only an image)."""
    return "image" in batch and all(k in batch for k in BRAINMVP_INPUT_KEYS)


class UnifiedBrainMVPHead(nn.Module):
    """Templates, projection head and loss of BrainMVP for a :class:`~medcoss_monai.networks.MedCoSSModel`.

    Loss: ``weight_a * MSE(A) + weight_b * MSE(B) + weight_contrastive * InfoNCE(z_A, z_B)``, each MSE
    over every patch of the input contrast (per-patch normalised targets when the network's
    ``norm_pix_loss``, as its MAE targets are).

    Args:
        contrasts: contrast names; a sample's ``contrast`` index points into this list.
        template_shape: template box shape (voxels).
        template_spacing: template voxel size (mm).
        template_origin: world position (mm) of template voxel (0, 0, 0).
        hidden_size: the encoder's token size.
        projection_dim: size of the projected features of the contrastive term.
        weight_a: weight of view A's reconstruction (paper: 10).
        weight_b: weight of view B's reconstruction (paper: 1).
        weight_contrastive: weight of the contrastive term.
        temperature: InfoNCE temperature.
        contrastive_start_epoch: first epoch (1-based) with the contrastive term.
        other_contrast_start_epoch: first epoch in which view B takes another contrast (before: the template).
    """

    def __init__(
        self,
        contrasts: Sequence[str],
        template_shape: Sequence[int],
        template_spacing: Sequence[float],
        template_origin: Sequence[float],
        hidden_size: int,
        projection_dim: int = 128,
        weight_a: float = 10.0,
        weight_b: float = 1.0,
        weight_contrastive: float = 0.1,
        temperature: float = 0.2,
        contrastive_start_epoch: int = 1,
        other_contrast_start_epoch: int = 1,
    ) -> None:
        super().__init__()
        self.templates = ModalityTemplates(contrasts, template_shape, template_spacing, template_origin)
        self.projection = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, projection_dim))
        self.contrastive = ModalityAwareInfoNCE(temperature)
        self.weights = {"recon_a_loss": float(weight_a), "recon_b_loss": float(weight_b), "contrastive_loss": float(weight_contrastive)}
        self.contrastive_start_epoch = int(contrastive_start_epoch)
        self.other_contrast_start_epoch = int(other_contrast_start_epoch)

    def forward(self, network: nn.Module, inputs: Mapping[str, torch.Tensor], epoch: int = 1) -> dict[str, torch.Tensor]:
        """Both views through the network.

        Args:
            network: the stage's :class:`~medcoss_monai.networks.MedCoSSModel` (or DDP wrapping one).
            inputs: ``x`` (the input contrast, ``(B, 1, H, W, D)``) and :data:`BRAINMVP_INPUT_KEYS`.
            epoch: the trainer's epoch (view B's warm-up).

        Returns:
            ``pred_a``, ``pred_b`` (``(B, L, patch_dim)``), ``target``, ``z_a``, ``z_b``, ``latent`` (view A's
            tokens), and for pictures, detached: ``view_a``, ``view_b``, ``recon_a``, ``recon_b`` (volumes).
        """
        image = inputs["x"]
        view_a, view_b = masked_views(
            self.templates, image, inputs["mask"].bool(), inputs["contrast"], inputs["other"].to(image.dtype),
            inputs["has_other"], inputs["affine"], use_other=epoch >= self.other_contrast_start_epoch,
        )
        out = network(torch.cat([view_a, view_b]), pretext="mae", mask_ratio=0.0)
        pred_a, pred_b = out["pred"].chunk(2)
        z_a, z_b = self.projection(out["latent"].mean(dim=1)).chunk(2)
        model = unwrap_network(network)
        target = model.patch_target(image)
        pictures = self._volumes(model, image, {"recon_a": pred_a, "recon_b": pred_b})
        return {"pred_a": pred_a, "pred_b": pred_b, "target": target, "z_a": z_a, "z_b": z_b,
                "latent": out["latent"].chunk(2)[0], "view_a": view_a.detach(), "view_b": view_b.detach(), **pictures}

    @staticmethod
    def _volumes(model: nn.Module, image: torch.Tensor, preds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Patch predictions as volumes on the input's intensity scale (for pictures)."""
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

    def loss(self, pred: Mapping[str, torch.Tensor], epoch: int = 1) -> tuple[torch.Tensor, dict[str, float]]:
        """BrainMVP's loss of one batch.

        Args:
            pred: :meth:`forward`'s output.
            epoch: the trainer's epoch (the contrastive term's start).

        Returns:
            The weighted sum and its unweighted terms (floats, for the loss history).
        """
        target = pred["target"].float()
        terms = {
            "recon_a_loss": torch.mean((pred["pred_a"].float() - target) ** 2),
            "recon_b_loss": torch.mean((pred["pred_b"].float() - target) ** 2),
        }
        if epoch >= self.contrastive_start_epoch and self.weights["contrastive_loss"]:
            terms["contrastive_loss"] = self.contrastive(pred["z_a"].float(), pred["z_b"].float())
        total = sum(self.weights[k] * v for k, v in terms.items())
        return total, {k: float(v.detach()) for k, v in terms.items()}

    def param_groups(self, weight_decay: float, template_lr: float) -> list[dict[str, Any]]:
        """Optimizer groups: the projection head (biases not decayed) and the templates at their own rate, not decayed.

        Args:
            weight_decay: decay of the projection's weight matrices.
            template_lr: learning rate of the templates (see :func:`~medcoss_monai.apps.brainmvp.model.brainmvp_param_groups`).

        Returns:
            Groups for ``torch.optim.AdamW``.
        """
        weights = [p for n, p in self.projection.named_parameters() if p.ndim > 1]
        biases = [p for n, p in self.projection.named_parameters() if p.ndim <= 1]
        return [
            {"params": weights, "weight_decay": float(weight_decay)},
            {"params": biases, "weight_decay": 0.0},
            {"params": list(self.templates.parameters()), "weight_decay": 0.0, "lr": float(template_lr)},
        ]
