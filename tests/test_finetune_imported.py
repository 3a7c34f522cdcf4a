"""Fine-tuning follows its encoder: an imported MedCoSS stage fine-tunes; sizes from stage.json; CT resampled as the stage did.

The imported stage is a randomly initialised reference encoder at small sizes, saved in the released
format (``{"model": state_dict}`` with the reference's key names, as ``test_weights_medcoss`` builds
it) and imported with the command line. The tasks are the real sample tasks (X-ray films and masks,
CT volumes).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_weights_medcoss import reference_state, save_released, wordpiece_folder

from medcoss_monai import layout
from medcoss_monai.bundle.finetune import default_tokenizer_dir, task_items
from medcoss_monai.data.checks import BadInputError
from medcoss_monai.networks import EncoderClassifier, MedCoSSModel, MedCoSSReferenceEncoder, UNETRStyleSegmenter

torch.set_num_threads(2)

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"
TINY = {"max_train_items": 8, "max_eval_items": 4, "train#trainer#max_epochs": 1}


@pytest.fixture(scope="module")
def imported_stage(tmp_path_factory, tasks_ready) -> Path:
    """A small MedCoSS released-format checkpoint imported with ``python -m medcoss_monai.weights import``."""
    from medcoss_monai.weights import __main__ as cli

    folder = tmp_path_factory.mktemp("released")
    ckpt = save_released(reference_state(seed=5), folder / "MedCoSS_small.pth")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "install_run_hooks", lambda: None)  # pytest keeps its own hooks
        cli.main(["import", "--format", "medcoss", "--checkpoint", str(ckpt), "--out", str(folder / "stage")])
    return folder / "stage"


def parsed(task: str, **overrides):
    return layout.read_bundle(BUNDLES / f"finetune_{task}.json", {"output_dir": "/tmp/unused", **overrides})


def root_cause(excinfo) -> BaseException:
    """The error behind MONAI's "Failed to evaluate / instantiate" wrappers (what the user's message shows)."""
    err = excinfo.value
    while err.__cause__ is not None:
        err = err.__cause__
    return err


def run_task(task: str, out: Path, **overrides) -> dict:
    from monai.bundle import run

    run(config_file=str(BUNDLES / f"finetune_{task}.json"), output_dir=str(out), **{**TINY, **overrides})
    return json.loads((out / "metrics.json").read_text())


def test_imported_stage_fine_tunes_through_xray_seg(imported_stage, tmp_path):
    m = run_task("xray_seg", tmp_path, pretrained_ckpt=str(imported_stage))
    assert m["pretrained"] is True and m["task"] == "xray_seg"
    assert 0.0 <= m["metrics"]["Dice"] <= 1.0
    best = torch.load(tmp_path / "model_best.pt", weights_only=True)
    # the segmenter sits on the reference encoder (layer scales, fused qkv) with its recorded width
    assert best["encoder.blocks.1.gamma_2"].shape == (48,) and "encoder.pos_embed_2d.spatial.weight" in best


def test_imported_stage_fine_tunes_through_xray_cls_from_its_model_pt(imported_stage, tmp_path):
    m = run_task("xray_cls", tmp_path, pretrained_ckpt=str(imported_stage / "model.pt"))
    assert m["pretrained"] is True and {"ACC", "AUC", "F1"} <= set(m["metrics"])
    assert torch.load(tmp_path / "model_best.pt", weights_only=True)["head.layers.2.weight"].shape == (2, 48)


def test_imported_stage_with_its_tokenizer_fine_tunes_text(tmp_path, tasks_ready):
    """A checkpoint imported with ``--tokenizer`` fine-tunes ``finetune_text_cls.json``, reading the task's texts with
    the tokenizer saved in the stage (a Bio_ClinicalBERT-layout WordPiece folder), not one trained on the task."""
    from medcoss_monai.weights import __main__ as cli

    texts = [item["text"] for item in task_items(parsed("text_cls").get_parsed_content("dataset_dir"), "text_cls", "training")]
    tokenizer_src = wordpiece_folder(tmp_path / "wordpiece", texts)
    ckpt = save_released(reference_state(seed=5), tmp_path / "MedCoSS_small.pth")
    stage = tmp_path / "stage"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "install_run_hooks", lambda: None)
        cli.main(["import", "--format", "medcoss", "--checkpoint", str(ckpt), "--out", str(stage), "--tokenizer", str(tokenizer_src)])
    parser = parsed("text_cls", pretrained_ckpt=str(stage), output_dir=str(tmp_path / "ft"))
    assert parser.get_parsed_content("tokenizer_dir") == str(stage / layout.TOKENIZER_DIR)
    vocab = (tokenizer_src / "vocab.txt").read_text().split()
    assert parser.get_parsed_content("tokenizer").convert_ids_to_tokens(list(range(len(vocab)))) == vocab
    metrics = run_task("text_cls", tmp_path / "ft", pretrained_ckpt=str(stage))
    assert metrics["pretrained_ckpt"] == str(stage) and metrics["split"] == "test" and "AUC" in metrics["metrics"]
    assert not (tmp_path / "ft" / layout.TOKENIZER_DIR).exists()  # no tokenizer was trained for the task
    tuned, imported = torch.load(tmp_path / "ft" / "model_best.pt", weights_only=True), torch.load(stage / "model.pt", weights_only=True)
    shared = [k for k in imported if "encoder." + k in tuned]
    assert len(shared) == len(imported)  # every imported tensor is in the fine-tuned encoder
    assert not all(torch.equal(tuned["encoder." + k], imported[k]) for k in shared)  # and fine-tuning changed them


def _stage(run: Path, name: str, previous: str | None, **record) -> Path:
    folder = run / f"stage_{name}"
    folder.mkdir(parents=True)
    (folder / layout.STAGE_RECORD_FILE).write_text(json.dumps({"previous_stage": previous, **record}))
    return folder


def test_a_later_stage_fine_tunes_text_with_its_report_stages_tokenizer(tmp_path, datalist, imported_stage):
    """The text table of a curriculum's last stage was learnt in its report stage: fine-tuning text from the
    last stage reads the texts with that stage's tokenizer, not a new one (whose ids would index it at random)."""
    from medcoss_monai.transforms import train_bpe_tokenizer

    run = tmp_path / "run"
    report = _stage(run, "report", None)
    train_bpe_tokenizer([it["text"] for it in datalist("report")["training"][:100]], report / layout.TOKENIZER_DIR, vocab_size=512)
    _stage(run, "xray", "report")
    ct = _stage(run, "ct", "xray")
    out = tmp_path / "ft"
    assert default_tokenizer_dir(str(ct), out) == default_tokenizer_dir(str(ct / layout.MODEL_FILE), out) == str(report / layout.TOKENIZER_DIR)
    # a chain without a report stage has no text to keep: a tokenizer is trained for the task
    assert default_tokenizer_dir(str(_stage(tmp_path / "other", "xray", None)), out) == str(out / layout.TOKENIZER_DIR)
    # the released MedCoSS text table goes with Bio_ClinicalBERT's ids: imported without it, text fine-tuning from
    # it, or from a stage continuing it, is refused
    released = _stage(tmp_path / "continued", "report", None, imported={"format": "medcoss", "checkpoint": "/w/MedCoSS.pth"})
    for ckpt in (imported_stage, released, _stage(released.parent, "ct", "report")):
        with pytest.raises(BadInputError, match="without its tokenizer.*--tokenizer"):
            default_tokenizer_dir(str(ckpt), out)
    assert not out.exists()


