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
from medcoss_monai.buffer import SAMPLERS, VolumeCropsDataset, write_buffer_manifest
from medcoss_monai.buffer.crops import CROP_KEYS, CROP_ROW, CROP_START, crop_candidates
from medcoss_monai.networks.checkpoint import unwrap_network

Events, _ = optional_import("ignite.engine", name="Events")
if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["BufferSelectionHandler", "embed_crops", "embed_dataset"]

INDEX_KEY = CROP_ROW
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


def _forward_chunks(
    network: torch.nn.Module, batch: Mapping[str, Any], device: torch.device, input_keys: Sequence[str], chunk_size: int | None
) -> torch.Tensor:
    """:func:`_forward` on at most ``chunk_size`` samples at a time (a volume's crops can be many more than a batch)."""
    n = batch[input_keys[0]].shape[0] if input_keys[0] in batch else 0
    if not chunk_size or n <= chunk_size:
        return _forward(network, batch, device, input_keys)
    keys = [k for k in (*input_keys, "attention_mask") if k in batch]
    parts = [_forward(network, {k: batch[k][s : s + chunk_size] for k in keys}, device, input_keys) for s in range(0, n, chunk_size)]
    return torch.cat(parts)


def _batch_values(batch: Mapping[str, Any], key: str, n: int) -> np.ndarray | None:
    """A batch's values of ``key`` as an int64 array with one row per sample, or None when it has none."""
    if key not in batch:
        return None
    values = batch[key]
    values = values.cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    values = values.astype(np.int64)
    values = values.reshape(-1) if key == INDEX_KEY else values.reshape(values.shape[0] if values.ndim else 1, -1)
    if values.shape[0] != n:
        raise ValueError(f"buffer selection: batch has {values.shape[0]} '{key}' values for {n} samples.")
    return values


def _sampler_rows(dataloader: Any) -> np.ndarray | None:
    """The rows a loader visits, in order, when its sampler can tell (a DistributedSampler or a sequential one)."""
    sampler = getattr(dataloader, "sampler", None)
    if isinstance(sampler, (torch.utils.data.DistributedSampler, torch.utils.data.SequentialSampler)):
        return np.fromiter(iter(sampler), dtype=np.int64)  # deterministic within an epoch
    return None


