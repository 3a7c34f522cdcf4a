"""BrainMVP stage outputs: the modality templates as NIfTI and pictures of both views' reconstructions."""

from __future__ import annotations

import gzip
import logging
import os
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events

from medcoss_monai.engines.pretext_trainer import PretextKeys
from medcoss_monai.networks.checkpoint import unwrap_network
from medcoss_monai.utils import atomic_write_bytes, is_rank0

__all__ = ["TEMPLATES_DIR", "BrainMVPOutputWriter", "write_templates", "view_panels"]

TEMPLATES_DIR = "templates"
PANELS = ("original", "view_a", "recon_a", "view_b", "recon_b")


def write_templates(templates: torch.nn.Module, folder: str | os.PathLike) -> list[Path]:
    """Write each contrast's template as ``<folder>/<contrast>.nii.gz`` with the template space's affine (atomically).

    Args:
        templates: a :class:`~medcoss_monai.apps.brainmvp.templates.ModalityTemplates`.
        folder: output folder.

    Returns:
        The written files.
    """
    import nibabel as nib

    affine = templates.affine.detach().cpu().numpy()
    written = []
    for name in templates.contrasts:
        volume = templates.volume(name).detach().float().cpu().numpy()
        data = gzip.compress(nib.Nifti1Image(volume, affine).to_bytes(), compresslevel=1)
        written.append(atomic_write_bytes(data, Path(folder) / f"{name}.nii.gz"))
    return written


def view_panels(output: dict, index: int) -> np.ndarray:
    """One picture row: original, view A, its reconstruction, view B, its reconstruction (middle axial slice).

    Args:
        output: a :class:`~medcoss_monai.engines.PretextTrainer` output of a BrainMVP batch.
        index: which sample of the batch.

    Returns:
        ``(H, 5 * W + gaps)`` uint8 image, every panel on the original's [0, 1] scale.
    """
    pred = output[PretextKeys.PRED]
    volumes = [output[PretextKeys.IMAGE][index]] + [pred[k][index] for k in PANELS[1:]]
    slices = [v[0, :, :, v.shape[-1] // 2].detach().float().cpu().numpy() for v in volumes]
    # RAS arrays: transpose and flip so anterior is up, as radiologists look at an axial slice
    scaled = [(np.clip(np.flipud(s.T), 0, 1) * 255).astype(np.uint8) for s in slices]
    gap = np.full((scaled[0].shape[0], 3), 255, np.uint8)
    return np.concatenate([part for s in scaled for part in (s, gap)][:-1], axis=1)


class BrainMVPOutputWriter:
    """Writes ``templates/<contrast>.nii.gz`` and ``recon_<i>.png`` (both views) every ``interval`` epochs and at the end.

    The pictures show the last training step of the epoch: ``original | view A | recon A | view B | recon B``.

    Args:
        output_dir: the stage folder.
        network: what holds the templates (``.templates``): the :class:`~medcoss_monai.apps.brainmvp.pretext.BrainMVPPretext`.
        num_examples: pictures per write.
        interval: epochs between writes.
    """

    def __init__(self, output_dir: str | os.PathLike, network: torch.nn.Module, num_examples: int = 2, interval: int = 1) -> None:
        self.output_dir = Path(output_dir)
        self.network = network
        self.num_examples = int(num_examples)
        self.interval = max(1, int(interval))
        self.written: list[Path] = []
        self._last: dict | None = None

    def attach(self, engine: Engine) -> None:
        """Register on ``ITERATION_COMPLETED`` (keep the last two-view step) and ``EPOCH_COMPLETED`` (write).

        Args:
            engine: the trainer.
        """
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.remember)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def remember(self, engine: Engine) -> None:
        """Keep the pictures' inputs of the last step that made both views (in a curriculum stage, the
        last step of an epoch may be a rehearsal batch of another modality)."""
        output = engine.state.output
        pred = output.get(PretextKeys.PRED) if isinstance(output, dict) else None
        if isinstance(pred, dict) and all(k in pred for k in PANELS[1:]):
            n = self.num_examples
            self._last = {PretextKeys.IMAGE: output[PretextKeys.IMAGE][:n].detach(),
                          PretextKeys.PRED: {k: pred[k][:n].detach() for k in PANELS[1:]}}

    def __call__(self, engine: Engine) -> None:
        if (engine.state.epoch % self.interval and engine.state.epoch != engine.state.max_epochs) or not is_rank0():
            return
        from PIL import Image

        model = unwrap_network(self.network)
        self.written = write_templates(model.templates, self.output_dir / TEMPLATES_DIR)
        output = self._last
        if output is None:
            return
        for i in range(min(self.num_examples, output[PretextKeys.IMAGE].shape[0])):
            path = self.output_dir / f"recon_{i}.png"
            tmp = path.with_name(f".{path.name}.tmp.png")
            Image.fromarray(view_panels(output, i)).save(tmp)
            os.replace(tmp, path)
            self.written.append(path)
        logging.getLogger(__name__).info(f"templates and pictures written to {self.output_dir}")
