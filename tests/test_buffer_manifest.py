"""buffer.json: atomic write, round trip on real datalist items, refusal of vanished files."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from medcoss_monai.buffer import BUFFER_FIELDS, load_buffer_manifest, write_buffer_manifest


def test_round_trip_real_ct_items(datalist, tmp_path):
    items = datalist("ct")["training"]
    path = write_buffer_manifest(
        tmp_path / "stage_ct" / "buffer.json", "ct", items, indices=np.array([1]), n_total=len(items), n_clusters=1,
        buffer_ratio=0.05, cluster_ratio=0.01, sampler="kmeans", cluster_ids=np.array([0]), distances=np.array([0.25], np.float32),
    )
    assert path.is_file() and not list(path.parent.glob(".buffer_*"))  # no temporary left behind
    m = load_buffer_manifest(path)
    assert set(BUFFER_FIELDS) <= set(m)
    assert (m["modality"], m["n_total"], m["n_clusters"], m["sampler"]) == ("ct", len(items), 1, "kmeans")
    assert m["buffer_ratio"] == 0.05 and m["cluster_ratio"] == 0.01
    assert m["items"] == [{**items[1], "cluster": 0, "distance": 0.25}]


def test_random_buffer_and_inline_text_need_no_file(datalist, tmp_path):
    items = datalist("report")["training"][:40]
    path = write_buffer_manifest(tmp_path / "buffer.json", "report", items, [3, 0], 40, 0, 0.05, 0.01, "random")
    m = load_buffer_manifest(path, check_files=True)
    assert [it["id"] for it in m["items"]] == [items[3]["id"], items[0]["id"]]
    assert m["items"][0]["cluster"] == -1 and m["items"][0]["distance"] is None


def test_vanished_files_are_refused_with_every_path(datalist, tmp_path):
    src = [it for it in datalist("ct")["training"] if "label" in it]
    items = []
    for it in src:  # private copies of the real files, so deleting them harms nothing
        items.append({k: shutil.copy(it[k], tmp_path / f"copy_{tmp_path.name}_{k}_{len(items)}.nrrd") for k in ("image", "label")})
    path = write_buffer_manifest(tmp_path / "buffer.json", "ct", items, [0, 1], 2, 1, 0.5, 0.5, "kmeans", [0, 0], [0.1, 0.2])
    load_buffer_manifest(path)  # all present
    gone = [items[0]["label"], items[1]["image"]]
    for p in gone:
        os.remove(p)
    with pytest.raises(FileNotFoundError) as err:
        load_buffer_manifest(path)
    msg = str(err.value)
    assert "buffer.json" in msg and all(str(p) in msg for p in gone)
    assert str(items[0]["image"]) not in msg  # present files are not listed
    assert load_buffer_manifest(path, check_files=False)["n_total"] == 2


def test_malformed_manifests_are_refused(tmp_path):
    p = tmp_path / "buffer.json"
    with pytest.raises(FileNotFoundError, match="buffer.json"):
        load_buffer_manifest(p)
    p.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_buffer_manifest(p)
    p.write_text(json.dumps({"modality": "ct", "items": []}))
    with pytest.raises(ValueError, match="missing fields"):
        load_buffer_manifest(p)
    with pytest.raises(IndexError):
        write_buffer_manifest(p, "ct", [{"text": "a"}], [2], 1, 1, 0.05, 0.01, "kmeans")
    with pytest.raises(ValueError, match="unique"):
        write_buffer_manifest(p, "ct", [{"text": "a"}, {"text": "b"}], [1, 1], 2, 1, 0.05, 0.01, "kmeans")


def test_buffers_follow_the_recorded_chain_not_the_folder(datalist, tmp_path):
    """report -> ct -> mri ran; ct is then run again after report: it rehearses report's buffer, not mri's newer one."""
    import time

    from medcoss_monai.bundle import buffer_loaders, find_buffers

    run = tmp_path / "run"
    sources = {"report": datalist("report")["training"][:4], "ct": datalist("ct")["training"][:1],
               "mri": datalist("mri")["training"][:1]}
    for modality, previous in (("report", ""), ("ct", "report"), ("mri", "ct")):
        folder = run / f"stage_{modality}"
        folder.mkdir(parents=True)
        (folder / "stage.json").write_text(json.dumps({"modality": modality, "previous_stage": previous}))
        items = sources[modality]
        write_buffer_manifest(folder / "buffer.json", modality, items, list(range(len(items))), len(items), 1, 1.0,
                              1.0, "kmeans")
        time.sleep(0.01)  # mri's buffer is the newest file in the folder
    assert list(find_buffers(run, "mri", "ct")) == ["report", "ct"]  # oldest first
    assert list(find_buffers(run, "ct", "report")) == ["report"]
    assert find_buffers(run, "report", "") == {} and find_buffers(run, "report", None) == {}
    assert find_buffers(run, "ct", "xray") == {}  # a previous stage that never ran: a first stage
    loaders = buffer_loaders(run, "ct", {"img_size_3d": [64, 64, 16]}, batch_size=2, previous_stage="report")
    assert list(loaders) == ["report"]
    batch = next(iter(loaders["report"]))
    assert batch["input_ids"].shape[0] == 2


def test_buffer_follows_the_dataset_cache_switch(datalist, tmp_path):
    """dataset_cache 'disk': a CT buffer rehearsed by the MRI stage is cached on disk under the CT settings' folder."""
    from medcoss_monai.bundle import buffer_loaders

    run = tmp_path / "run"
    folder = run / "stage_ct"
    folder.mkdir(parents=True)
    (folder / "stage.json").write_text(json.dumps({"modality": "ct", "previous_stage": ""}))
    items = datalist("ct")["training"][:1]
    write_buffer_manifest(folder / "buffer.json", "ct", items, [0], 1, 1, 1.0, 1.0, "kmeans")
    cache = tmp_path / "cache"
    loaders = buffer_loaders(run, "mri", {"img_size_3d": [64, 64, 16]}, batch_size=8, previous_stage="ct",
                             dataset_cache="disk", cache_dir=cache)
    assert not list(cache.glob("ct_*/*.pt"))  # written when first read, not before
    batch = next(iter(loaders["ct"]))
    assert tuple(batch["image"].shape) == (8, 1, 64, 64, 16)  # one volume, 8 crops
    assert len(list(cache.glob("ct_*/*.pt"))) == 1
