"""A run killed mid-way and restarted with the same command ends with the same metrics."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from spacil.config import load_config
from spacil.runs.run_folder import RunFolder
from spacil.training.harness import prepare_data, run_experiment


def _overrides(image_folder, tmp_path, method):
    return ["backbone.name=tiny-test", f"data.root={image_folder}", "data.init_cls=1", "data.increment=1",
            f"cache.root={tmp_path / 'cache'}", f"run.output_dir={tmp_path / 'runs'}", f"method.name={method}",
            "backbone.num_workers=0", "train.epochs=2", "run.plots=false"]


def test_torn_metrics_line_and_missing_checkpoint_mark_unfinished_stages(image_folder, tmp_path, tiny_backbone):
    cfg = load_config(None, _overrides(image_folder, tmp_path, "simplecil"))
    data = prepare_data(cfg, backbone=tiny_backbone, progress=False)
    full = run_experiment(cfg, data=data, progress=False)
    folder = RunFolder(full.folder)
    rows = (full.folder / "metrics.jsonl").read_text().splitlines()
    # simulate a kill during task 2: its checkpoint exists but its row is half written, task 3 never ran
    (full.folder / "summary.json").unlink()
    (full.folder / "metrics.jsonl").write_text("\n".join(rows[:2]) + "\n" + rows[2][:15])
    folder.checkpoint_path(3).unlink()
    assert [r["stage"] for r in folder.completed_stages()] == [0, 1]
    resumed = run_experiment(cfg, data=data, progress=False)
    assert resumed.folder == full.folder
    assert resumed.summary["stage_accuracies"] == full.summary["stage_accuracies"]
    assert len((full.folder / "metrics.jsonl").read_text().splitlines()) == 4


def test_other_config_in_same_folder_is_refused(image_folder, tmp_path, tiny_backbone):
    cfg = load_config(None, _overrides(image_folder, tmp_path, "simplecil") + ["run.name=fixed"])
    run_experiment(cfg, data=prepare_data(cfg, backbone=tiny_backbone, progress=False), progress=False)
    other = load_config(None, _overrides(image_folder, tmp_path, "zeroshot") + ["run.name=fixed"])
    with pytest.raises(FileExistsError, match="different config"):
        run_experiment(other, progress=False)


@pytest.mark.parametrize("method", ["spa"])
def test_kill_9_during_a_task_then_resume_gives_identical_metrics(image_folder, tmp_path, method):
    args = [sys.executable, "-m", "spacil.cli", "train", "--no-progress"]
    for item in _overrides(image_folder, tmp_path, method) + ["train.epochs=20"]:
        args += ["--set", item]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    reference = subprocess.run(args + ["--set", f"run.output_dir={tmp_path / 'reference'}"], env=env,
                               capture_output=True, text=True, timeout=300)
    assert reference.returncode == 0, reference.stderr[-2000:]
    ref_summary = json.loads(next((tmp_path / "reference").glob("*/summary.json")).read_text())

    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    metrics = None
    while time.time() < deadline:  # kill as soon as the first task is recorded (the run is inside task 1)
        found = list((tmp_path / "runs").glob("*/metrics.jsonl"))
        if found and found[0].read_text().count("\n") >= 1:
            metrics = found[0]
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert metrics is not None, "the run never finished its first task"
    assert not (metrics.parent / "summary.json").exists(), "the run finished before it could be killed"
    resumed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads((metrics.parent / "summary.json").read_text())
    assert summary["stage_accuracies"] == ref_summary["stage_accuracies"]
    assert summary["average_accuracy"] == ref_summary["average_accuracy"]
