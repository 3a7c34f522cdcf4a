"""A stage's training speed with and without rehearsal, and what feature distillation costs.

A short previous stage (``--previous``, default the report stage) is run once to leave ``model.pt``
and ``buffer.json``; then the current stage bundle (``--current``, default xray) is trained through
its own ``PretextTrainer`` and handlers, in this process, in three variants that see the same batches
(same seed):

- ``sequential``: no rehearsal (``bundles/method_sequential.json``);
- ``no teacher``: MedCoSS rehearsal with mixup and the distillation loss, but the teacher's forward
  replaced by a zero target: a buffer step that does everything except run the teacher;
- ``medcoss``: ``bundles/method_medcoss.json``.

The variants alternate ``--repeats`` times. Printed: samples/s of each variant's best run (data
loading included; end-of-epoch handlers left out), the median over all runs of the compute time of
current and buffer batches, the time spent inside the teacher's forward (timed by hooks on the
teacher), and the distillation overhead per buffer batch (``medcoss`` minus ``no teacher``) as a
ratio to the teacher's forward time: close to 1 means distillation costs one extra teacher forward
and nothing more.

    python benchmarks/bench_rehearsal.py [--previous report] [--current xray] [--epochs 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import torch
from ignite.engine import Events
from monai.bundle import run

from medcoss_monai.layout import read_bundle
from medcoss_monai.handlers import FeatureDistillationHandler
from medcoss_monai.handlers.rehearsal import is_buffer_batch

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"

# the previous stage only has to leave a model and a buffer behind: one epoch, demo sizes otherwise
PREP_OVERRIDES = {"report": {"max_items": 1024}, "xray": {}, "ct": {}, "mri": {}, "pathology": {"max_items": 16}}


def run_previous_stage(modality: str, output_dir: str) -> None:
    """Train ``bundles/stage_<modality>.json`` for one epoch with the MedCoSS switches (it selects a buffer)."""
    run(
        config_file=[str(BUNDLES / f"stage_{modality}.json"), str(BUNDLES / "method_medcoss.json")],
        output_dir=output_dir,
        progress_bar=False,
        **{"train#trainer#max_epochs": 1},
        **PREP_OVERRIDES.get(modality, {}),
    )


class StepTimer:
    """Times each iteration (compute and per-iteration handlers) and each epoch's batch loop."""

    def __init__(self) -> None:
        self.current: list[float] = []
        self.buffer: list[float] = []
        self.loop_seconds = 0.0
        self.samples = 0
        self._epoch_start = self._step_start = self._last_end = 0.0

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_STARTED, self._iteration_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def _epoch_started(self, engine) -> None:
        self._epoch_start = time.perf_counter()

    def _iteration_started(self, engine) -> None:
        self._step_start = time.perf_counter()

    def _iteration_completed(self, engine) -> None:
        self._last_end = time.perf_counter()
        (self.buffer if is_buffer_batch(engine) else self.current).append(self._last_end - self._step_start)
        batch = engine.state.batch
        self.samples += int(batch["image" if "image" in batch else "input_ids"].shape[0])

    def _epoch_completed(self, engine) -> None:
        # end-of-epoch handlers (checkpoints, snapshots) are the same in every variant: leave them out
        self.loop_seconds += self._last_end - self._epoch_start


