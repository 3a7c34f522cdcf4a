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
