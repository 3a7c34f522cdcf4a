"""Rehearsal-buffer selection at the end of a stage: embed every training item, choose, write buffer.json."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ignite.distributed as idist
import numpy as np
import torch
import torch.distributed as dist
from monai.utils import optional_import

from medcoss_monai import layout
from medcoss_monai.buffer import SAMPLERS, write_buffer_manifest
from medcoss_monai.networks.checkpoint import unwrap_network

Events, _ = optional_import("ignite.engine", name="Events")
if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["BufferSelectionHandler", "embed_dataset"]

INDEX_KEY = "index"
"""Optional batch key holding each item's row in the dataset; lets shuffled or sharded loaders be reassembled."""


def _distributed() -> bool:
    return idist.get_world_size() > 1


def _forward(network: torch.nn.Module, batch: Mapping[str, Any], device: torch.device, input_keys: Sequence[str]) -> torch.Tensor:
    """Pooled (B, hidden) features of one batch (the network's ``pretext=None`` output)."""
    if input_keys[0] not in batch:
        raise KeyError(f"buffer selection: the batch has no '{input_keys[0]}' (keys: {sorted(batch)}); set input_keys.")
    x = batch[input_keys[0]].to(device)
    mask_key = input_keys[1] if len(input_keys) > 1 else "attention_mask"
    mask = batch.get(mask_key)
    out = network(x, attention_mask=mask.to(device)) if mask is not None else network(x)
    if isinstance(out, Mapping):
        raise TypeError("buffer selection: the network returned a dict; it must return pooled features when pretext is None.")
    if out.ndim > 2:  # token features: pool them as the contract does (mean of the tokens)
        out = out.flatten(1, -2).mean(1)
    return out.float()


def _batch_rows(batch: Mapping[str, Any], n: int) -> np.ndarray | None:
    """Dataset rows of a batch from its ``"index"`` key, or None when it has none."""
    if INDEX_KEY not in batch:
        return None
    rows = batch[INDEX_KEY]
    rows = rows.cpu().numpy() if isinstance(rows, torch.Tensor) else np.asarray(rows)
    rows = rows.reshape(-1).astype(np.int64)
    if rows.shape[0] != n:
        raise ValueError(f"buffer selection: batch has {rows.shape[0]} '{INDEX_KEY}' values for {n} samples.")
    return rows


def _sampler_rows(dataloader: Any) -> np.ndarray | None:
    """The rows a loader visits, in order, when its sampler can tell (a DistributedSampler or a sequential one)."""
    sampler = getattr(dataloader, "sampler", None)
    if isinstance(sampler, (torch.utils.data.DistributedSampler, torch.utils.data.SequentialSampler)):
        return np.fromiter(iter(sampler), dtype=np.int64)  # deterministic within an epoch
    return None


