"""BufferSelectionHandler / embed_dataset: eval-mode embedding, buffer.json written, modes restored, DDP gather."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from monai.data import DataLoader as MonaiDataLoader
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from medcoss_monai.buffer import load_buffer_manifest
from medcoss_monai.handlers.buffer_selection import BufferSelectionHandler, embed_crops, embed_dataset
from tests.ddp_utils import in_process_group


class TinyEncoder(torch.nn.Module):
    """Pooled features (B, 4) like MedCoSSModel(pretext=None); records the mode it ran in."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = torch.nn.Linear(6, 4)
        self.drop = torch.nn.Dropout(0.5)  # would make features random in train mode
        self.ran_in_train_mode: list[bool] = []

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        self.ran_in_train_mode.append(self.training)
        h = self.drop(self.proj(x))
        if attention_mask is not None:
            h = h * attention_mask[:, :1].float()
        return h


class Features(Dataset):
    """Synthetic inputs (mechanics only): 3 well separated groups, each sample carries its row as "index"."""

    def __init__(self, n: int, with_index: bool = True) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 6, generator=g) + 30.0 * (torch.arange(n) % 3)[:, None].float()
        self.with_index = with_index

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        d = {"image": self.x[i]}
        if self.with_index:
            d["index"] = i
        return d


class FakeEngine:
    def __init__(self, network: torch.nn.Module) -> None:
        self.network = network
        self.state = type("S", (), {"device": torch.device("cpu")})()


def test_handler_writes_buffer_json_and_restores_train_mode(datalist, tmp_path):
    items = datalist("report")["training"][:120]  # real items: the manifest carries them
    net = TinyEncoder().train()
    net.proj.eval()  # a mixed-mode module tree must come back exactly as it was
    loader = DataLoader(Features(120), batch_size=16, shuffle=False)
    handler = BufferSelectionHandler(loader, tmp_path / "stage_report", "report", items=items, cluster_ratio=0.025, buffer_ratio=0.05)
    out = handler(FakeEngine(net))

    assert out == tmp_path / "stage_report" / "buffer.json"
    assert net.ran_in_train_mode and not any(net.ran_in_train_mode)  # embedded in eval mode
    assert net.training and net.drop.training and not net.proj.training  # modes restored
    m = load_buffer_manifest(out)
    assert (m["modality"], m["n_total"], m["n_clusters"], m["sampler"]) == ("report", 120, 3, "kmeans")
    assert len(m["items"]) == 6 and len(handler.selected) == 6
    ids = [it["id"] for it in m["items"]]
    assert ids == [items[i]["id"] for i in handler.selected] and len(set(ids)) == 6
    assert sorted({it["cluster"] for it in m["items"]}) == [0, 1, 2]
    assert all(isinstance(it["distance"], float) for it in m["items"])
    # the three groups (row % 3) are each represented twice
    assert sorted(np.bincount(np.asarray(handler.selected) % 3).tolist()) == [2, 2, 2]


def test_handler_attaches_on_completed_and_random_sampler(datalist, tmp_path):
    from ignite.engine import Engine, Events

    items = datalist("report")["training"][:40]
    net = TinyEncoder()
    loader = DataLoader(Features(40), batch_size=8)
    engine = Engine(lambda e, b: None)
    engine.network = net
    h = BufferSelectionHandler(loader, tmp_path / "buffer.json", "report", items=items, sampler="random", buffer_ratio=0.1)
    h.attach(engine)
    assert engine.has_event_handler(h, Events.COMPLETED)
    engine.run([0, 1], max_epochs=2)
    m = json.loads((tmp_path / "buffer.json").read_text())
    assert m["sampler"] == "random" and m["n_clusters"] == 0 and len(m["items"]) == 4
    with pytest.raises(ValueError, match="unknown buffer sampler"):
        BufferSelectionHandler(loader, tmp_path, "report", sampler="nearest")


def test_embed_dataset_orders_shuffled_batches_and_passes_attention_mask():
    net = TinyEncoder()
    ds = Features(30)
    ref = embed_dataset(net, DataLoader(ds, batch_size=7), device="cpu")
    shuffled = embed_dataset(net, DataLoader(ds, batch_size=7, shuffle=True), device="cpu")
    np.testing.assert_allclose(ref, shuffled, rtol=1e-5, atol=1e-6)  # put back in item order by "index"
    np.testing.assert_allclose(ref, net.eval()(ds.x).detach().numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="shuffles"):
        embed_dataset(net, DataLoader(Features(30, with_index=False), batch_size=7, shuffle=True))
    with pytest.raises(ValueError, match="one per item|got no features"):
        embed_dataset(net, DataLoader(ds, batch_size=7, drop_last=True))

    class Text(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return {"input_ids": torch.ones(6), "attention_mask": torch.tensor([i % 2] * 6)}

    feats = embed_dataset(net, DataLoader(Text(), batch_size=4), input_keys=("input_ids", "attention_mask"))
    assert np.all(feats[0] == 0) and np.any(feats[1] != 0)  # the mask reached the network


def _ddp_worker(rank: int, world: int, out_dir: str) -> None:
    ds = Features(31, with_index=False)  # 31 items on 2 ranks: the sampler pads one duplicate
    sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=3)
    loader = DataLoader(ds, batch_size=5, sampler=sampler)
    items = [{"text": f"item {i}", "id": str(i)} for i in range(31)]
    h = BufferSelectionHandler(loader, out_dir, "report", items=items, cluster_ratio=0.1, buffer_ratio=0.2, network=TinyEncoder())
    written = h(None)
    np.save(os.path.join(out_dir, f"selected_{rank}.npy"), h.selected)
    np.save(os.path.join(out_dir, f"feats_{rank}.npy"), embed_dataset(TinyEncoder(), loader))
    crops = _crop_loader(batch_size=1).dataset  # 5 volumes on 2 ranks: the sampler repeats one volume's crops
    crop_loader = MonaiDataLoader(crops, batch_size=1, sampler=DistributedSampler(crops, num_replicas=world, rank=rank, shuffle=True, seed=3))
    np.save(os.path.join(out_dir, f"crops_{rank}.npy"), embed_crops(CropEncoder(), crop_loader)[0])
    assert (written is not None) == (rank == 0)


