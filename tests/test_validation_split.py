"""The validation split: stratified, seeded, order-free, never trained on, scored every stage, in the run key."""

import json
from pathlib import Path

import numpy as np
import pytest

from spacil.config import load_config
from spacil.data.validation import held_out_count, validation_mask
from spacil.errors import UsageError
from spacil.methods.simplecil import SimpleCIL
from spacil.runs.run_folder import config_digest, run_key
from spacil.training.harness import prepare_data, run_experiment


def _ids(n_classes, per_class):
    labels = np.repeat(np.arange(n_classes), per_class)
    ids = [f"class_{c:02d}/img_{i:03d}.png" for c in range(n_classes) for i in range(per_class)]
    return labels, ids


def _held(labels, ids, fraction=0.1, seed=0):
    return {ids[r] for r in np.flatnonzero(validation_mask(labels, ids, fraction, seed))}


def test_counts_are_stratified_per_class():
    labels, ids = _ids(5, 60)
    mask = validation_mask(labels, ids, 0.1, seed=0)
    assert np.bincount(labels[mask]).tolist() == [6] * 5  # 6 of 60 per class, as in the demo preset
    assert held_out_count(60, 0.1) == 6 and held_out_count(7, 0.01) == 1 and held_out_count(7, 0.0) == 0
    tiny = validation_mask(labels, ids, 0.001, seed=0)
    assert np.bincount(labels[tiny]).tolist() == [1] * 5  # at least one per class when the fraction is > 0
    assert not validation_mask(labels, ids, 0.0, seed=0).any()


def test_seeded_and_deterministic():
    labels, ids = _ids(3, 60)
    assert _held(labels, ids, seed=4) == _held(labels, ids, seed=4)
    assert _held(labels, ids, seed=4) != _held(labels, ids, seed=5)


def test_same_images_whatever_the_class_order_row_order_or_other_classes():
    labels, ids = _ids(4, 30)
    reference = _held(labels, ids, fraction=0.2, seed=7)
    # classes relabelled (another order) and rows shuffled: the same images are held out
    relabel = np.array([2, 0, 3, 1])
    perm = np.random.default_rng(0).permutation(len(ids))
    assert _held(relabel[labels][perm], [ids[r] for r in perm], fraction=0.2, seed=7) == reference
    # class 3 removed: the other classes keep their validation images
    keep = labels != 3
    kept = _held(labels[keep], [i for i, k in zip(ids, keep) if k], fraction=0.2, seed=7)
    assert kept == {i for i in reference if not i.startswith("class_03")}


def test_a_class_left_without_training_images_is_a_user_error():
    labels, ids = _ids(2, 1)
    with pytest.raises(UsageError, match="data.validation_fraction"):
        validation_mask(labels, ids, 0.5, seed=0, class_names=["a", "b"])


def _config(image_folder, tmp_path, *extra):
    return load_config(None, [f"data.root={image_folder}", "data.init_cls=2", "data.increment=2",
                              f"cache.root={tmp_path / 'cache'}", f"run.output_dir={tmp_path / 'runs'}",
                              "method.name=simplecil", "backbone.num_workers=0", "run.plots=false", *extra])


def test_run_key_follows_the_validation_split():
    base = load_config(None, [])
    with_val = load_config(None, ["data.validation_fraction=0.1"])
    assert config_digest(with_val) != config_digest(base)
    assert run_key(with_val, {"train": "k"}) != run_key(base, {"train": "k"})
    assert config_digest(load_config(None, ["data.validation_fraction=0.2"])) != config_digest(with_val)
    # the seed matters only when there is a split
    assert config_digest(load_config(None, ["data.validation_fraction=0.1", "data.validation_seed=3"])) \
        != config_digest(with_val)
    assert config_digest(load_config(None, ["data.validation_seed=3"])) == config_digest(base)


def test_bad_fraction_is_a_config_error():
    from spacil.schema import ConfigError

    with pytest.raises(ConfigError, match="data.validation_fraction"):
        load_config(None, ["data.validation_fraction=1.0"])


def test_demo_preset_holds_out_a_tenth():
    assert load_config("partsworld_demo").data.validation_fraction == pytest.approx(0.1)


