"""The GPU-facing hot paths of issue 23 give the same results as before, and their host syncs stay bounded.

Host syncs are counted with :class:`device_guards.HostSyncCounter` (calls from spacil's own code to
``.item()``, ``.tolist()``, ``.cpu()`` ...): on a GPU each stalls the pipeline, so their number per task
must not grow with the number of training steps or scored batches on the default path.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from device_guards import SPACIL_SRC, HostSyncCounter, RandomDrawGuard
from spacil.config import load_config
from spacil.methods import make_learner
from spacil.training.harness import (evaluate_task, load_rows, prepare_data, predict, restore_learner,
                                     run_experiment, task_context)


def _config(image_folder, tmp_path, *extra):
    return load_config(None, [f"data.root={image_folder}", "data.init_cls=2", "data.increment=2",
                              f"cache.root={tmp_path / 'cache'}", f"run.output_dir={tmp_path / 'runs'}",
                              "backbone.num_workers=0", "run.plots=false", "train.batch_size=4",
                              "method.spa.selection.k=4", "train.device=cpu", "train.epochs=2", *extra])


@pytest.fixture
def spa_data(image_folder, tmp_path, tiny_backbone):
    cfg = _config(image_folder, tmp_path)
    return cfg, prepare_data(cfg, backbone=tiny_backbone, progress=False)


def test_test_split_held_on_the_device_gives_identical_predictions(spa_data, tmp_path):
    cfg, data = spa_data
    result = run_experiment(cfg, data=data, progress=False)
    device = torch.device("cpu")
    learner = restore_learner(cfg, data, result.folder, 1, device)
    rows = np.flatnonzero(data.test_labels < 4)
    streamed = predict(learner, data.test, rows, data.test_labels, 4, device, batch_size=5)
    for batch_size in (1, 5, 256):
        held = predict(learner, data.test, rows, data.test_labels, 4, device, batch_size, data.test_on(device))
        np.testing.assert_array_equal(held[0], streamed[0])
        np.testing.assert_array_equal(held[1], streamed[1])
    # and a whole run: stage accuracies and the accuracy matrix do not depend on where the test split is held
    stream_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"eval_features": "stream"}),
                                        "run": cfg.run.model_copy(update={"output_dir": tmp_path / "runs-stream"})})
    streamed_run = run_experiment(stream_cfg, data=data, progress=False)
    assert streamed_run.summary["stage_accuracies"] == result.summary["stage_accuracies"]
    assert streamed_run.folder.name == result.folder.name  # result-neutral: same run key


def test_held_test_split_is_checked_for_nan_once(spa_data, monkeypatch):
    cfg, data = spa_data
    calls = []
    original = type(data.test).check_finite
    monkeypatch.setattr(type(data.test), "check_finite", lambda self, rows, arrays: (calls.append(len(rows)),
                                                                                     original(self, rows, arrays)))
    device = torch.device("cpu")
    learner = make_learner(cfg)
    learner.learn_task(task_context(cfg, data, 0, device),
                       load_rows(data.train, np.flatnonzero(data.train_labels < 2), data.train_labels, device))
    calls.clear()
    for _stage in range(3):
        evaluate_task(learner, data, task_context(cfg, data, 0, device), batch_size=3)
    assert sum(calls) == len(data.test)  # every test row once, not once per stage


def _syncs(cfg, data, tmp_path, epochs: int, eval_batch_size: int, tag: str) -> HostSyncCounter:
    run_cfg = cfg.model_copy(update={
        "train": cfg.train.model_copy(update={"epochs": epochs, "eval_batch_size": eval_batch_size}),
        "run": cfg.run.model_copy(update={"output_dir": tmp_path / f"runs-{tag}", "save_checkpoints": False})})
    with HostSyncCounter() as counter, RandomDrawGuard() as draws:
        run_experiment(run_cfg, data=data, progress=False)
    counter.draws = {name for name, _, _ in draws.draws}
    return counter


def test_host_syncs_per_task_do_not_grow_with_steps_or_scored_batches(spa_data, tmp_path):
    """The guards on a default SPA run: the same sync count for 1 vs 3 epochs (3x the steps) and for 256 vs 2
    images per scored batch; every random draw's generator on its tensor's device."""
    cfg, data = spa_data
    base = _syncs(cfg, data, tmp_path, epochs=1, eval_batch_size=256, tag="base")
    more_steps = _syncs(cfg, data, tmp_path, epochs=3, eval_batch_size=256, tag="steps")
    more_batches = _syncs(cfg, data, tmp_path, epochs=1, eval_batch_size=2, tag="batches")
    assert base.total > 0  # the counter sees spacil's syncs (float(loss), the calibration's bias ...)
    assert more_steps.calls == base.calls, more_steps.calls - base.calls
    assert more_batches.calls == base.calls, more_batches.calls - base.calls
    # the draw guard looked at replay sampling, the epoch order and the projectors' initialisation
    assert {"torch.randn", "torch.randperm", "Tensor.normal_"} <= base.draws, base.draws


def test_sync_counter_counts_syncs_from_spacil_code_only():
    """The counter can fail a test: a sync issued by spacil's code is counted, one from elsewhere is not."""
    from spacil.methods.spa.gaussian_replay import safe_cholesky

    with HostSyncCounter() as counter:
        torch.ones(1).item()  # this file is not spacil's code
        safe_cholesky(torch.eye(3, dtype=torch.float64))  # int(info) and float(scale): two syncs in spacil
    assert counter.total == 2, counter.calls
    with HostSyncCounter((SPACIL_SRC, __file__)) as counter:
        torch.ones(1).item()
    assert counter.total == 1


