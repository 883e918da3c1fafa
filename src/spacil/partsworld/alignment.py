"""Picture of SPA's patch-level alignment: the patches a class's descriptions select, coloured by the
description phrase each is transported to (from :meth:`SPALearner.alignment`)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..runs.plots import new_figure


def plot_alignment(path: Path, images: Sequence[Image.Image], matches: Sequence[dict], class_names: Sequence[str],
                   predicted: Sequence[int], grid: tuple[int, int], scale: int = 4) -> Path:
    """Images with their selected patches outlined, coloured by the phrase each one is matched to."""
    from matplotlib import colormaps
    from matplotlib.patches import Rectangle

    n = len(images)
    fig = new_figure(figsize=(3.2 * n, 4.6), dpi=110)
    axes = fig.subplots(1, n, squeeze=False)
    palette = colormaps["tab10"].colors
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
    return path
