"""Feature extraction spread over several processes (``torchrun --nproc_per_node=N``), one cache entry out.

Each rank encodes a contiguous run of *whole batches* of the dataset (batch ``b`` holds indices
``b*B .. b*B+B-1``, exactly as in a single-process run), so every image goes through the encoder in the
same batch as it would alone; on the same hardware and thread settings the merged arrays are therefore
bit-identical to :func:`spacil.features.extract.get_features`. Ranks write their shard to
``<cache entry>.partial-shards/rank_XX/`` (a folder renamed into place only when complete, so a shard that
exists is whole and a restarted job reuses it), rank 0 merges the shards through the ordinary
:class:`~spacil.features.cache.CacheWriter` (same key, same manifest as a single-process run) and the other
ranks then load the published entry.

Coordination goes through a gloo process group even when NCCL is the main backend: the only collectives
are small Python objects and barriers, and rank 0's merge can outlast NCCL's watchdog.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..backbone import FrozenCLIP
from ..data.datasets import DatasetError, ImageSource
from ..io import compact_array, new_array, write_json_atomic
from .cache import CacheError, FeatureCache, FeatureSet, feature_key
from .extract import check_cached_skips, feature_key_parts, get_features, iterate_features, report_unreadable
from .writeback import BackgroundWriter

logger = logging.getLogger(__name__)

SHARD_FILES = ("global.npy", "patches.npy", "labels.npy", "indices.npy")


@dataclass(frozen=True)
class DistEnv:
    """This process's place in a torchrun job."""

    rank: int
    world_size: int
    local_rank: int


def dist_env() -> DistEnv | None:
    """The torchrun environment, or ``None`` when not launched by torchrun (or with a single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return None
    return DistEnv(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", os.environ["RANK"])))


def rank_device(device: str) -> str:
    """This process's own GPU (``cuda:LOCAL_RANK``) under torchrun with CUDA, for ``auto``, ``cuda`` and any
    ``cuda:N``: one process per GPU is what torchrun launches, and a bare ``cuda`` (or ``cuda:0``) would put
    every rank's weights on the first GPU. ``cpu`` and the single-process case are left as asked."""
    env = dist_env()
    if env is None or not torch.cuda.is_available():
        return device
    if device == "auto" or device == "cuda" or device.startswith("cuda:"):
        if device.startswith("cuda:") and device != f"cuda:{env.local_rank}":
            logger.info("rank %d: backbone.device=%s means this rank's GPU under torchrun: cuda:%d",
                        env.rank, device, env.local_rank)
        return f"cuda:{env.local_rank}"
    return device


_GROUP: dict[str, object] = {}


def init_distributed(timeout_s: float = 7200.0) -> object:
    """Initialise the default process group (NCCL with CUDA, else gloo) and return a gloo group for sync."""
    if "gloo" in _GROUP:
        return _GROUP["gloo"]
    env = dist_env()
    assert env is not None, "init_distributed needs WORLD_SIZE > 1 (launch with torchrun)"
    timeout = timedelta(seconds=timeout_s)
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(env.local_rank)
        dist.init_process_group(backend=backend, timeout=timeout)
        _GROUP["owned"] = True
        logger.info("rank %d/%d: process group initialised (%s)", env.rank, env.world_size, backend)
    _GROUP["gloo"] = dist.new_group(backend="gloo", timeout=timeout) if dist.get_backend() != "gloo" else dist.group.WORLD
    return _GROUP["gloo"]


def shutdown_distributed() -> None:
    """Destroy the process group if this module created it."""
    if _GROUP.pop("owned", False) and dist.is_initialized():
        dist.destroy_process_group()
    _GROUP.clear()


