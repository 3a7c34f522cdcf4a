"""Training throughput of the stage bundles' trainer against a plain PyTorch loop, per modality.

For each modality the stage bundle is parsed (demo size, or paper size with ``--paper``), a few real
batches are drawn from its ``train#current_loader`` and kept in memory, then the same network, loss
and optimizer run ``--steps`` iterations twice in this process: through the bundle's
``PretextTrainer`` (Ignite engine, MONAI events, the bundle's handlers that fire per iteration) and
through a bare ``for`` loop. For the image modalities a third run, in the same process and on the
same batches, trains MONAI's ``MaskedAutoEncoderViT`` of the same sizes (encoder width, depth, heads,
MLP ratio 4, qkv bias; decoder width, depth, heads; 75% masking; per-patch normalised MSE on the
masked patches), the reference point for the network's own speed. Printed: samples/s of each, the
trainer's overhead, the ratio to MONAI's MAE, and each step's achieved FLOP/s (counted by
``torch.utils.flop_counter``) as a fraction of this machine's measured float32 matmul peak.
``--profile`` prints, per modality, the operators that take the most time in one step of ours and
of MONAI's (``torch.profiler``).

    python benchmarks/bench_trainer.py [--paper] [--steps 10] [--modalities ct,xray] [--profile]
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
from monai.bundle import ConfigParser
from torch.utils.flop_counter import FlopCounterMode

from monai.networks.nets import MaskedAutoEncoderViT

from medcoss_monai.engines import PretextTrainer, pretext_of_batch
from medcoss_monai.layout import read_bundle
from medcoss_monai.losses import MaskedReconstructionLoss, MaskedTokenLoss
from medcoss_monai.networks.encoder import patchify

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
        # 8 samples per step; the one training film is repeated so its step has 8 random crops too
        overrides.update({"batch_size": 8, "train#repeats": 8})
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


def monai_mae_like(parser: ConfigParser, image: torch.Tensor) -> MaskedAutoEncoderViT:
    """MONAI's ``MaskedAutoEncoderViT`` with the bundle's encoder and decoder sizes, for ``image``'s shape."""
    spatial = tuple(int(s) for s in image.shape[2:])
    patch = parser.get_parsed_content("patch_size_3d" if len(spatial) == 3 else "patch_size_2d")
    hidden, dec_hidden = int(parser.get_parsed_content("hidden_size")), int(parser.get_parsed_content("decoder_hidden_size"))
    return MaskedAutoEncoderViT(
        in_channels=int(image.shape[1]), img_size=spatial, patch_size=patch, hidden_size=hidden, mlp_dim=4 * hidden,
        num_layers=int(parser.get_parsed_content("num_layers")), num_heads=int(parser.get_parsed_content("num_heads")),
        masking_ratio=0.75, decoder_hidden_size=dec_hidden, decoder_mlp_dim=4 * dec_hidden,
        decoder_num_layers=int(parser.get_parsed_content("decoder_layers")),
        decoder_num_heads=int(parser.get_parsed_content("decoder_heads")), spatial_dims=len(spatial), qkv_bias=True,
        # learnable position embeddings: MONAI's 3D sin-cos needs widths divisible by 6 (512 is not); the kind of
        # position embedding is one addition per token and does not change the step's cost
        pos_embed_type="learnable", decoder_pos_embed_type="learnable",
    )


def monai_step(network: MaskedAutoEncoderViT, optimizer, batch: dict) -> torch.Tensor:
    """One MAE step of MONAI's network with the same loss as ours (per-patch normalised MSE on masked patches)."""
    image = batch["image"]
    optimizer.zero_grad(set_to_none=True)
    pred, mask = network(image)
    target = patchify(image, network.patch_size)
    mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
    target = (target - mean) / (var + 1e-6) ** 0.5
    loss = MaskedReconstructionLoss()(pred, target, mask)
    loss.backward()
    optimizer.step()
    return loss