def test_network_is_the_stage_record_with_its_weights(imported_stage):
    """No size is repeated by hand: the record builds the encoder, and the imported weights are in it."""
    weights = torch.load(imported_stage / "model.pt", weights_only=True)
    for task, cls in (("xray_seg", UNETRStyleSegmenter), ("xray_cls", EncoderClassifier), ("ct_seg", UNETRStyleSegmenter)):
        net = parsed(task, pretrained_ckpt=str(imported_stage)).get_parsed_content("network")
        assert isinstance(net, cls) and isinstance(net.encoder, MedCoSSReferenceEncoder)
        assert net.encoder.hidden_size == 48 and len(net.encoder.blocks) == 2
        assert torch.equal(net.encoder.blocks[1].attn.qkv.weight, weights["blocks.1.attn.qkv.weight"])
    seg = parsed("xray_seg", pretrained_ckpt=str(imported_stage)).get_parsed_content("network")
    # 2D images are read as 3 channels (the bundle repeats the grey film, as the reference reads it as RGB)
    assert seg.encoder1.layer.conv1.conv.in_channels == 3
    with torch.no_grad():
        assert seg.eval()(torch.rand(1, 3, 96, 96)).shape == (1, 2, 96, 96)


def test_explicit_size_must_match_the_stage(imported_stage):
    ok = parsed("xray_cls", pretrained_ckpt=str(imported_stage), hidden_size=48, num_layers=2)
    assert ok.get_parsed_content("network").encoder.hidden_size == 48
    with pytest.raises(Exception) as excinfo:
        parsed("xray_cls", pretrained_ckpt=str(imported_stage), hidden_size=64, num_heads=4).get_parsed_content("network")
    err = root_cause(excinfo)
    assert isinstance(err, BadInputError)
    assert str(imported_stage / "stage.json") in str(err) and "--hidden_size 64" in str(err) and "--num_heads 4" in str(err)


