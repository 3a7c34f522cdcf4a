"""Model Zoo export of imported weights and of what was trained from them.

An imported MedCoSS stage (the authors' released format, stood in for by a small random
``MedCoSSReferenceEncoder`` saved as the reference saves it and imported with
``python -m medcoss_monai.weights import``, as ``test_imported_previous_stage`` builds it), a task fine-tuned
from it (``--pretrained_ckpt``) and a curriculum stage continuing it (``--previous_stage``) are exported with
``python -m medcoss_monai.bundle.export`` and checked as the Zoo checks a bundle (layout, metadata schema,
``verify_net_in_out``, ``ckpt_export`` by scripting). Their ``configs/inference.json`` runs in a subprocess where
``import medcoss_monai`` fails, on the real sample files, and must give the outputs of the network run in this
process on the same preprocessed input (measured differences: 0 on this CPU; asserted within rtol 1e-4,
atol 1e-5, the tolerance of the other export tests).

Default suite (66 s measured on 2 shared, loaded CPU cores; two subprocesses): the imported stage read as CT,
X-ray classification fine-tuned from it, and the scripted reference encoder on synthetic tensors. Under
``-m slow``: X-ray segmentation fine-tuned from it (49 s), a CT stage continuing it (48 s), an imported BrainMVP
stage (UniFormer and U-Net) itself, and (``long``) BrainMVP segmentation fine-tuned from an imported BrainMVP UniFormer
stage (155 s, on a more heavily loaded machine).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medcoss_monai.bundle.export import PRETRAIN_WEIGHTS, main
from medcoss_monai.errors import BadInputError, CheckpointError
from medcoss_monai.networks import MedCoSSReferenceEncoder
from medcoss_monai.networks.checkpoint import load_state, state_dict_of
from medcoss_monai.weights import load_pretrained

sys.path.insert(0, str(Path(__file__).parent))
from stage_utils import run_stage  # noqa: E402
from test_export_apps import check_zoo, run_without_medcoss  # noqa: E402
from test_export_zoo import (  # noqa: E402
    check_layout_and_metadata,
    check_trained_network,
    check_zoo_network,
    parse_inference,
    read_csv_rows,
    trained_network_config,
)
from test_imported_previous_stage import SIZES, released_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LICENCE = "non-commercial use only"
"""Words of the MedCoSS weights' licence, which every bundle trained from them repeats."""
TOL = {"rtol": 1e-4, "atol": 1e-5}


@pytest.fixture(scope="module")
def imported_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder holding ``stage_released``: a small released-format checkpoint imported (in this process)."""
    from medcoss_monai.weights import import_checkpoint

    run = tmp_path_factory.mktemp("imported_run")
    released_checkpoint(run / "released.pth")
    import_checkpoint("medcoss", run / "released.pth", run / "stage_released", options={"num_heads": SIZES["num_heads"]})
    return run


def check_licence(bundle: Path) -> dict:
    """The imported weights' source and licence are in the metadata, the README and the LICENSE."""
    meta = check_layout_and_metadata(bundle)
    assert LICENCE in meta["intended_use"] and "yeerwen/MedCoSS" in meta["description"]
    assert LICENCE in (bundle / "docs/README.md").read_text() and LICENCE in (bundle / "LICENSE").read_text()
    assert "medcoss-monai" not in meta["required_packages_version"]
    return meta


def features_without_medcoss(bundle: Path, image: str, out: Path) -> np.ndarray:
    """``configs/inference.json`` on one file, medcoss_monai unimportable: its ``features.csv`` row."""
    run_without_medcoss(bundle, [("configs/inference.json", image, out)])
    rows = read_csv_rows(out / "features.csv")
    assert [r[0] for r in rows] == [image]
    return np.array([float(v) for v in rows[0][1:]])


# ----------------------------------------------------------------------------- default suite


def test_reference_inference_encoder_scripts_to_the_encoder_outputs() -> None:
    """Mechanics (synthetic tensors): each input kind's scripted inference network gives the imported encoder's
    pooled features (text: the reference's causal mask, laid out across the batch as the reference does), and
    its state dict keys are the encoder's."""
    from medcoss_monai.networks.inference import inference_network

    torch.manual_seed(0)
    encoder = MedCoSSReferenceEncoder(**SIZES).eval()
    mask = torch.tensor([[1] * 12, [1] * 9 + [0] * 3, [1] * 4 + [0] * 8])
    inputs = {"3d": (torch.rand(2, 1, 64, 64, 16), {}), "2d": (torch.rand(2, 1, 96, 96), {}),
              "text": (torch.randint(0, SIZES["vocab_size"], (3, 12)), {"attention_mask": mask})}
    for kind, (x, kwargs) in inputs.items():
        net = inference_network(encoder, kind).eval()
        assert net.state_dict().keys() == {f"encoder.{k}" for k in encoder.state_dict()}
        with torch.no_grad():
            torch.testing.assert_close(torch.jit.script(net)(x, **kwargs), encoder(x, **kwargs), rtol=0, atol=1e-6)
    with pytest.raises(Exception, match="token ids must be in"):  # checked before the table lookup, as for own stages
        torch.jit.script(inference_network(encoder, "text"))(torch.full((1, 4), SIZES["vocab_size"]))


