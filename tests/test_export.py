"""Model Zoo export of pre-training stages: the Zoo's checks, the exported configs, inference on held-out files.

Default suite: a CT stage trained for one short epoch (the module fixture). The X-ray, MRI and
pathology stages run the same checks under ``-m slow``; the report stage is in ``test_export_text.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medcoss_monai import layout
from medcoss_monai.bundle.export import PRETRAIN_WEIGHTS, find_trained_network, main
from medcoss_monai.bundle.export.portable import needs_medcoss
from medcoss_monai.networks.checkpoint import load_state

sys.path.insert(0, str(Path(__file__).parent))
from stage_utils import run_stage
from test_export_zoo import (
    check_layout_and_metadata,
    check_trained_network,
    check_zoo_network,
    read_csv_rows,
    run_inference,
)


def _export_stage(modality: str, sample_data: Path, tmp: Path) -> tuple[Path, Path]:
    """A one-epoch stage (no rehearsal: a first stage) and its exported bundle."""
    stage = run_stage(modality, tmp / "run", rehearsal=False, select_buffer=False)
    return stage, main(["--stage_dir", str(stage), "--out", str(tmp / "zoo" / f"medcoss_{modality}")])


def _held_out(datalist, modality: str) -> str:
    """The held-out test file of a stage's sample datalist (never in any stage's training list)."""
    item = datalist(modality)["test"][0]
    return item["image"]


@pytest.fixture(scope="module")
def ct(sample_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _export_stage("ct", sample_data, tmp_path_factory.mktemp("ct"))


@pytest.mark.slow
def test_layout_weights_and_readme(ct: tuple[Path, Path]) -> None:
    stage, bundle = ct
    meta = check_layout_and_metadata(bundle)
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [64, 64, 16]
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 192
    inference = json.loads((bundle / "configs/inference.json").read_text())
    for key in ("bundle_root", "device", "network_def", "dataset", "inferer", "evaluator", "output_dir", "run"):
        assert key in inference, key
    # MONAI and PyTorch only: the network is the TorchScript models/model.ts
    assert inference["network_def"].startswith("$torch.jit.load(") and not needs_medcoss(inference)
    # model.pt: the encoder's weights as the stage saved them; pretrain_model.pt: the whole stage network
    original = load_state(find_trained_network(stage)[1])
    exported, whole = load_state(bundle / "models/model.pt"), load_state(bundle / PRETRAIN_WEIGHTS)
    assert set(exported) == {k for k in original if k.startswith("encoder.")}
    assert all(torch.equal(exported[k], original[k]) for k in exported)
    assert whole.keys() == original.keys() and all(torch.equal(whole[k], original[k]) for k in original)
    history = (stage / layout.LOSS_HISTORY_FILE).read_text().strip()
    assert history.splitlines()[0] in (bundle / "docs/README.md").read_text()


def test_train_config_starts_from_exported_weights(ct: tuple[Path, Path]) -> None:
    from monai.bundle import ConfigParser

    bundle = ct[1]
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs/train.json"))
    parser["bundle_root"] = str(bundle)
    parser["device"] = "$torch.device('cpu')"
    net = parser.get_parsed_content("network")
    exported = load_state(bundle / PRETRAIN_WEIGHTS)
    assert net.state_dict().keys() == exported.keys()
    assert all(torch.equal(net.state_dict()[k], v) for k, v in exported.items())


def test_schema_rejects_metadata_without_output(ct: tuple[Path, Path], tmp_path: Path) -> None:
    from monai.bundle import verify_metadata

    from medcoss_monai.bundle.export import schema_path

    bad = json.loads((ct[1] / "configs/metadata.json").read_text())
    del bad["network_data_format"]["outputs"]["pred"]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError) as excinfo:  # MONAI wraps the schema's ValidationError
        verify_metadata(meta_file=str(tmp_path / "bad.json"), filepath=str(schema_path()))
    assert "'pred' is a required property" in str(excinfo.value.__cause__)


@pytest.mark.slow
def test_zoo_checks_and_inference_on_held_out_file(ct: tuple[Path, Path], datalist, tmp_path: Path) -> None:
    """verify_net_in_out, ckpt_export by scripting (same output as eager on the real input), the stage's network
    gives the same features, and inference.json run in the bundle folder writes them for the held-out CT."""
    bundle = ct[1]
    held_out = _held_out(datalist, "ct")
    args, _, expected = check_zoo_network(bundle, tmp_path, held_out)
    check_trained_network(bundle, bundle / PRETRAIN_WEIGHTS, args, {}, expected)
    run_inference(bundle, held_out, tmp_path / "eval")
    rows = read_csv_rows(tmp_path / "eval/features.csv")
    assert [r[0] for r in rows] == [held_out]
    feats = np.array([[float(v) for v in r[1:]] for r in rows])
    assert feats.shape == (1, 192)
    np.testing.assert_allclose(feats[0], expected[0].numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("modality", ["xray", "mri", "pathology"])
def test_image_stage_exports(modality: str, sample_data: Path, datalist, tmp_path: Path) -> None:
    """Every image stage exports to a bundle that passes the Zoo's checks and embeds its held-out test split."""
    _, bundle = _export_stage(modality, sample_data, tmp_path)
    meta = check_layout_and_metadata(bundle)
    sample = datalist_file(sample_data, modality)
    args, _, expected = check_zoo_network(bundle, tmp_path, sample)
    check_trained_network(bundle, bundle / PRETRAIN_WEIGHTS, args, {}, expected)
    run_inference(bundle, sample, tmp_path / "eval")
    if (tmp_path / "eval/features.csv").is_file():  # MONAI-only inference (MONAI's ClassificationSaver)
        feats = np.array([[float(v) for v in r[1:]] for r in read_csv_rows(tmp_path / "eval/features.csv")])
    else:  # inputs only medcoss_monai reads (DICOM radiographs, slides): the package's writer
        assert modality in ("xray", "pathology"), "an MRI stage bundle must not need medcoss_monai"
        feats = np.load(tmp_path / "eval/features.npy")
    n_test = len(datalist(modality)["test"])
    assert feats.shape == (n_test, meta["network_data_format"]["outputs"]["pred"]["num_channels"])
    assert np.isfinite(feats).all()
    np.testing.assert_allclose(feats[0], expected[0].numpy(), rtol=1e-4, atol=1e-5)


def datalist_file(sample_data: Path, modality: str) -> Path:
    """The sample datalist of a modality (its ``test`` list is what the exported inference reads by default)."""
    return sample_data / "datalists" / f"{modality}.json"

