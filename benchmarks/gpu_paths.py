"""Benchmark sections of issue 23: evaluation throughput per stage, and a warm command vs a cold one.

- ``eval_stages``: after each of T tasks, every seen test image is scored. ``stream`` reads each stage's rows
  from the memory-mapped cache batch by batch (what every stage did before); ``device`` copies the split to
  the training device once (``train.eval_features=device``, the default). Images per second per stage.
- ``warm_start``: a folder of small PNGs; the cold lookup reads and hashes every file and encodes them, a
  warm one finds the cache entry by the folder's fingerprint (paths, sizes, mtimes) without reading images;
  also timed: the full content hash (what every warm command paid before) and ``cache.verify=full``.

Both take their sizes as parameters (``quick`` picks small ones) and are run by ``run_benchmarks.py``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from spacil.backbone import load_backbone
from spacil.config import TrainConfig
from spacil.features import FeatureCache, FeatureSet, get_features
from spacil.methods.base import FeatureBatch, TaskContext
from spacil.methods.spa import SPAConfig
from spacil.methods.spa.learner import SPALearner


def _memmapped_features(folder: Path, n: int, patches: int, dim: int, n_classes: int, seed: int = 0) -> FeatureSet:
    """A float16 feature set on disk, opened memory-mapped as the cache opens its entries."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % n_classes
    for name, shape in (("global", (n, dim)), ("patches", (n, patches, dim))):
        out = np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=np.float16, shape=shape)
        for start in range(0, n, 512):
            stop = min(start + 512, n)
            out[start:stop] = rng.standard_normal((stop - start,) + shape[1:]).astype(np.float16)
        out.flush()
        del out
    return FeatureSet(np.load(folder / "global.npy", mmap_mode="r"), np.load(folder / "patches.npy", mmap_mode="r"),
                      labels, [str(i) for i in range(n)], [str(c) for c in range(n_classes)], location=folder)


def _texts(n_classes: int, dim: int, n_tokens: int = 6):
    """Random unit prompts and description tokens (the scores' values do not matter here, only their cost)."""
    import torch.nn.functional as F

    from spacil.text.class_texts import ClassTexts
    from spacil.text.semantic_tokens import SemanticTokens

    g = torch.Generator().manual_seed(1)
    tokens = F.normalize(torch.randn(n_classes, n_tokens, dim, generator=g), dim=-1)
    sem = SemanticTokens(tokens, torch.ones(n_classes, n_tokens, dtype=torch.bool), F.normalize(tokens.mean(1), dim=-1),
                         [["p"] * n_tokens] * n_classes, torch.zeros(n_classes, n_tokens, dtype=torch.long))
    return ClassTexts([str(i) for i in range(n_classes)], F.normalize(torch.randn(n_classes, dim, generator=g), dim=-1),
                      semantic=sem)


def bench_eval_stages(quick: bool = False, n_test: int | None = None, n_classes: int | None = None,
                      n_tasks: int | None = None, patches: int | None = None, dim: int | None = None,
                      batch_size: int = 256, device: str | None = None, threads: int | None = None) -> dict:
    """Images/s of each stage's evaluation, the test split streamed from the memmap vs held on the device.

    ``threads`` sets torch's CPU threads for the section (on a shared, busy CPU every parallel region can
    cost tens of ms of thread start-up; 1 thread measures the work itself)."""
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _eval_stages(quick, n_test, n_classes, n_tasks, patches, dim, batch_size, device)
    finally:
        torch.set_num_threads(previous_threads)


def _eval_stages(quick, n_test, n_classes, n_tasks, patches, dim, batch_size, device) -> dict:
    from spacil.training.harness import predict
    from spacil.training.resident import ResidentFeatures

    from spacil.training.harness import load_rows

    n_test = n_test or (300 if quick else 2000)
    n_classes = n_classes or (4 if quick else 20)
    n_tasks = n_tasks or (2 if quick else 5)
    patches = patches or (16 if quick else 64)
    dim = dim or (32 if quick else 64)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with tempfile.TemporaryDirectory(prefix="spacil-bench-eval-") as tmp:
        feats = _memmapped_features(Path(tmp), n_test, patches, dim, n_classes)
        labels = feats.labels.astype(np.int64)
        learner = SPALearner(SPAConfig.model_validate({"selection": {"k": min(8, patches)}}), TrainConfig(epochs=0))
        g = torch.Generator().manual_seed(2)
        train = FeatureBatch(torch.randn(4 * n_classes, dim, generator=g),
                             torch.randn(4 * n_classes, patches, dim, generator=g).half(),
                             torch.arange(4 * n_classes) % n_classes)
        learner.learn_task(TaskContext(0, range(n_classes), n_classes, _texts(n_classes, dim), dev, 0), train.to(dev))
        start = time.perf_counter()
        resident = ResidentFeatures.load(feats, labels, dev)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        load_s = time.perf_counter() - start
        stages = []
        for t in range(n_tasks):
            n_seen = max(1, round(n_classes * (t + 1) / n_tasks))
            rows = np.flatnonzero(labels < n_seen)
            row = {"stage": t, "n_seen": n_seen, "images": int(len(rows))}
            # the data path alone: what a stage pays to get its rows onto the device, before any scoring
            start = time.perf_counter()
            for i in range(0, len(rows), batch_size):
                load_rows(feats, rows[i:i + batch_size], labels, dev)
            row["stream_read_s"] = time.perf_counter() - start
            index = torch.from_numpy(rows).to(dev)
            start = time.perf_counter()
            for i in range(0, len(rows), batch_size):
                resident.batch(index[i:i + batch_size])
            if dev.type == "cuda":
                torch.cuda.synchronize()
            row["device_read_s"] = time.perf_counter() - start
            for mode, held in (("stream", None), ("device", resident)):
                start = time.perf_counter()
                predict(learner, feats, rows, labels, n_seen, dev, batch_size, held)
                row[f"{mode}_images_per_s"] = len(rows) / (time.perf_counter() - start)
            stages.append(row)
        total = {mode: sum(r["images"] for r in stages) / sum(r["images"] / r[f"{mode}_images_per_s"] for r in stages)
                 for mode in ("stream", "device")}
    return {"device": str(dev), "setting": f"{n_test} test images, {n_classes} classes in {n_tasks} tasks, "
            f"P={patches}, D={dim}, batch {batch_size}, {torch.get_num_threads()} CPU threads", "load_once_s": load_s, "stages": stages,
            "stream_images_per_s": total["stream"], "device_images_per_s": total["device"],
            "stream_read_s": sum(r["stream_read_s"] for r in stages),
            "device_read_s": sum(r["device_read_s"] for r in stages),
            "device_over_stream": total["device"] / total["stream"]}