@pytest.mark.slow
def test_imported_stage_exports_and_runs_without_medcoss(imported_run: Path, datalist, tmp_path: Path) -> None:
    run = imported_run
    stage = run / "stage_released"
    with pytest.raises(BadInputError, match="--modality"):  # an imported stage reads every modality: say which
        main(["--stage_dir", str(stage), "--out", str(tmp_path / "none")])
    bundle = main(["--stage_dir", str(stage), "--out", str(tmp_path / "zoo"), "--modality", "ct"])
    meta = check_licence(bundle)
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 32
    # the CT grid the weights were pre-trained on (stage.json "settings"), not the stage bundle's default
    inference = json.loads((bundle / "configs/inference.json").read_text())
    assert inference["ct_spacing"] == json.loads((stage / "stage.json").read_text())["settings"]["ct_spacing"] == [1.0] * 3
    # model.pt: the imported encoder's weights, unchanged, under the inference network's encoder.
    imported, exported = load_state(stage / "model.pt"), load_state(bundle / "models/model.pt")
    assert exported.keys() == {f"encoder.{k}" for k in imported}
    assert all(torch.equal(exported[f"encoder.{k}"], v) for k, v in imported.items())

    held_out = datalist("ct")["test"][0]["image"]
    args, _, expected = check_zoo_network(bundle, tmp_path, held_out)
    # train.json continues pre-training: a MedCoSSModel around the imported encoder, fresh pretext heads
    check_trained_network(bundle, bundle / PRETRAIN_WEIGHTS, args, {}, expected)
    assert isinstance(trained_network_config(bundle).encoder, MedCoSSReferenceEncoder)
    with torch.no_grad():  # the imported stage as the project loads it, in this process
        in_process = load_pretrained(stage).eval()(*args)
    torch.testing.assert_close(expected, in_process, **TOL)
    feats = features_without_medcoss(bundle, held_out, tmp_path / "eval")
    np.testing.assert_allclose(feats, in_process[0].numpy(), **TOL)
    # a recorded setting is copied into the bundle's config only as a plain value, never evaluated
    original = (stage / "stage.json").read_text()
    record = json.loads(original)
    record["settings"]["ct_spacing"] = "$__import__('os').getcwd()"
    (stage / "stage.json").write_text(json.dumps(record))
    try:
        with pytest.raises(BadInputError, match="ct_spacing"):
            main(["--stage_dir", str(stage), "--out", str(tmp_path / "evil"), "--modality", "ct"])
        record["settings"]["ct_spacing"], record["network"]["_target_"] = [1.0] * 3, "os.system"
        (stage / "stage.json").write_text(json.dumps(record))
        with pytest.raises(CheckpointError, match="os.system"):
            main(["--stage_dir", str(stage), "--out", str(tmp_path / "evil"), "--modality", "ct"])
    finally:  # the run folder is shared by this module's tests
        (stage / "stage.json").write_text(original)
    assert not (tmp_path / "evil").exists()


@pytest.mark.slow
def test_task_fine_tuned_from_imported_stage_exports(imported_run, tasks_ready: Path, tmp_path: Path) -> None:
    """X-ray classification fine-tuned from the imported stage: Zoo checks, and its predictions on the test split,
    medcoss_monai unimportable, are the fine-tuned network's on the same inputs."""
    from monai.bundle import run as run_bundle

    run = imported_run
    ft = tmp_path / "ft"
    run_bundle(config_file=str(ROOT / "bundles/finetune_xray_cls.json"), output_dir=str(ft), logging_file=False,
               pretrained_ckpt=str(run / "stage_released"), max_train_items=8, max_eval_items=4,
               **{"train#trainer#max_epochs": 1})
    bundle = main(["--finetune_dir", str(ft), "--out", str(tmp_path / "zoo")])
    meta = check_licence(bundle)
    assert "initialised from" in meta["description"]
    datalist = tasks_ready / "tasks/xray_cls/datalist.json"
    args, kwargs, expected = check_zoo_network(bundle, tmp_path, datalist)
    check_trained_network(bundle, ft / "model_best.pt", args, kwargs, expected)

    run_without_medcoss(bundle, [("configs/inference.json", datalist, tmp_path / "pred"),
                                 ("configs/evaluate.json", datalist, tmp_path / "metrics")])
    rows = read_csv_rows(tmp_path / "pred/predictions.csv")
    test_items = json.loads(datalist.read_text())["test"]
    assert [r[0] for r in rows] == [i["image"] for i in test_items]
    # the fine-tuned network (training class, imported encoder) in this process, on the bundle's preprocessing
    net = trained_network_config(bundle).eval()
    assert isinstance(net.encoder, MedCoSSReferenceEncoder)
    net.load_state_dict(state_dict_of(load_state(ft / "model_best.pt"), ft / "model_best.pt"), strict=True)
    dataset = parse_inference(bundle, dataset_dir=str(datalist)).get_parsed_content("dataset")
    with torch.no_grad():
        for i, row in enumerate(rows[:4]):
            x = torch.as_tensor(dataset[i]["image"]).as_subclass(torch.Tensor)[None].float()
            probs = torch.softmax(net(x)[0], 0).numpy()
            np.testing.assert_allclose([float(v) for v in row[1:]], probs, **TOL)
    assert (tmp_path / "metrics/metrics.csv").is_file()


