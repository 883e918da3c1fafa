"""How much could a set-based patch branch add to the [CLS] branch on parts world, at best?

    python scripts/patch_branch_ceiling.py                  # tuning worlds 0,1; prints a markdown table
    python scripts/patch_branch_ceiling.py --rows learned --patch-path value    # patch tokens read elsewhere

SPA's patch branch scores a class by matching a *set* of an image's patch tokens with a *set* of class
tokens (its description phrases), position-free. This script bounds what any branch of that shape can add
on the demo's backbone, with no incremental learning in the way: every class is trained at once on the
training rows (validation rows held out), so nothing is forgotten and every class sees every other.

Scores per (image, class), each fused with the [CLS] nearest-class-mean score (SimpleCIL's classifier) as
``z(cls) + w z(patch)`` (``z``: per-image standardisation over classes), ``w`` chosen on the validation rows:

- ``learned set (OT)``: a residual patch projector and per-class tokens that start at the class's
  description-phrase embeddings, both trained by cross-entropy through the entropic-OT score between all
  of an image's patches and the class's tokens (our Sinkhorn, uniform masses): SPA's patch branch with
  every class trained jointly, i.e. more than SPA can learn incrementally. Two controls: the phrase
  tokens frozen (only the projector learns: SPA before ``projector.tokens=learned``), and tokens learned
  from random unit vectors instead of the phrases (what the descriptions add as a starting point);
- ``visual anchors (chamfer)``: each class's K k-means centroids of its own training patches, each
  matched to its best patch: anchors no description can beat, in the frozen space;
- ``mean patch``: nearest class mean of the mean patch token;
- ``spatial layout``: nearest class mean of the concatenated patch grid (position-aware, not a set): a
  reference for how much the patch tokens carry when positions are kept.

``--patch-layer`` / ``--patch-path`` read the patch tokens from an earlier image block or from the last
block's value path (MaskCLIP), as ``backbone.patch_layer`` / ``backbone.patch_path`` do in a run; ``--rows
learned`` computes only the [CLS] row and the first learned-set row.

Read: if the set-based rows add well under 3 points fused, SPA's patch branch cannot reach the +3 bar on
this backbone whatever it learns; the spatial row shows whether the information is in the patches at all.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from torch import Tensor, nn

from spacil.data.validation import validation_mask
from spacil.methods.spa.projectors import ProjectorStack
from spacil.ot import ot_score, uniform_masses
from spacil.partsworld.demo import DemoSettings, demo_config, demo_descriptions, ensure_partsworld, world_folder
from spacil.training.harness import prepare_data

WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0)


def standardise(s: Tensor) -> Tensor:
    return (s - s.mean(1, keepdim=True)) / s.std(1, keepdim=True).clamp_min(1e-6)


def ncm_scores(train: Tensor, labels: Tensor, test: Tensor, n_classes: int) -> Tensor:
    train, test = F.normalize(train, dim=-1), F.normalize(test, dim=-1)
    protos = torch.stack([train[labels == c].mean(0) for c in range(n_classes)])
    return test @ F.normalize(protos, dim=-1).T


def anchor_scores(patches: Tensor, labels: Tensor, test: Tensor, n_classes: int, k: int, seed: int) -> Tensor:
    patches, test = F.normalize(patches, dim=-1), F.normalize(test, dim=-1)
    anchors = []
    for c in range(n_classes):
        points = patches[labels == c].reshape(-1, patches.shape[-1]).numpy()
        anchors.append(torch.tensor(KMeans(k, n_init=2, random_state=seed).fit(points).cluster_centers_).float())
    anchors = F.normalize(torch.stack(anchors), dim=-1)  # [C, K, D]
    return torch.cat([torch.einsum("bpd,ckd->bcpk", chunk, anchors).amax(2).mean(-1) for chunk in test.split(256)])


class LearnedSetBranch(nn.Module):
    """Patch projector + free class tokens, scored by entropic OT (all patches, uniform masses)."""

    def __init__(self, tokens: Tensor, mask: Tensor, hidden: int, eps: float, iterations: int, seed: int,
                 learn_tokens: bool) -> None:
        super().__init__()
        self.projector = ProjectorStack(tokens.shape[-1], hidden, per_task=False)
        self.projector.add_task(torch.Generator().manual_seed(seed))
        self.tokens = nn.Parameter(tokens.clone(), requires_grad=learn_tokens)
        self.register_buffer("mask", mask)
        self.eps, self.iterations = eps, iterations

    def forward(self, patches: Tensor) -> Tensor:
        x = self.projector(patches)  # [B, P, D] normalised
        tokens = F.normalize(self.tokens, dim=-1)
        sim = torch.einsum("bpd,cnd->bcpn", x, tokens)
        a = torch.full(sim.shape[:-1], 1.0 / sim.shape[2])
        b = uniform_masses(self.mask).expand(sim.shape[0], -1, -1)
        score, _ = ot_score(sim, a, b, self.eps, self.iterations, check_convergence="off")
        return score


def learned_scores(train: Tensor, labels: Tensor, tests: list[Tensor], tokens: Tensor, mask: Tensor,
                   epochs: int, lr: float, scale: float, seed: int, learn_tokens: bool = True,
                   hidden: int = 128) -> list[Tensor]:
    branch = LearnedSetBranch(tokens, mask, hidden=hidden, eps=0.1, iterations=30, seed=seed, learn_tokens=learn_tokens)
    optimizer = torch.optim.Adam([q for q in branch.parameters() if q.requires_grad], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(labels), generator=generator).split(64):
            loss = F.cross_entropy(scale * branch(train[idx]), labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        return [torch.cat([branch(chunk) for chunk in t.split(256)]) for t in tests]


def accuracy(scores: Tensor, labels: Tensor) -> float:
    return 100.0 * (scores.argmax(1) == labels).float().mean().item()


def world_rows(world: int, output: Path, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    settings = DemoSettings(output=output, data_seed=world, ablations=False, n_classes=args.n_classes,
                            n_train=args.n_train, n_test=args.n_test,
                            overrides=[f"backbone.patch_layer={args.patch_layer}", f"backbone.patch_path={args.patch_path}"])
    ensure_partsworld(world_folder(settings), settings.n_classes, settings.n_train, settings.n_test, world,
                      settings.image_size)
    config = demo_config(settings, demo_descriptions(settings, settings.describer, progress=False))
    data = prepare_data(config, progress=False)
    n_classes = len(data.texts)
    train_labels = torch.as_tensor(data.scenario.remap(data.train.labels)).long()
    test_labels = torch.as_tensor(data.scenario.remap(data.test.labels)).long()
    held = torch.as_tensor(validation_mask(data.train.labels, data.train.sample_ids, config.data.validation_fraction,
                                           config.data.validation_seed))
    as_tensor = lambda a: torch.from_numpy(np.array(a, dtype=np.float32))  # noqa: E731  (float16 cache, a copy)
    g_all, p_all = as_tensor(data.train.global_), as_tensor(data.train.patches)
    g_te, p_te = as_tensor(data.test.global_), as_tensor(data.test.patches)
    fit = ~held
    splits = {"val": (g_all[held], p_all[held], train_labels[held]), "test": (g_te, p_te, test_labels)}
    g_fit, p_fit, y_fit = g_all[fit], p_all[fit], train_labels[fit]

    cls = {s: ncm_scores(g_fit, y_fit, g, n_classes) for s, (g, _, _) in splits.items()}
    sem = data.texts.semantic
    tests = [p for _, p, _ in splits.values()]
    noise = F.normalize(torch.randn(sem.tokens.shape, generator=torch.Generator().manual_seed(args.seed)), dim=-1)
    learned = {  # (start tokens, learn them?)
        "learned set (OT), class tokens learned from the phrases": (sem.tokens, True),
        "learned set (OT), phrase tokens frozen": (sem.tokens, False),
        "learned set (OT), class tokens learned from random": (noise * sem.mask[..., None], True),
    }
    if args.rows == "learned":
        learned = dict(list(learned.items())[:1])
    patch = {name: dict(zip(splits, learned_scores(p_fit, y_fit, tests, start, sem.mask, args.epochs, args.lr,
                                                   args.scale, args.seed, learn, args.hidden)))
             for name, (start, learn) in learned.items()}
    if args.rows == "all":
        patch.update(_frozen_rows(p_fit, y_fit, splits, n_classes, args))
    return _fused_rows(cls, patch, splits, test_labels)


def _frozen_rows(p_fit: Tensor, y_fit: Tensor, splits: dict, n_classes: int, args: argparse.Namespace) -> dict:
    """Patch scores that learn nothing: k-means anchors, mean patch, the whole grid."""
    return {
        f"visual anchors (chamfer, K={args.anchors})": {
            s: anchor_scores(p_fit, y_fit, p, n_classes, args.anchors, args.seed) for s, (_, p, _) in splits.items()},
        "mean patch": {s: ncm_scores(p_fit.mean(1), y_fit, p.mean(1), n_classes) for s, (_, p, _) in splits.items()},
        "spatial layout (not a set)": {s: ncm_scores(p_fit.flatten(1), y_fit, p.flatten(1), n_classes)
                                       for s, (_, p, _) in splits.items()},
    }


def _fused_rows(cls: dict, patch: dict, splits: dict, test_labels: Tensor) -> dict[str, dict[str, float]]:
    """Each patch score fused with the [CLS] NCM score, the weight chosen on the validation rows."""
    rows = {"[CLS] alone": {"patch": float("nan"), "w": 0.0, "fused": accuracy(cls["test"], test_labels),
                            "cls": accuracy(cls["test"], test_labels)}}
    for name, scores in patch.items():
        fused = {s: {w: standardise(cls[s]) + w * standardise(scores[s]) for w in WEIGHTS} for s in splits}
        w = max(WEIGHTS, key=lambda w: (accuracy(fused["val"][w], splits["val"][2]), -w))
        rows[name] = {"patch": accuracy(scores["test"], test_labels), "w": w,
                      "fused": accuracy(fused["test"][w], test_labels), "cls": rows["[CLS] alone"]["cls"]}
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", default="0,1", help="World seeds (default: the tuning worlds).")
    parser.add_argument("--output", type=Path, default=Path("spacil-ceiling"))
    parser.add_argument("--epochs", type=int, default=15, help="Epochs of the learned set branch.")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--scale", type=float, default=20.0, help="Logit scale of the learned branch's loss.")
    parser.add_argument("--anchors", type=int, default=8, help="k-means anchors per class.")
    parser.add_argument("--hidden", type=int, default=128, help="Bottleneck width of the learned branch's projector.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", choices=["all", "learned"], default="all",
                        help="'learned': only the [CLS] row and the learned set from the phrases (fast).")
    parser.add_argument("--patch-layer", type=int, default=-1, help="backbone.patch_layer (-1: CLIP's output tokens).")
    parser.add_argument("--patch-path", choices=["block", "value"], default="block", help="backbone.patch_path.")
    parser.add_argument("--n-classes", type=int, default=50, help="Parts-world classes (the demo's 50).")
    parser.add_argument("--n-train", type=int, default=60, help="Training images per class.")
    parser.add_argument("--n-test", type=int, default=20, help="Test images per class.")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    start = time.perf_counter()
    per_world = {w: world_rows(w, args.output, args) for w in (int(x) for x in args.worlds.split(","))}
    names = list(next(iter(per_world.values())))
    print(f"Joint training on all classes (no increments), worlds {args.worlds}, test accuracy; fusion weight w "
          f"chosen on validation rows per world. Mean over worlds. Patch tokens: backbone.patch_layer="
          f"{args.patch_layer}, patch_path={args.patch_path}.\n")
    print("| patch score | patch alone | fused with [CLS] NCM | gain over [CLS] NCM | w per world |")
    print("|---|---|---|---|---|")
    for name in names:
        rows = [per_world[w][name] for w in per_world]
        patch = np.mean([r["patch"] for r in rows])
        fused = np.mean([r["fused"] for r in rows])
        gain = np.mean([r["fused"] - r["cls"] for r in rows])
        alone = "—" if np.isnan(patch) else f"{patch:.2f}"
        weights = ", ".join(f"{r['w']:g}" for r in rows)
        print(f"| {name} | {alone} | {fused:.2f} | {gain:+.2f} | {weights} |")
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
