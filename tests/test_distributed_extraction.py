"""Distributed extraction: two torchrun CPU processes build the same cache entry as one process, bit for bit."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_image_folder
from spacil.data.datasets import ImageFolderSource
from spacil.features import FeatureCache, get_features
from spacil.features.distributed import get_features_distributed, shard_range

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.mark.parametrize("n,batch,world", [(24, 5, 2), (23, 4, 3), (7, 8, 2), (0, 4, 2), (100, 1, 7), (9, 3, 3)])
def test_shards_are_whole_batches_covering_every_index_once(n, batch, world):
    ranges = [shard_range(n, batch, r, world) for r in range(world)]
    covered = [i for start, stop in ranges for i in range(start, stop)]
    assert covered == list(range(n))
    single_batches = {tuple(range(s, min(s + batch, n))) for s in range(0, n, batch)}
    for start, stop in ranges:  # a rank's batches are exactly batches of the single-process run
        assert {tuple(range(s, min(s + batch, stop))) for s in range(start, stop, batch)} <= single_batches
    sizes = [-(-(stop - start) // batch) for start, stop in ranges]
    assert max(sizes) - min(sizes) <= 1


def test_without_torchrun_it_is_get_features(image_folder, tmp_path, tiny_backbone, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    source = ImageFolderSource(image_folder, "test")
    a = get_features_distributed(source, tiny_backbone, FeatureCache(tmp_path / "a"), batch_size=4, num_workers=0,
                                 progress=False)
    b = get_features(source, tiny_backbone, FeatureCache(tmp_path / "b"), batch_size=4, num_workers=0, progress=False)
    assert np.array_equal(a.patches, b.patches) and a.location.name == b.location.name


def test_shards_merge_in_process_and_complete_shards_are_reused(image_folder, tmp_path, tiny_backbone):
    from spacil.features import distributed as d
    from spacil.features.cache import feature_key
    from spacil.features.extract import feature_key_parts

    (image_folder / "train" / "class_00" / "img_004.png").write_bytes(b"broken")  # index 4, in shard 0
    source = ImageFolderSource(image_folder, "train")
    cache = FeatureCache(tmp_path / "c")
    parts = feature_key_parts(source, tiny_backbone)
    key = feature_key(parts)
    folder = d.shards_dir(cache, "image_folder", "train", key)
    metas = []
    for rank in range(2):
        start, stop = shard_range(len(source), 4, rank, 2)
        meta = d._shard_meta(key, d.DistEnv(rank, 2, rank), start, stop, 4)
        metas.append(d._encode_shard(source, tiny_backbone, folder / f"rank_{rank:02d}", meta, 4, 0, False))
        assert d._existing_shard(folder / f"rank_{rank:02d}", meta) == metas[-1]
        assert d._existing_shard(folder / f"rank_{rank:02d}", {**meta, "world_size": 3}) is None
    assert metas[0]["failures"] == [[4, metas[0]["failures"][0][1]]] and metas[0]["n"] == 11
    d._merge_shards(source, tiny_backbone, cache, key, parts, folder, metas, "skip")
    merged = cache.load("image_folder", "train", key)
    alone = get_features(source, tiny_backbone, FeatureCache(tmp_path / "alone"), batch_size=4, num_workers=0,
                         progress=False)
    assert merged.sample_ids == alone.sample_ids and merged.skipped == alone.skipped == ["train/class_00/img_004.png"]
    for x, y in ((merged.global_, alone.global_), (merged.patches, alone.patches), (merged.labels, alone.labels)):
        assert x.dtype == y.dtype and np.array_equal(x, y)


def _sets(data: Path, cache_root: Path, batch_size: int) -> list[str]:
    """``spa-cil extract`` settings of the tests: the tiny random CLIP on CPU, no loader workers."""
    items = ["data.dataset=image_folder", f"data.root={data}", "backbone.name=tiny-test", "backbone.device=cpu",
             f"backbone.batch_size={batch_size}", "backbone.num_workers=0", f"cache.root={cache_root}"]
    return [arg for item in items for arg in ("--set", item)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _entry(cache_root: Path) -> Path:
    entries = [p.parent for p in cache_root.rglob("manifest.json")]
    assert len(entries) == 1, entries
    return entries[0]


def test_two_cpu_ranks_write_the_single_process_entry(tmp_path, tiny_backbone, monkeypatch):
    data = write_image_folder(tmp_path / "data", n_classes=4, n_train=6, n_test=3)
    bad = data / "train" / "class_03" / "img_001.png"  # index 19: in rank 1's shard
    bad.write_bytes(b"truncated")
    multi = _run(["-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
                  "-m", "spacil.cli", "extract", "--split", "train", "--no-progress",
                  *_sets(data, tmp_path / "multi", batch_size=5)], tmp_path)
    # The reference: one process, same batch size and one thread like each torchrun worker (OMP_NUM_THREADS=1).
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    threads, before = torch.get_num_threads(), tiny_backbone.images_encoded
    torch.set_num_threads(1)
    try:
        get_features(ImageFolderSource(data, "train"), tiny_backbone, FeatureCache(tmp_path / "single"),
                     batch_size=5, num_workers=0, progress=False)
    finally:
        torch.set_num_threads(threads)

    # 24 images, batches of 5: rank 0 encodes batches 0-2 (15 images), rank 1 batches 3-4 (9, one unreadable)
    assert "rank 0/2: images encoded in this call: 15" in multi.stdout
    assert "rank 1/2: images encoded in this call: 8" in multi.stdout
    assert tiny_backbone.images_encoded - before == 23
    a, b = _entry(tmp_path / "single"), _entry(tmp_path / "multi")
    assert a.relative_to(tmp_path / "single") == b.relative_to(tmp_path / "multi")
    for name in ("global.npy", "patches.npy", "labels.npy"):
        x, y = np.load(a / name), np.load(b / name)
        assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), name
    assert np.load(a / "labels.npy").tolist() == [0] * 6 + [1] * 6 + [2] * 6 + [3] * 5
    ma, mb = (json.loads((p / "manifest.json").read_text()) for p in (a, b))
    assert ma["key"] == mb["key"] and ma == mb
    ids = json.loads((b / "ids.json").read_text())
    assert ids == json.loads((a / "ids.json").read_text())
    assert ids["skipped"] == ["train/class_03/img_001.png"] and len(ids["sample_ids"]) == 23
    assert not list((tmp_path / "multi").rglob("*.partial-shards")), "shards must be cleaned up after the merge"
    # the merged entry is a valid cache hit for the single-process code path
    loaded = FeatureCache(tmp_path / "multi", verify="full").load("image_folder", "train", ma["key"])
    assert loaded is not None and len(loaded) == 23


@pytest.mark.slow
def test_error_policy_stops_every_rank_and_leaves_no_entry(tmp_path):
    data = write_image_folder(tmp_path / "data", n_classes=2, n_train=4, n_test=1)
    (data / "train" / "class_01" / "img_003.png").write_bytes(b"truncated")
    env = {k: v for k, v in os.environ.items() if k not in {"RANK", "WORLD_SIZE", "LOCAL_RANK"}}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           f"--master_port={_free_port()}", "-m", "spacil.cli", "extract", "--split", "train",
                           "--no-progress", *_sets(data, tmp_path / "c", batch_size=2),
                           "--set", "data.bad_images=error"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0
    assert "error (rank 0/2): 1 unreadable images in image_folder/train: train/class_01/img_003.png" in proc.stderr
    assert "error (rank 1/2): 1 unreadable images" in proc.stderr
    assert not list((tmp_path / "c").rglob("manifest.json")) and not list((tmp_path / "c").rglob("*.partial-shards"))