def profile_table(step, rows: int = 12) -> str:
    """The operators taking the most CPU time in one call of ``step`` (after one warm-up call)."""
    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def bench(modality: str, paper: bool, steps: int, repeats: int = 3, profile: bool = False) -> dict:
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

    image = "image" in data[0]
    reference = monai_mae_like(parser, data[0]["image"]) if image else None

    def run_monai() -> float:
        net = copy.deepcopy(reference)
        opt = torch.optim.AdamW(net.parameters(), lr=lr)
        monai_step(net, opt, data[0])  # same warm-up
        start = time.perf_counter()
        for b in data:
            monai_step(net, opt, b)
        return time.perf_counter() - start

    # alternate and keep the best of each, so warm-up and load spikes do not favour either side
    plain, engine, monai_time = float("inf"), float("inf"), float("inf")
    for _ in range(repeats):
        plain = min(plain, run_plain())
        engine = min(engine, run_trainer())
        if image:
            monai_time = min(monai_time, run_monai())

    def count_flops(step) -> int:
        with FlopCounterMode(display=False) as counter:
            step()
        return counter.get_total_flops()

    net = copy.deepcopy(base)
    flops = count_flops(lambda: plain_step(net, torch.optim.AdamW(net.parameters(), lr=lr), data[0], 0.75, losses))
    result = {"modality": modality, "samples_per_step": samples, "plain_sps": samples * steps / plain,
              "trainer_sps": samples * steps / engine, "overhead": engine / plain - 1.0,
              "flops_per_step": flops, "achieved_flops": flops * steps / engine}
    if image:
        ref = copy.deepcopy(reference)
        ref_flops = count_flops(lambda: monai_step(ref, torch.optim.AdamW(ref.parameters(), lr=lr), data[0]))
        result.update(monai_sps=samples * steps / monai_time, monai_flops=ref_flops * steps / monai_time)
    if profile:
        net, ref = copy.deepcopy(base), copy.deepcopy(reference) if image else None
        opt = torch.optim.AdamW(net.parameters(), lr=lr)
        result["profile"] = profile_table(lambda: plain_step(net, opt, data[0], 0.75, losses))
        if image:
            ref_opt = torch.optim.AdamW(ref.parameters(), lr=lr)
            result["monai_profile"] = profile_table(lambda: monai_step(ref, ref_opt, data[0]))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paper", action="store_true", help="paper-scale overlay (ViT-B, 224 / 192x192x16)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="alternating timed runs; the best is kept")
    parser.add_argument("--modalities", default="report,xray,ct,mri,pathology")
    parser.add_argument("--profile", action="store_true", help="print the costliest operators of one step")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    peak = matmul_peak()
    print(f"machine float32 matmul peak: {peak / 1e9:.1f} GFLOP/s ({torch.get_num_threads()} threads)")
    print("| modality | size | samples/step | plain loop samples/s | trainer samples/s | trainer overhead | "
          "MONAI MAE samples/s | trainer / MONAI | GFLOP/step | trainer achieved / peak | MONAI achieved / peak |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    profiles = []
    for m in args.modalities.split(","):
        r = bench(m, args.paper, args.steps, args.repeats, args.profile)
        monai = (f"{r['monai_sps']:.2f} | {r['trainer_sps'] / r['monai_sps']:.2f} |" if "monai_sps" in r
                 else "- (no MONAI MLM model) | - |")
        monai_peak = f"{r['monai_flops'] / peak:.2f}" if "monai_flops" in r else "-"
        print(f"| {m} | {'paper' if args.paper else 'demo'} | {r['samples_per_step']:.0f} | {r['plain_sps']:.2f} | "
              f"{r['trainer_sps']:.2f} | {100 * r['overhead']:+.1f}% | {monai} {r['flops_per_step'] / 1e9:.1f} | "
              f"{r['achieved_flops'] / peak:.2f} | {monai_peak} |", flush=True)
        profiles += [(m, "ours", r.get("profile")), (m, "MONAI MAE", r.get("monai_profile"))]
    for m, who, table in profiles:
        if table:
            print(f"\n{m}, {who}: costliest operators of one step\n{table}")


if __name__ == "__main__":
    main()