# ----------------------------------------------------------------------------- slow


@pytest.mark.slow
def test_segmentation_fine_tuned_from_imported_stage_exports(imported_run, tasks_ready: Path, tmp_path: Path) -> None:
    """X-ray segmentation (grey films read as 3 channels by the imported encoder): Zoo checks (the exported network
    gives the fine-tuned one's logits), and the label map written without medcoss_monai is the one written here."""
    from monai.bundle import run as run_bundle
    from PIL import Image

    from test_export_zoo import run_inference

    run = imported_run
    ft = tmp_path / "ft"
    run_bundle(config_file=str(ROOT / "bundles/finetune_xray_seg.json"), output_dir=str(ft), logging_file=False,
               pretrained_ckpt=str(run / "stage_released"), max_train_items=8, max_eval_items=4,
               **{"train#trainer#max_epochs": 1})
    bundle = main(["--finetune_dir", str(ft), "--out", str(tmp_path / "zoo")])
    check_licence(bundle)
    held_out = json.loads((tasks_ready / "tasks/xray_seg/datalist.json").read_text())["test"][0]["image"]
    args, kwargs, expected = check_zoo_network(bundle, tmp_path, held_out)
    assert args[0].shape[1] == 3 and expected.shape[2:] == args[0].shape[2:]
    check_trained_network(bundle, ft / "model_best.pt", args, kwargs, expected)
    run_inference(bundle, held_out, tmp_path / "here")
    run_without_medcoss(bundle, [("configs/inference.json", held_out, tmp_path / "pred")])
    name = Path(held_out).stem + "_seg.png"
    mask = np.asarray(Image.open(tmp_path / "pred" / name))
    assert mask.shape == np.asarray(Image.open(held_out)).shape[:2]
    np.testing.assert_array_equal(mask, np.asarray(Image.open(tmp_path / "here" / name)))


@pytest.mark.slow
def test_curriculum_stage_after_imported_stage_exports(imported_run, datalist, tmp_path: Path) -> None:
    """A CT stage that continued the imported stage (--previous_stage released): Zoo checks and features without
    medcoss_monai equal to the stage network's in this process."""
    run = imported_run
    stage = run_stage("ct", run, epochs=1, previous_stage="released", **{"train#repeats": 1, "batch_size": 2,
                                                                         "crops_per_volume": 2})
    bundle = main(["--stage_dir", str(stage), "--out", str(tmp_path / "zoo")])
    meta = check_licence(bundle)
    assert "initialised from" in meta["description"]
    held_out = datalist("ct")["test"][0]["image"]
    args, _, expected = check_zoo_network(bundle, tmp_path, held_out)
    check_trained_network(bundle, bundle / PRETRAIN_WEIGHTS, args, {}, expected)
    with torch.no_grad():
        in_process = load_pretrained(stage).eval()(*args)
    torch.testing.assert_close(expected, in_process, **TOL)
    np.testing.assert_allclose(features_without_medcoss(bundle, held_out, tmp_path / "eval"), in_process[0].numpy(), **TOL)