def test_run_trains_without_validation_rows_and_reports_validation_metrics(image_folder, tmp_path, tiny_backbone,
                                                                           monkeypatch):
    cfg = _config(image_folder, tmp_path, "data.validation_fraction=0.34", "data.validation_seed=11")
    before = tiny_backbone.images_encoded
    data = prepare_data(cfg, backbone=tiny_backbone, progress=False)
    assert tiny_backbone.images_encoded - before == 24 + 12, "validation rows come from the one train extraction"

    held = validation_mask(data.train.labels, data.train.sample_ids, 0.34, 11)
    assert np.bincount(data.train.labels[held]).tolist() == [2, 2, 2, 2]  # round(0.34 * 6) of each class
    seen = []
    original = SimpleCIL.learn_task

    def spy(self, ctx, batch):
        seen.append(batch.global_.cpu().numpy())
        return original(self, ctx, batch)

    monkeypatch.setattr(SimpleCIL, "learn_task", spy)
    result = run_experiment(cfg, data=data, progress=False)
    trained = np.concatenate(seen)
    validation = np.asarray(data.train.global_[np.flatnonzero(held)], dtype=np.float32)
    assert len(trained) == 24 - 8
    assert not any(np.isclose(trained, v, atol=1e-6).all(axis=1).any() for v in validation)

    rows = [json.loads(line) for line in (result.folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["n_val"] for r in rows] == [4, 8] and [r["n_train"] for r in rows] == [8, 8]
    assert [r["n_test"] for r in rows] == [6, 12]
    s = result.summary
    assert s["val_average_accuracy"] == pytest.approx(np.mean([r["val_accuracy"] for r in rows]))
    assert s["val_last_accuracy"] == pytest.approx(rows[-1]["val_accuracy"])
    assert s["val_stage_accuracies"] == pytest.approx([r["val_accuracy"] for r in rows])
    assert "val_forgetting" in s and s["n_validation_images"] == 8
    assert s["average_accuracy"] == pytest.approx(np.mean([r["accuracy"] for r in rows]))  # test keys unchanged
    assert (result.folder / "validation_accuracy_matrix.csv").is_file()


def test_resumed_run_keeps_its_validation_metrics(image_folder, tmp_path, tiny_backbone):
    cfg = _config(image_folder, tmp_path, "data.validation_fraction=0.34")
    data = prepare_data(cfg, backbone=tiny_backbone, progress=False)
    full = run_experiment(cfg, data=data, progress=False)
    lines = (full.folder / "metrics.jsonl").read_text().splitlines()
    (full.folder / "summary.json").unlink()
    (full.folder / "metrics.jsonl").write_text(lines[0] + "\n")
    resumed = run_experiment(cfg, data=data, progress=False)
    assert resumed.folder == full.folder
    assert resumed.summary["val_stage_accuracies"] == full.summary["val_stage_accuracies"]
    assert resumed.summary["val_forgetting"] == full.summary["val_forgetting"]


def test_run_without_validation_has_no_validation_keys(image_folder, tmp_path, tiny_backbone):
    cfg = _config(image_folder, tmp_path)
    result = run_experiment(cfg, data=prepare_data(cfg, backbone=tiny_backbone, progress=False), progress=False)
    assert not any(k.startswith("val_") for k in result.summary)
    assert [json.loads(r)["n_train"] for r in (result.folder / "metrics.jsonl").read_text().splitlines()] == [12, 12]


def test_comparison_rows_carry_validation_metrics(image_folder, tmp_path, tiny_backbone):
    from spacil.training.compare import run_comparison

    base = _config(image_folder, tmp_path, "data.validation_fraction=0.34")
    data = prepare_data(base, backbone=tiny_backbone, progress=False)
    rows = run_comparison(base, ["simplecil"], [1993], tmp_path / "cmp", data=data, progress=False)
    summary = json.loads((Path(rows[0].folders[0]) / "summary.json").read_text())
    assert rows[0].val_average == [summary["val_average_accuracy"]]
    assert rows[0].val_last == [summary["val_last_accuracy"]]
    assert "validation Ā" in (tmp_path / "cmp" / "comparison.md").read_text()
    assert "val_average_mean" in (tmp_path / "cmp" / "comparison.csv").read_text()
    stored = json.loads((tmp_path / "cmp" / "comparison.json").read_text())[0]
    assert stored["val_average"] == rows[0].val_average


def test_comparison_table_reports_the_sample_std():
    from spacil.training.compare import ComparisonRow, comparison_markdown

    row = ComparisonRow("x", [1, 2, 3], [1.0, 2.0, 3.0], [4.0, 4.0, 4.0], [0.0, 0.0, 3.0], [[1.0]] * 3, 1.0,
                        ["a", "b", "c"])
    table = comparison_markdown([row])
    assert "2.00 ± 1.00" in table and "1.00 ± 1.73" in table  # ddof=1 (population std would be 0.82 / 1.41)
    assert "validation" not in table


def test_cli_train_prints_validation_accuracy(image_folder, tmp_path):
    from typer.testing import CliRunner

    from spacil.cli import app

    sets = ["backbone.name=tiny-test", f"data.root={image_folder}", "data.init_cls=2", "data.increment=2",
            f"cache.root={tmp_path / 'cache'}",
            "backbone.num_workers=0", "method.name=simplecil", f"run.output_dir={tmp_path / 'runs'}",
            "run.plots=false", "data.validation_fraction=0.34"]
    result = CliRunner().invoke(app, ["train", *[a for s in sets for a in ("--set", s)], "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "validation: average accuracy" in result.output and "(8 held-out training images)" in result.output
