"""Pictures of SPA's patch-level alignment: which patches a class's descriptions select, and which
description phrase each selected patch is transported to."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ..runs.plots import _pyplot
from ..spa.learner import SPALearner


@torch.no_grad()
def alignment_for(learner: SPALearner, patches: torch.Tensor, labels: Sequence[int], n_seen: int) -> list[dict]:
    """Per image: selected patch indices for its true class, the phrase each one is matched to, and its score."""
    side = learner.class_side(n_seen)
    adapted = learner.visual(patches.float())
    score, plan, index = learner.patch_scores(adapted, side)
    sem = learner.semantic
    out = []
    for i, c in enumerate(labels):
        entry = {"label": int(c), "patches": index[i, c].tolist(), "phrases": [], "weights": []}
        for j in range(index.shape[2]):
            if plan is None:  # mean aggregation: match each patch to its most similar token
                sims = adapted[i, index[i, c, j]] @ side["tokens"][c].T
                token = int(sims.masked_fill(~side["token_mask"][c], -2).argmax())
                weight = float("nan")
            else:
                token = int(plan[i, c, j].argmax())
                weight = float(plan[i, c, j].sum())
            entry["phrases"].append(sem.phrases[c][int(sem.token_phrase[c, token])])
            entry["weights"].append(weight)
        entry["patch_score"] = float(score[i, c])
        out.append(entry)
    return out


def plot_alignment(path: Path, images: Sequence[Image.Image], matches: Sequence[dict], class_names: Sequence[str],
                   predicted: Sequence[int], grid: tuple[int, int], scale: int = 4) -> Path:
    """Images with their selected patches outlined, coloured by the phrase each one is matched to."""
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 4.6), dpi=110, squeeze=False)
    palette = plt.get_cmap("tab10").colors
    gh, gw = grid
    for ax, img, match, pred in zip(axes[0], images, matches, predicted):
        big = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
        ax.imshow(np.asarray(big))
        ph, pw = big.height / gh, big.width / gw
        colours: dict[str, tuple] = {}
        for p, phrase in zip(match["patches"], match["phrases"]):
            colour = colours.setdefault(phrase, palette[len(colours) % len(palette)])
            r, c = divmod(p, gw)
            ax.add_patch(Rectangle((c * pw, r * ph), pw, ph, fill=False, edgecolor=colour, linewidth=2))
        true = class_names[match["label"]]
        ok = "correct" if pred == match["label"] else f"predicted {class_names[pred]}"
        ax.set_title(f"{true}\n({ok})", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
        for k, (phrase, colour) in enumerate(colours.items()):
            y = -0.04 - 0.07 * k
            ax.text(0, y, "■", transform=ax.transAxes, va="top", fontsize=8, color=colour)
            ax.text(0.08, y, phrase, transform=ax.transAxes, va="top", fontsize=7)
    fig.suptitle("SPA alignment: patches selected by the true class's descriptions, coloured by the phrase "
                 "OT matches them to", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path
