"""scripts/forgetting_anatomy.py on real runs of a tiny comparison: its figures agree with the run's own."""

import json

import numpy as np
import torch

from repo_scripts import load_script
from spacil.config import load_config
from spacil.training.compare import run_comparison



def test_anatomy_matches_the_runs_forgetting_and_final_accuracy(image_folder, tmp_path):
    module = load_script("scripts/forgetting_anatomy.py", "forgetting_anatomy")
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

    # look-alikes come from a parts-world manifest; a plain image folder has none
    assert np.isnan(got["to a look-alike of another task"])
    names = sorted(p.name for p in (image_folder / "train").iterdir())
    cross_task = got["to newest task"] + got["to other old tasks"]
    for groups, expected in (([0] * len(names), cross_task), (list(range(len(names))), 0.0)):
        manifest = {"classes": [{"name": n, "group": g} for n, g in zip(names, groups)]}
        (image_folder / "manifest.json").write_text(json.dumps(manifest))
        got = module.anatomy(folder)
        assert np.isclose(got["to a look-alike of another task"], expected)
        # one group: no error leaves it; one class per group: every error does
        assert np.isclose(got["to a class of another group"], 0.0 if len(set(groups)) == 1 else 100 - old_accuracy)
    # one group: every other class is a look-alike. Pairs by hand (tasks of 2 + 1 + 1 classes, 3 test images
    # each), win rates against a loop over images and classes
    manifest = {"classes": [{"name": n, "group": 0} for n in names]}
    (image_folder / "manifest.json").write_text(json.dumps(manifest))
    pairs = module.anatomy(folder)["look-alike pairs"]
    assert {k: v["pairs"] for k, v in pairs.items()} == {"same task": 6, "older task": 15, "newer task": 15}
    assert set(pairs["same task"]) == {"fused", "pairs"}  # SimpleCIL: no patch term to split off
    config = load_config(folder / "config.yaml")
    data = module.prepare_data(config, progress=False)
    learner = module.restore_learner(config, data, folder, 2, torch.device("cpu"))
    y = data.scenario.remap(data.test.labels)
    logits = module.branch_logits(learner, module.load_rows(data.test, np.arange(len(y)), y, torch.device("cpu")),
                                  4)["fused"].numpy()
    task = [0, 0, 1, 2]
    wins = {"same task": [], "older task": [], "newer task": []}
    for i, c in enumerate(y):
        for other in range(4):
            if other != c:
                kind = "same task" if task[other] == task[c] else "older task" if task[other] < task[c] else "newer task"
                wins[kind].append(logits[i, c] > logits[i, other])
    for kind, won in wins.items():
        assert np.isclose(pairs[kind]["fused"], 100.0 * np.mean(won))
