"""Pictures of what the model reconstructs: original, masked input and reconstruction, side by side."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import list_data_collate
from monai.networks.utils import eval_mode

from medcoss_monai.engines.pretext_trainer import PretextKeys
from medcoss_monai.networks.checkpoint import unwrap_network
from medcoss_monai.utils import atomic_write_text

__all__ = ["ReconstructionSnapshotHandler", "reconstruction_panels"]


def _display(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) or (C, H, W, D) -> an (H, W, 3) or (H, W) array to show (middle depth slice for 3D)."""
    x = x.detach().float().cpu()
    if x.ndim == 4:
        x = x[..., x.shape[-1] // 2]
    arr = x.numpy()
    return arr[0] if arr.shape[0] == 1 else np.moveaxis(arr[:3], 0, -1)


def reconstruction_panels(
    network: torch.nn.Module, images: torch.Tensor, mask_ratio: float = 0.75, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run masked-image modelling on ``images`` and return what to show.

    The reconstruction is brought back to intensities with each patch's own mean and variance (the
    targets are per-patch normalised), and visible patches are pasted from the input, as in MAE.

    Args:
        network: a ``MedCoSSModel`` (wrappers are removed).
        images: (B, C, H, W) or (B, C, H, W, D) batch.
        mask_ratio: fraction of patches masked.
        seed: seed of the masking noise, so the pictures of successive epochs are comparable.

    Returns:
        ``(original, masked, reconstruction)``, each shaped like ``images``.
    """
    model = unwrap_network(network)
    encoder = model.encoder
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        patches = encoder.patchify(images)
        noise = torch.rand(patches.shape[:2], generator=gen).to(images.device)
        out = model(images, pretext="mae", mask_ratio=mask_ratio, noise=noise)
        pred, mask = out["pred"].float(), out["mask"].float().unsqueeze(-1)
        if getattr(model, "norm_pix_loss", True):
            mean = patches.mean(dim=-1, keepdim=True)
            var = patches.var(dim=-1, keepdim=True)
            pred = pred * (var + 1e-6) ** 0.5 + mean
        grid = tuple(int(s) for s in encoder.grid_size_of(images))
        masked = encoder.unpatchify(patches * (1 - mask), grid)
        recon = encoder.unpatchify(patches * (1 - mask) + pred * mask, grid)
    return images, masked, recon


class ReconstructionSnapshotHandler:
    """Writes ``recon_<i>.png`` (images) or ``recon_tokens.txt`` (reports) when the stage completes.

    Images: one PNG per example, three panels: the input, the input with masked patches blanked, and
    the reconstruction (visible patches pasted back). Volumes show their middle depth slice. Reports:
    the masked report and the model's top-1 token at each masked position next to the truth.

    Args:
        dataset: evaluation dataset (deterministic transforms, model-size inputs).
        output_dir: the stage folder.
        num_examples: how many examples.
        mask_ratio: MAE masking ratio.
        tokenizer: for reports, the HF tokenizer that decodes ids.
        mask_transform: for reports, a transform adding MLM masking (``input_ids``/``labels``) to an item.
        network: the network (default the engine's).
        every_n_epochs: also write after every n-th epoch (0: only at completion).
        seed: masking seed.
    """

    def __init__(
        self,
        dataset: Sequence[dict],
        output_dir: str | os.PathLike,
        num_examples: int = 4,
        mask_ratio: float = 0.75,
        tokenizer: Any = None,
        mask_transform: Callable | None = None,
        network: torch.nn.Module | None = None,
        every_n_epochs: int = 0,
        seed: int = 0,
    ) -> None:
        self.dataset = dataset
        self.output_dir = Path(output_dir)
        self.num_examples = num_examples
        self.mask_ratio = mask_ratio
        self.tokenizer = tokenizer
        self.mask_transform = mask_transform
        self.network = network
        self.every_n_epochs = every_n_epochs
        self.seed = seed
        self.written: list[Path] = []

    def attach(self, engine: Engine) -> None:
        """Register on ``COMPLETED`` (and every n-th ``EPOCH_COMPLETED``).

        Args:
            engine: the trainer.
        """
        engine.add_event_handler(Events.COMPLETED, self)
        if self.every_n_epochs:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.every_n_epochs), self)

    def _examples(self) -> list[dict]:
        n = min(self.num_examples, len(self.dataset))
        items = []
        for i in range(n):
            item = self.dataset[i]
            items.extend(item if isinstance(item, list) else [item])  # cropping transforms may return lists
        return items[:n]

    def __call__(self, engine: Engine) -> None:
        if idist.get_rank() != 0:
            return
        network = self.network if self.network is not None else engine.network
        model = unwrap_network(network)
        with eval_mode(model):
            batch = list_data_collate(self._examples())
            device = next(model.parameters()).device
            if PretextKeys.INPUT_IDS in batch or "text" in batch:  # tokenised, or raw report items
                self._write_text(model, batch, device)
            else:
                self._write_images(model, batch[PretextKeys.IMAGE].to(device))

    def _write_images(self, model: torch.nn.Module, images: torch.Tensor) -> None:
        from PIL import Image

        original, masked, recon = reconstruction_panels(model, images, self.mask_ratio, self.seed)
        self.written = []
        for i in range(images.shape[0]):
            panels = [_display(t[i]) for t in (original, masked, recon)]
            scale_ref = panels[0]
            lo, hi = np.percentile(scale_ref, 0.5), np.percentile(scale_ref, 99.5)
            scaled = [(np.clip((p - lo) / max(hi - lo, 1e-8), 0, 1) * 255).astype(np.uint8) for p in panels]
            gap = np.full((scaled[0].shape[0], 4) + scaled[0].shape[2:], 255, dtype=np.uint8)
            row = np.concatenate([scaled[0], gap, scaled[1], gap, scaled[2]], axis=1)
            path = self.output_dir / f"recon_{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp.png")
            Image.fromarray(row).save(tmp)
            os.replace(tmp, path)
            self.written.append(path)
        logging.getLogger(__name__).info(f"reconstructions written: {[p.name for p in self.written]}")

    def _write_text(self, model: torch.nn.Module, batch: dict, device: torch.device) -> None:
        if PretextKeys.LABELS not in batch:
            if self.mask_transform is None:
                raise ValueError("ReconstructionSnapshotHandler needs mask_transform for unmasked report items")
            items = [self.mask_transform(dict(it)) for it in self._examples()]
            batch = list_data_collate(items)
        ids = batch[PretextKeys.INPUT_IDS].to(device)
        attn = batch[PretextKeys.ATTENTION_MASK].to(device)
        labels = batch[PretextKeys.LABELS].to(device)
        logits = model(ids, attention_mask=attn, pretext="mlm")["logits"]
        top1 = logits.argmax(-1)
        decode = (
            (lambda t: self.tokenizer.decode([int(t)]))
            if self.tokenizer is not None
            else (lambda t: f"<{int(t)}>")
        )
        lines = []
        correct = total = 0
        for b in range(ids.shape[0]):
            n = int(attn[b].sum())
            shown = "".join(decode(t) for t in ids[b, :n])
            lines.append(f"## example {b}\nmasked input: {shown}")
            for pos in torch.nonzero(labels[b] != -100).flatten().tolist():
                ok = int(top1[b, pos]) == int(labels[b, pos])
                correct, total = correct + ok, total + 1
                lines.append(f"  pos {pos:3d}: truth {decode(labels[b, pos])!r:>16} predicted {decode(top1[b, pos])!r:>16} {'ok' if ok else ''}")
        lines.insert(0, f"masked-token top-1 accuracy on these examples: {correct}/{total}\n")
        path = atomic_write_text("\n".join(lines) + "\n", self.output_dir / "recon_tokens.txt")
        self.written = [path]