def _frozen_features(
    network: torch.nn.Module,
    dataloader: Any,
    device: str | torch.device | None,
    input_keys: Sequence[str],
    chunk_size: int | None,
    keys: Sequence[str] = (INDEX_KEY,),
) -> tuple[np.ndarray, dict[str, np.ndarray | None]]:
    """Features of every sample of a loader with the frozen network, and the batches' values of ``keys``.

    The network runs in ``eval()`` mode under ``torch.no_grad()``; every module's own train/eval mode
    is restored afterwards (MONAI's ``eval_mode`` would set the whole tree to train, and a frozen part,
    a teacher or a frozen encoder, must come back in eval mode).

    Args:
        network: the encoder (``.module`` of a DDP wrapper is used).
        dataloader: the loader.
        device: where to run; default the network's parameters' device.
        input_keys: batch key of the input, optionally the attention mask's.
        chunk_size: at most this many samples per forward pass (None: whole batches).
        keys: batch keys whose per-sample integer values are returned alongside.

    Returns:
        float32 (M, hidden) features in loader order, and ``{key: values (M, ...) or None}`` (None when a
        batch lacked the key).
    """
    net = unwrap_network(network)
    if device is None:
        param = next(net.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    modes = {m: m.training for m in net.modules()}
    feats: list[np.ndarray] = []
    values: dict[str, list[np.ndarray] | None] = {k: [] for k in keys}
    net.eval()
    try:
        with torch.no_grad():
            for batch in dataloader:
                out = _forward_chunks(net, batch, device, input_keys, chunk_size).cpu().numpy()
                feats.append(out)
                for k in keys:
                    v = _batch_values(batch, k, out.shape[0])
                    if v is None:
                        values[k] = None  # one batch without the key: the key is not used
                    elif values[k] is not None:
                        values[k].append(v)
    finally:
        for m, mode in modes.items():
            m.train(mode)
    local = np.concatenate(feats).astype(np.float32) if feats else np.zeros((0, 0), np.float32)
    return local, {k: (np.concatenate(v) if v else None) for k, v in values.items()}


def embed_dataset(
    network: torch.nn.Module,
    dataloader: Any,
    device: str | torch.device | None = None,
    input_keys: Sequence[str] = ("image",),
    chunk_size: int | None = None,
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
        chunk_size: run the network on at most this many samples at a time (None: whole batches).

    Returns:
        float32 (N, hidden), row i for dataset item i.
    """
    sampler_rows = _sampler_rows(dataloader)
    local, values = _frozen_features(network, dataloader, device, input_keys, chunk_size)
    rows = values[INDEX_KEY]
    if rows is not None and rows.shape[0]:
        local_rows = rows
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


def embed_crops(
    network: torch.nn.Module,
    dataloader: Any,
    device: str | torch.device | None = None,
    input_keys: Sequence[str] = ("image",),
    chunk_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Pooled features of every crop a :class:`~medcoss_monai.buffer.VolumeCropsDataset` loader gives.

    Under torch.distributed with a ``DistributedSampler`` the ranks' crops are gathered; crops are
    ordered by (volume row, crop start) and the sampler's padding repeats dropped, so every rank holds
    the same candidates in the same order.

    Args:
        network: the encoder (see :func:`embed_dataset`).
        dataloader: a loader over a ``VolumeCropsDataset``.
        device: where to run; default the network's parameters' device.
        input_keys: batch key of the network input.
        chunk_size: run the network on at most this many crops at a time.

    Returns:
        ``(features (M, hidden), rows (M,) the volume of each crop, {crop key: (M, ndim) voxels})``.
    """
    keys = (CROP_ROW, *CROP_KEYS)
    local, values = _frozen_features(network, dataloader, device, input_keys, chunk_size, keys)
    absent = [k for k in keys if values[k] is None]
    if local.shape[0] and absent:
        raise ValueError(f"buffer selection: crop batches carry no {absent}; use a VolumeCropsDataset.")
    if _distributed() and isinstance(getattr(dataloader, "sampler", None), torch.utils.data.DistributedSampler):
        gathered = [g for g in idist.all_gather((local, *(values[k] for k in keys))) if g[0].size]  # every rank joins
        if gathered:
            local = np.concatenate([g[0] for g in gathered])
            values = {k: np.concatenate([g[1 + i] for g in gathered]) for i, k in enumerate(keys)}
    if local.shape[0] == 0:
        return local, np.zeros(0, np.int64), {k: np.zeros((0, 0), np.int64) for k in CROP_KEYS}
    where = np.concatenate([values[CROP_ROW][:, None], values[CROP_START]], axis=1)
    _, first = np.unique(where, axis=0, return_index=True)  # sorted by (row, start), each crop once
    return local[first], values[CROP_ROW][first], {k: values[k][first] for k in CROP_KEYS}


class BufferSelectionHandler:
    """Chooses the stage's rehearsal buffer when training completes and writes ``buffer.json``.

    Every training item is embedded with the frozen encoder (:func:`embed_dataset`), the sampler picks
    ``round(buffer_ratio * N)`` of them (k-means: the items nearest each of ``round(cluster_ratio * N)``
    centres, see :func:`medcoss_monai.buffer.kmeans_sample`) and the chosen datalist items, with their
    cluster and distance, are written by :func:`medcoss_monai.buffer.write_buffer_manifest`.
    Under torch.distributed, rank 0 chooses, the choice is broadcast (so every rank holds the same
    ``selected`` indices) and only rank 0 writes.
    When the loader's dataset is a :class:`~medcoss_monai.buffer.VolumeCropsDataset` (bundle switch
    ``buffer_crops``), the candidates are the crops of a grid over every volume (:func:`embed_crops`),
    ``N`` counts crops, and each chosen item is its volume's datalist item plus the crop location.

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
        chunk_size: embed at most this many samples at a time (a loader of volume crops gives all the
            crops of a volume in one batch); None: whole batches.
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
        chunk_size: int | None = None,
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
        self.chunk_size = int(chunk_size) if chunk_size else None
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

    def _embed(
        self, network: torch.nn.Module, device: Any, items: Sequence[Mapping[str, Any]]
    ) -> tuple[np.ndarray, Sequence[Mapping[str, Any]], dict[str, Any] | None]:
        """Features of the candidates, the candidates (items, or crops of them) and the crop grid (None for items)."""
        dataset = getattr(self.dataloader, "dataset", None)
        if isinstance(dataset, VolumeCropsDataset):  # the stage chooses among crops (bundle switch buffer_crops)
            feats, rows, crops = embed_crops(network, self.dataloader, device, self.input_keys, self.chunk_size)
            grid = {"roi_size": list(dataset.roi_size), "overlap": dataset.overlap, "axes": dataset.axes, "n_volumes": len(items)}
            return feats, crop_candidates(items, rows, crops), grid
        feats = embed_dataset(network, self.dataloader, device=device, input_keys=self.input_keys, chunk_size=self.chunk_size)
        if feats.shape[0] != len(items):
            raise ValueError(f"BufferSelectionHandler: {feats.shape[0]} embeddings for {len(items)} items; the loader must follow the items.")
        return feats, items, None

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
        feats, candidates, crop_grid = self._embed(network, device, items)

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
                items=candidates,
                indices=picked,
                n_total=len(candidates),
                n_clusters=int(details.get("n_clusters", 0)),
                buffer_ratio=self.buffer_ratio,
                cluster_ratio=self.cluster_ratio,
                sampler=name,
                cluster_ids=details.get("cluster"),
                distances=details.get("distance"),
                crop_grid=crop_grid,
            )
            unit = f"crops of {len(items)} volumes" if crop_grid else "items"
            log = getattr(engine, "logger", None) or self.logger
            log.info(
                f"buffer selection ({name}): {len(picked)} of {len(candidates)} '{self.modality}' {unit}, "
                f"{int(details.get('n_clusters', 0))} clusters, features {feats.shape[1]}-d -> {written}"
            )
        if _distributed():
            idist.barrier()  # nobody reads buffer.json before it is complete
        return written
