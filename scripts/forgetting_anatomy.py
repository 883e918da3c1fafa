"""Where a run's forgetting comes from: how high each task starts, where it ends, and where old images go.

    python scripts/forgetting_anatomy.py spacil-demo                      # every run of a demo folder
    python scripts/forgetting_anatomy.py spacil-demo --variants spa,simplecil

Forgetting (PyCIL) is the mean over old tasks of (best accuracy on the task at any stage − its accuracy at the
end), so a method that learns a task better when it is new can forget more and still end higher. This prints,
per run (first seed of each variant), from its accuracy matrix and its last checkpoint:

- accuracy on a task right after learning it (mean of the matrix diagonal over the old tasks) and at the end
  (mean of the last row over the old tasks), whose gap is most of the forgetting;
- the test images of old tasks misclassified at the end, by where the prediction went: a class of the same
  task (siblings), of the newest task, or of another old task;
- on a parts world (its manifest names each class's group of look-alikes: same body, different parts), the
  share that went to a look-alike of another task, which a patch branch trained one task at a time has never
  seen side by side with the image's class; and for every (test image, look-alike) pair whether the image's
  own class scores higher, by whether the look-alike was learned in the same, an older or a newer task, for
  the final logits and (SPA) its patch term and the rest apart; and for a learned patch branch, how strongly
  each task's classes score the other images of their task (their tokens' background rate).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from spacil.config import load_config
from spacil.training.harness import load_rows, prepare_data, restore_learner


def matrix(folder: Path) -> np.ndarray:
    rows = [line.split(",")[1:] for line in (folder / "accuracy_matrix.csv").read_text().splitlines()[1:]]
    return np.array([[float(v) if v else np.nan for v in row] for row in rows])


def look_alike_groups(root: Path, class_names: list[str]) -> torch.Tensor | None:
    """Each class's parts-world group (in label order), or None where the data is no parts world."""
    path = Path(root) / "manifest.json"
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if "classes" not in manifest:
        return None
    group = {c["name"]: c["group"] for c in manifest["classes"]}
    return torch.tensor([group[name] for name in class_names])


def branch_logits(learner, batch, n_seen: int) -> dict[str, torch.Tensor]:
    """The final logits and, for an SPA run whose patch term is added as it is (no gate, no centring), its
    split into the patch term and the rest (global branch and calibration offsets)."""
    with torch.no_grad():
        out = {"fused": learner.logits(batch, n_seen)}
        cfg = getattr(learner, "config", None)
        if getattr(cfg, "patch_branch", False) and cfg.patch_gate == "none" and cfg.patch_centering == "none":
            patch = cfg.logit_scale * cfg.fusion_weight * learner.patch_evidence(batch.patches, n_seen)[0]
            out.update({"patch": patch, "rest": out["fused"] - patch})
    return out


def background_by_task(learner, data, task: torch.Tensor) -> list[float] | None:
    """For a learned patch branch: each class's mean patch score on the other classes' training images of its
    own task (how strongly its tokens match any image it was trained beside), averaged per task."""
    if not getattr(learner, "learns_patch_alignment", False):
        return None
    labels = data.scenario.remap(data.train.labels)
    batch = load_rows(data.train, np.arange(len(labels)), labels, torch.device("cpu"))
    with torch.no_grad():
        scores = learner.patch_evidence(batch.patches, len(task))[0]
    y = batch.labels
    rates = torch.stack([scores[(task[y] == task[c]) & (y != c), c].mean() for c in range(len(task))])
    return [float(rates[task == t].mean()) for t in range(int(task.max()) + 1)]


def look_alike_wins(scores: dict[str, torch.Tensor], y: torch.Tensor, task: torch.Tensor,
                    group: torch.Tensor) -> dict[str, dict[str, float]]:
    """Per kind of look-alike pair (test image's class vs a same-group class of the same task, an older task or
    a newer task): % of pairs where each score ranks the image's own class higher, and the number of pairs."""
    classes = torch.arange(len(task))
    look = (group[None, :] == group[y][:, None]) & (classes[None, :] != y[:, None])
    kinds = {"same task": task[None, :] == task[y][:, None], "older task": task[None, :] < task[y][:, None],
             "newer task": task[None, :] > task[y][:, None]}
    out = {}
    for kind, mask in kinds.items():
        pairs = look & mask
        out[kind] = {name: 100.0 * float(((s.gather(1, y[:, None]) - s)[pairs] > 0).float().mean())
                     for name, s in scores.items()}
        out[kind]["pairs"] = int(pairs.sum())
    return out


