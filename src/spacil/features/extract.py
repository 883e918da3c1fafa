"""Run the frozen encoder over a dataset split once and store the result in the feature cache."""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..backbone import FrozenCLIP
from ..data.datasets import BadImageError, DatasetError, ImageSource
from .cache import FeatureCache, FeatureSet, feature_key
from .content_index import content_hash
from .workers import loader_workers
from .writeback import BackgroundWriter

logger = logging.getLogger(__name__)


class _TransformedImages(Dataset):
    """Decodes and preprocesses images; a bad file yields ``None`` instead of killing the loader."""

    def __init__(self, source: ImageSource, transform: Callable, indices: np.ndarray) -> None:
        self.source, self.transform, self.indices = source, transform, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        index = int(self.indices[i])
        try:
            return index, self.transform(self.source.load(index)), None
        except BadImageError as exc:
            return index, None, exc.reason


def _collate(batch):
    good = [(i, x) for i, x, err in batch if x is not None]
    bad = [(i, err) for i, x, err in batch if x is None]
    indices = torch.tensor([i for i, _ in good], dtype=torch.long)
    images = torch.stack([x for _, x in good]) if good else None
    return indices, images, bad


def feature_key_parts(source: ImageSource, backbone: FrozenCLIP, storage_dtype: str = "float16",
                      cache: FeatureCache | None = None) -> dict:
    """Everything that determines the cached features of ``source``.

    With ``cache``, the images' content hash is read from the record its cheap fingerprint finds under the
    cache root (computed and recorded on first use; recomputed under ``cache.verify=full``), so a warm
    command does not read every image file; the key is the same either way.

    float16, the storage of every entry written before the dtype was a setting, is left out of the key so
    those entries stay valid; any other storage dtype is part of it. Likewise the encoder's autocast dtype
    (bf16 under ``backbone.precision=auto`` on a GPU) is part of the key, and plain fp32 adds nothing: bf16
    and fp32 features differ, and switching precision must not reuse what was cached first. Patch tokens
    read from elsewhere than the last block's output (``backbone.patch_layer`` / ``patch_path``) are keyed too.
    """
    parts = {
        "backbone": backbone.name,
        "weights_sha256": backbone.fingerprint(),
        "transform": backbone.transform_description(),
        "dataset": source.dataset,
        "split": source.split,
        "content_sha256": content_hash(source, cache.root if cache is not None else None,
                                       cache.verify if cache is not None else "fast"),
    }
    if patch_source := backbone.patch_source_description():
        parts["patch_tokens"] = patch_source
    if storage_dtype != "float16":
        parts["storage_dtype"] = storage_dtype
    if backbone.amp_dtype is not None:
        parts["encoder_autocast"] = str(backbone.amp_dtype).removeprefix("torch.")
    return parts


def iterate_features(source: ImageSource, backbone: FrozenCLIP, indices: np.ndarray, batch_size: int,
                     num_workers: int | str, progress: bool = True, desc: str = "extract", dtype: str = "float32"):
    """Yield ``(indices, global, patches, bad)`` per batch; ``bad`` lists ``(index, reason)`` of unreadable files.

    The features are cast to ``dtype`` (the cache's storage) on the encoder's device, before the copy to the
    host: half the bytes over PCIe for float16, and the same values as casting on the host.
    """
    out_dtype = getattr(torch, dtype)
    workers = loader_workers(num_workers)
    loader = DataLoader(_TransformedImages(source, backbone.preprocess, indices), batch_size=batch_size,
                        shuffle=False, num_workers=workers, collate_fn=_collate,
                        pin_memory=backbone.device.type == "cuda", persistent_workers=False)
    for idx, images, bad in tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False):
        if images is None:
            yield idx.numpy(), None, None, bad
            continue
        feats = backbone.encode_images(images)
        yield idx.numpy(), feats.global_.to(out_dtype).cpu().numpy(), feats.patches.to(out_dtype).cpu().numpy(), bad


def report_unreadable(source: ImageSource, failures: list[tuple[int, str]], bad_images: str) -> None:
    """Name every unreadable image: one error for ``bad_images=error``, else one warning per skipped file."""
    if not failures:
        return
    names = [f"{source.sample_id(i)} ({reason})" for i, reason in failures]
    if bad_images == "error":
        raise DatasetError(f"{len(failures)} unreadable images in {source.dataset}/{source.split}: "
                           + "; ".join(names[:10]) + (" ..." if len(names) > 10 else "")
                           + " (set data.bad_images=skip to leave them out)")
    for name in names:
        logger.warning("skipped unreadable image %s", name)


def check_cached_skips(found: FeatureSet, source: ImageSource, bad_images: str) -> FeatureSet:
    """Apply ``bad_images`` to a cache hit: the entry lists the files an earlier ``skip`` run left out.

    Without this a run with ``bad_images=error`` would train on an entry that silently lacks images, just
    because an earlier run with ``skip`` wrote it.
    """
    if bad_images == "error" and found.skipped:
        names = found.skipped
        raise DatasetError(f"{len(names)} unreadable images in {source.dataset}/{source.split} (recorded in the cached "
                           f"features {found.location}, written by a run with data.bad_images=skip): "
                           + "; ".join(names[:10]) + (" ..." if len(names) > 10 else "")
                           + " (fix or delete those files, then rerun; or set data.bad_images=skip)")
    return found


def extract_to_cache(source: ImageSource, backbone: FrozenCLIP, cache: FeatureCache, key: str, key_parts: dict,
                     batch_size: int = 128, num_workers: int | str = "auto", bad_images: str = "skip",
                     progress: bool = True) -> FeatureSet:
    """Encode every image of ``source`` once and publish the cache entry."""
    n = len(source)
    writer = cache.writer(source.dataset, source.split, key, key_parts, n, backbone.num_patches,
                          backbone.embed_dim, source.class_names)
    failures: list[tuple[int, str]] = []
    try:
        with BackgroundWriter() as background:  # the memmap write of a batch overlaps the next forward
            for idx, g, p, bad in iterate_features(source, backbone, np.arange(n), batch_size, num_workers,
                                                   progress, desc=f"{source.dataset}/{source.split}",
                                                   dtype=cache.dtype):
                failures.extend(bad)
                if g is not None:
                    background.submit(writer.write, idx, g, p, source.labels[idx])
        report_unreadable(source, failures, bad_images)
        kept = np.flatnonzero(writer.filled)
        folder = writer.commit([source.sample_id(int(i)) for i in kept],
                               [source.sample_id(i) for i, _ in failures])
    except BaseException:
        writer.abort()
        raise
    logger.info("cached %d features of %s/%s in %s", len(kept), source.dataset, source.split, folder)
    loaded = cache.load(source.dataset, source.split, key)
    assert loaded is not None
    return loaded


def get_features(source: ImageSource, backbone: FrozenCLIP, cache: FeatureCache, batch_size: int = 128,
                 num_workers: int | str = "auto", bad_images: str = "skip", progress: bool = True) -> FeatureSet:
    """Cached features of ``source``, extracting them first if this (backbone, transform, split) is new."""
    parts = feature_key_parts(source, backbone, cache.dtype, cache)
    key = feature_key(parts)
    found = cache.load(source.dataset, source.split, key)
    if found is not None:
        logger.info("reusing cached features %s", found.location)
        return check_cached_skips(found, source, bad_images)
    return extract_to_cache(source, backbone, cache, key, parts, batch_size, num_workers, bad_images, progress)