@pytest.mark.slow  # two spawned processes each import torch/monai: ~30 s on 2 cores
def test_distributed_gather_dedups_padding_and_only_rank0_writes(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(in_process_group, args=(2, str(tmp_path / "pg"), _ddp_worker, 2, str(tmp_path)), nprocs=2, join=True)
    ref = embed_dataset(TinyEncoder(), DataLoader(Features(31, with_index=False), batch_size=5))
    for r in range(2):
        np.testing.assert_allclose(np.load(tmp_path / f"feats_{r}.npy"), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.load(tmp_path / "selected_0.npy"), np.load(tmp_path / "selected_1.npy"))
    m = load_buffer_manifest(tmp_path / "buffer.json")
    assert m["n_total"] == 31 and len(m["items"]) == 6 and len({it["id"] for it in m["items"]}) == 6
    crops = embed_crops(CropEncoder(), _crop_loader(batch_size=1))[0]
    for r in range(2):
        np.testing.assert_allclose(np.load(tmp_path / f"crops_{r}.npy"), crops, rtol=1e-5, atol=1e-6)


def test_chunked_embedding_equals_whole_batches():
    """chunk_size bounds the samples per forward pass (a volume's crops come in one batch) without changing features."""
    net = TinyEncoder()
    ds = Features(30)
    whole = embed_dataset(net, DataLoader(ds, batch_size=30), device="cpu")
    net.ran_in_train_mode.clear()
    chunked = embed_dataset(net, DataLoader(ds, batch_size=30), device="cpu", chunk_size=8)
    np.testing.assert_allclose(whole, chunked, rtol=1e-5, atol=1e-6)
    assert len(net.ran_in_train_mode) == 4  # 8 + 8 + 8 + 6 samples


class CropEncoder(torch.nn.Module):
    """Pooled features (B, 4) of (B, 1, 4, 4, 2) crops (mechanics only)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = torch.nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.flatten(1))


def _crop_loader(**kwargs) -> DataLoader:
    from medcoss_monai.buffer import VolumeCropsDataset

    g = torch.Generator().manual_seed(0)
    volumes = [torch.rand(1, 8, 6, 4, generator=g) + 5.0 * i for i in range(5)]  # mechanics: 5 known volumes
    dataset = VolumeCropsDataset([{"image": i} for i in range(5)], lambda d: {"image": volumes[d["image"]]}, (4, 4, 2), 0.5)
    return MonaiDataLoader(dataset, **kwargs)  # its collate flattens each volume's list of crops


def test_crop_candidates_in_volume_order_whatever_the_loader_order(tmp_path):
    from medcoss_monai.buffer import grid_starts

    ordered = embed_crops(CropEncoder(), _crop_loader(batch_size=1), chunk_size=3)
    shuffled = embed_crops(CropEncoder(), _crop_loader(batch_size=2, shuffle=True))
    per_volume = len(grid_starts((8, 6, 4), (4, 4, 2), 0.5))  # 3 x 2 x 3
    assert ordered[0].shape == (5 * per_volume, 4) and ordered[1].tolist() == sorted(ordered[1].tolist())
    np.testing.assert_allclose(ordered[0], shuffled[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ordered[2]["crop_start"], shuffled[2]["crop_start"])
    items = [{"image": f"volume_{i}.nii.gz"} for i in range(5)]
    h = BufferSelectionHandler(_crop_loader(batch_size=1), tmp_path, "ct", items=items, cluster_ratio=0.2, buffer_ratio=0.2,
                               network=CropEncoder(), chunk_size=4)
    h(None)
    m = load_buffer_manifest(tmp_path / "buffer.json", check_files=False)
    assert m["n_total"] == 5 * per_volume and m["crop_grid"] == {"roi_size": [4, 4, 2], "overlap": 0.5, "axes": None, "n_volumes": 5}
    for it in m["items"]:
        assert it["volume_shape"] == [8, 6, 4] and tuple(it["crop_start"]) in grid_starts((8, 6, 4), (4, 4, 2), 0.5)
