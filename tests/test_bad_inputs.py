"""Bad inputs a real user produces: each gives a few lines naming the file and the fix, never stale results.

The command line runs as a real subprocess here, so what is checked is what a user sees on the terminal.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import write_image_folder
from spacil.config import load_config
from spacil.features import FeatureCache
from spacil.training.harness import prepare_data, run_experiment

MAX_ERROR_LINES = 8


def cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "spacil.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=full_env, timeout=300)


def assert_short_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit code 2, no traceback, at most a few lines, naming every needle."""
    err = proc.stderr
    assert proc.returncode == 2, (proc.returncode, proc.stdout, err)
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if "WARNING" not in line and " INFO " not in line]
    assert 1 <= len(lines) <= MAX_ERROR_LINES, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def overrides(data: Path, tmp_path: Path, method: str = "simplecil", *extra: str) -> list[str]:
    return ["backbone.name=tiny-test", f"data.root={data}", "data.init_cls=2", "data.increment=2",
            f"cache.root={tmp_path / 'cache'}",
            f"run.output_dir={tmp_path / 'runs'}", f"method.name={method}", "backbone.num_workers=0",
            "train.epochs=1", "run.plots=false", *extra]


def set_args(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


# ------------------------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_damaged_checkpoint_names_the_file_on_resume_and_eval(image_folder, tmp_path, damage):
    cfg = load_config(None, overrides(image_folder, tmp_path))
    result = run_experiment(cfg, progress=False)
    ckpt = result.folder / "checkpoints" / "task_01.safetensors"
    blob = ckpt.read_bytes()
    ckpt.write_bytes(blob[: len(blob) // 2] if damage == "truncated" else b"")
    assert_short_error(cli("eval", str(result.folder), "--no-progress"), str(ckpt), "delete")
    (result.folder / "summary.json").unlink()  # an unfinished run: resuming reads the last checkpoint
    err = assert_short_error(cli("train", "--no-progress", *set_args(overrides(image_folder, tmp_path))),
                             str(ckpt), "run.resume=false")
    assert "task 1" in err


# ------------------------------------------------------------------------------------------- config files
def test_yaml_syntax_error_is_one_line_with_line_and_column(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: 3\n   lr: [0.1\n")
    err = assert_short_error(cli("train", "-c", str(bad)), f"{bad}:3:")
    assert len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------- descriptions
def _extraction_started(tmp_path: Path) -> bool:
    return (tmp_path / "cache").exists() and any((tmp_path / "cache").rglob("*.npy"))


def test_description_file_not_json_is_reported_with_its_reason_before_extraction(image_folder, tmp_path):
    bad = tmp_path / "desc.json"
    bad.write_text('{"format": "spacil-descriptions", "classes": [')
    args = overrides(image_folder, tmp_path, "spa", "descriptions.source=file", f"descriptions.path={bad}")
    err = assert_short_error(cli("train", "--no-progress", *set_args(args)), str(bad), "not valid JSON")
    assert not _extraction_started(tmp_path), "the description file must be checked before features are extracted"


def test_description_checksum_failure_names_the_rule(image_folder, tmp_path):
    from spacil.descriptions import load_shipped, save_description_file

    shipped = load_shipped("cifar100")
    path = tmp_path / "data" / "descriptions.json"  # <data.root>/descriptions.json is used by source=auto
    save_description_file(shipped, path)
    doc = json.loads(path.read_text())
    doc["classes"][0]["phrases"][0] = "edited behind the checksum's back"
    path.write_text(json.dumps(doc))
    err = assert_short_error(cli("train", "--no-progress", *set_args(overrides(image_folder, tmp_path, "spa"))),
                             str(path), "checksum")
    assert not _extraction_started(tmp_path)


def test_descriptions_json_is_found_under_the_data_root_from_the_environment(tmp_path, monkeypatch):
    from spacil.descriptions import DescriptionSet, save_description_file
    from spacil.text.class_phrases import resolve_class_phrases

    root = write_image_folder(tmp_path / "envroot" / "image_folder", n_classes=2)
    names = ["class_00", "class_01"]
    phrases = [[f"{w} mark on the {n}" for w in ("red", "blue", "round", "long", "short")] for n in ("head", "tail")]
    save_description_file(DescriptionSet("image_folder", dict(zip(names, phrases)), produced_by="test"),
                          root / "descriptions.json")
    monkeypatch.setenv("SPACIL_DATA_ROOT", str(tmp_path / "envroot"))
    resolved = resolve_class_phrases(load_config(None, []), names)
    assert resolved.source == str(root / "descriptions.json")
    assert resolved.phrases == phrases and not resolved.fallback_classes


# ------------------------------------------------------------------------------------------- cached features
@pytest.mark.parametrize("array", ["global.npy", "patches.npy"])
def test_nan_in_cached_features_names_the_entry(image_folder, tmp_path, tiny_backbone, array):
    cfg = load_config(None, overrides(image_folder, tmp_path, "spa"))
    data = prepare_data(cfg, backbone=tiny_backbone, progress=False)
    entry = data.train.location
    stored = np.load(entry / array, mmap_mode="r+")  # same size: the fast verification does not notice
    stored[3] = np.nan
    stored.flush()
    del stored, data
    err = assert_short_error(cli("train", "--no-progress", *set_args(overrides(image_folder, tmp_path, "spa"))),
                             str(entry), "NaN", "delete that folder")
    assert "class_00" in err  # the class of the damaged row (row 3 of class_00's 6 images)


# ------------------------------------------------------------------------------------------- run folders
def test_changed_data_gives_new_results_not_stale_ones(tmp_path, tiny_backbone):
    data_root = write_image_folder(tmp_path / "data", n_test=3)
    cfg = load_config(None, overrides(data_root, tmp_path))
    first = run_experiment(cfg, progress=False)
    for folder in (data_root / "test").iterdir():  # delete most test images
        for image in sorted(folder.iterdir())[1:]:
            image.unlink()
    second = run_experiment(load_config(None, overrides(data_root, tmp_path)), progress=False)
    assert second.folder != first.folder
    assert [r["n_test"] for r in map(json.loads, (second.folder / "metrics.jsonl").read_text().splitlines())] \
        == [2, 4]


def test_moved_data_root_with_the_same_images_finds_the_same_run(tmp_path):
    data_root = write_image_folder(tmp_path / "data")
    first = run_experiment(load_config(None, overrides(data_root, tmp_path)), progress=False)
    moved = tmp_path / "elsewhere" / "data"
    moved.parent.mkdir()
    shutil.move(str(data_root), moved)
    again = run_experiment(load_config(None, overrides(moved, tmp_path)), progress=False)
    assert again.folder == first.folder and again.summary == first.summary


def test_named_run_on_other_data_is_refused(tmp_path):
    data_root = write_image_folder(tmp_path / "data")
    run_experiment(load_config(None, overrides(data_root, tmp_path, "simplecil", "run.name=fixed")), progress=False)
    other = write_image_folder(tmp_path / "other", seed=5)
    from spacil.errors import SpacilError

    with pytest.raises(SpacilError, match="other test/train images|other train/test images"):
        run_experiment(load_config(None, overrides(other, tmp_path, "simplecil", "run.name=fixed")), progress=False)


def test_missing_dataset_root_leaves_no_run_folder(tmp_path):
    args = overrides(tmp_path / "nowhere", tmp_path)
    assert_short_error(cli("train", "--no-progress", *set_args(args)), "nowhere")
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir())


def test_rerun_of_finished_run_without_checkpoints_keeps_its_metrics(image_folder, tmp_path):
    args = overrides(image_folder, tmp_path, "simplecil", "run.save_checkpoints=false")
    first = run_experiment(load_config(None, args), progress=False)
    rows = (first.folder / "metrics.jsonl").read_text()
    again = run_experiment(load_config(None, args), progress=False)
    assert (first.folder / "metrics.jsonl").read_text() == rows and len(rows.splitlines()) == 2
    assert again.metrics.stage_accuracies == first.metrics.stage_accuracies


# ------------------------------------------------------------------------------------------- partial extractions
_WRITER = """
import sys, time
from spacil.features.cache import FeatureCache
cache = FeatureCache(sys.argv[1])
w = cache.writer("image_folder", "train", "ab" * 32, {}, 1000, 4, 8, ["a"])
print(w.tmp_dir, flush=True)
time.sleep(600)
"""


def test_partial_of_a_killed_extraction_is_removed_by_the_next_one(image_folder, tmp_path, tiny_backbone):
    cache_root = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(cache_root)], stdout=subprocess.PIPE, text=True)
    partial = Path(proc.stdout.readline().strip())
    assert partial.is_dir()
    live = FeatureCache(cache_root).writer("image_folder", "train", "ab" * 32, {}, 2, 4, 8, ["a"])
    assert partial.is_dir(), "a partial folder of a live process must be left alone"
    live.abort()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    writer = FeatureCache(cache_root).writer("image_folder", "train", "ab" * 32, {}, 2, 4, 8, ["a"])
    assert not partial.exists()
    writer.abort()


def test_unstamped_old_partial_is_removed_but_a_recent_one_is_kept(tmp_path):
    from spacil.features.cache import STALE_AGE_S

    cache = FeatureCache(tmp_path / "cache")
    entry = cache.entry_dir("image_folder", "train", "cd" * 32)
    old, recent = (entry.with_name(f".{entry.name}.partial-{pid}") for pid in (999999, 999998))
    for folder in (old, recent):
        folder.mkdir(parents=True)
        (folder / "patches.npy").write_bytes(b"\0" * 64)
    past = time.time() - STALE_AGE_S - 60
    for path in (old / "patches.npy", old):
        os.utime(path, (past, past))
    cache.writer("image_folder", "train", "cd" * 32, {}, 2, 4, 8, ["a"]).abort()
    assert not old.exists() and recent.exists()


# ------------------------------------------------------------------------------------------- CLI errors
def test_bug_keeps_its_traceback_and_user_error_gets_one_under_verbose(image_folder, tmp_path):
    # a shape bug (not a user error): checkpoint state of the wrong shape for SimpleCIL's prototypes
    cfg = load_config(None, overrides(image_folder, tmp_path))
    result = run_experiment(cfg, progress=False)
    from safetensors.torch import load_file, save_file

    ckpt = result.folder / "checkpoints" / "task_01.safetensors"
    state = load_file(str(ckpt))
    save_file({k: v[..., :3].contiguous() for k, v in state.items()}, str(ckpt))
    proc = cli("eval", str(result.folder), "--no-progress")
    assert proc.returncode not in (0, 2) and "Traceback" in proc.stderr, proc.stderr
    # a user error: one line plainly, its traceback too under -v
    missing = tmp_path / "no-run"
    assert_short_error(cli("eval", str(missing)), str(missing))
    verbose = cli("-v", "eval", str(missing))
    assert verbose.returncode == 2 and "Traceback" in verbose.stderr and str(missing) in verbose.stderr


def test_cache_and_config_errors_are_spacil_errors():
    from spacil.config import ConfigError
    from spacil.errors import SpacilError
    from spacil.features.cache import CacheError
    from spacil.data.datasets import DatasetError
    from spacil.descriptions import DescriptionFileError

    for error in (ConfigError, CacheError, DatasetError, DescriptionFileError):
        assert issubclass(error, SpacilError)


# ------------------------------------------------------------------------------------------- data check
def test_data_check_of_own_folder_lists_every_bad_file_on_one_screen(tmp_path):
    root = write_image_folder(tmp_path / "mine", n_classes=3, n_train=4, n_test=2)
    (root / "train" / "class_00" / "img_000.png").write_bytes(b"")  # empty
    good = (root / "train" / "class_01" / "img_000.png").read_bytes()
    (root / "train" / "class_01" / "img_001.png").write_bytes(good[: len(good) // 2])  # truncated
    (root / "train" / "class_01" / "notes.txt").write_text("not an image")
    (root / "test" / "class_02").mkdir(exist_ok=True)
    for image in (root / "test" / "class_02").iterdir():
        image.unlink()  # an empty class
    for i in range(40):  # many broken files: the report must still fit one screen
        (root / "train" / "class_02" / f"broken_{i:02d}.jpg").write_bytes(b"junk")
    proc = cli("data", "check", str(root), "--no-progress")
    out = proc.stdout
    assert proc.returncode == 1, (out, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = out.strip().splitlines()
    assert len(lines) <= 25, out
    for needle in ("train/class_00/img_000.png", "train/class_01/img_001.png", "train/class_01/notes.txt",
                   "test/class_02/", "more"):
        assert needle in out, (needle, out)


def test_data_check_of_a_clean_own_folder_is_ok(image_folder):
    proc = cli("data", "check", str(image_folder), "--no-progress")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK" in proc.stdout.splitlines()[0]
