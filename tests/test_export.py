"""Model Zoo export of a one-epoch CT stage: MONAI's bundle checks and the exported inference config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medcoss_monai.bundle.export import export_bundle, find_trained_network, main, schema_path
from medcoss_monai.bundle.pipeline import bundles_dir

# ~25 s for the file on 2 cores (a tiny stage is trained once per module); the task export trains a task too
slow = pytest.mark.slow


@pytest.fixture(scope="module")
def stage_dir(sample_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CT stage trained for one short epoch on the real sample volumes (in process, MONAI's ``run``)."""
    from monai.bundle import run

    out = tmp_path_factory.mktemp("run")
    run(
        config_file=str(bundles_dir() / "stage_ct.json"),
        meta_file=str(bundles_dir() / "metadata.json"),
        output_dir=str(out),
        progress_bar=False,
        **{"train#trainer#max_epochs": 1, "train#repeats": 1, "crops_per_volume": 2},
    )
    return out / "stage_ct"


@pytest.fixture(scope="module")
def bundle(stage_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return main(["--stage_dir", str(stage_dir), "--out", str(tmp_path_factory.mktemp("zoo") / "medcoss_ct")])


def test_layout_and_metadata(bundle: Path, stage_dir: Path) -> None:
    for rel in ("configs/metadata.json", "configs/inference.json", "configs/train.json", "configs/logging.conf",
                "models/model.pt", "models/model.ts", "docs/README.md", "LICENSE"):
        assert (bundle / rel).is_file(), rel
    assert not (bundle / "large_files.yml").exists()  # every file of this small encoder is < 25 MB
    meta = json.loads((bundle / "configs/metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [64, 64, 16]
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 192
    inference = json.loads((bundle / "configs/inference.json").read_text())
    for key in ("bundle_root", "device", "network_def", "dataset", "inferer", "evaluator", "output_dir", "run"):
        assert key in inference, key
    # model.pt is a plain state dict equal to the stage's weights
    exported = torch.load(bundle / "models/model.pt", weights_only=True)
    original = torch.load(find_trained_network(stage_dir)[1], weights_only=True)
    assert exported.keys() == original.keys()
    assert all(torch.equal(exported[k], original[k]) for k in original)


def test_verify_metadata_with_shipped_schema(bundle: Path, tmp_path: Path) -> None:
    from monai.bundle import verify_metadata

    assert schema_path().is_file()
    verify_metadata(meta_file=str(bundle / "configs/metadata.json"), filepath=str(schema_path()))
    bad = json.loads((bundle / "configs/metadata.json").read_text())
    del bad["network_data_format"]["outputs"]["pred"]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(Exception):  # the schema really encodes the required fields
        verify_metadata(meta_file=str(tmp_path / "bad.json"), filepath=str(schema_path()))


def test_verify_net_in_out_and_ckpt_export(bundle: Path, tmp_path: Path) -> None:
    from monai.bundle import ckpt_export, verify_net_in_out

    configs = {"meta_file": str(bundle / "configs/metadata.json"), "config_file": str(bundle / "configs/inference.json")}
    verify_net_in_out(net_id="network_def", device="cpu", **configs)
    ts = tmp_path / "model.ts"
    ckpt_export(net_id="network_def", filepath=str(ts), ckpt_file=str(bundle / "models/model.pt"), use_trace=True,
                input_shape=[1, 1, 64, 64, 16], **configs)
    assert ts.is_file()


def test_torchscript_matches_network(bundle: Path) -> None:
    from monai.bundle import ConfigParser

    scripted = torch.jit.load(str(bundle / "models/model.ts"))
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs/inference.json"))
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(bundle / "models/model.pt", weights_only=True))
    net.eval()
    x = torch.rand(2, 1, 64, 64, 16)
    with torch.no_grad():
        expected, got = net(x), scripted(x)
    assert got.shape == (2, 192)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_run_exported_inference(bundle: Path, datalist) -> None:
    from monai.bundle import run

    out = bundle / "eval_test"
    from medcoss_monai.data.samples import datalist_path

    run(config_file=str(bundle / "configs/inference.json"), meta_file=str(bundle / "configs/metadata.json"),
        bundle_root=str(bundle), output_dir=str(out), dataset_dir=str(datalist_path("ct")))
    feats = np.load(out / "features.npy")
    n_val = len(datalist("ct")["validation"])
    assert feats.shape == (n_val, 192) and np.isfinite(feats).all()
    assert len(json.loads((out / "features.json").read_text())["items"]) == n_val


def test_stage_bundles_metadata_validates() -> None:
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=str(bundles_dir() / "metadata.json"), filepath=str(schema_path()))


def test_export_refuses_unfinished_folder(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="network"):
        export_bundle(tmp_path, tmp_path / "out")


@slow
def test_export_fine_tuned_task(sample_data: Path, tmp_path: Path) -> None:
    """A fine-tuned task folder (``model_best.pt`` + the task bundle) exports to a bundle whose network_def
    returns the task logits and passes the same checks."""
    from monai.bundle import run, verify_metadata, verify_net_in_out

    task_bundle = bundles_dir() / "finetune_ct_cls.json"
    if not task_bundle.is_file():
        pytest.skip("no finetune_ct_cls.json bundle")
    run(config_file=str(task_bundle), meta_file=str(bundles_dir() / "metadata.json"), output_dir=str(tmp_path / "ft"),
        **{"train#trainer#max_epochs": 1})
    out = main(["--stage_dir", str(tmp_path / "ft"), "--config_file", str(task_bundle), "--out", str(tmp_path / "zoo")])
    meta_file, config_file = str(out / "configs/metadata.json"), str(out / "configs/inference.json")
    verify_metadata(meta_file=meta_file, filepath=str(schema_path()))
    verify_net_in_out(net_id="network_def", meta_file=meta_file, config_file=config_file, device="cpu")
    meta = json.loads((out / "configs/metadata.json").read_text())
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 2
    scripted = torch.jit.load(str(out / "models/model.ts"))
    assert scripted(torch.rand(1, 1, 64, 64, 16)).shape == (1, 2)