def test_extraction_casts_on_the_device_and_stores_what_a_host_cast_would(image_folder, tmp_path, tiny_backbone):
    from spacil.data.datasets import ImageFolderSource
    from spacil.features import FeatureCache, get_features

    source = ImageFolderSource(image_folder, "train")
    feats = get_features(source, tiny_backbone, FeatureCache(tmp_path / "cache"), batch_size=5, num_workers=0,
                         progress=False)
    first = tiny_backbone.encode_images(torch.stack([tiny_backbone.preprocess(source.load(i)) for i in range(5)]))
    np.testing.assert_array_equal(feats.global_[:5], first.global_.numpy().astype(np.float16))
    np.testing.assert_array_equal(feats.patches[:5], first.patches.numpy().astype(np.float16))


def test_a_failed_background_write_fails_the_extraction_and_publishes_nothing(image_folder, tmp_path,
                                                                              tiny_backbone, monkeypatch):
    from spacil.data.datasets import ImageFolderSource
    from spacil.features import FeatureCache, get_features
    from spacil.features.cache import CacheWriter

    original, calls = CacheWriter.write, []

    def failing_write(self, *args):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return original(self, *args)

    monkeypatch.setattr(CacheWriter, "write", failing_write)
    cache_root = tmp_path / "cache"
    with pytest.raises(OSError, match="disk full"):
        get_features(ImageFolderSource(image_folder, "train"), tiny_backbone, FeatureCache(cache_root),
                     batch_size=5, num_workers=0, progress=False)
    assert not [p for p in cache_root.rglob("*") if p.is_dir() and p.parent != cache_root
                and "content-hashes" not in p.parts]  # no entry, no partial (the folder fingerprint record may stay)


def test_warm_lookup_finds_the_cache_without_reading_images(image_folder, tmp_path, tiny_backbone, monkeypatch):
    """The content hash is read once; a warm command finds the entry by the folder's fingerprint, and
    cache.verify=full (or any change of size or mtime) reads the images again."""
    import os

    from spacil.data.datasets import ImageFolderSource
    from spacil.features import FeatureCache, get_features

    reads = []
    original = ImageFolderSource.content_hash
    monkeypatch.setattr(ImageFolderSource, "content_hash", lambda self: (reads.append(1), original(self))[1])

    def features(verify="fast"):
        return get_features(ImageFolderSource(image_folder, "test"), tiny_backbone,
                            FeatureCache(tmp_path / "cache", verify=verify), num_workers=0, progress=False)

    cold = features()
    assert len(reads) == 1
    warm = features()
    assert len(reads) == 1 and warm.key == cold.key and warm.location == cold.location
    assert features("full").key == cold.key and len(reads) == 2
    # rewritten in place with the same size and modification time: only the full check sees it
    path = image_folder / "test" / "class_00" / "img_000.png"
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF  # inside the PNG's trailer: same size, other bytes
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert features().key == cold.key and len(reads) == 2
    changed = features("full")
    assert changed.key != cold.key and len(reads) == 3
    assert features().key == changed.key and len(reads) == 3  # the record now holds the new hash
    os.utime(path)  # a new modification time: a new fingerprint, so the images are read once more
    assert features().key == changed.key and len(reads) == 4