def test_without_a_stage_the_demo_sizes_and_overrides_apply(tmp_path):
    """A bare weights file (no stage.json) or none: bundles/common/model.json, with overrides, as before."""
    demo = json.loads((BUNDLES / "common" / "model.json").read_text())
    net = parsed("xray_cls").get_parsed_content("network")
    assert isinstance(net.encoder.blocks, torch.nn.Module) and net.encoder.hidden_size == demo["hidden_size"]
    assert parsed("xray_cls", hidden_size=96).get_parsed_content("network").encoder.hidden_size == 96
    with pytest.raises(Exception) as excinfo:
        parsed("xray_cls", pretrained_ckpt=str(tmp_path / "nowhere")).get_parsed_content("network")
    assert isinstance(root_cause(excinfo), BadInputError) and str(tmp_path / "nowhere") in str(root_cause(excinfo))


def _own_stage(folder: Path, settings: dict, previous_stage: str | None = None, **sizes) -> Path:
    """A stage folder as StageModelSaver writes it: model.pt and stage.json (network config, settings)."""
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    net = MedCoSSModel(**{"hidden_size": 64, "num_layers": 2, "num_heads": 2, "vocab_size": 512, "max_text_len": 32,
                          "img_size_2d": (96, 96), "patch_size_2d": (16, 16), "img_size_3d": (64, 64, 16),
                          "patch_size_3d": (16, 16, 8), **sizes})  # fmt: skip
    torch.save(net.state_dict(), folder / "model.pt")
    record = {"network": {"_target_": "medcoss_monai.networks.MedCoSSModel", **net.config}, "settings": settings,
              "previous_stage": previous_stage, "model": "model.pt"}
    (folder / "stage.json").write_text(json.dumps(record))
    return folder


def _spacing_after_loading(parser, item: dict) -> list[float]:
    from monai.transforms import Compose

    chain = [t for t in parser.get_parsed_content("load_transforms") if type(t).__name__ != "EnsureTyped"]
    return [round(float(s), 3) for s in Compose(chain)(dict(item))["image"].pixdim]


