"""Data loading against training: can one loader worker feed the trainer, with and without the cache?

For each image stage the bundle is parsed (paper size with ``--paper``: 1 mm resampling, 192x192x16
crops, 224 images), its training items are the stage's real training items, and in this one process:

1. **uncached**: the whole chain per item (load, reorient, resample, window, pad, then the random
   crops and flips), i.e. ``dataset_cache: "none"``, what every epoch costs without a cache;
2. **memory**: ``CacheDataset`` (``dataset_cache: "memory"``): only the random transforms per item;
3. **disk**: ``PersistentDataset`` (``dataset_cache: "disk"``): read the cached item, then the random
   transforms (the cache is written by a first pass that is not timed);
4. **trainer**: the samples/s one training step of the stage's network consumes on this CPU (batches
   of the stage's own samples, AdamW, the stage's pretext), as in ``bench_trainer.py``.

Each loader figure is what ONE worker delivers (samples/s, the main process on one thread standing in
for a worker),
and ``workers needed`` = trainer samples/s / worker samples/s for one trainer. ``--gpu_sps`` adds the
workers a GPU consuming that many samples/s would need (no GPU is measured here).

    python benchmarks/bench_data_loading.py [--paper] [--modalities ct,mri,xray,pathology] [--gpu_sps 200]
"""

from __future__ import annotations

import argparse
import copy
import math
import tempfile
import time
from pathlib import Path

import torch

from medcoss_monai.data.caching import stage_dataset
from medcoss_monai.layout import read_bundle

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"


def samples_of(item) -> int:
    """Samples one dataset item yields (3D stages cut several crops per volume)."""
    return len(item) if isinstance(item, list) else 1


def loader_rate(dataset, passes: int) -> float:
    """Samples/s of reading every item ``passes`` times in this process, on one thread (one worker's work:
    a ``DataLoader`` worker runs torch on one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        count, start = 0, time.perf_counter()
        for _ in range(passes):
            for i in range(len(dataset)):
                count += samples_of(dataset[i])
        return count / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)


def trainer_rate(parser, dataset, steps: int, batch_samples: int) -> float:
    """Samples/s one training step of the stage's network consumes (best of two timed runs)."""
    from monai.data import list_data_collate

    from medcoss_monai.engines import pretext_of_batch
    from medcoss_monai.losses import MaskedReconstructionLoss

    samples = []
    while len(samples) < batch_samples:
        for i in range(len(dataset)):
            item = dataset[i]
            samples += item if isinstance(item, list) else [item]
    batch = list_data_collate(samples[:batch_samples])
    batch = {"image": batch["image"]}
    assert pretext_of_batch(batch) == "mae"
    network = copy.deepcopy(parser.get_parsed_content("network_def"))
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)
    loss_fn = MaskedReconstructionLoss()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        out = network(batch["image"], pretext="mae", mask_ratio=0.75)
        loss_fn(out["pred"], out["target"], out["mask"]).backward()
        optimizer.step()

    step()  # warm-up
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        best = min(best, time.perf_counter() - start)
    return batch_samples * steps / best


def bench(modality: str, paper: bool, passes: int, steps: int, batch_samples: int) -> dict:
    files = [BUNDLES / f"stage_{modality}.json"] + ([BUNDLES / "paper_scale.json"] if paper else [])
    with tempfile.TemporaryDirectory() as tmp:
        parser = read_bundle(files, {"output_dir": tmp, "num_workers": 0})
        data = parser.get_parsed_content("train#datalist")
        chain = parser.get_parsed_content("train#preprocessing")
        settings = dict(parser.get_parsed_content("settings"), modality=modality)
        uncached = stage_dataset(data, chain, cache="none")
        memory = stage_dataset(data, chain, cache="memory")
        disk = stage_dataset(data, chain, cache="disk", cache_dir=Path(tmp) / "cache", settings=settings)
        loader_rate(disk, 1)  # writes the disk cache, not timed
        result = {
            "modality": modality,
            "items": len(data),
            "uncached": loader_rate(uncached, passes),
            "memory": loader_rate(memory, passes),
            "disk": loader_rate(disk, passes),
        }
        result["trainer"] = trainer_rate(parser, memory, steps, batch_samples)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paper", action="store_true", help="paper-scale overlay (1 mm, 192x192x16, 224)")
    parser.add_argument("--modalities", default="xray,ct,mri,pathology")
    parser.add_argument("--passes", type=int, default=2, help="passes over the items per loader measurement")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps")
    parser.add_argument("--batch_samples", type=int, default=8, help="samples per training step")
    parser.add_argument("--gpu_sps", type=float, default=0.0, help="a GPU's measured samples/s, for its worker count")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; size: {'paper' if args.paper else 'demo'}; "
          f"one worker = this process")
    gpu = f" workers for a GPU at {args.gpu_sps:.0f} samples/s (cached) |" if args.gpu_sps else ""
    print("| stage | training items | uncached samples/s | memory cache samples/s | disk cache samples/s | "
          f"trainer samples/s (CPU) | cached worker / trainer | uncached worker / trainer |{gpu}")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if gpu else ""))
    for m in args.modalities.split(","):
        r = bench(m, args.paper, args.passes, args.steps, args.batch_samples)
        slowest_cache = min(r["memory"], r["disk"])
        extra = f" {math.ceil(args.gpu_sps / slowest_cache)} |" if gpu else ""
        print(f"| {m} | {r['items']} | {r['uncached']:.1f} | {r['memory']:.1f} | {r['disk']:.1f} | {r['trainer']:.2f} | "
              f"{slowest_cache / r['trainer']:.1f}x | {r['uncached'] / r['trainer']:.1f}x |{extra}", flush=True)


if __name__ == "__main__":
    main()