def anatomy(folder: Path) -> dict:
    r = matrix(folder)
    last = len(r) - 1
    old = range(last)
    config = load_config(folder / "config.yaml")
    data = prepare_data(config, progress=False)
    learner = restore_learner(config, data, folder, last, torch.device("cpu"))
    labels = data.scenario.remap(data.test.labels)
    n_seen = data.scenario.n_classes
    batch = load_rows(data.test, np.arange(len(labels)), labels, torch.device("cpu"))
    scores = branch_logits(learner, batch, n_seen)
    pred = scores["fused"].argmax(1)
    task = torch.as_tensor(data.scenario.task_of_label(np.arange(n_seen)))
    y = batch.labels
    old_images = task[y] < last
    wrong = old_images & (pred != y)
    share = lambda m: 100.0 * float((wrong & m).sum()) / float(old_images.sum())  # noqa: E731
    group = look_alike_groups(config.data.root, list(data.texts.class_names))
    return {"when new": float(np.mean([r[j, j] for j in old])), "at the end": float(np.mean(r[last, :last])),
            "forgetting": float(np.mean([np.nanmax(r[j:last, j]) - r[last, j] for j in old])),
            "to siblings": share(task[pred] == task[y]), "to newest task": share(task[pred] == last),
            "to other old tasks": share((task[pred] != task[y]) & (task[pred] != last)),
            "to a look-alike of another task": float("nan") if group is None else share(
                (group[pred] == group[y]) & (task[pred] != task[y])),
            "to a class of another group": float("nan") if group is None else share(group[pred] != group[y]),
            "look-alike pairs": None if group is None else look_alike_wins(scores, y, task, group),
            "background by task": background_by_task(learner, data, task)}


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
    print("| variant | when new | at the end | forgetting | to siblings | to newest task | to other old tasks "
          "| of these two: to a look-alike | to a class of another group |")
    print("|---|---|---|---|---|---|---|---|---|")
    results: dict[str, dict] = {}
    for variant in order:
        if variant not in chosen:
            continue
        results[variant] = a = anatomy(chosen[variant])
        print(f"| {variant} | {a['when new']:.2f} | {a['at the end']:.2f} | {a['forgetting']:.2f} | "
              f"{a['to siblings']:.1f} | {a['to newest task']:.1f} | {a['to other old tasks']:.1f} | "
              f"{a['to a look-alike of another task']:.1f} | {a['to a class of another group']:.1f} |")
    pairs = {v: a["look-alike pairs"] for v, a in results.items() if a["look-alike pairs"]}
    if pairs:
        print("\nLook-alike pairs at the end (every test image vs each class of its group): % where the image's "
              "own class scores higher, by the task of the look-alike; for SPA also its patch term alone and the "
              "rest of its logit ([CLS] branch and calibration).\n")
        print("| variant | look-alike in | pairs | fused | patch term | the rest |")
        print("|---|---|---|---|---|---|")
        for variant, kinds in pairs.items():
            for kind, w in kinds.items():
                split = (f"{w['patch']:.1f} | {w['rest']:.1f}" if "patch" in w else "— | —")
                print(f"| {variant} | {kind} | {w['pairs']} | {w['fused']:.1f} | {split} |")
    backgrounds = {v: a["background by task"] for v, a in results.items() if a["background by task"]}
    if backgrounds:
        print("\nLearned patch branches: each class's mean patch score on the other classes' training images of "
              "its task, averaged over the classes of each task.\n")
        print("| variant | " + " | ".join(f"task {t}" for t in range(len(next(iter(backgrounds.values()))))) + " |")
        print("|---|" + "---|" * len(next(iter(backgrounds.values()))))
        for variant, rates in backgrounds.items():
            print(f"| {variant} | " + " | ".join(f"{r:.3f}" for r in rates) + " |")


if __name__ == "__main__":
    main()