def embed_dataset(
    network: torch.nn.Module,
    dataloader: Any,
    device: str | torch.device | None = None,
    input_keys: Sequence[str] = ("image",),
) -> np.ndarray:
    """Pooled features of every item of a loader's dataset with the frozen network, in dataset order.

    The network runs in ``eval()`` mode under ``torch.no_grad()`` and every module's previous
    train/eval mode is restored afterwards. ``network(x)`` (text: ``network(input_ids, attention_mask=...)``)
    must return (B, hidden) features, the ``pretext=None`` output of ``MedCoSSModel``.
    Rows are put back in dataset order from the batches' ``"index"`` key when present, else from the
    loader's sampler (sequential or ``DistributedSampler``); a shuffling loader without ``"index"`` is refused.
    Under torch.distributed (world size > 1) with a ``DistributedSampler``, the ranks' features are
    gathered and the sampler's padding duplicates dropped, so every rank returns the full array.

    Args:
        network: the encoder, possibly wrapped in ``DistributedDataParallel`` (its ``.module`` is used).
        dataloader: a deterministic loader (no augmentation) over the items; one sample per item.
        device: where to run; default the network's parameters' device.
        input_keys: batch key of the network input, optionally followed by the attention-mask key
            (otherwise ``"attention_mask"`` is passed when the batch has it).

    Returns:
        float32 (N, hidden), row i for dataset item i.
    """
    net = unwrap_network(network)
    if device is None:
        param = next(net.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    sampler_rows = _sampler_rows(dataloader)
    # MONAI's eval_mode would call train() on the whole tree afterwards; a frozen part (a teacher, a
    # frozen encoder) must come back in eval mode, so every module's own mode is restored
    modes = {m: m.training for m in net.modules()}
    feats: list[np.ndarray] = []
    rows: list[np.ndarray] = []
    has_rows = True
    net.eval()
    try:
        with torch.no_grad():
            for batch in dataloader:
                out = _forward(net, batch, device, input_keys).cpu().numpy()
                r = _batch_rows(batch, out.shape[0])
                has_rows = has_rows and r is not None
                feats.append(out)
                if r is not None:
                    rows.append(r)
    finally:
        for m, mode in modes.items():
            m.train(mode)

    local = np.concatenate(feats).astype(np.float32) if feats else np.zeros((0, 0), np.float32)
    if has_rows and rows:
        local_rows = np.concatenate(rows)
    elif sampler_rows is not None:
        local_rows = sampler_rows[: local.shape[0]]
        if local_rows.shape[0] != local.shape[0]:
            raise ValueError(f"buffer selection: the loader gave {local.shape[0]} samples for {len(sampler_rows)} items; it must give one per item.")
    else:
        sampler = getattr(dataloader, "sampler", None)
        if isinstance(sampler, torch.utils.data.RandomSampler):
            raise ValueError("buffer selection: the loader shuffles and its batches carry no 'index'; use shuffle=False.")
        local_rows = np.arange(local.shape[0])

    if _distributed() and isinstance(getattr(dataloader, "sampler", None), torch.utils.data.DistributedSampler):
        gathered = idist.all_gather((local_rows, local))
        local_rows = np.concatenate([g[0] for g in gathered])
        local = np.concatenate([g[1] for g in gathered if g[1].size] or [local])

    n = len(dataloader.dataset) if hasattr(dataloader, "dataset") else int(local_rows.max(initial=-1)) + 1
    if local.shape[0] == 0:
        return np.zeros((0, 0), dtype=np.float32)
    out = np.zeros((n, local.shape[1]), dtype=np.float32)
    seen = np.zeros(n, dtype=bool)
    if local_rows.min() < 0 or local_rows.max() >= n:
        raise ValueError(f"buffer selection: item rows outside [0, {n}).")
    # DistributedSampler pads by repeating items: the repeats carry the same features, so overwriting is harmless
    out[local_rows] = local
    seen[local_rows] = True
    if not seen.all():
        raise ValueError(
            f"buffer selection: {int((~seen).sum())} of {n} items got no features (first missing row "
            f"{int(np.flatnonzero(~seen)[0])}); the loader must visit every item once (no drop_last, one sample per item)."
        )
    return out


class BufferSelectionHandler:
    """Chooses the stage's rehearsal buffer when training completes and writes ``buffer.json``.

    Every training item is embedded with the frozen encoder (:func:`embed_dataset`), the sampler picks
    ``round(buffer_ratio * N)`` of them (k-means: the items nearest each of ``round(cluster_ratio * N)``
    centres, see :func:`medcoss_monai.buffer.kmeans_sample`) and the chosen datalist items, with their
    cluster and distance, are written by :func:`medcoss_monai.buffer.write_buffer_manifest`.
    Under torch.distributed, rank 0 chooses, the choice is broadcast (so every rank holds the same
    ``selected`` indices) and only rank 0 writes.

    Args:
        dataloader: a deterministic loader over the stage's training items (no augmentation, no
            shuffling unless batches carry ``"index"``, one sample per item).
        output_path: the buffer.json to write, or the stage folder (``buffer.json`` is added).
        modality: the stage's modality, recorded in the manifest.
        items: the datalist items, in the loader's dataset order; default ``dataloader.dataset.data``.
        sampler: "kmeans", "random" (see :data:`medcoss_monai.buffer.SAMPLERS`) or a callable with that signature.
        cluster_ratio: k-means centres per item.
        buffer_ratio: fraction of the items kept.
        seed: seed of the sampler.
        network: the encoder; default ``engine.network``.
        device: where to embed; default ``engine.state.device``, else the network's device.
        input_keys: batch key of the network input (text: ``("input_ids", "attention_mask")``).
        epoch_level: True: select once, when the stage completes (``Events.COMPLETED``); False: after
            every epoch (``Events.EPOCH_COMPLETED``), so a stage stopped part-way still leaves a buffer.
        sampler_kwargs: extra options of the sampler (e.g. ``{"niter": 20}`` for k-means).
    """

    def __init__(
        self,
        dataloader: Any,
        output_path: str | os.PathLike,
        modality: str,
        items: Sequence[Mapping[str, Any]] | None = None,
        sampler: str | Callable[..., Any] = "kmeans",
        cluster_ratio: float = 0.01,
        buffer_ratio: float = 0.05,
        seed: int = 0,
        network: torch.nn.Module | None = None,
        device: str | torch.device | None = None,
        input_keys: Sequence[str] = ("image",),
        epoch_level: bool = True,
        sampler_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(sampler, str) and sampler not in SAMPLERS:
            raise ValueError(f"unknown buffer sampler {sampler!r}; choose one of {sorted(SAMPLERS)}.")
        if isinstance(input_keys, str):
            input_keys = (input_keys,)
        self.dataloader = dataloader
        path = Path(output_path)
        self.output_path = path if path.suffix == ".json" else path / layout.BUFFER_FILE
        self.modality = modality
        self.items = items
        self.sampler = sampler
        self.cluster_ratio = cluster_ratio
        self.buffer_ratio = buffer_ratio
        self.seed = seed
        self.network = network
        self.device = device
        self.input_keys = tuple(input_keys)
        self.epoch_level = epoch_level
        self.sampler_kwargs = dict(sampler_kwargs or {})
        self.selected: np.ndarray | None = None
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        """Registers the selection on ``Events.COMPLETED`` (``EPOCH_COMPLETED`` when not ``epoch_level``).

        Args:
            engine: the stage's trainer.
        """
        event = Events.COMPLETED if self.epoch_level else Events.EPOCH_COMPLETED
        if not engine.has_event_handler(self, event):
            engine.add_event_handler(event, self)

    def _items(self) -> Sequence[Mapping[str, Any]]:
        if self.items is not None:
            return self.items
        data = getattr(getattr(self.dataloader, "dataset", None), "data", None)
        if data is None:
            raise ValueError("BufferSelectionHandler: pass items= (the loader's dataset has no .data list).")
        return data

    def __call__(self, engine: Engine | None = None) -> Path | None:
        """Embeds, selects and writes buffer.json.

        Args:
            engine: the trainer (its ``network`` and ``state.device`` are the defaults); may be None
                when ``network`` was given.

        Returns:
            The written path on rank 0, None on other ranks.
        """
        network = self.network if self.network is not None else getattr(engine, "network", None)
        if network is None:
            raise ValueError("BufferSelectionHandler: no network (pass network= or attach to an engine with .network).")
        device = self.device
        if device is None and engine is not None:
            device = getattr(getattr(engine, "state", None), "device", None)
        items = self._items()
        feats = embed_dataset(network, self.dataloader, device=device, input_keys=self.input_keys)
        if feats.shape[0] != len(items):
            raise ValueError(f"BufferSelectionHandler: {feats.shape[0]} embeddings for {len(items)} items; the loader must follow the items.")

        rank = idist.get_rank()
        payload: list[Any] = [None]
        if rank == 0:
            choose = SAMPLERS[self.sampler] if isinstance(self.sampler, str) else self.sampler
            kwargs = dict(self.sampler_kwargs)
            if self.sampler != "random":
                kwargs["cluster_ratio"] = self.cluster_ratio
            picked, details = choose(feats, buffer_ratio=self.buffer_ratio, seed=self.seed, return_details=True, **kwargs)
            payload = [(np.asarray(picked, dtype=np.int64), details)]
        if _distributed():
            dist.broadcast_object_list(payload, src=0)  # one choice for all ranks, whatever their numerics
        picked, details = payload[0]
        self.selected = picked

        written = None
        name = self.sampler if isinstance(self.sampler, str) else getattr(self.sampler, "__name__", "custom")
        if rank == 0:
            written = write_buffer_manifest(
                self.output_path,
                modality=self.modality,
                items=items,
                indices=picked,
                n_total=len(items),
                n_clusters=int(details.get("n_clusters", 0)),
                buffer_ratio=self.buffer_ratio,
                cluster_ratio=self.cluster_ratio,
                sampler=name,
                cluster_ids=details.get("cluster"),
                distances=details.get("distance"),
            )
            log = getattr(engine, "logger", None) or self.logger
            log.info(
                f"buffer selection ({name}): {len(picked)} of {len(items)} '{self.modality}' items, "
                f"{int(details.get('n_clusters', 0))} clusters, features {feats.shape[1]}-d -> {written}"
            )
        if _distributed():
            idist.barrier()  # nobody reads buffer.json before it is complete
        return written