class ForwardTimer:
    """Accumulates the wall time spent inside a module's forward (pre- and post-forward hooks)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.seconds: list[float] = []
        self._start = 0.0
        module.register_forward_pre_hook(self._pre)
        module.register_forward_hook(self._post)

    def _pre(self, module, args) -> None:
        self._start = time.perf_counter()

    def _post(self, module, args, output) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def _zero_teacher_tokens(self: FeatureDistillationHandler, engine) -> torch.Tensor:
    # the same loss term and backward as distillation, against a target that costs nothing
    return torch.zeros_like(engine.state.output["pred"]["latent"]).detach()


def run_variant(variant: str, current: str, previous: str, output_dir: str, epochs: int) -> dict:
    """Train the current stage in one variant; return its timings."""
    method = "sequential" if variant == "sequential" else "medcoss"
    overrides = {
        "output_dir": output_dir,
        "previous_stage": previous,
        "progress_bar": False,
        "select_buffer": False,  # end-of-stage work, not part of the loop being timed
        "train#trainer#max_epochs": epochs,
    }
    parser = read_bundle([BUNDLES / f"stage_{current}.json", BUNDLES / f"method_{method}.json"], overrides)
    parser.parse()
    trainer = parser.get_parsed_content("train#trainer")
    teacher_timer = None
    for handler in parser.get_parsed_content("train#handlers"):
        if isinstance(handler, FeatureDistillationHandler) and handler.teacher is not None:
            if variant == "no teacher":
                handler.teacher_tokens = types.MethodType(_zero_teacher_tokens, handler)
            else:
                teacher_timer = ForwardTimer(handler.teacher)
    timer = StepTimer()
    timer.attach(trainer)
    parser.get_parsed_content("initialize")
    trainer.run()
    return {
        "loop_seconds": timer.loop_seconds,
        "samples": timer.samples,
        "current": timer.current,
        "buffer": timer.buffer,
        "teacher": teacher_timer.seconds if teacher_timer else [],
    }


@contextlib.contextmanager
def logs_to_stderr():
    """Send what the training writes to stdout (MONAI's and ignite's log lines) to stderr, at the file-descriptor
    level (the log handlers hold the stdout stream they were made with), so stdout carries the report only."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _median_ms(values: list[float]) -> float:
    return 1e3 * statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--previous", default="report", help="modality of the earlier stage (its buffer is rehearsed)")
    parser.add_argument("--current", default="xray", help="modality of the stage being timed")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per variant; the best is kept")
    parser.add_argument("--output_dir", default="", help="work folder (default: a temporary one)")
    args = parser.parse_args()

    output_dir = args.output_dir or tempfile.mkdtemp(prefix="medcoss_bench_rehearsal_")
    start = time.perf_counter()
    with logs_to_stderr():
        run_previous_stage(args.previous, output_dir)
        print(f"previous stage {args.previous}: {time.perf_counter() - start:.0f} s -> {output_dir}", flush=True)

    variants = ("sequential", "no teacher", "medcoss")
    best: dict[str, dict] = {}
    pooled: dict[str, dict[str, list[float]]] = {v: {"current": [], "buffer": [], "teacher": []} for v in variants}
    for _ in range(args.repeats):
        for variant in variants:
            with logs_to_stderr():
                result = run_variant(variant, args.current, args.previous, output_dir, args.epochs)
            for key in pooled[variant]:
                pooled[variant][key] += result[key]
            if variant not in best or result["loop_seconds"] < best[variant]["loop_seconds"]:
                best[variant] = result

    print(f"\nstage {args.current} after {args.previous}, {args.epochs} epochs, best of {args.repeats}, "
          f"{torch.get_num_threads()} threads")
    print("| variant | current / buffer batches | samples/s | vs sequential | current batch (ms) | buffer batch (ms) | teacher forward (ms) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    base_sps = best["sequential"]["samples"] / best["sequential"]["loop_seconds"]
    for variant in variants:
        r, times = best[variant], pooled[variant]
        sps = r["samples"] / r["loop_seconds"]
        print(f"| {variant} | {len(r['current'])} / {len(r['buffer'])} | {sps:.1f} | {sps / base_sps:.2f}x | "
              f"{_median_ms(times['current']):.1f} | {_median_ms(times['buffer']):.1f} | {_median_ms(times['teacher']):.1f} |")
    extra = _median_ms(pooled["medcoss"]["buffer"]) - _median_ms(pooled["no teacher"]["buffer"])
    teacher = _median_ms(pooled["medcoss"]["teacher"])
    print(f"\ndistillation overhead per buffer batch: {extra:.1f} ms; teacher forward: {teacher:.1f} ms; "
          f"ratio {extra / teacher:.2f}")


if __name__ == "__main__":
    main()
