"""Run a test body in one process of a CPU (gloo) process group, as ``torch.multiprocessing.spawn`` starts it."""

from __future__ import annotations

import gc
from typing import Any, Callable

import torch
import torch.distributed as dist


def in_process_group(rank: int, world_size: int, init_file: str, body: Callable[..., None], *args: Any) -> None:
    """Join a gloo group of ``world_size`` processes, run ``body(rank, *args)``, then leave the group.

    Args:
        rank: this process's rank (the first argument ``torch.multiprocessing.spawn`` passes).
        world_size: the number of processes.
        init_file: a file path shared by the processes (the group's rendezvous).
        body: the test's work; its locals, the trainer and DDP wrapper among them, are gone when it returns.
        args: passed to ``body`` after the rank.
    """
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        body(rank, *args)
    finally:
        # a trainer's reference cycles keep the DDP reducer, so the gloo group and its threads, alive after
        # destroy_process_group; left to interpreter teardown, freeing them aborted the process now and then
        # ("terminate called without an active exception", SIGABRT). Collect them while Python is whole.
        gc.collect()
        dist.destroy_process_group()
