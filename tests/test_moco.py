"""MoCo v2 (MUSCLE step 1): backbone layout, momentum update and queue on known values, two views, the bundle."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medcoss_monai.networks.checkpoint import load_state
from medcoss_monai.apps.muscle.moco import MoCo, resnet_backbone
from tests.ddp_utils import in_process_group


REPO = Path(__file__).resolve().parents[1]
KILL_HOOKS = Path(__file__).parent / "kill_hooks"
TINY_MOCO = {"image_size": 64, "load_size": 96, "batch_size": 8, "samples_per_epoch": 16, "queue_size": 64}


def test_resnet_backbone_has_torchvision_layout_without_fc():
    net = resnet_backbone("resnet18")
    state = net.state_dict()
    # torchvision's resnet18 has 11,689,512 parameters, 513,000 of them in fc
    assert sum(p.numel() for p in net.parameters()) == 11_689_512 - 513_000
    assert state["conv1.weight"].shape == (64, 3, 7, 7) and "conv1.bias" not in state
    assert state["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1) and "layer2.0.downsample.0.bias" not in state
    assert state["layer4.1.bn2.running_var"].shape == (512,) and not any(k.startswith("fc.") for k in state)
    x = torch.zeros(2, 3, 64, 64)
    assert net(x).shape == (2, 512) and net.num_features == 512
    stem = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    assert net.layer4(net.layer3(net.layer2(net.layer1(stem)))).shape == (2, 512, 2, 2), "output stride 32"
    r50 = resnet_backbone("resnet50")
    assert r50.num_features == 2048 and sum(p.numel() for p in r50.parameters()) == 25_557_032 - 2_049_000
    with pytest.raises(ValueError, match="resnet18"):
        resnet_backbone("vgg16")


def test_momentum_update_on_known_values():
    model = MoCo("resnet18", queue_size=8, momentum=0.9)
    with torch.no_grad():
        for q, k in zip(model.query_parameters(), model.key_parameters()):
            q.fill_(1.0)
            k.fill_(0.0)
    model.momentum_update()
    for k in model.key_parameters():
        assert torch.allclose(k, torch.full_like(k, 0.1))
    model.momentum_update()  # 0.9 * 0.1 + 0.1 * 1
    assert all(torch.allclose(k, torch.full_like(k, 0.19)) for k in model.key_parameters())
    assert all(not k.requires_grad for k in model.key_parameters())
    assert all(q.requires_grad for q in model.query_parameters())


def test_queue_replaces_oldest_keys_and_wraps():
    model = MoCo("resnet18", embed_dim=2, queue_size=5)
    first = torch.arange(6, dtype=torch.float32).view(3, 2)
    model.enqueue(first)
    assert int(model.queue_ptr) == 3 and torch.equal(model.queue[:3], first)
    second = -torch.arange(6, dtype=torch.float32).view(3, 2) - 1
    model.enqueue(second)
    assert int(model.queue_ptr) == 1
    assert torch.equal(model.queue[3:], second[:2]) and torch.equal(model.queue[0], second[2])
    assert torch.equal(model.queue[1:3], first[1:])
    with pytest.raises(ValueError, match="queue_size"):
        model.enqueue(torch.zeros(6, 2))


def test_logits_are_cosines_over_temperature_positive_first():
    torch.manual_seed(0)
    model = MoCo("resnet18", queue_size=16, temperature=0.2).eval()
    x1, x2 = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    queue_before = model.queue.clone()
    logits, targets = model(x1, x2)
    q = model.embed(x1)
    k = F.normalize(model.key_projector(model.key_backbone(x2)), dim=1)
    assert logits.shape == (2, 17) and torch.equal(targets, torch.zeros(2, dtype=torch.long))
    assert torch.allclose(logits[:, 0], (q * k).sum(1) / 0.2, atol=1e-5)
    assert torch.allclose(logits[:, 1:], q @ queue_before.t() / 0.2, atol=1e-5)
    assert torch.equal(model.queue, queue_before), "eval mode leaves the queue alone"
    model.train()
    model(x1, x2)
    assert int(model.queue_ptr) == 2 and not torch.equal(model.queue[:2], queue_before[:2])
    assert torch.allclose(model.queue[:2].norm(dim=1), torch.ones(2), atol=1e-5)


def test_two_views_differ_and_repeat_with_the_seed(sample_data):
    from medcoss_monai.apps.muscle.two_views import TwoViewsd
    from medcoss_monai.transforms import LoadXRay, RandResizedCrop
    from monai.transforms import RandFlip, RandScaleIntensity

    film = LoadXRay()(str(sample_data / "xray" / "RG1_J2KI.dcm"))
    chain = [RandResizedCrop(64, scale=(0.2, 1.0)), RandFlip(prob=0.5, spatial_axis=1), RandScaleIntensity(0.4, prob=0.8)]

    def views(seed):
        t = TwoViewsd(keys="image", transform=chain, names="key_image").set_random_state(seed)
        out = t({"image": film})
        return torch.as_tensor(out["image"]), torch.as_tensor(out["key_image"])

    a, b = views(1)
    assert a.shape == b.shape == (1, 64, 64) and not torch.equal(a, b)
    c, d = views(1)
    assert torch.equal(a, c) and torch.equal(b, d)
    assert not torch.equal(views(2)[0], a)


def _run_bundle(output_dir: Path, epochs: int, resume: bool, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("MEDCOSS_TEST_KILL_AT", None)
    if kill_at:
        env["MEDCOSS_TEST_KILL_AT"] = kill_at
        env["PYTHONPATH"] = os.pathsep.join([str(KILL_HOOKS), env.get("PYTHONPATH", "")])
    args = {"output_dir": str(output_dir), "progress_bar": "false", "train#trainer#max_epochs": str(epochs),
            "resume": str(resume).lower(), **{k: str(v) for k, v in TINY_MOCO.items()}}
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "bundles/muscle_mdmoco.json"]
    for key, value in args.items():
        cmd += [f"--{key}", value]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_mdmoco_bundle_killed_then_resumed_equals_uninterrupted_run(sample_data, tmp_path):
    """A SIGKILL half-way through writing epoch 2's checkpoint, then ``--resume true``: the queue, its
    pointer, the momentum encoder and the query backbone end bit-for-bit as in an uninterrupted run."""
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    done = _run_bundle(ref, 3, resume=False)
    assert done.returncode == 0, done.stderr[-3000:]
    interrupted = _run_bundle(killed, 3, resume=False, kill_at="write:checkpoint_epoch=2.pt")
    assert interrupted.returncode == -9, interrupted.stderr[-3000:]
    final = _run_bundle(killed, 3, resume=True)
    assert final.returncode == 0, final.stderr[-3000:]

    a, b = ref / "muscle_mdmoco", killed / "muscle_mdmoco"
    wa, wb = torch.load(a / "model.pt", weights_only=True), torch.load(b / "model.pt", weights_only=True)
    assert {"queue", "queue_ptr"} <= set(wa) and any(k.startswith("key_backbone.") for k in wa)
    assert any(k.startswith("backbone.layer4.") for k in wa) and not any(k.startswith("backbone.fc") for k in wa)
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differ, f"{len(differ)} tensors differ from the uninterrupted run, e.g. {differ[:3]}"
    # 3 epochs of 2 batches of 8 keys went into the queue of 64
    assert int(wa["queue_ptr"]) == (3 * 2 * 8) % 64
    with open(a / "loss_history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(b / "loss_history.csv", newline="") as f:
        assert list(csv.DictReader(f)) == rows
    assert [r["epoch"] for r in rows] == ["1", "2", "3"] and all(np.isfinite(float(r["loss"])) for r in rows)


def _gather_worker(rank: int, out_dir: str) -> None:
    from medcoss_monai.apps.muscle.moco import gather_from_all_ranks

    torch.manual_seed(0)  # the same initial network and queue on both ranks, as DDP's broadcast gives
    model = MoCo("resnet18", embed_dim=4, queue_size=8).train()
    model.enqueue(gather_from_all_ranks(torch.full((2, 4), float(rank + 1))))
    known = model.queue.clone()
    torch.manual_seed(100 + rank)  # each rank sees other images
    model(torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32))
    torch.save({"known": known, "queue": model.queue, "ptr": model.queue_ptr}, Path(out_dir) / f"rank{rank}.pt")


@pytest.mark.slow
def test_keys_of_all_processes_enter_every_queue(tmp_path):
    """Under torch.distributed every rank enqueues the keys of all ranks, in rank order (gloo, 2 CPU processes)."""
    import torch.multiprocessing as mp

    mp.spawn(in_process_group, args=(2, str(tmp_path / "init"), _gather_worker, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert torch.equal(r0["known"][:2], torch.ones(2, 4)) and torch.equal(r0["known"][2:4], torch.full((2, 4), 2.0))
    assert torch.equal(r0["known"], r1["known"])
    assert int(r0["ptr"]) == int(r1["ptr"]) == 0, "4 + 2 ranks x 2 keys wrap a queue of 8"
    assert torch.equal(r0["queue"], r1["queue"]) and not torch.equal(r0["queue"][4:], r0["known"][4:])


@pytest.mark.slow
@pytest.mark.long  # the overlay under torchrun is also run in CI by test_multi_gpu (MedCoSS stage, fine-tuning)
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_mdmoco_bundle_under_torchrun_with_the_multi_gpu_overlay(sample_data, tmp_path):
    """Two CPU processes (gloo) run step 1 with ``bundles/multi_gpu.json``: DDP encoder, keys gathered, files written once."""
    configs = "['bundles/muscle_mdmoco.json','bundles/multi_gpu.json']"
    cmd = ["torchrun", "--nproc_per_node", "2", "--master_port", "29542", "-m", "monai.bundle", "run", "--config_file", configs,
           "--output_dir", str(tmp_path), "--train#trainer#max_epochs", "1", "--samples_per_epoch", "16", "--batch_size", "8",
           "--queue_size", "64", "--progress_bar", "false"]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stage = tmp_path / "muscle_mdmoco"
    with open(stage / "loss_history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and float(rows[0]["loss"]) > 0  # one row: rank 0 writes
    record = json.loads((stage / "stage.json").read_text())
    assert record["shuffle_bn"] is True and record["bn_splits"] == 1, "shuffle-BN over the processes, one group each"
    state = load_state(stage / "model.pt")
    assert any(k.startswith("backbone.") for k in state) and not any(".module." in k or k.startswith("module.") for k in state)


def _encode(encoder, images):
    return F.normalize(encoder(images), dim=1)


def test_shuffle_bn_normalises_each_key_with_other_samples_than_its_query(monkeypatch):
    """One process, ``bn_splits=2``: queries are normalised in their order (rows 0-3, 4-7), keys after the
    shuffle (here rows {0, 4, 1, 5} and {2, 6, 3, 7}); the keys come back in order, aligned with their queries."""
    torch.manual_seed(0)
    model = MoCo("resnet18", embed_dim=8, queue_size=16, bn_splits=2).train()
    perm = torch.tensor([0, 4, 1, 5, 2, 6, 3, 7])
    monkeypatch.setattr(model, "key_permutation", lambda n, device: perm)
    scale = torch.linspace(0.2, 3.0, 8).view(8, 1, 1, 1)  # samples of unlike brightness: unlike group statistics
    xq, xk = torch.rand(8, 3, 64, 64) * scale, torch.rand(8, 3, 64, 64) * scale
    logits, _ = model(xq, xk)
    with torch.no_grad():
        key_encoder = lambda x: model.key_projector(model.key_backbone(x))  # noqa: E731
        expected = torch.empty(8, 8)
        for group in perm.view(2, 4):
            expected[group] = _encode(key_encoder, xk[group])
        query_encoder = lambda x: model.projector(model.backbone(x))  # noqa: E731
        queries = torch.cat([_encode(query_encoder, xq[:4]), _encode(query_encoder, xq[4:])])
        in_query_groups = torch.cat([_encode(key_encoder, xk[:4]), _encode(key_encoder, xk[4:])])
        whole_batch = _encode(key_encoder, xk)
    keys = model.queue[:8]  # enqueued in the order of the batch
    assert torch.allclose(keys, expected, atol=1e-5)
    assert not torch.allclose(keys, in_query_groups, atol=1e-3) and not torch.allclose(keys, whole_batch, atol=1e-3)
    assert torch.allclose(logits[:, 0].detach() * model.temperature, (queries * expected).sum(1), atol=1e-5)


def test_shuffle_then_unshuffle_restores_the_order():
    from medcoss_monai.apps.muscle.shuffle_bn import grouped_forward, shuffle_for_keys, unshuffle_keys

    x = torch.arange(8, dtype=torch.float32).view(8, 1) ** 2
    perm = torch.tensor([3, 0, 6, 1, 7, 2, 5, 4])
    shard, unshuffle = shuffle_for_keys(x, perm)
    assert torch.equal(shard, x[perm]) and torch.equal(unshuffle_keys(shard, unshuffle), x)
    # a BatchNorm-like encoder: each value minus the mean of its group
    centred = unshuffle_keys(grouped_forward(lambda v: v - v.mean(0, keepdim=True), shard, 2), unshuffle)
    for group in perm.view(2, 4):
        assert torch.allclose(centred[group], x[group] - x[group].mean(0))
    shard, unshuffle = shuffle_for_keys(x)  # a random permutation
    assert torch.equal(unshuffle_keys(shard, unshuffle), x)
    from medcoss_monai.errors import BadInputError

    with pytest.raises(BadInputError, match="multiple of bn_splits"):
        grouped_forward(lambda v: v, x[:6], 4)


def _shuffle_worker(rank: int, out_dir: str) -> None:
    torch.manual_seed(0)  # the same network on both ranks, as DDP's broadcast gives
    model = MoCo("resnet18", embed_dim=8, queue_size=16, bn_splits=1).train()
    own = torch.randperm(8, generator=torch.Generator().manual_seed(10 + rank))  # each rank draws another
    model.key_permutation = lambda n, device: own.clone()
    torch.manual_seed(100 + rank)
    xq, xk = torch.rand(4, 3, 64, 64), torch.rand(4, 3, 64, 64)
    model(xq, xk)
    torch.save({"perm": own, "xk": xk, "queue": model.queue, "state": model.state_dict()}, Path(out_dir) / f"rank{rank}.pt")


@pytest.mark.slow
def test_shuffle_bn_across_two_processes_uses_rank_0s_permutation(tmp_path):
    """gloo, 2 CPU processes of 4 keys: the 8 key images are shuffled with rank 0's permutation, each process
    encodes its shard of 4, and every rank's queue holds the 8 keys back in batch order."""
    import torch.multiprocessing as mp

    mp.spawn(in_process_group, args=(2, str(tmp_path / "init"), _shuffle_worker, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert not torch.equal(r0["perm"], r1["perm"])
    model = MoCo("resnet18", embed_dim=8, queue_size=16, bn_splits=1).train()
    model.load_state_dict(r0["state"])
    images = torch.cat([r0["xk"], r1["xk"]])
    expected = torch.empty(8, 8)
    with torch.no_grad():
        for shard in r0["perm"].view(2, 4):
            expected[shard] = _encode(lambda x: model.key_projector(model.key_backbone(x)), images[shard])
    assert torch.allclose(r0["queue"][:8], expected, atol=1e-5) and torch.equal(r0["queue"], r1["queue"])