@pytest.mark.slow
@pytest.mark.long  # fine-tunes an imported UniFormer-S: about 2.5 min, outside CI's budget
def test_brainmvp_segmentation_fine_tuned_from_imported_stage_exports(tasks_ready: Path, tmp_path: Path) -> None:
    """The task's network follows the imported UniFormer (its sizes, not the bundle's): the export reads them from
    metrics.json. Zoo checks; evaluate.json without medcoss_monai gives the test Dice the fine-tuning measured."""
    from monai.bundle import run as run_bundle

    from medcoss_monai.weights import import_checkpoint
    from test_weights_brainmvp import random_state, save_released, uniformer_shapes

    stage = import_checkpoint("brainmvp_uniformer", save_released(random_state(uniformer_shapes()), tmp_path / "u.pt"),
                              tmp_path / "stage")
    ft = tmp_path / "ft"
    run_bundle(config_file=str(ROOT / "bundles/finetune_brainmvp_seg.json"), output_dir=str(ft), pretrained_ckpt=str(stage),
               repeats=1, crops_per_study=2, batch_size=2, logging_file=False, **{"train#trainer#max_epochs": 1})
    bundle = main(["--finetune_dir", str(ft), "--out", str(tmp_path / "zoo")])
    meta = check_zoo(bundle, tmp_path)
    assert "no licence is stated by shaohao011/BrainMVP" in meta["intended_use"]  # the released weights' note
    assert "no licence is stated by shaohao011/BrainMVP" in (bundle / "LICENSE").read_text()
    # train.json builds the task's network (the imported UniFormer's sizes) and starts from its trained weights
    from monai.bundle import ConfigParser

    recorded = json.loads((ft / "metrics.json").read_text())["network_backbone"]
    train = ConfigParser()
    train.read_config(str(bundle / "configs/train.json"))
    train.update({"bundle_root": str(bundle), "device": "$torch.device('cpu')", "output_dir": str(tmp_path / "runs")})
    assert train.get_parsed_content("network_backbone") == recorded
    net, weights = train.get_parsed_content("network"), load_state(bundle / "models/trained_model.pt")
    assert net.state_dict().keys() == weights.keys() and all(torch.equal(net.state_dict()[k], v) for k, v in weights.items())
    datalist = tasks_ready / "tasks/brainmvp_seg/datalist.json"
    run_without_medcoss(bundle, [("configs/evaluate.json", datalist, tmp_path / "metrics")])
    exported = float(dict(read_csv_rows(tmp_path / "metrics/metrics.csv"))["mean_dice"])
    assert exported == pytest.approx(json.loads((ft / "metrics.json").read_text())["metrics"]["mean_dice"], abs=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["brainmvp_uniformer", "brainmvp_unet"])
def test_imported_brainmvp_stage_exports_its_encoder_features(fmt: str, datalist, tmp_path: Path) -> None:
    """An imported BrainMVP stage (the released UniFormer's or U-Net's format, small and random): Zoo checks; the
    weights' licence repeated; the features of a held-out MRI without medcoss_monai are the imported encoder's on the
    same input (the reference's 96^3 crop at 1 mm); train.json fine-tunes a segmentation from the imported encoder."""
    from monai.bundle import ConfigParser

    from medcoss_monai.weights import import_checkpoint
    from test_weights_brainmvp import random_state, save_released, unet_shapes, uniformer_shapes

    shapes = uniformer_shapes() if fmt == "brainmvp_uniformer" else unet_shapes()
    stage = import_checkpoint(fmt, save_released(random_state(shapes), tmp_path / "released.pt"), tmp_path / "stage")
    bundle = main(["--stage_dir", str(stage), "--out", str(tmp_path / "zoo")])
    meta = check_zoo(bundle, tmp_path)
    for text in (meta["intended_use"], (bundle / "docs/README.md").read_text(), (bundle / "LICENSE").read_text()):
        assert "no licence is stated by shaohao011/BrainMVP" in text
    shipped = json.loads((bundle / "models/stage.json").read_text())["imported"]  # no path of the exporter's disk
    assert shipped["checkpoint"] == "released.pt" and str(tmp_path) not in (bundle / "models/stage.json").read_text()
    mri = datalist("mri")["test"][0]["image"]
    features = features_without_medcoss(bundle, mri, tmp_path / "features")
    x = parse_inference(bundle).get_parsed_content("preprocessing")({"image": mri})["image"][None]
    assert tuple(x.shape[2:]) == (96, 96, 96)
    with torch.no_grad():
        expected = load_pretrained(stage).backbone.encoder(x)[-1].mean(dim=(2, 3, 4))[0]
    np.testing.assert_allclose(features, expected.numpy(), **TOL)
    train = ConfigParser()
    train.read_config(str(bundle / "configs/train.json"))
    train.update({"bundle_root": str(bundle), "device": "$torch.device('cpu')"})
    task_encoder = train.get_parsed_content("network").encoder.state_dict()
    imported = load_state(stage / "model.pt")
    same = [k for k, v in task_encoder.items() if f"backbone.encoder.{k}" in imported and v.shape == imported[f"backbone.encoder.{k}"].shape]
    assert len(same) > 10 and all(torch.equal(task_encoder[k], imported[f"backbone.encoder.{k}"]) for k in same)