def shard_range(n: int, batch_size: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[start, stop)`` of rank's indices: a contiguous run of whole batches (ranks differ by <= 1 batch)."""
    if batch_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"shard_range: batch_size {batch_size}, rank {rank}, world_size {world_size}")
    n_batches = -(-n // batch_size)
    base, extra = divmod(n_batches, world_size)
    first = rank * base + min(rank, extra)
    last = first + base + (1 if rank < extra else 0)
    return min(first * batch_size, n), min(last * batch_size, n)


def _listing_digest(source: ImageSource) -> str:
    """Cheap identity of a source (ids, labels, classes) to catch ranks that see different datasets."""
    digest = hashlib.sha256()
    digest.update("\n".join(source.class_names).encode())
    digest.update(np.asarray(source.labels, dtype=np.int64).tobytes())
    for i in range(len(source)):
        digest.update(source.sample_id(i).encode() + b"\0")
    return digest.hexdigest()


def shards_dir(cache: FeatureCache, dataset: str, split: str, key: str) -> Path:
    entry = cache.entry_dir(dataset, split, key)
    return entry.with_name(entry.name + ".partial-shards")


def _shard_meta(key: str, env: DistEnv, start: int, stop: int, batch_size: int) -> dict:
    return {"key": key, "rank": env.rank, "world_size": env.world_size, "start": start, "stop": stop,
            "batch_size": batch_size}


def _existing_shard(folder: Path, meta: dict) -> dict | None:
    """The meta of a complete shard left by an earlier run of the same job, else ``None``."""
    try:
        found = json.loads((folder / "meta.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if {k: found.get(k) for k in meta} != meta or not all((folder / f).is_file() for f in SHARD_FILES):
        return None
    return found


def _encode_shard(source: ImageSource, backbone: FrozenCLIP, folder: Path, meta: dict, batch_size: int,
                  num_workers: int | str, progress: bool, cache_dtype: str = "float16") -> dict:
    """Encode indices ``[start, stop)`` into ``folder`` (written under a temporary name, then renamed)."""
    start, stop = meta["start"], meta["stop"]
    m = stop - start
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    dtype = np.dtype(cache_dtype)
    g = new_array(tmp / "global.npy", dtype, (m, backbone.embed_dim))
    p = new_array(tmp / "patches.npy", dtype, (m, backbone.num_patches, backbone.embed_dim))
    lab = new_array(tmp / "labels.npy", np.int64, (m,))
    filled = np.zeros(m, dtype=bool)
    failures: list[list] = []
    def write(rows: np.ndarray, gb: np.ndarray, pb: np.ndarray, labels: np.ndarray) -> None:
        g[rows] = gb.astype(dtype, copy=False)
        p[rows] = pb.astype(dtype, copy=False)
        lab[rows] = labels
        filled[rows] = True

    with BackgroundWriter() as background:  # the memmap write of a batch overlaps the next forward
        for idx, gb, pb, bad in iterate_features(source, backbone, np.arange(start, stop), batch_size, num_workers,
                                                 progress, desc=f"{source.dataset}/{source.split} rank {meta['rank']}",
                                                 dtype=cache_dtype):
            failures.extend([int(i), reason] for i, reason in bad)
            if gb is not None:
                background.submit(write, idx - start, gb, pb, source.labels[idx])
    keep = np.flatnonzero(filled)
    for arr in (g, p, lab):
        arr.flush()
    del g, p, lab
    if len(keep) < m:  # drop the rows of unreadable images (rare), keeping dataset order
        for name in ("global.npy", "patches.npy", "labels.npy"):
            compact_array(tmp / name, keep)
    np.save(tmp / "indices.npy", (keep + start).astype(np.int64))
    done = {**meta, "n": int(len(keep)), "failures": failures}
    write_json_atomic(tmp / "meta.json", done)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return done


def _merge_shards(source: ImageSource, backbone: FrozenCLIP, cache: FeatureCache, key: str, parts: dict,
                  folder: Path, metas: list[dict], bad_images: str) -> None:
    """Rank 0: write the single-process cache entry from the shards (or raise under bad_images=error)."""
    failures = [(int(i), reason) for meta in metas for i, reason in meta["failures"]]
    report_unreadable(source, failures, bad_images)
    writer = cache.writer(source.dataset, source.split, key, parts, len(source), backbone.num_patches,
                          backbone.embed_dim, source.class_names)
    try:
        kept: list[np.ndarray] = []
        for meta in metas:
            shard = folder / f"rank_{meta['rank']:02d}"
            indices = np.load(shard / "indices.npy")
            g = np.load(shard / "global.npy", mmap_mode="r")
            p = np.load(shard / "patches.npy", mmap_mode="r")
            lab = np.load(shard / "labels.npy", mmap_mode="r")
            for lo in range(0, len(indices), 1024):
                sl = slice(lo, lo + 1024)
                writer.write(indices[sl], np.asarray(g[sl]), np.asarray(p[sl]), np.asarray(lab[sl]))
            kept.append(indices)
        order = np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)
        if not np.array_equal(order, np.flatnonzero(writer.filled)):
            raise RuntimeError("distributed extraction: shards overlap or leave gaps")
        writer.commit([source.sample_id(int(i)) for i in order], [source.sample_id(i) for i, _ in failures])
    except BaseException:
        writer.abort()
        raise


def _broadcast(obj: object, group: object) -> object:
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=group)
    return box[0]


def _gather(obj: object, group: object, world_size: int) -> list:
    out: list = [None] * world_size
    dist.all_gather_object(out, obj, group=group)
    return out


def get_features_distributed(source: ImageSource, backbone: FrozenCLIP, cache: FeatureCache, batch_size: int = 128,
                             num_workers: int | str = "auto", bad_images: str = "skip", progress: bool = True,
                             timeout_s: float = 7200.0) -> FeatureSet:
    """Cached features of ``source``, encoded by all ranks of a torchrun job (or by this process alone).

    Every rank must call this with the same source, backbone and cache root (a shared file system).
    Falls back to :func:`~spacil.features.extract.get_features` when WORLD_SIZE is unset or 1. The
    process group is created on first use and kept for later calls; :func:`shutdown_distributed` ends it.
    """
    env = dist_env()
    if env is None:
        return get_features(source, backbone, cache, batch_size, num_workers, bad_images, progress)
    if bad_images not in {"skip", "error"}:
        raise ValueError("bad_images must be 'skip' or 'error'")
    group = init_distributed(timeout_s)
    # Only rank 0 finds the content hash (recorded under the folder's fingerprint, else by reading every
    # image); every rank checks it sees the same listing and weights.
    keyed: dict = {}
    if env.rank == 0:
        try:
            keyed = {"parts": feature_key_parts(source, backbone, cache.dtype, cache)}
        except Exception as exc:  # noqa: BLE001 - the other ranks are waiting for the key
            keyed = {"error": f"rank 0: {exc.__class__.__name__}: {exc}"}
    keyed = _broadcast(keyed, group)
    if "error" in keyed:
        raise RuntimeError(f"distributed extraction: cannot compute the cache key ({keyed['error']})")
    parts = keyed["parts"]
    mine = (_listing_digest(source), backbone.fingerprint(), json.dumps(backbone.transform_description(), sort_keys=True),
            json.dumps(backbone.patch_source_description(), sort_keys=True))
    views = _gather(mine, group, env.world_size)
    if any(v != views[0] for v in views) or parts["weights_sha256"] != mine[1]:
        raise RuntimeError(f"rank {env.rank}: ranks see different datasets or backbones; "
                           "every rank must load the same files and weights")
    key = feature_key(parts)
    dataset, split = source.dataset, source.split

    status: dict = {}
    if env.rank == 0:
        try:
            status = {"state": "hit" if cache.load(dataset, split, key) is not None else "miss"}
        except CacheError as exc:
            status = {"state": "error", "message": str(exc)}
    status = _broadcast(status, group)
    if status["state"] == "error":
        raise CacheError(status["message"])
    if status["state"] == "hit":
        found = cache.load(dataset, split, key)
        assert found is not None
        logger.info("reusing cached features %s", found.location)
        return check_cached_skips(found, source, bad_images)

    folder = shards_dir(cache, dataset, split, key)
    start, stop = shard_range(len(source), batch_size, env.rank, env.world_size)
    meta = _shard_meta(key, env, start, stop, batch_size)
    shard = folder / f"rank_{env.rank:02d}"
    try:
        done = _existing_shard(shard, meta)
        if done is not None:
            logger.info("rank %d: reusing complete shard %s", env.rank, shard)
        else:
            done = _encode_shard(source, backbone, shard, meta, batch_size, num_workers,
                                 progress and env.rank == 0, cache.dtype)
        mine_status = {"ok": True, "meta": done}
    except Exception as exc:  # noqa: BLE001 - every rank must learn that one failed, or the others hang
        logger.exception("rank %d: shard extraction failed", env.rank)
        mine_status = {"ok": False, "message": f"rank {env.rank}: {exc.__class__.__name__}: {exc}"}
    gathered = _gather(mine_status, group, env.world_size)
    failed = [g["message"] for g in gathered if not g["ok"]]
    if failed:
        raise RuntimeError("distributed extraction failed: " + "; ".join(failed))

    result: dict = {"ok": True}
    if env.rank == 0:
        try:
            _merge_shards(source, backbone, cache, key, parts, folder, [g["meta"] for g in gathered], bad_images)
            shutil.rmtree(folder, ignore_errors=True)
        except DatasetError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            result = {"ok": False, "kind": "dataset", "message": str(exc)}
        except Exception as exc:  # noqa: BLE001 - tell the other ranks before raising
            result = {"ok": False, "kind": "other", "message": f"{exc.__class__.__name__}: {exc}"}
    result = _broadcast(result, group)
    if not result["ok"]:
        raise (DatasetError if result["kind"] == "dataset" else RuntimeError)(result["message"])
    loaded = cache.load(dataset, split, key)
    if loaded is None:
        raise CacheError(f"rank {env.rank}: merged cache entry {cache.entry_dir(dataset, split, key)} is not visible; "
                         "all ranks need the same cache root on a shared file system")
    logger.info("rank %d: %d features of %s/%s in %s", env.rank, len(loaded), dataset, split, loaded.location)
    return loaded
