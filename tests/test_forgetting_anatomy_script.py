"""scripts/forgetting_anatomy.py on real runs of a tiny comparison: its figures agree with the run's own."""

import importlib.util
import json
from pathlib import Path

import numpy as np

from spacil.config import load_config
from spacil.training.compare import run_comparison

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "forgetting_anatomy.py"


def test_anatomy_matches_the_runs_forgetting_and_final_accuracy(image_folder, tmp_path):
    spec = importlib.util.spec_from_file_location("forgetting_anatomy", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    base = load_config(None, [f"data.root={image_folder}", "data.init_cls=2", "data.increment=1",
                              f"cache.root={tmp_path / 'c'}", "backbone.num_workers=0", "run.plots=false",
                              f"run.output_dir={tmp_path / 'out' / 'runs'}"])
    run_comparison(base, ["simplecil"], [1993], tmp_path / "out", progress=False)
    folder = next((tmp_path / "out" / "runs").glob("simplecil-seed1993-*"))
    summary = json.loads((folder / "summary.json").read_text())
    got = module.anatomy(folder)
    assert np.isclose(got["forgetting"], summary["forgetting"])
    r = module.matrix(folder)  # 3 tasks (2 + 1 + 1 classes): tasks 0 and 1 are old at the end
    assert np.isclose(got["when new"], (r[0, 0] + r[1, 1]) / 2) and np.isclose(got["at the end"], r[2, :2].mean())
    # every misclassified old image went somewhere: the three shares add up to the old images' error rate
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    old_accuracy = lines[-1]["old_accuracy"]
    assert np.isclose(got["to siblings"] + got["to newest task"] + got["to other old tasks"], 100 - old_accuracy)
