"""The content hash of an image folder, computed once and found again by a cheap fingerprint.

The feature-cache key includes a sha256 of every image's bytes, so changed images never reuse stale
features. Reading every file on every command costs minutes for ImageNet-R or SUN-397 (and under torchrun
the other ranks wait), so the hash is recorded under the split's fingerprint (paths, sizes, modification
times: one ``stat`` per file) in ``<cache root>/<dataset>/content-hashes/``. A later command with the
same fingerprint reads the recorded hash; ``cache.verify=full`` recomputes it and replaces a record that
no longer matches (a file rewritten with the same size and modification time).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..data.datasets import ImageSource
from ..io import write_json_atomic

logger = logging.getLogger(__name__)

RECORD_FOLDER = "content-hashes"


def record_path(root: Path, source: ImageSource, fingerprint: str) -> Path:
    return Path(root) / source.dataset / RECORD_FOLDER / f"{source.split}-{fingerprint[:32]}.json"


def _recorded(path: Path, fingerprint: str) -> str | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if record.get("fingerprint") != fingerprint or not isinstance(record.get("content_sha256"), str):
        return None
    return record["content_sha256"]


def content_hash(source: ImageSource, root: Path | None, verify: str = "fast") -> str:
    """``source.content_hash()``, read from its record when the fingerprint matches (``verify=fast``)."""
    fingerprint = source.fingerprint() if root is not None else None
    if fingerprint is None:
        return source.content_hash()
    path = record_path(root, source, fingerprint)
    recorded = _recorded(path, fingerprint)
    if recorded is not None and verify != "full":
        logger.debug("content hash of %s/%s from %s", source.dataset, source.split, path)
        return recorded
    computed = source.content_hash()
    if recorded is not None and recorded != computed:
        logger.warning("%s/%s: images changed without a change of size or modification time; the recorded "
                       "content hash in %s is replaced (found by cache.verify=full)", source.dataset,
                       source.split, path)
    if recorded != computed:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path, {"fingerprint": fingerprint, "content_sha256": computed,
                                     "dataset": source.dataset, "split": source.split, "n": len(source)})
        except OSError as exc:  # a read-only cache still works, it only re-reads the images next time
            logger.warning("could not record the content hash of %s/%s in %s (%s)", source.dataset, source.split,
                           path, exc)
    return computed
