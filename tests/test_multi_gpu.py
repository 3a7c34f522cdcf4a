"""The multi-GPU overlay (``bundles/multi_gpu.json``) on CPU: gloo process groups, DDP, sharded samplers."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from medcoss_monai.layout import bundles_dir, read_bundle
from tests.ddp_utils import in_process_group

N_ITEMS, REPEATS, WORLD = 5, 3, 2  # 15 samples: not a multiple of world * batch, so padding shows


def _parse(config_files: list[str], output_dir: str):
    overrides = {
        "output_dir": output_dir,
        "train#dataset": f"$list(range({N_ITEMS}))",  # the mechanics only: no volume is loaded
        "train#repeats": REPEATS,
        "train#trainer#max_epochs": 2,
    }
    return read_bundle(config_files, overrides)


def _worker(rank: int, tmp: str) -> None:
    parser = _parse([str(bundles_dir() / "stage_ct.json"), str(bundles_dir() / "multi_gpu.json")], tmp)
    parser.get_parsed_content("initialize")  # the overlay's own initialize accepts an existing group
    loader = parser.get_parsed_content("train#current_loader")
    epochs = []
    for epoch in (1, 2):
        loader.sampler.set_epoch(epoch)
        epochs.append([int(i) for i in loader.sampler])
    scheduler = parser.get_parsed_content("train#lr_scheduler")
    net = parser.get_parsed_content("train#trainer#network")
    result = {
        "indices": epochs,
        "batches": len(loader),
        "rehearsal_batches": len(parser.get_parsed_content("train#dataloader")),
        "t_total": scheduler.t_total,
        "ddp": isinstance(net, torch.nn.parallel.DistributedDataParallel),
        "find_unused": bool(getattr(net, "find_unused_parameters", False)),
        "optimizer_holds_ddp_params": {id(p) for g in parser.get_parsed_content("train#optimizer").param_groups
                                       for p in g["params"]} == {id(p) for p in net.module.parameters() if p.requires_grad},
    }
    Path(tmp, f"rank{rank}.json").write_text(json.dumps(result))


@pytest.mark.slow
def test_overlay_shards_current_data_like_one_process(tmp_path: Path) -> None:
    """Two gloo ranks see every sample of an epoch once (plus DistributedSampler padding), as one process does,
    the trainer gets a DDP network over the optimizer's parameters, and the LR schedule length uses per-rank batches."""
    mp.spawn(in_process_group, args=(WORLD, str(tmp_path / "init"), _worker, str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]

    single = _parse([str(bundles_dir() / "stage_ct.json")], str(tmp_path))
    one_loader = single.get_parsed_content("train#current_loader")
    total = len(one_loader.dataset)
    assert total == N_ITEMS * REPEATS
    batch = one_loader.batch_size
    for epoch in range(2):
        seen = [i for r in ranks for i in r["indices"][epoch]]
        assert len(seen) == WORLD * math.ceil(total / WORLD)  # per-rank share, padded to equal length
        assert set(seen) == set(range(total))  # every sample of the epoch, as a single process
    assert ranks[0]["indices"][0] != ranks[0]["indices"][1]  # reshuffled each epoch (set_epoch)
    for r in ranks:
        assert r["ddp"] and r["find_unused"] and r["optimizer_holds_ddp_params"]
        assert r["batches"] == math.ceil(math.ceil(total / WORLD) / batch) < len(one_loader)
        assert r["t_total"] == 2 * r["rehearsal_batches"] == 2 * r["batches"]  # schedule = steps this rank takes


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_torchrun_two_cpu_processes_write_one_stage(sample_data: Path, tmp_path: Path) -> None:
    """``torchrun --nproc_per_node 2`` of stage_ct + overlay on CPU: one model.pt, one buffer.json."""
    configs = f"['{bundles_dir() / 'stage_ct.json'}','{bundles_dir() / 'multi_gpu.json'}']"
    cmd = [
        "torchrun", "--nproc_per_node", "2", "--master_port", "29533", "-m", "monai.bundle", "run",
        "--config_file", configs, "--meta_file", str(bundles_dir() / "metadata.json"),
        "--output_dir", str(tmp_path), "--train#trainer#max_epochs", "1", "--progress_bar", "false",
        "--train#repeats", "1", "--batch_size", "4", "--crops_per_volume", "2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stage = tmp_path / "stage_ct"
    assert sorted(p.name for p in stage.glob("*.pt")) == ["checkpoint_epoch=1.pt", "model.pt"]
    assert (stage / "buffer.json").is_file()
    info = json.loads((stage / "stage.json").read_text())
    n_train = 2  # lung1, lung2: one sample per rank, one batch per rank
    assert info["iterations"] == math.ceil(math.ceil(n_train / 2) / 4)
    rows = (stage / "loss_history.csv").read_text().strip().splitlines()
    assert len(rows) == 2  # header + epoch 1, written once (rank 0)
    state = torch.load(stage / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)  # unwrapped from DDP


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_torchrun_two_cpu_processes_fine_tune(sample_data: Path, tmp_path: Path) -> None:
    """``torchrun --nproc_per_node 2`` of finetune_pathology_cls + its overlay on CPU: a best model and one metrics.json
    computed on the whole test split."""
    from medcoss_monai.samples.tasks import prepare_tasks

    prepare_tasks(verbose=False)
    configs = f"['{bundles_dir() / 'finetune_pathology_cls.json'}','{bundles_dir() / 'multi_gpu_finetune.json'}']"
    cmd = [
        "torchrun", "--nproc_per_node", "2", "--master_port", "29534", "-m", "monai.bundle", "run",
        "--config_file", configs, "--output_dir", str(tmp_path), "--train#trainer#max_epochs", "2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "metrics.json").read_text())
    assert result["split"] == "test" and result["max_epochs"] == 2
    assert {"ACC", "AUC", "F1"} <= set(result["metrics"])
    assert 0.0 <= result["metrics"]["ACC"] <= 1.0
    state = torch.load(tmp_path / "model_best.pt", weights_only=True)
    assert state and not any(k.startswith("module.") for k in state)  # the bare network, not the DDP wrapper
