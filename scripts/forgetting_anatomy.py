"""Where a run's forgetting comes from: how high each task starts, where it ends, and where old images go.

    python scripts/forgetting_anatomy.py spacil-demo                      # every run of a demo folder
    python scripts/forgetting_anatomy.py spacil-demo --variants spa,simplecil

Forgetting (PyCIL) is the mean over old tasks of (best accuracy on the task at any stage − its accuracy at the
end), so a method that learns a task better when it is new can forget more and still end higher. This prints,
per run (first seed of each variant), from its accuracy matrix and its last checkpoint:

- accuracy on a task right after learning it (mean of the matrix diagonal over the old tasks) and at the end
  (mean of the last row over the old tasks), whose gap is most of the forgetting;
- the test images of old tasks misclassified at the end, by where the prediction went: a class of the same
  task (siblings), of the newest task, or of another old task.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from spacil.config import load_config
from spacil.training.harness import load_rows, prepare_data, restore_learner


def matrix(folder: Path) -> np.ndarray:
    rows = [line.split(",")[1:] for line in (folder / "accuracy_matrix.csv").read_text().splitlines()[1:]]
    return np.array([[float(v) if v else np.nan for v in row] for row in rows])


def anatomy(folder: Path) -> dict[str, float]:
    r = matrix(folder)
    last = len(r) - 1
    old = range(last)
    config = load_config(folder / "config.yaml")
    data = prepare_data(config, progress=False)
    learner = restore_learner(config, data, folder, last, torch.device("cpu"))
    labels = data.scenario.remap(data.test.labels)
    n_seen = data.scenario.n_classes
    batch = load_rows(data.test, np.arange(len(labels)), labels, torch.device("cpu"))
    with torch.no_grad():
        pred = learner.logits(batch, n_seen).argmax(1)
    task = torch.as_tensor(data.scenario.task_of_label(np.arange(n_seen)))
    y = batch.labels
    old_images = task[y] < last
    wrong = old_images & (pred != y)
    share = lambda m: 100.0 * float((wrong & m).sum()) / float(old_images.sum())  # noqa: E731
    return {"when new": float(np.mean([r[j, j] for j in old])), "at the end": float(np.mean(r[last, :last])),
            "forgetting": float(np.mean([np.nanmax(r[j:last, j]) - r[last, j] for j in old])),
            "to siblings": share(task[pred] == task[y]), "to newest task": share(task[pred] == last),
            "to other old tasks": share((task[pred] != task[y]) & (task[pred] != last))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="A spa-cil demo / compare output folder (holds runs/).")
    parser.add_argument("--variants", default="", help="Comma-separated variants (default: every run found).")
    args = parser.parse_args()
    runs = sorted((args.folder / "runs").glob("*-seed*-*"))
    wanted = [v for v in args.variants.split(",") if v]
    chosen: dict[str, Path] = {}
    for folder in runs:
        variant = folder.name.rsplit("-seed", 1)[0]
        if (not wanted or variant in wanted) and variant not in chosen and (folder / "accuracy_matrix.csv").is_file():
            chosen[variant] = folder
    order = wanted or list(chosen)
    print("Old tasks' accuracy right after learning them and at the end; old test images misclassified at the "
          "end, by destination (% of old test images).\n")
    print("| variant | when new | at the end | forgetting | to siblings | to newest task | to other old tasks |")
    print("|---|---|---|---|---|---|---|")
    for variant in order:
        if variant not in chosen:
            continue
        a = anatomy(chosen[variant])
        print(f"| {variant} | {a['when new']:.2f} | {a['at the end']:.2f} | {a['forgetting']:.2f} | "
              f"{a['to siblings']:.1f} | {a['to newest task']:.1f} | {a['to other old tasks']:.1f} |")


if __name__ == "__main__":
    main()
