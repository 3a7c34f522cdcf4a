"""Which loss each batch gets: the MedCoSS core, iteration by iteration, on a real mixed loader.

A tiny report stage leaves its k-means buffer; the CT stage bundle then trains in this process with
each method's overlay, and a recorder reads every iteration's batch source and loss terms. The
tests fail when the method's wiring is broken: buffer batches getting the pretext loss under
MedCoSS, current batches being distilled, mixup not reaching the teacher, a no-op mixup, the
distillation weight ignored, a sequential run seeing buffer batches.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from monai.engines.utils import IterationEvents
from stage_utils import BUNDLES, run_stage

from medcoss_monai.layout import read_bundle
from medcoss_monai.buffer.rehearsal_loader import BUFFER_FLAG, SOURCE_KEY
from medcoss_monai.engines.pretext_trainer import PretextEvents
from medcoss_monai.handlers import IntraModalMixupHandler

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def report_run(sample_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("wiring_report")
    run_stage("report", out, max_items=100)
    return out


def train_ct(report_run: Path, out: Path, method: str, **overrides) -> dict:
    """The CT stage after the report stage, in this process; returns what every iteration did."""
    shutil.copytree(report_run / "stage_report", out / "stage_report")
    settings = {
        "output_dir": str(out), "previous_stage": "report", "progress_bar": False, "select_buffer": False,
        "train#repeats": 1, "batch_size": 2, "crops_per_volume": 2, "max_items": 2,
        "rehearsal_ratio": 1.0, "warmup_epochs": 0, "train#trainer#max_epochs": 2, **overrides,
    }
    parser = read_bundle([BUNDLES / "stage_ct.json", BUNDLES / f"method_{method}.json"], settings)
    parser.parse()
    parser.get_parsed_content("initialize")
    trainer = parser.get_parsed_content("train#trainer")
    record: dict = {"iterations": [], "teacher_inputs": []}
    teacher = parser.get_parsed_content("teacher")
    if teacher is not None:
        teacher.register_forward_pre_hook(lambda module, args: record["teacher_inputs"].append(args[0].detach().clone()))

    def before_forward(engine):
        out = engine.state.output
        record["iterations"].append({"original": out["batch"].get("input_ids", out["batch"].get("image")).clone()})

    def after_step(engine):
        out = engine.state.output
        record["iterations"][-1].update(
            buffer=bool(out["batch"][BUFFER_FLAG]), source=out["batch"][SOURCE_KEY], weight=float(out["pretext_weight"]),
            terms=dict(out["loss_terms"]), student_input=out["inputs"]["x"].detach().clone(),
            labels=None if out["inputs"].get("labels") is None else out["inputs"]["labels"].clone(),
        )

    # before the mixup and rehearsal handlers (registered at construction) see the batch: prepend
    trainer._event_handlers[PretextEvents.INPUTS_PREPARED].insert(0, (before_forward, (trainer,), {}))
    trainer.add_event_handler(IterationEvents.MODEL_COMPLETED, after_step)
    trainer.run()
    return record


@pytest.fixture(scope="module")
def medcoss(report_run, tmp_path_factory):
    return train_ct(report_run, tmp_path_factory.mktemp("wiring_medcoss"), "medcoss")


@pytest.mark.slow
def test_medcoss_buffer_batches_get_distillation_only(medcoss):
    its = medcoss["iterations"]
    buffer = [it for it in its if it["buffer"]]
    current = [it for it in its if not it["buffer"]]
    assert buffer and current and {it["source"] for it in buffer} == {"report"} and {it["source"] for it in current} == {"ct"}
    for it in buffer:
        assert it["weight"] == 0.0 and it["terms"]["pretext_loss"] == 0.0
        assert "distill_loss" in it["terms"]
    # once the student has moved away from the teacher, distillation is a real term
    first_update = next(i for i, it in enumerate(its) if not it["buffer"])
    assert all(it["terms"]["distill_loss"] > 0 for it in its[first_update + 1 :] if it["buffer"])
    for it in current:
        assert it["weight"] == 1.0 and it["terms"]["pretext_loss"] > 0 and "distill_loss" not in it["terms"]


def test_mixup_reaches_the_teacher_and_the_labels(medcoss):
    buffer = [it for it in medcoss["iterations"] if it["buffer"]]
    # the teacher ran once per buffer batch, on exactly the (mixed) tokens the student saw
    assert len(medcoss["teacher_inputs"]) == len(buffer)
    for it, seen in zip(buffer, medcoss["teacher_inputs"]):
        assert torch.equal(seen, it["student_input"])
    # mixup changed the buffer batches (two different reports swap tokens)...
    assert any(not torch.equal(it["student_input"], it["original"]) for it in buffer)
    # ...and never the current ones
    for it in medcoss["iterations"]:
        if not it["buffer"]:
            assert torch.equal(it["student_input"], it["original"])


@pytest.mark.slow
def test_er_buffer_batches_get_the_pretext_loss(report_run, tmp_path):
    its = train_ct(report_run, tmp_path / "er", "er")["iterations"]
    buffer = [it for it in its if it["buffer"]]
    assert buffer and all(it["weight"] == 1.0 and it["terms"]["pretext_loss"] > 0 for it in buffer)
    assert all("distill_loss" not in it["terms"] for it in its)


def test_sequential_never_sees_a_buffer_batch(report_run, tmp_path):
    its = train_ct(report_run, tmp_path / "seq", "sequential")["iterations"]
    assert its and not any(it["buffer"] for it in its) and all("distill_loss" not in it["terms"] for it in its)


@pytest.mark.slow
def test_distill_weight_scales_the_term(report_run, tmp_path, medcoss):
    """The same run with distill_weight 3: identical up to the first distilled batch, whose term is 3x."""
    heavy = train_ct(report_run, tmp_path / "heavy", "medcoss", distill_weight=3.0)["iterations"]
    light = medcoss["iterations"]
    k = next(i for i, it in enumerate(light) if it["buffer"] and it["terms"]["distill_loss"] > 0)
    assert heavy[k]["buffer"] and heavy[k]["terms"]["distill_loss"] == pytest.approx(3 * light[k]["terms"]["distill_loss"], rel=1e-4)


class _Engine:
    """The part of a PretextTrainer's state the mixup handler reads."""

    def __init__(self, output):
        self.state = type("State", (), {"output": output})()