def write_png_folder(root: Path, n_images: int, n_classes: int, size: int = 8, n_test_per_class: int = 1) -> Path:
    """``n_images`` tiny PNGs in root/train/<class>/ (plus a few test images), colours from a fixed seed."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, per_class in (("train", -(-n_images // n_classes)), ("test", n_test_per_class)):
        for c in range(n_classes):
            folder = root / split / f"class_{c:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                arr = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
                Image.fromarray(arr).save(folder / f"img_{i:05d}.png")
    return root


def bench_warm_start(quick: bool = False, n_images: int | None = None, n_classes: int | None = None,
                     image_size: int = 8) -> dict:
    """Seconds to find the features of a cached folder (warm) vs to build them (cold)."""
    from spacil.data.datasets import ImageFolderSource

    n_images = n_images or (500 if quick else 5000)
    n_classes = n_classes or (10 if quick else 50)
    backbone = load_backbone("tiny-test", device="cpu")
    with tempfile.TemporaryDirectory(prefix="spacil-bench-warm-") as tmp:
        root = write_png_folder(Path(tmp) / "images", n_images, n_classes, image_size)
        cache_root = Path(tmp) / "cache"

        def lookup(verify: str = "fast") -> tuple[float, int]:
            start = time.perf_counter()
            before = backbone.images_encoded
            source = ImageFolderSource(root, "train")
            get_features(source, backbone, FeatureCache(cache_root, verify=verify), batch_size=256, num_workers=0,
                         progress=False)
            return time.perf_counter() - start, backbone.images_encoded - before

        cold_s, cold_encoded = lookup()
        warm_s, warm_encoded = lookup()
        warm_again_s, _ = lookup()
        full_s, _ = lookup("full")
        source = ImageFolderSource(root, "train")
        start = time.perf_counter()
        source.content_hash()
        content_hash_s = time.perf_counter() - start
        start = time.perf_counter()
        source.fingerprint()
        fingerprint_s = time.perf_counter() - start
    return {"images": len(source), "image_size": image_size, "cold_s": cold_s, "cold_encoded": cold_encoded,
            "warm_s": min(warm_s, warm_again_s), "warm_encoded": warm_encoded, "warm_verify_full_s": full_s,
            "content_hash_s": content_hash_s, "fingerprint_s": fingerprint_s,
            "cold_over_warm": cold_s / min(warm_s, warm_again_s)}


def render_gpu_paths(results: dict) -> str:
    """Markdown lines for the two sections (whichever ran)."""
    lines = []
    if "eval_stages" in results:
        e = results["eval_stages"]
        lines += ["", f"Evaluation per stage on {e['device']} ({e['setting']}; the split copied once in "
                      f"{e['load_once_s']:.2f} s):", "",
                  "| stage | seen classes | images | streamed from the cache: img/s (reading rows, s) | "
                  "held on the device: img/s (reading rows, s) |", "|---|---|---|---|---|"]
        lines += [f"| {r['stage']} | {r['n_seen']} | {r['images']} | {r['stream_images_per_s']:.0f} "
                  f"({r['stream_read_s']:.4f}) | {r['device_images_per_s']:.0f} ({r['device_read_s']:.4f}) |"
                  for r in e["stages"]]
        lines += [f"| all | | | {e['stream_images_per_s']:.0f} ({e['stream_read_s']:.4f}) | "
                  f"{e['device_images_per_s']:.0f} ({e['device_read_s']:.4f}) |"]
    if "warm_start" in results:
        w = results["warm_start"]
        lines += ["", f"Cache lookup of a folder of {w['images']} PNGs ({w['image_size']}x{w['image_size']}), "
                      "tiny-test backbone, CPU:", "",
                  "| step | seconds | images encoded |", "|---|---|---|",
                  f"| cold (hash every file, encode, write the cache) | {w['cold_s']:.2f} | {w['cold_encoded']} |",
                  f"| warm (fingerprint: one stat per file) | {w['warm_s']:.3f} | {w['warm_encoded']} |",
                  f"| warm with cache.verify=full (re-hash files and arrays) | {w['warm_verify_full_s']:.3f} | 0 |",
                  f"| the full content hash alone (what every warm command paid before) | {w['content_hash_s']:.3f} | |",
                  f"| the fingerprint alone | {w['fingerprint_s']:.3f} | |"]
    return "\n".join(lines) + ("\n" if lines else "")
