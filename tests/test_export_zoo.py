"""The Model Zoo's bundle checks, as functions the export tests share, and tests of the export's small pieces.

The checks follow the Zoo's ``ci/verify_bundle.py``: the directory layout, the metadata against a
schema (here the one the project ships), ``verify_net_in_out``, ``ckpt_export`` by scripting (the
result is loaded and must give the eager network's output on a real preprocessed sample), and
``configs/inference.json`` run from inside the bundle folder.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from medcoss_monai.bundle.export import main, schema_path
from medcoss_monai.bundle.export.zoo_apps import IMPORTED_BRAINMVP
from medcoss_monai.bundle.export.zoo_configs import unlabelled_transforms
from medcoss_monai.bundle.export.inference_inputs import TextInferenceBatch, inference_items
from medcoss_monai.errors import BadInputError
from medcoss_monai.networks.checkpoint import load_state

BUNDLE_FILES = ("configs/metadata.json", "configs/inference.json", "configs/train.json", "configs/logging.conf",
                "models/model.pt", "models/model.ts", "docs/README.md", "LICENSE")


@contextlib.contextmanager
def inside(folder: Path) -> Iterator[None]:
    """Run from ``folder``, as ``cd <bundle> && python -m monai.bundle ...`` does."""
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(cwd)


def metadata(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / "configs/metadata.json").read_text())


def is_text(bundle: Path) -> bool:
    return "input_ids" in metadata(bundle)["network_data_format"]["inputs"]


def check_layout_and_metadata(bundle: Path) -> dict[str, Any]:
    """The files the Zoo expects, a version with its changelog entry, the metadata valid against the shipped schema."""
    from monai.bundle import verify_metadata

    for rel in BUNDLE_FILES:
        assert (bundle / rel).is_file(), rel
    large = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file() and p.stat().st_size > 25 << 20)
    listed = (bundle / "large_files.yml").read_text() if large else ""
    assert (bundle / "large_files.yml").exists() == bool(large)  # the Zoo keeps files over 25 MB outside git
    assert all(f'path: "{rel}"' in listed for rel in large)
    meta = metadata(bundle)
    assert meta["version"] in meta["changelog"]
    import ignite

    assert meta["optional_packages_version"] == {"pytorch-ignite": ignite.__version__}  # MONAI's evaluators run on it
    verify_metadata(meta_file=str(bundle / "configs/metadata.json"), filepath=str(schema_path()))
    for rel in ("configs/metadata.json", "configs/inference.json", "configs/train.json"):
        assert "%bundles/" not in (bundle / rel).read_text(), f"{rel} refers into the repository"
    return meta


def parse_inference(bundle: Path, **overrides: Any) -> Any:
    """The bundle's inference config, read as ``monai.bundle run`` reads it from the bundle root."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs/inference.json"))
    parser.read_meta(str(bundle / "configs/metadata.json"))
    parser.update({"bundle_root": str(bundle), "device": "$torch.device('cpu')", **overrides})
    return parser


def eager_network(bundle: Path) -> torch.nn.Module:
    """``network_def`` with ``models/model.pt`` loaded strictly."""
    net = parse_inference(bundle).get_parsed_content("network_def")
    net.load_state_dict(load_state(bundle / "models/model.pt"), strict=True)
    return net.eval()


def network_input(bundle: Path, dataset_dir: str | Path) -> tuple[tuple[torch.Tensor, ...], dict[str, torch.Tensor]]:
    """The first input of ``dataset_dir`` preprocessed by the bundle's own transforms, as the network gets it.

    An image larger than the network's input (a volume the sliding window covers) is cut to the
    input size at its centre, as one window.
    """
    from monai.transforms import ResizeWithPadOrCrop

    item = parse_inference(bundle, dataset_dir=str(dataset_dir)).get_parsed_content("dataset")[0]
    if is_text(bundle):
        ids, _, _, kwargs = TextInferenceBatch()({k: torch.as_tensor(v)[None] for k, v in item.items()
                                                  if k in ("input_ids", "attention_mask")})
        return (ids,), kwargs
    image = torch.as_tensor(item["image"]).as_subclass(torch.Tensor)
    spatial = metadata(bundle)["network_data_format"]["inputs"]["image"]["spatial_shape"]
    if list(image.shape[1:]) != spatial:
        image = torch.as_tensor(ResizeWithPadOrCrop(spatial)(image)).as_subclass(torch.Tensor)
    return (image[None].float(),), {}


