"""Learner time per task on the SUN-397 B0 Inc30 shape: does a task's cost grow linearly with the seen classes?

    python benchmarks/task_cost.py [--quick]

10 tasks of 30 classes, 600 new images per task, 1 epoch, synthetic features of ViT-B/16 size (P=196
patches, D=512, 8 semantic tokens per class), SPA with the protocol preset's settings. Prints the learner
time (``learn_task``, calibration included) of every task, the task-9 / task-1 ratio (linear growth in
the seen classes gives about 300 / 60 = 5) and the total. ``--quick``: 4 tasks of 6 classes, 60 images.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F


def synthetic_task(classes: range, n_images: int, dim: int, n_patches: int, seed: int):
    """Global features and patches of ``n_images`` images of ``classes`` (class means plus noise)."""
    from spacil.methods.base import FeatureBatch

    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor(list(classes)).repeat_interleave(-(-n_images // len(classes)))[:n_images]
    class_g = torch.Generator().manual_seed(10_000)
    means = F.normalize(torch.randn(classes.stop, dim, generator=class_g), dim=-1)[labels]
    global_ = means + 0.5 * torch.randn(n_images, dim, generator=g)
    patches = 0.3 * means[:, None, :] + torch.randn(n_images, n_patches, dim, generator=g)
    return FeatureBatch(global_, patches, labels)


def run(quick: bool = False, max_tasks: int | None = None) -> dict:
    from spacil.config import load_config
    from spacil.methods.base import TaskContext
    from spacil.methods.spa.learner import SPALearner

    sys_path_benchmarks()
    from run_benchmarks import _synthetic_texts  # noqa: E402 - the benchmark's synthetic class texts

    n_tasks, per_task, n_images, dim, n_patches = (4, 6, 60, 64, 49) if quick else (10, 30, 600, 512, 196)
    config = load_config("sun397_b0_inc30", ["train.epochs=1", "train.device=cpu"])
    texts = _synthetic_texts(n_tasks * per_task, dim)
    learner = SPALearner(config.method.spa, config.train, chunk_size=config.train.eval_batch_size)
    seconds = []
    for task in range(max_tasks or n_tasks):
        classes = range(task * per_task, (task + 1) * per_task)
        batch = synthetic_task(classes, n_images, dim, n_patches, seed=task)
        ctx = TaskContext(task, classes, classes.stop, texts, torch.device("cpu"), 1993 + task)
        start = time.perf_counter()
        learner.learn_task(ctx, batch)
        seconds.append(time.perf_counter() - start)
        print(f"task {task}: {seconds[-1]:.1f} s", flush=True)
    last = len(seconds) - 1
    return {"shape": {"tasks": n_tasks, "classes_per_task": per_task, "images_per_task": n_images, "dim": dim,
                      "patches": n_patches, "epochs": 1},
            "task_seconds": [round(s, 2) for s in seconds],
            "ratio_last_to_task1": round(seconds[last] / seconds[1], 2),
            "seen_ratio_last_to_task1": (last + 1) / 2, "total_seconds": round(sum(seconds), 1)}


def sys_path_benchmarks() -> None:
    import sys
    from pathlib import Path

    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)


def render(res: dict) -> str:
    s = res["shape"]
    return (f"SUN-397 B0 Inc30 shape ({s['tasks']} tasks x {s['classes_per_task']} classes, {s['images_per_task']} "
            f"images per task, P={s['patches']}, D={s['dim']}, {s['epochs']} epoch): learner seconds per task "
            f"{res['task_seconds']}; task {s['tasks'] - 1} / task 1 = {res['ratio_last_to_task1']} (seen classes "
            f"grow {res['seen_ratio_last_to_task1']:g}x); total {res['total_seconds']} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    res = run(args.quick)
    print(render(res))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