def test_ct_fine_tuning_resamples_as_the_stage_did(tmp_path, tasks_ready):
    item = json.loads((tasks_ready / "tasks" / "ct_seg" / "datalist.json").read_text())["training"][0]
    ct = _own_stage(tmp_path / "run" / "stage_ct", {"ct_spacing": [2.0, 2.0, 4.0], "hu_window": [-1000, 1000]})
    # the last stage of a chain (MRI) takes the spacing its CT stage recorded
    mri = _own_stage(tmp_path / "run" / "stage_mri", {"mri_percentiles": [1, 99]}, previous_stage="ct")
    native = _spacing_after_loading(parsed("ct_seg"), item)
    for stage in (ct, mri / "model.pt"):
        for task in ("ct_seg", "ct_cls"):
            p = parsed(task, pretrained_ckpt=str(stage))
            assert p.get_parsed_content("resample_spacing") == [2.0, 2.0, 4.0]
        assert _spacing_after_loading(parsed("ct_seg", pretrained_ckpt=str(stage)), item) == [2.0, 2.0, 4.0] != native
    given = parsed("ct_seg", pretrained_ckpt=str(ct), ct_spacing=[3.0, 3.0, 3.0])
    assert _spacing_after_loading(given, item) == [3.0, 3.0, 3.0]
    # no stage at all: the volumes keep theirs
    assert parsed("ct_seg").get_parsed_content("resample_spacing") is None
    # the network is the stage's (hidden 64, not the demo's 192), its 2D/3D position tables as recorded
    assert parsed("ct_seg", pretrained_ckpt=str(ct)).get_parsed_content("network").encoder.hidden_size == 64


def test_an_imported_medcoss_stage_resamples_ct_as_the_reference_did(imported_stage, tasks_ready):
    """The importer records the reference's CT grid (1 mm isotropic, its DeepLesion preprocessing) in stage.json;
    fine-tuning from the imported stage resamples the real sample CT to it, unless --ct_spacing says otherwise."""
    from medcoss_monai.weights.medcoss_format import REFERENCE_SETTINGS

    record = json.loads((imported_stage / "stage.json").read_text())
    assert record["settings"] == REFERENCE_SETTINGS and record["settings"]["ct_spacing"] == [1.0, 1.0, 1.0]
    item = json.loads((tasks_ready / "tasks" / "ct_seg" / "datalist.json").read_text())["training"][0]
    native = _spacing_after_loading(parsed("ct_seg"), item)
    for stage in (imported_stage, imported_stage / "model.pt"):
        for task in ("ct_seg", "ct_cls"):
            assert parsed(task, pretrained_ckpt=str(stage)).get_parsed_content("resample_spacing") == [1.0, 1.0, 1.0]
    assert _spacing_after_loading(parsed("ct_seg", pretrained_ckpt=str(imported_stage)), item) == [1.0, 1.0, 1.0] != native
    given = parsed("ct_seg", pretrained_ckpt=str(imported_stage), ct_spacing=[2.5, 2.5, 2.5])
    assert _spacing_after_loading(given, item) == [2.5, 2.5, 2.5]


@pytest.mark.slow
def test_imported_stage_fine_tunes_through_ct_seg_on_its_grid(imported_stage, tmp_path):
    """A volume task end to end from the imported stage: the 3D patch embedding it recorded, the CT resampled to
    the reference's 1 mm grid (stage.json), and the test on held-out volumes."""
    m = run_task("ct_seg", tmp_path, pretrained_ckpt=str(imported_stage))
    assert m["pretrained"] is True and m["task"] == "ct_seg" and 0.0 <= m["metrics"]["Dice"] <= 1.0
    best = torch.load(tmp_path / "model_best.pt", weights_only=True)
    imported = torch.load(imported_stage / "model.pt", weights_only=True)
    assert best["encoder.blocks.1.gamma_2"].shape == (48,)
    assert best["encoder.patch_embed_3d.proj.weight"].shape == imported["patch_embed_3d.proj.weight"].shape == (48, 1, 16, 16, 16)