def _text_output(buffer: bool) -> dict:
    ids = torch.arange(4 * 12).view(4, 12) + 100
    labels = torch.where(torch.rand(4, 12, generator=torch.Generator().manual_seed(0)) < 0.3, ids, torch.full_like(ids, -100))
    mask = torch.ones_like(ids)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels, BUFFER_FLAG: buffer}
    return {"batch": batch, "inputs": {"x": ids.clone(), "attention_mask": mask.clone(), "labels": labels.clone()}, "pretext": "mlm"}


def test_mixup_handler_mixes_buffer_text_with_its_labels():
    handler = IntraModalMixupHandler(seed=3)
    current = _text_output(buffer=False)
    handler(_Engine(current))
    assert torch.equal(current["inputs"]["x"], current["batch"]["input_ids"])  # current batches untouched
    out = _text_output(buffer=True)
    original_ids, original_labels = out["batch"]["input_ids"].clone(), out["batch"]["labels"].clone()
    handler(_Engine(out))
    mixer = handler.text_mixup.mixer
    take, perm = torch.as_tensor(mixer.take_partner), torch.as_tensor(mixer.perm)
    assert take.any() and not take.all()
    expected_ids = torch.where(take, original_ids[perm], original_ids)
    expected_labels = torch.where(take, original_labels[perm], original_labels)
    assert torch.equal(out["inputs"]["x"], expected_ids)
    # the MLM loss scores inputs["labels"]: a position's label is the label of the token now there
    assert torch.equal(out["inputs"]["labels"], expected_labels)


def test_mixup_handler_images_and_all_batches():
    x = torch.rand(4, 1, 8, 8, 4, generator=torch.Generator().manual_seed(1))
    out = {"batch": {"image": x, BUFFER_FLAG: False}, "inputs": {"x": x.clone()}, "pretext": "mae"}
    IntraModalMixupHandler(seed=0)(_Engine(out))
    assert torch.equal(out["inputs"]["x"], x)
    handler = IntraModalMixupHandler(seed=0, all_batches=True)
    handler(_Engine(out))
    lam, perm = (torch.as_tensor(v) for v in handler.image_mixup._params[:2])  # MONAI MixUp keeps its draw there
    lam = lam.float()
    expected = lam.view(-1, 1, 1, 1, 1) * x + (1 - lam.view(-1, 1, 1, 1, 1)) * x[perm]
    torch.testing.assert_close(out["inputs"]["x"], expected)
    assert out["mixup_lam"] is handler.image_mixup._params[0]
