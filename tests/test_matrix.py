"""``spa-cil matrix`` / ``spa-cil results``: a 2 x 2 matrix (2 methods x 2 seeds) through every executor.

The sequential run is the reference: the worker-per-device and submitit executors must give the same
numbers from the same features, and every path extracts each split once.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from spacil.cli import app
from spacil.runs.results import collect_runs, result_rows, results_markdown, write_results
from spacil.training.matrix import CellJob, build_spec, run_matrix

VARIANTS = ["simplecil", "ranpac"]
SEEDS = [1, 2]


def _preset(tmp_path: Path, image_folder: Path, name: str = "tiny.yaml", root: Path | None = None) -> Path:
    preset = tmp_path / name
    preset.write_text(yaml.safe_dump({
        "data": {"root": str(root or image_folder), "init_cls": 2, "increment": 2},
        "backbone": {"num_workers": 0}, "run": {"plots": False}, "method": {"ranpac": {"projection_dim": 64}}}))
    return preset


def _spec(preset: Path, output: Path, cache: Path, **extra):
    return build_spec({"presets": [str(preset)], "variants": VARIANTS, "seeds": SEEDS, "output": str(output),
                       "overrides": [f"cache.root={cache}"], **extra})


def _numbers(outcomes):
    return {(o.variant, o.seed): (o.summary["average_accuracy"], o.summary["last_accuracy"]) for o in outcomes}


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    """The reference: the 2 x 2 matrix in this process, counting feature extractions."""
    from conftest import write_image_folder

    import spacil.features.extract as extract

    tmp = tmp_path_factory.mktemp("matrix")
    images = write_image_folder(tmp / "data")
    preset = _preset(tmp, images)
    calls = []
    real = extract.extract_to_cache
    mp = pytest.MonkeyPatch()
    mp.setattr(extract, "extract_to_cache", lambda source, *a, **k: calls.append(source.split) or real(source, *a, **k))
    try:
        outcomes = run_matrix(_spec(preset, tmp / "seq", tmp / "cache"), progress=False)
    finally:
        mp.undo()
    return {"tmp": tmp, "images": images, "preset": preset, "outcomes": outcomes, "extractions": calls}


def test_sequential_matrix_extracts_each_split_once_and_fills_every_cell(sequential):
    outcomes = sequential["outcomes"]
    assert [(o.variant, o.seed, o.status) for o in outcomes] == [(v, s, "done") for v in VARIANTS for s in SEEDS]
    assert sorted(sequential["extractions"]) == ["test", "train"]  # one cache entry per split for all 4 cells
    assert all(o.images_encoded == 0 for o in outcomes)
    folders = {o.folder for o in outcomes}
    assert len(folders) == 4 and all((Path(f) / "summary.json").is_file() for f in folders)
    seeds = [yaml.safe_load((Path(o.folder) / "config.yaml").read_text())["train"]["seed"] for o in outcomes]
    assert seeds == [s for _ in VARIANTS for s in SEEDS]


def test_rerun_reuses_finished_cells(sequential):
    tmp = sequential["tmp"]
    stamps = {o.folder: (Path(o.folder) / "summary.json").stat().st_mtime_ns for o in sequential["outcomes"]}
    again = run_matrix(_spec(sequential["preset"], tmp / "seq", tmp / "cache"), progress=False)
    assert [o.status for o in again] == ["reused"] * 4
    assert _numbers(again) == _numbers(sequential["outcomes"])
    assert {o.folder: (Path(o.folder) / "summary.json").stat().st_mtime_ns for o in again} == stamps


def test_results_table_is_mean_and_sample_std_over_seeds(sequential):
    rows, table = write_results(sequential["tmp"] / "seq")
    assert [(r.method, r.n) for r in rows] == [("ranpac", 2), ("simplecil", 2)]
    text = table.read_text()
    for row in rows:
        values = [json.loads((Path(o.folder) / "summary.json").read_text())["average_accuracy"]
                  for o in sequential["outcomes"] if o.variant == row.method]
        assert f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}" in text
    csv_lines = (table.parent / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("dataset,split,method") and len(csv_lines) == 3
    assert "| image_folder | b0_inc2 | ranpac |" in text


def test_worker_per_device_matches_sequential(sequential, tmp_path):
    """Two CPU processes stand in for two GPUs; a fresh cache: the extraction phase encodes, no cell does."""
    tmp = sequential["tmp"]
    spec = _spec(sequential["preset"], tmp_path / "gpus", tmp_path / "cache", executor="gpus", devices=["cpu", "cpu"])
    outcomes = run_matrix(spec, progress=False)
    assert [o.status for o in outcomes] == ["done"] * 4, [o.error for o in outcomes]
    assert _numbers(outcomes) == _numbers(sequential["outcomes"])
    assert all(o.images_encoded == 0 for o in outcomes)
    extracted = json.loads((tmp_path / "gpus" / "matrix.json").read_text())["extracted"]
    (entry,) = extracted.values()
    assert entry["device"] == "cpu" and entry["images_encoded"] == 4 * (6 + 3)


def test_submitit_local_executor_matches_sequential(sequential, tmp_path):
    pytest.importorskip("submitit")
    spec = _spec(sequential["preset"], tmp_path / "slurm", tmp_path / "cache", executor="slurm",
                 slurm={"cluster": "local", "gpus_per_job": 0, "cpus_per_job": 1, "time_min": 10})
    outcomes = run_matrix(spec, progress=False)
    assert [o.status for o in outcomes] == ["done"] * 4, [o.error for o in outcomes]
    assert _numbers(outcomes) == _numbers(sequential["outcomes"])
    assert all(o.images_encoded == 0 for o in outcomes)
    assert list((tmp_path / "slurm" / "submitit").iterdir()), "submitit wrote its job folders"


def test_requeued_cell_resumes_instead_of_overwriting(sequential):
    from spacil.training.matrix import plan_cells

    spec = _spec(sequential["preset"], sequential["tmp"] / "seq", sequential["tmp"] / "cache", overwrite=True)
    features = json.loads((Path(sequential["outcomes"][0].folder) / "features.json").read_text())
    cell = plan_cells(spec, str(sequential["preset"]), features)[0]
    assert cell.config["run"]["overwrite"] is True
    delayed = CellJob().checkpoint(cell)
    requeued = delayed.args[0]
    assert requeued.config["run"]["overwrite"] is False and requeued.folder == cell.folder


def test_failed_cells_are_isolated_listed_and_exit_nonzero(sequential, tmp_path):
    good = sequential["preset"]
    bad = _preset(tmp_path, sequential["images"], "missing.yaml", root=tmp_path / "no_such_data")
    result = CliRunner().invoke(app, ["matrix", "--presets", f"{bad},{good}", "--variants", "simplecil",
                                      "--seeds", "1", "--output", str(tmp_path / "out"), "--no-progress",
                                      "--set", f"cache.root={sequential['tmp'] / 'cache'}"])
    assert result.exit_code == 1, result.output
    cells = json.loads((tmp_path / "out" / "matrix.json").read_text())["cells"]
    assert [c["status"] for c in cells] == ["failed", "done"]
    assert "no_such_data" in cells[0]["error"]
    assert "1 of 2 cells failed" in result.output and "missing / simplecil / seed 1" not in result.output
    assert f"{bad} / simplecil / seed 1: " in result.output


def test_matrix_file_is_validated(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("presets: [a]\nvariants: [spa]\nseed: [1]\n")
    result = CliRunner().invoke(app, ["matrix", "--file", str(path)])
    assert result.exit_code == 2 and "seed: unknown key" in result.output and str(path) in result.output


def test_published_figures_stand_beside_ours(tmp_path):
    from spacil.runs.results import RunRecord

    ours = [RunRecord("cifar100", "b0_inc10", "spa", s, a, l, 5.0, tmp_path) for s, a, l in ((1, 80.0, 70.0),
                                                                                            (2, 82.0, 72.0))]
    rows = result_rows(ours)
    assert [(r.method, r.source) for r in rows][0] == ("spa", "ours")
    assert ("PROOF", "published") in [(r.method, r.source) for r in rows]
    assert "| cifar100 | b0_inc10 | spa | 81.00 ± 1.41 | 71.00 ± 1.41 | 5.00 ± 0.00 | 2 | ours |" in results_markdown(rows)
    assert collect_runs(tmp_path) == []