def check_zoo_network(bundle: Path, tmp_path: Path, dataset_dir: str | Path) -> tuple[tuple, dict, torch.Tensor]:
    """``verify_net_in_out`` (image networks) and ``ckpt_export`` by scripting, as the Zoo runs them.

    The exported TorchScript is loaded and must give the eager network's output on a real sample.

    Returns:
        ``(args, kwargs, output)``: the sample input and the eager output.
    """
    from monai.bundle import ckpt_export, verify_net_in_out

    files = {"meta_file": str(bundle / "configs/metadata.json"), "config_file": str(bundle / "configs/inference.json"),
             "bundle_root": str(bundle)}
    if not is_text(bundle):  # it feeds random float images: token ids are checked below instead
        verify_net_in_out(net_id="network_def", device="cpu", **files)
    ts = tmp_path / "model.ts"
    ckpt_export(net_id="network_def", filepath=str(ts), ckpt_file=str(bundle / "models/model.pt"), use_trace=False,
                **files)
    scripted = torch.jit.load(str(ts))
    assert isinstance(scripted, torch.jit.ScriptModule)
    args, kwargs = network_input(bundle, dataset_dir)
    with torch.no_grad():
        expected = eager_network(bundle)(*args, **kwargs)
        torch.testing.assert_close(scripted(*args, **kwargs), expected, rtol=1e-4, atol=1e-5)
        # the model.ts shipped in the bundle is that same network
        torch.testing.assert_close(torch.jit.load(str(bundle / "models/model.ts"))(*args, **kwargs), expected,
                                   rtol=1e-4, atol=1e-5)
    pred = metadata(bundle)["network_data_format"]["outputs"]["pred"]
    assert expected.shape[1] == pred["num_channels"] and torch.isfinite(expected).all()
    return args, kwargs, expected


def trained_network_config(bundle: Path) -> torch.nn.Module:
    """The training class of the bundle's network, unloaded: from ``inference.json`` when ``network_def`` wraps it
    (text bundles), else from ``train.json`` (``model_def`` of a task, ``network_def`` of a stage)."""
    from monai.bundle import ConfigParser

    if isinstance(json.loads((bundle / "configs/inference.json").read_text())["network_def"], dict):
        return parse_inference(bundle).get_parsed_content("network_def#network")
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs/train.json"))
    parser.update({"bundle_root": str(bundle), "device": "$torch.device('cpu')"})
    return parser.get_parsed_content("model_def" if "model_def" in parser else "network_def")


