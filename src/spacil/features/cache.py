"""On-disk cache of frozen features: each image is encoded once per (backbone, transform, split).

Layout of one entry (a folder, renamed into place only when complete, so a killed run never leaves a
half-written entry behind under the final name)::

    <root>/<dataset>/<split>-<key[:16]>/
        manifest.json   key, what the key was made of, shapes, dtypes, file sizes and sha256
        global.npy      [N, D]    float16  projected [CLS] features (``cache.dtype``)
        patches.npy     [N, P, D] float16  projected patch tokens
        labels.npy      [N]       int64    original dataset labels
        ids.json        sample ids (relative paths / array indices), skipped files

Arrays are memory-mapped on load, so a dataset larger than RAM still trains.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import SpacilError
from ..io import compact_array, fsync_file, new_array, sha256_file, write_json_atomic

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
OWNER_FILE = "owner.json"  # in a .partial folder: which process on which host is writing it
STALE_AGE_S = 24 * 3600  # a partial folder of another host (or unstamped) untouched this long is abandoned
ARRAY_FILES = ("global.npy", "patches.npy", "labels.npy")
STORAGE_DTYPES = ("float16", "float32")


class CacheError(SpacilError, RuntimeError):
    """A cache entry that exists but cannot be trusted (stale, truncated, tampered)."""


@dataclass
class FeatureSet:
    """Frozen features of one dataset split (rows aligned across arrays)."""

    global_: np.ndarray  # [N, D] float16 (memmap when loaded from disk)
    patches: np.ndarray  # [N, P, D] float16
    labels: np.ndarray  # [N] int64, original dataset labels
    sample_ids: list[str]
    class_names: list[str]
    skipped: list[str] = field(default_factory=list)
    location: Path | None = None
    key: str | None = None  # the cache key: what a run's results are keyed on

    def check_finite(self, rows: np.ndarray, arrays: Sequence[np.ndarray]) -> None:
        """Raise :class:`CacheError` naming the entry and a sample if ``arrays`` (rows of this set) hold NaN/inf.

        Cheap where it is called (on rows already read for training or scoring), and it turns a failure far
        downstream (a covariance that is not positive definite, NaN accuracy) into the file to delete.
        """
        for arr in arrays:
            finite = np.isfinite(arr.reshape(len(arr), -1)).all(axis=1)
            if not finite.all():
                bad = int(np.asarray(rows)[int(np.flatnonzero(~finite)[0])])
                raise CacheError(non_finite_message(self, [bad], int((~finite).sum())))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def embed_dim(self) -> int:
        return int(self.global_.shape[1])

    @property
    def num_patches(self) -> int:
        return int(self.patches.shape[1])


def non_finite_message(features: "FeatureSet", bad_rows: Sequence[int], count: int) -> str:
    row = int(bad_rows[0])
    where = features.location if features.location is not None else "the extracted features"
    name = features.class_names[int(features.labels[row])] if len(features.class_names) else "?"
    return (f"cached features in {where} hold NaN or inf ({count} row(s), e.g. {features.sample_ids[row]}, "
            f"class {name!r}); delete that folder and rerun to re-extract them (if they come back, the encoder "
            "overflows: try backbone.precision=fp32)")


def feature_key(parts: dict) -> str:
    """sha256 of a canonical JSON rendering of what determines the features."""
    blob = json.dumps({"format": CACHE_FORMAT_VERSION, **parts}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


class FeatureCache:
    """Finds, validates and writes cache entries under ``root``."""

    def __init__(self, root: Path | str, verify: str = "fast", dtype: str = "float16") -> None:
        self.root = Path(root).expanduser()
        if verify not in {"fast", "full"}:
            raise ValueError("verify must be 'fast' or 'full'")
        if dtype not in STORAGE_DTYPES:
            raise ValueError(f"feature storage dtype must be one of {', '.join(STORAGE_DTYPES)}")
        self.verify = verify
        self.dtype = dtype

    def entry_dir(self, dataset: str, split: str, key: str) -> Path:
        return self.root / dataset / f"{split}-{key[:16]}"

    # ------------------------------------------------------------------ reading
    def load(self, dataset: str, split: str, key: str) -> FeatureSet | None:
        """The cached features for ``key``, ``None`` if absent; :class:`CacheError` if present but untrustworthy."""
        folder = self.entry_dir(dataset, split, key)
        if not folder.exists():
            return None
        manifest_path = folder / "manifest.json"
        hint = f"delete {folder} to rebuild it"
        if not manifest_path.is_file():
            raise CacheError(f"feature cache entry {folder} has no manifest (incomplete or corrupt); {hint}")
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError:
            raise CacheError(f"feature cache manifest {manifest_path} is not valid JSON; {hint}") from None
        if manifest.get("key") != key:
            raise CacheError(f"feature cache entry {folder} was built from other inputs (stale key); {hint}")
        if manifest.get("format") != CACHE_FORMAT_VERSION:
            raise CacheError(f"feature cache entry {folder} has format {manifest.get('format')}, "
                             f"expected {CACHE_FORMAT_VERSION}; {hint}")
        arrays = {}
        for name in ARRAY_FILES:
            path = folder / name
            info = manifest["files"][name]
            if not path.is_file() or path.stat().st_size != info["bytes"]:
                raise CacheError(f"feature cache file {path} is missing or truncated; {hint}")
            if self.verify == "full" and sha256_file(path) != info["sha256"]:
                raise CacheError(f"feature cache file {path} does not match its checksum; {hint}")
            try:
                arrays[name] = np.load(path, mmap_mode="r")
            except ValueError as exc:
                raise CacheError(f"feature cache file {path} cannot be read ({exc}); {hint}") from None
            if list(arrays[name].shape) != info["shape"]:
                raise CacheError(f"feature cache file {path} has shape {arrays[name].shape}, manifest says {info['shape']}; {hint}")
        ids = json.loads((folder / "ids.json").read_text())
        found = FeatureSet(
            global_=arrays["global.npy"], patches=arrays["patches.npy"], labels=np.asarray(arrays["labels.npy"]),
            sample_ids=ids["sample_ids"], class_names=manifest["class_names"], skipped=ids["skipped"], location=folder,
            key=key,
        )
        # the global features are small (N x D): check them whole here; patches are checked as rows are read
        bad = np.concatenate([start + np.flatnonzero(~np.isfinite(found.global_[start:start + 65536]).all(axis=1))
                              for start in range(0, len(found), 65536)] or [np.zeros(0, dtype=np.int64)])
        if len(bad):
            raise CacheError(non_finite_message(found, bad, len(bad)))
        return found

    # ------------------------------------------------------------------ writing
    def writer(self, dataset: str, split: str, key: str, key_parts: dict, n: int, num_patches: int, dim: int,
               class_names: Sequence[str]) -> "CacheWriter":
        return CacheWriter(self, dataset, split, key, key_parts, n, num_patches, dim, list(class_names))


def _as_slice(indices: np.ndarray) -> np.ndarray | slice:
    """``indices`` as a slice when they are consecutive and increasing, else unchanged."""
    indices = np.asarray(indices)
    if len(indices) and indices[-1] - indices[0] == len(indices) - 1 and np.all(np.diff(indices) == 1):
        return slice(int(indices[0]), int(indices[-1]) + 1)
    return indices


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _last_modified(folder: Path) -> float:
    times = [folder.stat().st_mtime] + [p.stat().st_mtime for p in folder.iterdir() if p.is_file()]
    return max(times)


def partial_is_stale(folder: Path, now: float | None = None) -> bool:
    """Whether a ``.partial`` folder was left by a process that is gone (killed, crashed, machine rebooted).

    A folder stamped by this host is stale when its pid no longer runs; one from another host, or without a
    stamp, only when nothing in it changed for :data:`STALE_AGE_S` (a live writer is never removed).
    """
    try:
        owner = json.loads((folder / OWNER_FILE).read_text())
    except (OSError, ValueError):
        owner = None
    if owner is not None and owner.get("host") == socket.gethostname():
        return not _pid_alive(int(owner["pid"]))
    try:
        return (now if now is not None else time.time()) - _last_modified(folder) > STALE_AGE_S
    except OSError:
        return False


def remove_stale_partials(final_dir: Path) -> list[Path]:
    """Delete the abandoned ``.partial`` folders of one cache entry (gigabytes each at ViT-B/16 scale)."""
    removed = []
    for folder in sorted(final_dir.parent.glob(f".{final_dir.name}.partial-*")):
        if folder.is_dir() and partial_is_stale(folder):
            shutil.rmtree(folder, ignore_errors=True)
            logger.warning("removed %s, left by an extraction that was killed", folder)
            removed.append(folder)
    return removed


class CacheWriter:
    """Fills preallocated memory-mapped arrays in a temporary folder and publishes them atomically."""

    def __init__(self, cache: FeatureCache, dataset: str, split: str, key: str, key_parts: dict, n: int,
                 num_patches: int, dim: int, class_names: list[str]) -> None:
        self.final_dir = cache.entry_dir(dataset, split, key)
        self.tmp_dir = self.final_dir.with_name(f".{self.final_dir.name}.partial-{os.getpid()}")
        if self.tmp_dir.exists():
            shutil.rmtree(self.tmp_dir)
        if self.final_dir.parent.is_dir():
            remove_stale_partials(self.final_dir)
        self.tmp_dir.mkdir(parents=True)
        write_json_atomic(self.tmp_dir / OWNER_FILE, {"pid": os.getpid(), "host": socket.gethostname(),
                                                      "started": time.time()})
        self.key, self.key_parts, self.class_names = key, key_parts, class_names
        self.dataset, self.split = dataset, split
        self.dtype = np.dtype(cache.dtype)
        self.global_ = new_array(self.tmp_dir / "global.npy", self.dtype, (n, dim))
        self.patches = new_array(self.tmp_dir / "patches.npy", self.dtype, (n, num_patches, dim))
        self.labels = new_array(self.tmp_dir / "labels.npy", np.int64, (n,))
        self.filled = np.zeros(n, dtype=bool)

    def write(self, indices: np.ndarray, global_: np.ndarray, patches: np.ndarray, labels: np.ndarray) -> None:
        """Rows ``indices`` (a contiguous run is written as a slice: one copy, no fancy indexing)."""
        rows = _as_slice(indices)
        self.global_[rows] = global_.astype(self.dtype, copy=False)
        self.patches[rows] = patches.astype(self.dtype, copy=False)
        self.labels[rows] = labels
        self.filled[rows] = True

    def abort(self) -> None:
        shutil.rmtree(self.tmp_dir, ignore_errors=True)

    def commit(self, sample_ids: list[str], skipped: list[str]) -> Path:
        """Drop rows of skipped images, checksum, write the manifest, rename into place."""
        keep = np.flatnonzero(self.filled)
        if len(keep) != len(sample_ids):
            raise RuntimeError("cache writer: sample ids do not match the rows written")
        for mm in (self.global_, self.patches, self.labels):
            mm.flush()
        if len(keep) < len(self.filled):  # rows of unreadable images (rare)
            for name in ARRAY_FILES:
                compact_array(self.tmp_dir / name, keep)
        files = {}
        for name in ARRAY_FILES:
            path = self.tmp_dir / name
            fsync_file(path)
            arr = np.load(path, mmap_mode="r")
            files[name] = {"bytes": path.stat().st_size, "sha256": sha256_file(path), "shape": list(arr.shape),
                           "dtype": str(arr.dtype)}
        write_json_atomic(self.tmp_dir / "ids.json", {"sample_ids": sample_ids, "skipped": skipped})
        manifest = {"format": CACHE_FORMAT_VERSION, "key": self.key, "inputs": self.key_parts, "dataset": self.dataset,
                    "split": self.split, "n": int(len(keep)), "class_names": self.class_names, "files": files}
        write_json_atomic(self.tmp_dir / "manifest.json", manifest)
        (self.tmp_dir / OWNER_FILE).unlink(missing_ok=True)  # the published entry belongs to no process
        if self.final_dir.exists():  # another process finished the same entry first; keep theirs
            shutil.rmtree(self.tmp_dir)
        else:
            os.replace(self.tmp_dir, self.final_dir)
        return self.final_dir
