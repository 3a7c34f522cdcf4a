"""MedCoSS continual pre-training: methods as switches, distillation, teacher, resume, vanished buffers."""

import copy
import json
import shutil

import pytest
import torch
from ignite.engine import Events
from stage_utils import read_history, run_stage

from medcoss_monai.bundle import load_teacher
from medcoss_monai.evaluation.matrix import read_matrix
from medcoss_monai.engines import PretextTrainer
from medcoss_monai.handlers import FeatureDistillationHandler
from medcoss_monai.networks import MedCoSSModel


@pytest.fixture(scope="module")
def report_run(sample_data, tmp_path_factory):
    """A finished report stage (k-means buffer selected) to continue from."""
    out = tmp_path_factory.mktemp("report_first")
    run_stage("report", out, max_items=100)
    return out


def _continue(report_run, tmp_path, method):
    out = tmp_path / method
    shutil.copytree(report_run / "stage_report", out / "stage_report")
    # as many buffer batches as current ones: a tiny epoch still holds buffer batches after the first update
    return out, run_stage("ct", out, epochs=2, overlays=[f"method_{method}.json"], previous_stage="report",
                          rehearsal_ratio=1.0)


def test_report_buffer_is_kmeans_5_percent(report_run):
    buf = json.loads((report_run / "stage_report" / "buffer.json").read_text())
    assert buf["n_total"] == 100 and buf["n_clusters"] == 1 and len(buf["items"]) == 5
    assert buf["sampler"] == "kmeans" and all("text" in it and "cluster" in it for it in buf["items"])


@pytest.mark.slow
def test_medcoss_distills_on_buffer_batches(report_run, tmp_path):
    _, ct = _continue(report_run, tmp_path, "medcoss")
    rows = read_history(ct)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert all(float(r["distill_loss"]) > 0 for r in rows)
    assert (ct / "buffer.json").is_file()