def check_trained_network(bundle: Path, weights: Path, args: tuple, kwargs: dict, expected: torch.Tensor) -> None:
    """The trained network (``network_def#network``, the training class) with its own weights gives ``expected``."""
    from medcoss_monai.networks.checkpoint import state_dict_of

    trained = trained_network_config(bundle).eval()
    trained.load_state_dict(state_dict_of(load_state(weights), weights), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(trained(*args, **kwargs), expected, rtol=1e-4, atol=1e-5)


def run_inference(bundle: Path, dataset_dir: str | Path, output_dir: Path, **overrides: Any) -> None:
    """``configs/inference.json`` from inside the bundle folder (in process, without touching the logging setup)."""
    from monai.bundle import run

    with inside(bundle):
        run(config_file="configs/inference.json", meta_file="configs/metadata.json", logging_file=False,
            dataset_dir=str(dataset_dir), output_dir=str(output_dir), device="$torch.device('cpu')", **overrides)


def read_csv_rows(path: Path) -> list[list[str]]:
    """Rows of MONAI's ``ClassificationSaver`` CSV: the input file, then the values."""
    with open(path, newline="") as f:
        return [row for row in csv.reader(f) if row]


def read_predictions(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- the export's pieces


def test_inference_items_reads_files_folders_and_datalists(tmp_path: Path) -> None:
    (tmp_path / "a.nii.gz").write_bytes(b"")
    (tmp_path / "b.png").write_bytes(b"")
    (tmp_path / "notes.md").write_text("x")
    series = tmp_path / "series"
    series.mkdir()
    for i in range(2):
        (series / f"{i}.dcm").write_bytes(b"")
    assert inference_items(tmp_path / "a.nii.gz") == [{"image": str(tmp_path / "a.nii.gz")}]
    assert [i["image"] for i in inference_items(tmp_path)] == [str(tmp_path / "a.nii.gz"), str(tmp_path / "b.png")]
    # 3D inputs: a folder of DICOM files is one series
    assert inference_items(tmp_path, series=True)[-1] == {"image": str(series)}
    assert inference_items(series, series=True) == [{"image": str(series)}]
    assert len(inference_items(series)) == 2  # 2D: every file is an image
    (tmp_path / "r1.txt").write_text("No acute disease.")
    assert inference_items(tmp_path, key="text") == [{"text_file": str(tmp_path / "r1.txt"), "id": "r1.txt"}]
    datalist = tmp_path / "list.json"
    datalist.write_text(json.dumps({"test": [{"image": "b.png"}, {"text": "Clear lungs."}], "training": []}))
    assert inference_items(datalist) == [{"image": str(tmp_path / "b.png")}, {"text": "Clear lungs."}]
    with pytest.raises(ValueError, match="'validation'"):
        inference_items(datalist, section="validation")
    with pytest.raises(FileNotFoundError, match="dataset_dir"):
        inference_items("")
    with pytest.raises(ValueError, match="no input file"):
        inference_items(series, key="text")


def test_unlabelled_transforms_keep_image_settings_aligned() -> None:
    transforms = [
        {"_target_": "LoadImaged", "keys": ["image", "label"]},
        {"_target_": "Resized", "keys": ["image", "label"], "spatial_size": [4, 4], "mode": ["bilinear", "nearest"]},
        {"_target_": "AsDiscreted", "keys": "label", "threshold": 0.5},
        {"_target_": "EnsureTyped", "keys": ["image"], "track_meta": False},
    ]
    out = unlabelled_transforms(transforms)
    assert [t["_target_"] for t in out] == ["LoadImaged", "Resized", "EnsureTyped"]
    assert out[1]["mode"] == ["bilinear", "nearest"] and out[1]["allow_missing_keys"] is True
    assert "track_meta" not in out[2] and transforms[3]["track_meta"] is False  # the input is not changed
    # and MONAI applies the rewritten Resized to an item without a label
    from monai.bundle import ConfigParser

    resize = ConfigParser({"t": out[1]}).get_parsed_content("t")
    assert resize({"image": torch.zeros(1, 8, 8)})["image"].shape == (1, 4, 4)


def test_class_probability_writer(tmp_path: Path) -> None:
    from ignite.engine import Engine

    from medcoss_monai.handlers import ClassProbabilityWriter

    probs = [torch.tensor([0.2, 0.8]), torch.tensor([0.9, 0.1])]
    engine = Engine(lambda e, i: [{"pred": probs[i]}])
    items = [{"image": "/data/a.png"}, {"id": "report 7"}]
    ClassProbabilityWriter(tmp_path, ["normal", "lesion"], items).attach(engine)
    engine.run([0, 1])
    rows = read_predictions(tmp_path / "predictions.csv")
    assert rows[0] == {"item": "/data/a.png", "normal": "0.200000", "lesion": "0.800000", "predicted": "lesion"}
    assert rows[1]["item"] == "report 7" and rows[1]["predicted"] == "normal"


def test_export_command_line_errors(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"")
    with pytest.raises(BadInputError, match="network"):
        main(["--stage_dir", str(tmp_path), "--out", str(tmp_path / "out")])
    with pytest.raises(BadInputError, match="metrics.json"):
        main(["--finetune_dir", str(tmp_path), "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit):  # overrides belong to a fine-tuned task
        main(["--stage_dir", str(tmp_path), "--out", str(tmp_path / "out"), "--num_classes", "3"])


UNTRAINED_FOLDERS = {  # the record that picks each export path (app_kind, find_finetuned), its bundle, a misspelt id
    "medcoss_task": ("metrics.json", {"task": "ct_seg"}, "finetune_ct_seg.json", "num_classes"),
    "muscle": ("metrics.json", {"task": "muscle_bodypart_cls"}, "finetune_muscle_cls.json", "image_size"),
    "brainmvp_stage": ("stage.json", {"method": "brainmvp"}, "stage_brainmvp.json", "roi_size"),
    "brainmvp_imported": ("stage.json", {"network": {"_target_": IMPORTED_BRAINMVP}}, "brainmvp_paper_scale.json",
                          "roi_size"),
    "brainmvp_seg": ("metrics.json", {"label_mode": "classes", "fill": "none"}, "finetune_brainmvp_seg.json", "roi_size"),
    "brainmvp_cls": ("metrics.json", {"task": "brainmvp_cls"}, "finetune_brainmvp_cls.json", "roi_size"),
}


@pytest.mark.parametrize("kind", sorted(UNTRAINED_FOLDERS))
def test_export_refuses_undefined_override(tmp_path: Path, kind: str) -> None:
    record, content, bundle, meant = UNTRAINED_FOLDERS[kind]
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / record).write_text(json.dumps(content))
    for name in ("model.pt", "model_best.pt"):  # never read: the bundle is checked first
        (folder / name).write_bytes(b"")
    before = sorted(tmp_path.rglob("*"))
    src = "--stage_dir" if record == "stage.json" else "--finetune_dir"
    with pytest.raises(BadInputError, match=rf"{bundle}.*'{meant}e' \(did you mean '{meant}'\?\)"):
        main([src, str(folder), "--out", str(tmp_path / "zoo"), f"--{meant}e", "3"])
    assert sorted(tmp_path.rglob("*")) == before  # refused before anything was written


def test_read_bundle_checks_user_override_ids() -> None:
    from medcoss_monai.layout import bundles_dir, read_bundle

    bundle = bundles_dir() / "finetune_ct_seg.json"
    parser = read_bundle(bundle, {"output_dir": "x", "not_in_bundle": 1},  # the caller's own ids are not checked
                         user_overrides={"train#trainer#max_epochs": 2, "train#trainer#new_arg": 3, "num_classes": 4})
    assert (parser["train#trainer#max_epochs"], parser["train#trainer#new_arg"], parser["num_classes"]) == (2, 3, 4)
    with pytest.raises(BadInputError, match=r"'train#trainerr#max_epochs' \(did you mean 'train#trainer#max_epochs'"):
        read_bundle(bundle, user_overrides={"train#trainerr#max_epochs": 2})
    with pytest.raises(BadInputError, match=r"no id 'num_classess' .*, 'zzz';"):  # every undefined id, at once
        read_bundle(bundle, user_overrides={"num_classess": 2, "zzz": 1})


def test_stage_bundles_metadata_validates() -> None:
    from monai.bundle import verify_metadata

    from medcoss_monai import layout

    verify_metadata(meta_file=str(layout.bundles_dir() / "metadata.json"), filepath=str(schema_path()))
