"""Files that readers never see half written, and memory-mapped arrays written in place.

Everything the package writes for later (run folders, cache entries, description files, checkpoints)
goes through here: a temporary name in the same folder, fsync, then an atomic rename.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` if the block succeeds."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 text (``\\n`` line ends) through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)


def write_json_atomic(path: str | os.PathLike[str], data: object) -> None:
    """JSON with a 2-space indent and a trailing newline, written atomically."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def new_array(path: Path, dtype: np.dtype | str, shape: tuple[int, ...]) -> np.memmap:
    """A preallocated ``.npy`` file opened for writing rows in place (datasets larger than memory)."""
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)


def compact_array(path: Path, rows: np.ndarray, chunk: int = 4096) -> None:
    """Rewrite the ``.npy`` file at ``path`` keeping only ``rows`` (in order), in chunks, atomically."""
    src = np.load(path, mmap_mode="r")
    tmp = path.with_name(f"compact-{path.name}")
    dst = new_array(tmp, src.dtype, (len(rows), *src.shape[1:]))
    for start in range(0, len(rows), chunk):
        dst[start:start + chunk] = src[rows[start:start + chunk]]
    dst.flush()
    del dst, src
    os.replace(tmp, path)
