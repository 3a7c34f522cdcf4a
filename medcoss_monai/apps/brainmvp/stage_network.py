"""A pre-trained BrainMVP network as a stage folder holds it, and what fine-tuning reads from such a folder.

:class:`BrainMVPStageNetwork` is the reconstruction backbone (:class:`UniFormerUNETR` or :class:`BrainMVPUNet`)
with the modality templates: the state dict keys are those of a BrainMVP stage's ``model.pt``
(``backbone.*``, ``pretext.templates.*``), so :func:`~medcoss_monai.apps.brainmvp.model.load_pretrained_backbone`
and :class:`~medcoss_monai.apps.brainmvp.template_fill.TemplateBank` read an imported stage as they read one
trained here, and ``medcoss_monai.load_pretrained`` rebuilds it from its ``stage.json``.

The fine-tuning bundle (``bundles/finetune_brainmvp_seg.json``) takes ``--pretrained_ckpt`` as a stage folder
or its ``model.pt``: :func:`stage_model_file`, :func:`stage_backbone` (the stage's network sizes when its
``stage.json`` records them), :func:`segmentation_network` and :func:`template_centre`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medcoss_monai import layout
from medcoss_monai.apps.brainmvp.templates import ModalityTemplates
from medcoss_monai.apps.brainmvp.unet import BrainMVPUNet
from medcoss_monai.apps.brainmvp.uniformer import UniFormerUNETR
from medcoss_monai.errors import BadInputError

__all__ = [
    "ARCHITECTURES",
    "BrainMVPStageNetwork",
    "stage_model_file",
    "stage_backbone",
    "segmentation_network",
    "template_centre",
]

ARCHITECTURES: dict[str, type[nn.Module]] = {"uniformer": UniFormerUNETR, "unet": BrainMVPUNet}
"""The BrainMVP backbones by name."""

_PER_TASK = ("in_channels", "out_channels", "skips")
"""Backbone arguments a fine-tuning task sets itself (its contrasts, its classes, decoder skips)."""


class BrainMVPStageNetwork(nn.Module):
    """A pre-trained BrainMVP network: the reconstruction backbone and the modality templates.

    Args:
        architecture: a name of :data:`ARCHITECTURES`.
        backbone: the backbone's arguments (with ``in_channels``, ``out_channels``, ``skips``).
        contrasts: the templates' contrast names.
        template_shape: the template box in voxels.
        template_spacing: its voxel size (mm).
        template_origin: world position (mm) of its voxel (0, 0, 0).
    """

    def __init__(
        self,
        architecture: str,
        backbone: Mapping[str, Any],
        contrasts: Sequence[str],
        template_shape: Sequence[int],
        template_spacing: Sequence[float],
        template_origin: Sequence[float],
    ) -> None:
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise BadInputError(f"BrainMVP architecture must be one of {sorted(ARCHITECTURES)}, got {architecture!r}")
        self.backbone = ARCHITECTURES[architecture](**dict(backbone))
        # "pretext.templates.*": the keys a BrainMVP stage's model.pt keeps its templates under
        templates = ModalityTemplates(contrasts, template_shape, template_spacing, template_origin)
        self.pretext = nn.ModuleDict({"templates": templates})
        self.config = {
            "architecture": architecture,
            "backbone": dict(backbone),
            "contrasts": list(contrasts),
            "template_shape": [int(s) for s in template_shape],
            "template_spacing": [float(s) for s in template_spacing],
            "template_origin": [float(s) for s in template_origin],
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> BrainMVPStageNetwork:
        """Rebuild from the ``network`` record of a ``stage.json`` (without ``_target_``)."""
        return cls(**dict(config))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction of ``(B, 1, D, H, W)`` views."""
        return self.backbone(x)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's stage outputs, finest first (UniFormer: the four stages; U-Net: its four maps).

        Args:
            x: ``(B, 1, D, H, W)``.

        Returns:
            The feature maps.
        """
        return self.backbone.forward_features(x)[1]


def _stage_folder(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path if path.is_dir() else path.parent


def stage_model_file(path: str | os.PathLike) -> str:
    """The weights file of ``--pretrained_ckpt``: the path itself, or a stage folder's ``model.pt``.

    Raises:
        BadInputError: the path does not exist, or a folder without weights.
    """
    path = Path(path)
    if path.is_file():
        return str(path)
    if not path.is_dir():
        raise BadInputError(f"--pretrained_ckpt {path}: no such file or folder.")
    record = layout.read_stage_record(path) if (path / layout.STAGE_RECORD_FILE).is_file() else {}
    model = path / str(record.get("model") or layout.MODEL_FILE)
    if not model.is_file():
        raise BadInputError(f"--pretrained_ckpt {path}: a folder without {model.name}; give a BrainMVP stage folder "
                            "or its model.pt.")
    return str(model)


def stage_backbone(path: str | os.PathLike | None, default: Mapping[str, Any]) -> dict[str, Any]:
    """The backbone sizes fine-tuning builds: the stage's own when its ``stage.json`` records them.

    A stage imported from the authors' weights records its network (:class:`BrainMVPStageNetwork`);
    its sizes and options, not the bundle's, then make the fine-tuning network, so that every pre-trained
    tensor fits. Otherwise (no stage, or a stage trained here) the bundle's ``backbone`` is used.

    Args:
        path: ``--pretrained_ckpt`` (a stage folder, its ``model.pt``, or empty).
        default: the bundle's ``backbone``.

    Returns:
        Arguments for :func:`segmentation_network` (``architecture`` and the backbone's sizes).
    """
    if not path:
        return dict(default)
    folder = _stage_folder(path)
    if not (folder / layout.STAGE_RECORD_FILE).is_file():
        return dict(default)
    network = layout.read_stage_record(folder).get("network")
    target = f"{BrainMVPStageNetwork.__module__}.{BrainMVPStageNetwork.__name__}"
    if not isinstance(network, Mapping) or network.get("_target_") != target:
        return dict(default)
    sizes = {k: v for k, v in dict(network["backbone"]).items() if k not in _PER_TASK}
    return {"architecture": network["architecture"], **sizes}


def segmentation_network(backbone: Mapping[str, Any], in_channels: int, out_channels: int) -> nn.Module:
    """The fine-tuning network: the backbone named by ``backbone["architecture"]`` (default the UniFormer)
    with a decoder with skip connections.

    Args:
        backbone: sizes (:func:`stage_backbone`, or the bundle's ``backbone``).
        in_channels: one per contrast.
        out_channels: classes or regions.

    Returns:
        A :class:`UniFormerUNETR` or :class:`BrainMVPUNet`.
    """
    kwargs = dict(backbone)
    architecture = kwargs.pop("architecture", "uniformer")
    if architecture not in ARCHITECTURES:
        raise BadInputError(f"backbone architecture must be one of {sorted(ARCHITECTURES)}, got {architecture!r}")
    return ARCHITECTURES[architecture](in_channels=in_channels, out_channels=out_channels, skips=True, **kwargs)


def template_centre(templates: Any) -> list[float]:
    """The world centre (mm) of a template box: where fine-tuning centres studies (``CentreOnPointd``).

    Args:
        templates: a :class:`~medcoss_monai.apps.brainmvp.template_fill.TemplateBank`.

    Returns:
        ``[x, y, z]``.
    """
    shape = next(iter(templates.volumes.values())).shape
    half = torch.tensor([(s - 1) / 2 for s in shape], dtype=torch.float64)
    affine = templates.affine.double()
    return [float(v) for v in affine[:3, :3] @ half + affine[:3, 3]]
