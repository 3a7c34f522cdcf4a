"""Training throughput of the stage bundles' trainer against a plain PyTorch loop, per modality.

For each modality the stage bundle is parsed (demo size, or paper size with ``--paper``), a few real
batches are drawn from its ``train#current_loader`` and kept in memory, then the same network, loss
and optimizer run ``--steps`` iterations twice in this process: through the bundle's
``PretextTrainer`` (Ignite engine, MONAI events, the bundle's handlers that fire per iteration) and
through a bare ``for`` loop. Printed: samples/s of both, the trainer's overhead, and the step's
achieved FLOP/s (counted by ``torch.utils.flop_counter``) as a fraction of this machine's measured
float32 matmul peak.

    python benchmarks/bench_trainer.py [--paper] [--steps 10] [--modalities ct,xray]
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
from monai.bundle import ConfigParser
from torch.utils.flop_counter import FlopCounterMode

from medcoss_monai.layout import read_bundle
from medcoss_monai.engines import PretextTrainer, pretext_of_batch
from medcoss_monai.losses import MaskedReconstructionLoss, MaskedTokenLoss

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"


def matmul_peak(n: int = 2048, repeats: int = 10, trials: int = 5) -> float:
    """Measured float32 matmul FLOP/s of this machine (best of ``trials``, so a load spike does not lower it)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 * repeats / best


def real_batches(modality: str, paper: bool, n: int) -> tuple[list[dict], ConfigParser]:
    files = [BUNDLES / f"stage_{modality}.json"] + ([BUNDLES / "paper_scale.json"] if paper else [])
    overrides = {"output_dir": "/tmp/medcoss_bench", "max_items": 64 if modality == "report" else None, "num_workers": 0}
    if paper:
        overrides["batch_size"] = 8
    parser = read_bundle(files, overrides)
    parser.parse()
    loader = parser.get_parsed_content("train#current_loader")
    keep = ("input_ids", "attention_mask", "labels", "image")
    batches = []
    for batch in loader:
        batches.append({k: v for k, v in batch.items() if k in keep})
        if len(batches) == n:
            break
    return batches, parser


def plain_step(network, optimizer, batch, mask_ratio, losses):
    pretext = pretext_of_batch(batch)
    optimizer.zero_grad(set_to_none=True)
    if pretext == "mae":
        out = network(batch["image"], pretext="mae", mask_ratio=mask_ratio)
        loss = losses["mae"](out["pred"], out["target"], out["mask"])
    else:
        # the vocabulary head at masked positions only, as the trainer runs it
        out = network(batch["input_ids"], attention_mask=batch["attention_mask"], pretext="mlm", labels=batch["labels"])
        loss = losses["mlm"](out["logits"], out["labels"])
    loss.backward()
    optimizer.step()
    return loss


def bench(modality: str, paper: bool, steps: int, repeats: int = 3) -> dict:
    batches, parser = real_batches(modality, paper, 4)
    samples = sum(int((b.get("image", b.get("input_ids"))).shape[0]) for b in batches) / len(batches)
    base = parser.get_parsed_content("network_def")
    losses = {"mae": MaskedReconstructionLoss(), "mlm": MaskedTokenLoss()}
    lr = float(parser.get_parsed_content("lr"))
    data = [batches[i % len(batches)] for i in range(steps)]

    from monai.handlers import StatsHandler

    from medcoss_monai.handlers import LossHistoryHandler

    def run_plain() -> float:
        net = copy.deepcopy(base)
        opt = torch.optim.AdamW(net.parameters(), lr=lr)
        plain_step(net, opt, data[0], 0.75, losses)  # warm-up
        start = time.perf_counter()
        for b in data:
            plain_step(net, opt, b, 0.75, losses)
        return time.perf_counter() - start

    def run_trainer() -> float:
        # the bundle's trainer, with its per-iteration handlers (loss history, stats)
        net = copy.deepcopy(base)
        opt = torch.optim.AdamW(net.parameters(), lr=lr)
        handlers = [
            LossHistoryHandler(f"/tmp/medcoss_bench/{modality}_loss.csv"),
            StatsHandler(iteration_log=False, output_transform=lambda out: out["loss"].item()),
        ]
        trainer = PretextTrainer(device="cpu", max_epochs=1, train_data_loader=data, network=net, optimizer=opt,
                                 train_handlers=handlers)
        plain_step(net, opt, data[0], 0.75, losses)  # same warm-up
        start = time.perf_counter()
        trainer.run()
        return time.perf_counter() - start

    # alternate and keep the best of each, so warm-up and load spikes do not favour either side
    plain, engine = float("inf"), float("inf")
    for _ in range(repeats):
        plain = min(plain, run_plain())
        engine = min(engine, run_trainer())

    with FlopCounterMode(display=False) as counter:
        plain_step(copy.deepcopy(base), torch.optim.AdamW(base.parameters(), lr=lr), data[0], 0.75, losses)
    flops = counter.get_total_flops()
    return {"modality": modality, "samples_per_step": samples, "plain_sps": samples * steps / plain,
            "trainer_sps": samples * steps / engine, "overhead": engine / plain - 1.0,
            "flops_per_step": flops, "achieved_flops": flops * steps / plain}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paper", action="store_true", help="paper-scale overlay (ViT-B, 224 / 192x192x16)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="alternating timed runs; the best is kept")
    parser.add_argument("--modalities", default="report,xray,ct,mri,pathology")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    peak = matmul_peak()
    print(f"machine float32 matmul peak: {peak / 1e9:.1f} GFLOP/s ({torch.get_num_threads()} threads)")
    print("| modality | size | samples/step | plain loop samples/s | trainer samples/s | trainer overhead | GFLOP/step | achieved / peak |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for m in args.modalities.split(","):
        r = bench(m, args.paper, args.steps, args.repeats)
        print(f"| {m} | {'paper' if args.paper else 'demo'} | {r['samples_per_step']:.0f} | {r['plain_sps']:.1f} | "
              f"{r['trainer_sps']:.1f} | {100 * r['overhead']:+.1f}% | {r['flops_per_step'] / 1e9:.2f} | "
              f"{r['achieved_flops'] / peak:.2f} |", flush=True)


if __name__ == "__main__":
    main()