@pytest.mark.slow
def test_sequential_has_no_rehearsal(report_run, tmp_path):
    _, ct = _continue(report_run, tmp_path, "sequential")
    assert all(float(r["distill_loss"]) == 0 for r in read_history(ct))
    assert not (ct / "buffer.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["er", "random_buffer"])
def test_other_methods_run(report_run, tmp_path, method):
    _, ct = _continue(report_run, tmp_path, method)
    rows = read_history(ct)
    distill = [float(r["distill_loss"]) for r in rows]
    assert (max(distill) == 0) if method == "er" else (min(distill) > 0)
    buf = json.loads((ct / "buffer.json").read_text())
    assert buf["sampler"] == ("kmeans" if method == "er" else "random")


@pytest.mark.slow
@pytest.mark.long
def test_joint_is_one_stage_over_all_modalities(sample_data, tmp_path):
    from medcoss_monai.bundle.pipeline import main

    out = tmp_path / "joint"
    main(["--stages", "report,ct", "--method", "joint", "--output_dir", str(out), "--max_epochs", "1",
          "--max_items", "32", "--train#repeats", "1", "--batch_size", "4", "--crops_per_volume", "2",
          "--progress_bar", "false"])
    rows = read_history(out / "stage_joint")
    assert len(rows) == 1 and float(rows[0]["pretext_loss"]) > 0
    assert not (out / "stage_report").exists()
    # the pipeline's forgetting matrix scores both pretexts with the joint network's own heads
    matrix = read_matrix(out / "forgetting.csv")
    assert [r["after"] for r in matrix] == ["scratch", "stage_joint"]
    assert matrix[1]["text_mlm_acc"] is not None and matrix[1]["ct_mae_mse"] is not None


@pytest.mark.slow
def test_pipeline_runs_the_curriculum_and_writes_the_forgetting_matrix(sample_data, tmp_path, capfd):
    from medcoss_monai.bundle.pipeline import main

    out = tmp_path / "run"
    main(["--stages", "report,ct", "--method", "medcoss", "--output_dir", str(out), "--max_epochs", "1",
          "--max_items", "100", "--train#repeats", "1", "--batch_size", "2", "--crops_per_volume", "2",
          "--rehearsal_ratio", "1.0", "--warmup_epochs", "0", "--progress_bar", "false",
          "--forgetting_args", "--text_n_test 200"])  # the probe's test reports: most of the matrix's time
    buf = json.loads((out / "stage_report" / "buffer.json").read_text())
    assert buf["n_total"] == 100 and len(buf["items"]) == 5
    assert float(read_history(out / "stage_ct")[0]["distill_loss"]) > 0
    matrix = read_matrix(out / "forgetting.csv")
    assert [r["after"] for r in matrix] == ["scratch", "stage_report", "stage_ct"]
    assert matrix[0]["text_mlm_acc"] is None and 0 < matrix[1]["text_mlm_acc"] < 1
    assert matrix[2]["text_mlm_acc"] is not None and matrix[2]["ct_mae_mse"] > 0
    assert all(0.0 <= r["text"] <= 1.0 for r in matrix)
    assert (out / "forgetting.png").stat().st_size > 0
    printed = capfd.readouterr().out  # the matrix is written by a subprocess, as the stages are
    assert "average forgetting" in printed and "stage_ct" in printed and "--text_n_test 200" in printed


@pytest.mark.slow
def test_vanished_buffer_files_are_refused(sample_data, tmp_path):
    out = tmp_path / "run"
    run_stage("ct", out, previous_stage="")
    buf_path = out / "stage_ct" / "buffer.json"
    buf = json.loads(buf_path.read_text())
    ghost = tmp_path / "gone.nrrd"
    buf["items"][0]["image"] = str(ghost)
    buf_path.write_text(json.dumps(buf))
    with pytest.raises(Exception) as info:
        run_stage("mri", out, previous_stage="ct")
    chain, err = [], info.value
    while err is not None:  # MONAI wraps errors raised inside config expressions
        chain.append(str(err))
        err = err.__cause__ or err.__context__
    assert any("have vanished" in m and str(ghost) in m for m in chain)
    assert not (out / "stage_mri" / "model.pt").exists()


@pytest.mark.slow
def test_resume_continues_without_losing_or_repeating_epochs(sample_data, tmp_path):
    out = tmp_path / "run"
    ct = run_stage("ct", out, epochs=2)  # as if the stage had been killed after epoch 2
    before = torch.load(ct / "checkpoint_epoch=2.pt", weights_only=True)
    per_epoch = before["trainer"]["epoch_length"]
    assert before["trainer"]["iteration"] == 2 * per_epoch
    run_stage("ct", out, epochs=3, resume=True)
    rows = read_history(ct)
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    after = torch.load(ct / "checkpoint_epoch=3.pt", weights_only=True)
    assert after["trainer"]["iteration"] == 3 * per_epoch  # one more epoch, not three


def _tiny_engine(student, teacher_handler, batches):
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    trainer = PretextTrainer(device="cpu", max_epochs=1, train_data_loader=batches, network=student, optimizer=opt)
    teacher_handler.attach(trainer)
    return trainer


def test_teacher_frozen_in_eval_and_unchanged(tmp_path):
    torch.manual_seed(0)
    student = MedCoSSModel(hidden_size=32, num_layers=1, num_heads=2, decoder_hidden_size=16, decoder_layers=1,
                           decoder_heads=2, vocab_size=64, img_size_3d=(32, 32, 16))
    (tmp_path / "stage_ct").mkdir()
    torch.save(student.state_dict(), tmp_path / "stage_ct" / "model.pt")
    teacher = load_teacher(student, tmp_path, "ct")
    ref = copy.deepcopy(teacher.state_dict())
    batches = [{"image": torch.rand(2, 1, 32, 32, 16), "is_buffer": True} for _ in range(3)]
    handler = FeatureDistillationHandler(teacher, weight=1.0)
    trainer = _tiny_engine(student, handler, batches)
    terms = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: terms.append(e.state.output["loss_terms"]))
    trainer.run()
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(ref[k], v) for k, v in teacher.state_dict().items())
    # first step: student == teacher, so the distillation loss is exactly zero; then they drift apart
    assert terms[0]["distill_loss"] == 0.0 and terms[-1]["distill_loss"] > 0
    assert all(k.startswith("encoder.") or k.startswith(("mae_decoder", "mlm_head")) for k in ref)
