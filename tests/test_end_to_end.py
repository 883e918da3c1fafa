"""A whole 2-task run with the tiny backbone, through the feature cache and the run folder."""

import csv
import json

import numpy as np
import pytest
from safetensors.torch import load_file

from spacil.config import load_config
from spacil.training.harness import evaluate_run, prepare_data, run_experiment


def _config(image_folder, tmp_path, method="simplecil", name="run"):
    return load_config(None, [f"data.root={image_folder}", "data.init_cls=2", "data.increment=2",
                              f"cache.root={tmp_path / 'cache'}", f"run.output_dir={tmp_path / 'runs'}",
                              f"run.name={name}", f"method.name={method}", "backbone.num_workers=0"])


def test_two_task_run_end_to_end_and_cache_reuse(image_folder, tmp_path, tiny_backbone):
    cfg = _config(image_folder, tmp_path)
    before = tiny_backbone.images_encoded
    result = run_experiment(cfg, data=prepare_data(cfg, backbone=tiny_backbone, progress=False), progress=False)
    assert tiny_backbone.images_encoded - before == 24 + 12, "first run encodes every image exactly once"

    folder = result.folder
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == [0, 1] and [r["n_seen"] for r in rows] == [2, 4]
    with open(folder / "accuracy_matrix.csv") as fh:
        table = list(csv.reader(fh))
    assert table[0] == ["after_task", "task_0", "task_1"] and table[1][2] == ""
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["last_accuracy"] == pytest.approx(rows[-1]["accuracy"])
    assert summary["average_accuracy"] == pytest.approx(np.mean([r["accuracy"] for r in rows]))
    # colour-coded classes are separable even with a random encoder: SimpleCIL must beat chance (25%) clearly
    assert summary["last_accuracy"] > 60, summary
    assert (folder / "config.yaml").is_file() and (folder / "plots" / "accuracy_matrix.png").stat().st_size > 0
    env = json.loads((folder / "environment.json").read_text())
    assert env["packages"]["torch"] and "device" in env
    assert load_file(str(folder / "checkpoints" / "task_01.safetensors"))["prototypes"].shape == (4, 32)

    # second run with the same backbone, data and cache: the encoder is called zero times
    encoded = tiny_backbone.images_encoded
    cfg2 = _config(image_folder, tmp_path, name="run2")
    again = run_experiment(cfg2, data=prepare_data(cfg2, backbone=tiny_backbone, progress=False), progress=False)
    assert tiny_backbone.images_encoded == encoded
    assert again.summary["stage_accuracies"] == summary["stage_accuracies"]

    # eval re-derives the same stage accuracies from the checkpoints
    assert evaluate_run(folder, progress=False).stage_accuracies == pytest.approx(summary["stage_accuracies"])


def test_zeroshot_runs(image_folder, tmp_path, tiny_backbone):
    cfg = _config(image_folder, tmp_path, method="zeroshot", name="zs")
    result = run_experiment(cfg, data=prepare_data(cfg, backbone=tiny_backbone, progress=False), progress=False)
    assert result.summary["n_stages"] == 2


def test_same_config_finds_its_finished_run_and_resume_false_refuses(image_folder, tmp_path, tiny_backbone):
    cfg = _config(image_folder, tmp_path, name="same")
    data = prepare_data(cfg, backbone=tiny_backbone, progress=False)
    first = run_experiment(cfg, data=data, progress=False)
    stamp = (first.folder / "metrics.jsonl").stat().st_mtime_ns
    again = run_experiment(cfg, data=data, progress=False)
    assert again.summary == first.summary
    assert (first.folder / "metrics.jsonl").stat().st_mtime_ns == stamp, "a finished run is not run again"
    no_resume = load_config(None, [f"data.root={image_folder}", "data.init_cls=2", "data.increment=2",
                                   f"cache.root={tmp_path / 'cache'}", f"run.output_dir={tmp_path / 'runs'}",
                                   "run.name=same", "method.name=simplecil", "backbone.num_workers=0",
                                   "run.resume=false"])
    with pytest.raises(FileExistsError, match="already holds results"):
        run_experiment(no_resume, data=data, progress=False)


def test_spa_end_to_end_with_a_description_file(image_folder, tmp_path, tiny_backbone, caplog):
    from spacil.descriptions import DescriptionSet, save_description_file

    phrases = {f"class_{c:02d}": [f"{colour} texture", f"{colour} surface patch", f"plain {colour} area",
                                  f"smooth {colour} region", f"{colour} noise"]
               for c, colour in enumerate(["red", "green", "blue", "yellow"])}
    save_description_file(DescriptionSet("image_folder", phrases, produced_by="test"), image_folder / "descriptions.json")
    cfg = load_config(None, [f"data.root={image_folder}", "data.init_cls=2", "data.increment=2",
                             f"cache.root={tmp_path / 'cache'}", f"run.output_dir={tmp_path / 'runs'}",
                             "method.name=spa", "backbone.num_workers=0", "train.epochs=3",
                             "method.spa.selection.k=4"])
    data = prepare_data(cfg, backbone=tiny_backbone, progress=False)
    assert data.descriptions["source"].endswith("descriptions.json") and not data.descriptions["fallback_classes"]
    assert data.texts.semantic.tokens.shape[:2] == (4, 5)
    result = run_experiment(cfg, data=data, progress=False)
    assert result.summary["n_stages"] == 2 and result.summary["last_accuracy"] > 50
    state = load_file(str(result.folder / "checkpoints" / "task_01.safetensors"))
    assert any(k.startswith("visual.adapters.1.") for k in state) and "bank.global.means" in state
    assert evaluate_run(result.folder, progress=False).stage_accuracies == pytest.approx(result.summary["stage_accuracies"])


def test_tensorboard_logging_writes_stage_scalars(image_folder, tmp_path, tiny_backbone):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = load_config(None, [f"data.root={image_folder}", "data.init_cls=2", "data.increment=2",
                             f"cache.root={tmp_path / 'cache'}", f"run.output_dir={tmp_path / 'runs'}",
                             "method.name=simplecil", "backbone.num_workers=0", "run.tensorboard=true"])
    result = run_experiment(cfg, data=prepare_data(cfg, backbone=tiny_backbone, progress=False), progress=False)
    events = EventAccumulator(str(result.folder / "tensorboard"))
    events.Reload()
    stage = [e.value for e in events.Scalars("stage/accuracy")]
    assert stage == pytest.approx(result.summary["stage_accuracies"])
    assert events.Scalars("summary/average_accuracy")[0].value == pytest.approx(result.summary["average_accuracy"])
