"""GPU check of the paper-size recipe, in one command that ends within 8 minutes on one H100.

1. **Steps.** Per modality, one paper-size training step (the stage bundle merged with
   ``bundles/paper_scale.json``: ViT-B, 224 / 192x192x16, ``--batch_size`` samples) under bf16 autocast,
   through this project's network and, for the image modalities, through MONAI's
   ``MaskedAutoEncoderViT`` of the same sizes on the same batch: samples/s and peak GPU memory. The
   batches are real sample data, drawn by ``bench_trainer.real_batches`` and tiled to the batch size.
2. **Stage.** ``stage_xray.json`` + ``paper_scale.json`` + ``multi_gpu.json`` for one short epoch under
   ``torchrun`` with one process per visible GPU (NCCL): wall time, iterations, the files it wrote.
3. **Buffer.** The k-means buffer selection at N = 1,000,000 (width 768, k = 10,000, 5 % kept) on the
   GPU: faiss's GPU ``Kmeans`` where faiss has GPUs, else k-means in torch on the GPU (greedy k-means++
   seeds, Lloyd's iterations on a subsample, exact assignment, as ``medcoss_monai.buffer.kmeans`` does
   on the CPU), then the project's ``select_nearest``. The data are ``bench_buffer_selection.mixture``
   (known clusters), so the clusters the buffer keeps are counted.

The figures go to ``--out`` as JSON and, beside it, a short markdown table (``.md``), naming the card,
torch and CUDA versions and the git commit. Without CUDA it prints one line and exits with status 2.

    python benchmarks/gpu_check.py --out docs/gpu_check.json [--modalities report,xray,ct,mri,pathology]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import inspect
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "bundles"
NO_CUDA_STATUS = 2
BUDGET_S = 480  # the check must end within 8 minutes on one H100


# --------------------------------------------------------------------------------------------- 1. steps


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def tiled_batch(batches: list[dict], size: int) -> dict:
    """One batch of ``size`` samples from real batches, repeated as needed (throughput does not need distinct samples)."""
    keys = [k for k in batches[0] if torch.is_tensor(batches[0][k])]
    batches = [b for b in batches if all(b[k].shape[1:] == batches[0][k].shape[1:] for k in keys)]  # one shape
    whole = {k: torch.cat([torch.as_tensor(b[k]) for b in batches]) for k in keys}
    n = next(iter(whole.values())).shape[0]
    reps = math.ceil(size / n)
    return {k: v.repeat(reps, *([1] * (v.ndim - 1)))[:size] for k, v in whole.items()}


def timed_steps(step, warmup: int, steps: int) -> dict[str, float]:
    """Run ``step`` ``warmup`` then ``steps`` times on the GPU: seconds of the timed ones and peak memory."""
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    torch.cuda.synchronize()
    return {"seconds": time.perf_counter() - start, "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
            "loss": float(loss)}


def bf16(step):
    """``step`` under CUDA autocast to bfloat16 (no loss scaling: bf16 has float32's range)."""

    def run():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return step()

    return run


def step_check(modality: str, batch_size: int, warmup: int, steps: int, device: torch.device) -> dict[str, Any]:
    """One modality: this project's network and MONAI's MAE, the same paper-size batch, bf16 autocast."""
    from bench_trainer import monai_mae_like, monai_step, plain_step, real_batches

    from medcoss_monai.losses import MaskedReconstructionLoss, MaskedTokenLoss

    t0 = time.perf_counter()
    batches, parser = real_batches(modality, True, max(1, min(4, batch_size // 8)))
    batch = _to(tiled_batch(batches, batch_size), device)
    result: dict[str, Any] = {"modality": modality, "samples_per_step": batch_size, "data_s": time.perf_counter() - t0}
    losses = {"mae": MaskedReconstructionLoss(), "mlm": MaskedTokenLoss()}
    lr = float(parser.get_parsed_content("lr"))
    mask_ratio = float(parser.get_parsed_content("mask_ratio"))

    def run(build, one_step, name: str) -> None:
        torch.manual_seed(0)
        net = None
        try:
            net = build().to(device).train()
            opt = torch.optim.AdamW(net.parameters(), lr=lr)
            r = timed_steps(bf16(lambda: one_step(net, opt)), warmup, steps)
            result[name] = {"samples_per_s": batch_size * steps / r["seconds"], "peak_gib": r["peak_gib"],
                            "loss": r["loss"], "parameters_m": sum(p.numel() for p in net.parameters()) / 1e6}
        except torch.cuda.OutOfMemoryError as e:
            result[name] = {"error": f"out of memory: {str(e).splitlines()[0]}"}
        finally:
            del net
            torch.cuda.empty_cache()

    # a copy: the parser keeps the network it built, which would stay on the GPU through MONAI's run
    run(lambda: copy.deepcopy(parser.get_parsed_content("network_def")), lambda n, o: plain_step(n, o, batch, mask_ratio, losses),
        "ours")
    if "image" in batch:
        run(lambda: monai_mae_like(parser, batch["image"]), lambda n, o: monai_step(n, o, batch), "monai_mae")
    ours, monai = result.get("ours", {}), result.get("monai_mae", {})
    if "samples_per_s" in ours and "samples_per_s" in monai:
        result["ours_over_monai"] = ours["samples_per_s"] / monai["samples_per_s"]
    return result


# --------------------------------------------------------------------------------------------- 2. stage


def stage_check(n_gpus: int, batch_size: int, steps_per_rank: int, timeout_s: int) -> dict[str, Any]:
    """``stage_xray`` at paper size through ``multi_gpu.json`` under torchrun, one process per GPU (NCCL)."""
    out = Path(tempfile.mkdtemp(prefix="medcoss_gpu_stage_"))
    configs = "[" + ",".join(f"'{BUNDLES / f}'" for f in ("stage_xray.json", "paper_scale.json", "multi_gpu.json")) + "]"
    repeats = n_gpus * batch_size * steps_per_rank  # the sample data hold one training film: repeat it
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n_gpus),
        "-m", "monai.bundle", "run", "--config_file", configs, "--meta_file", str(BUNDLES / "metadata.json"),
        "--output_dir", str(out), "--train#trainer#max_epochs", "1", "--progress_bar", "false",
        "--train#repeats", str(repeats), "--batch_size", str(batch_size), "--num_workers", "2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
        code, tail = proc.returncode, (proc.stderr or proc.stdout)[-2000:]
    except subprocess.TimeoutExpired:
        code, tail = None, f"timed out after {timeout_s} s"
    wall = time.perf_counter() - start
    stage = out / "stage_xray"
    info = json.loads((stage / "stage.json").read_text()) if (stage / "stage.json").is_file() else {}
    result = {"gpus": n_gpus, "backend": "nccl" if torch.cuda.is_available() else "gloo",  # as multi_gpu.json picks it
              "batch_size_per_gpu": batch_size, "returncode": code, "wall_s": wall, "iterations": info.get("iterations"),
              "files": sorted(p.name for p in stage.glob("*")) if stage.is_dir() else []}
    if code != 0:
        result["log_tail"] = tail
    shutil.rmtree(out, ignore_errors=True)  # a paper-size checkpoint is over a GB
    return result


# --------------------------------------------------------------------------------------------- 3. buffer


def _nearest(x: torch.Tensor, centres: torch.Tensor, block: int = 32768) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centre and squared distance of every row, block by block (no N x k matrix)."""
    c_sq = (centres * centres).sum(1)
    labels = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    d2 = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    for s in range(0, x.shape[0], block):
        xb = x[s : s + block]
        dist = torch.addmm(c_sq, xb, centres.T, alpha=-2.0)  # |c|^2 - 2 x.c; |x|^2 added after the argmin
        d2[s : s + block], labels[s : s + block] = dist.min(1)
        d2[s : s + block] += (xb * xb).sum(1)
    return labels, d2.clamp_min_(0.0)


def _greedy_seeds(x: torch.Tensor, k: int, trials: int, gen: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ on the GPU: each seed the best of ``trials`` candidates drawn with probability ~ D^2."""
    first = int(torch.randint(x.shape[0], (1,), generator=gen, device=x.device))
    centres = torch.empty(k, x.shape[1], dtype=x.dtype, device=x.device)
    centres[0] = x[first]
    x_sq = (x * x).sum(1)
    d2 = (x_sq - 2 * x @ centres[0] + x_sq[first]).clamp_min_(0.0)
    for i in range(1, k):
        cand = torch.multinomial(d2 + 1e-12, trials, replacement=True, generator=gen)
        dc = (x_sq[:, None] - 2 * x @ x[cand].T + x_sq[cand][None]).clamp_min_(0.0)  # (n, trials)
        best = torch.minimum(d2[:, None], dc).sum(0).argmin()
        centres[i] = x[cand[best]]
        d2 = torch.minimum(d2, dc[:, best])
    return centres


def torch_kmeans(x: torch.Tensor, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, int]:
    """k-means on the GPU with the CPU implementation's settings (seeding subsample, training cap, tolerance).

    Returns:
        (labels, squared distances) of every row, and the number of Lloyd iterations run.
    """
    from medcoss_monai.buffer import kmeans_sample
    from medcoss_monai.buffer.kmeans import SEED_POINTS_PER_CENTROID, SEED_TRIALS

    opts = {n: p.default for n, p in inspect.signature(kmeans_sample).parameters.items()}
    gen = torch.Generator(device=x.device).manual_seed(seed)
    n = x.shape[0]
    seed_rows = torch.randperm(n, generator=gen, device=x.device)[: min(n, SEED_POINTS_PER_CENTROID * k)]
    centres = _greedy_seeds(x[seed_rows], k, SEED_TRIALS, gen)
    cap = min(n, opts["max_points_per_centroid"] * k, opts["max_train_points"] or n)
    train = x[torch.randperm(n, generator=gen, device=x.device)[:cap]]
    labels = torch.full((cap,), -1, dtype=torch.long, device=x.device)
    iterations = 0
    for iterations in range(1, opts["niter"] + 1):
        new, _ = _nearest(train, centres)
        changed = float((new != labels).float().mean())
        labels = new
        counts = torch.bincount(labels, minlength=k)
        sums = torch.zeros_like(centres).index_add_(0, labels, train)
        filled = counts > 0  # an empty cluster keeps its centre
        centres[filled] = sums[filled] / counts[filled, None].to(x.dtype)
        if changed <= opts["tol"]:
            break
    all_labels, d2 = _nearest(x, centres)
    return all_labels, d2, iterations


def faiss_gpus() -> int:
    """GPUs faiss can use (0 for a CPU-only faiss, or no faiss)."""
    try:
        import faiss
    except ImportError:
        return 0
    return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0


def buffer_check(n: int, dim: int, cluster_ratio: float, buffer_ratio: float, device: torch.device) -> dict[str, Any]:
    """The k-means buffer selection at ``n`` items on the GPU; clusters of the mixture kept by the buffer."""
    import numpy as np
    from bench_buffer_selection import mixture

    from medcoss_monai.buffer import buffer_size, n_clusters_for, select_nearest

    k, m = n_clusters_for(n, cluster_ratio), buffer_size(n, buffer_ratio)
    t0 = time.perf_counter()
    x, comp = mixture(n, dim, k, seed=1)
    result: dict[str, Any] = {"n": n, "dim": dim, "k": k, "buffer": m, "data_s": time.perf_counter() - t0}
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    if faiss_gpus():
        import faiss

        km = faiss.Kmeans(dim, k, niter=20, seed=0, max_points_per_centroid=256, gpu=True)
        km.train(x)
        d2, labels = km.index.search(x, 1)
        labels, dist = labels[:, 0], np.sqrt(np.maximum(d2[:, 0], 0.0))
        result["method"] = "faiss GPU Kmeans (20 iterations)"
    else:
        xt = torch.from_numpy(x).to(device)
        labels_t, d2_t, iterations = torch_kmeans(xt, k)
        labels, dist = labels_t.cpu().numpy(), d2_t.sqrt().cpu().numpy()
        del xt
        result["method"] = f"torch on the GPU (greedy k-means++, {iterations} Lloyd iterations)"
    cluster_s = time.perf_counter() - start
    picked = select_nearest(labels, dist, m, k)
    result.update(cluster_s=cluster_s, select_s=time.perf_counter() - start, peak_gib=torch.cuda.max_memory_allocated() / 2**30,
                  kept=int(np.unique(comp[picked]).size), unique=bool(np.unique(picked).size == m))
    torch.cuda.empty_cache()
    return result


# --------------------------------------------------------------------------------------------- report


def git_commit() -> str:
    """The checkout's commit, ``+dirty`` when it has changes; ``unknown`` outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def markdown(report: dict[str, Any]) -> str:
    """The short markdown table of a report."""
    env = report["environment"]
    lines = [f"GPU check on {env['gpus']} x {env['card']}, torch {env['torch']} (CUDA {env['cuda']}), commit "
             f"{env['commit']}, {env['date']}; {report['total_s']:.0f} s in all.", "",
             "| modality | samples/step | ours samples/s | ours peak GiB | MONAI MAE samples/s | MONAI peak GiB | ours / MONAI |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]

    def cell(r: dict, key: str, fmt: str) -> str:
        return format(r[key], fmt) if key in r else r.get("error", "-")

    for r in report["steps"]:
        ours, monai = r.get("ours", {}), r.get("monai_mae", {})
        ratio = f"{r['ours_over_monai']:.2f}" if "ours_over_monai" in r else "-"
        lines.append(f"| {r['modality']} | {r['samples_per_step']} | {cell(ours, 'samples_per_s', '.1f')} | "
                     f"{cell(ours, 'peak_gib', '.1f')} | {cell(monai, 'samples_per_s', '.1f')} | {cell(monai, 'peak_gib', '.1f')} | {ratio} |")
    s = report.get("stage")
    if s:
        lines += ["", "| stage | GPUs | backend | exit | wall s | iterations |", "| --- | ---: | --- | ---: | ---: | ---: |",
                  f"| stage_xray + paper_scale + multi_gpu | {s['gpus']} | {s['backend']} | {s['returncode']} | {s['wall_s']:.0f} | {s['iterations']} |"]
    b = report.get("buffer")
    if b:
        lines += ["", "| buffer N | k | method | k-means s | with selection s | peak GiB | known clusters kept |",
                  "| ---: | ---: | --- | ---: | ---: | ---: | ---: |",
                  f"| {b['n']:,} | {b['k']:,} | {b['method']} | {b['cluster_s']:.1f} | {b['select_s']:.1f} | {b['peak_gib']:.1f} | "
                  f"{b['kept']:,} / {b['k']:,} |"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="JSON file of the figures (a .md table is written beside it)")
    p.add_argument("--modalities", default="report,xray,ct,mri,pathology")
    p.add_argument("--batch_size", type=int, default=64, help="samples per step (the paper's per-GPU 64)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--stage_steps", type=int, default=4, help="steps per GPU of the torchrun stage (0: skip it)")
    p.add_argument("--stage_timeout", type=int, default=240)
    p.add_argument("--kmeans_n", type=int, default=1_000_000, help="items of the buffer selection (0: skip it)")
    p.add_argument("--dim", type=int, default=768)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device is visible (torch.cuda.is_available() is False); nothing was measured.")
        return NO_CUDA_STATUS

    sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_trainer, bench_buffer_selection
    start = time.perf_counter()
    device = torch.device("cuda", 0)
    report: dict[str, Any] = {"environment": {
        "card": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}, "steps": []}
    for modality in [m for m in args.modalities.split(",") if m]:
        report["steps"].append(step_check(modality, args.batch_size, args.warmup, args.steps, device))
        print(json.dumps(report["steps"][-1]), flush=True)
    if args.stage_steps > 0:
        report["stage"] = stage_check(torch.cuda.device_count(), args.batch_size, args.stage_steps, args.stage_timeout)
        print(json.dumps(report["stage"]), flush=True)
    if args.kmeans_n > 0:
        report["buffer"] = buffer_check(args.kmeans_n, args.dim, 0.01, 0.05, device)
        print(json.dumps(report["buffer"]), flush=True)
    report["total_s"] = time.perf_counter() - start
    report["within_budget"] = report["total_s"] <= BUDGET_S
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    stage_failed = "stage" in report and report["stage"]["returncode"] != 0
    return 1 if stage_failed else 0


if __name__ == "__main__":
    sys.exit(main())
