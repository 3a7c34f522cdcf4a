"""The one optimisation step of every trainer: warm-up in optimizer steps, skipped micro-batches, clipping, averaging."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from medcoss_monai.engines import PretextTrainer
from medcoss_monai.engines.pretext_trainer import PretextEvents, PretextKeys
from medcoss_monai.engines.steps import average_gradients, optimizer_parameters
from medcoss_monai.handlers.gradient_sync import GradientAllReduce
from medcoss_monai.networks import MedCoSSModel
from tests.ddp_utils import in_process_group


def _net() -> MedCoSSModel:
    torch.manual_seed(0)
    return MedCoSSModel(hidden_size=32, num_layers=1, num_heads=2, vocab_size=64, max_text_len=8,
                        img_size_2d=(32, 32), patch_size_2d=(16, 16), img_size_3d=(16, 16, 16), patch_size_3d=(8, 8, 8),
                        decoder_hidden_size=16, decoder_layers=1, decoder_heads=2)


def _count_steps(trainer: PretextTrainer, record) -> list:
    """Wrap the optimizer's step so each call records ``record(trainer)`` first."""
    seen, original = [], trainer.optimizer.step

    def counted(*args, **kwargs):
        seen.append(record(trainer))
        return original(*args, **kwargs)

    trainer.optimizer.step = counted
    return seen


def test_warmup_counts_optimizer_steps_under_accumulation():
    net = _net()
    batches = [{"image": torch.rand(2, 3, 32, 32)} for _ in range(4)]  # mechanics only
    optimizer = torch.optim.SGD(net.parameters(), lr=1.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 4))  # 4-step warm-up
    trainer = PretextTrainer("cpu", 2, batches, net, optimizer, accumulation_steps=2, lr_scheduler=schedule)
    lrs = _count_steps(trainer, lambda e: e.optimizer.param_groups[0]["lr"])
    trainer.run()
    # 8 micro-batches, 4 optimizer steps: the warm-up advances once per step, not once per micro-batch
    assert lrs == [0.25, 0.5, 0.75, 1.0]
    assert schedule.last_epoch == 4


def _skip(iterations: set[int]):
    """A handler giving the listed iterations no pretext weight: with no teacher, their loss has no gradient."""

    def handler(engine):
        if engine.state.iteration in iterations:
            engine.state.output[PretextKeys.PRETEXT_WEIGHT] = 0.0

    return handler


@pytest.mark.parametrize("skipped, expected", [({2}, [2, 4]), ({3, 4}, [2]), ({1}, [2, 4])])
def test_a_micro_batch_without_gradient_still_advances_the_window(skipped, expected):
    net = _net()
    batches = [{"image": torch.rand(2, 3, 32, 32)} for _ in range(4)]
    trainer = PretextTrainer("cpu", 1, batches, net, torch.optim.SGD(net.parameters(), lr=0.1), accumulation_steps=2)
    trainer.add_event_handler(PretextEvents.INPUTS_PREPARED, _skip(skipped))
    steps = _count_steps(trainer, lambda e: e.state.iteration)
    trainer.run()
    # windows are (1, 2) and (3, 4) whatever their batches hold; a window of skipped batches only does not step
    assert steps == expected


class _LoudHead(nn.Module):
    """A pretext head for batches with an ``aux`` key: MAE scaled by its own parameter (large gradients)."""

    batch_keys = ("aux",)

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1000.0))

    def forward(self, network, inputs, epoch):
        return network(inputs[PretextKeys.X], pretext="mae", mask_ratio=0.5)

    def loss(self, pred, epoch):
        mse = ((pred["pred"] - pred["target"]) ** 2).mean()
        return self.scale * 100.0 * mse, {"head_mse": float(mse.detach())}


def test_clipping_covers_every_trained_parameter_heads_included():
    net, head = _net(), _LoudHead()
    optimizer = torch.optim.SGD([{"params": net.parameters()}, {"params": head.parameters()}], lr=0.0)
    batches = [{"image": torch.rand(2, 3, 32, 32), "aux": torch.zeros(2)}]
    trainer = PretextTrainer("cpu", 1, batches, net, optimizer, grad_clip_norm=1.0, pretext_heads={"loud": head})
    norms = _count_steps(trainer, lambda e: torch.linalg.vector_norm(
        torch.stack([p.grad.norm() for p in optimizer_parameters(e.optimizer) if p.grad is not None])).item())
    trainer.run()
    assert trainer.state.output[PretextKeys.PRETEXT] == "loud"  # the head took the batch holding its key
    assert head.scale.grad is not None and norms == [pytest.approx(1.0, rel=1e-4)]


def test_a_head_takes_only_the_batches_holding_its_keys():
    net, head = _net(), _LoudHead()
    trainer = PretextTrainer("cpu", 1, [{"image": torch.rand(2, 3, 32, 32)}], net,
                             torch.optim.SGD(list(net.parameters()) + list(head.parameters()), lr=0.1), pretext_heads={"loud": head})
    trainer.run()
    assert trainer.state.output[PretextKeys.PRETEXT] == "mae" and head.scale.grad is None
    with pytest.raises(ValueError, match="batch_keys"):
        PretextTrainer("cpu", 1, [], net, trainer.optimizer, pretext_heads={"plain": nn.Linear(1, 1)})


def _average_on_two_ranks(rank: int, out_dir: str) -> None:
    used, unused = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(2))
    used.grad = torch.full((3,), float(rank + 1))  # rank 0: 1, rank 1: 2
    if rank == 1:
        unused.grad = torch.full((2,), 4.0)  # only rank 1's batch used it
    average_gradients([used, unused], fill_missing=True)
    net = nn.Linear(2, 1)
    net.weight.grad = torch.full_like(net.weight, 10.0 * (rank + 1))
    net.bias.grad = torch.full_like(net.bias, -float(rank))
    GradientAllReduce()(SimpleNamespace(network=net))
    torch.save({"used": used.grad, "unused": unused.grad, "weight": net.weight.grad, "bias": net.bias.grad},
               os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.mark.slow
def test_gradients_are_averaged_over_two_processes(tmp_path):
    mp.spawn(in_process_group, args=(2, str(tmp_path / "init"), _average_on_two_ranks, str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        grads = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(grads["used"], torch.full((3,), 1.5))
        torch.testing.assert_close(grads["unused"], torch.full((2,), 2.0))  # a zero joined the reduction on rank 0
        torch.testing.assert_close(grads["weight"], torch.full((1, 2), 15.0))
        torch.testing.assert_close(grads["bias"], torch.full((1,), -0.5))
