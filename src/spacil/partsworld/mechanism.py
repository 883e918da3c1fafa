"""Mechanism metrics of SPA's patch branch on parts world, from the renderer's ground-truth part masks.

Accuracy says whether the method wins; these say whether the patch branch does what it claims:

* **selection precision**: share of the k patches selected for an image's own class that lie on one of
  its local parts (not background, clutter or plain body). Choosing patches at random scores the share
  of part patches among all patches (reported beside it);
* **phrase-assignment accuracy**: of the transport mass leaving patches of part X, the share that goes
  to a phrase naming part kind X (chance is about one over the number of phrases). A phrase names a
  kind when it is one of the wordings of a vocabulary phrase (:mod:`.wording`), whatever value it says
  (a describer's confusion still names the right place); generic or unknown phrases name none;
* **patch-branch accuracy**: top-1 of the patch-level score alone over all classes;
* **phrases naming a part**: share of the phrases the learner used that name one of the vocabulary's
  part kinds (any wording, any value; shape and colour phrases and generic or unknown phrases do not).

A patch belongs to a part when that part covers at least ``min_fraction`` of its pixels (parts beat the
body behind them), else to its majority component; the same rule labelled patches for pretraining.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch

from .classes import ClassSpec
from .dataset import generate_item_layers
from .render import RenderConfig, component_names
from .vocabulary import VOCABULARY
from .wording import wordings

#: Components that are not local parts.
NON_PART = ("background", "clutter", "body")


def _is_part() -> np.ndarray:
    return np.array([name not in NON_PART for name in component_names()])


def patch_components(label_map: np.ndarray, patch: int, min_fraction: float = 0.3) -> np.ndarray:
    """Component id per patch (row-major grid) of a ``[H, W]`` component label map."""
    n_components = len(component_names())
    g = label_map.shape[0] // patch
    blocks = label_map[: g * patch, : g * patch].reshape(g, patch, g, patch).transpose(0, 2, 1, 3).reshape(g * g, -1)
    shares = np.stack([(blocks == i).mean(axis=1) for i in range(n_components)], axis=1)  # [P, components]
    out = shares.argmax(axis=1)
    part_ids = np.flatnonzero(_is_part())
    part_share = shares[:, part_ids]
    on_part = part_share.max(axis=1) >= min_fraction
    out[on_part] = part_ids[part_share[on_part].argmax(axis=1)]
    return out


def image_components(specs: Sequence[ClassSpec], sample_ids: Sequence[str], seed: int, size: int, patch: int,
                     min_fraction: float = 0.3, config: RenderConfig | None = None) -> np.ndarray:
    """``[n, P]`` patch components of exported images ``<split>/<class>/<index>.png``, re-rendered from their seeds."""
    by_name = {s.name: s for s in specs}
    out = []
    for sid in sample_ids:
        split, name, file = sid.split("/")[-3:]
        layers = generate_item_layers(by_name[name], int(file.split(".")[0]), seed, size, split, config)
        out.append(patch_components(layers.labels, patch, min_fraction))
    return np.stack(out)


def _phrase_table() -> dict[str, str]:
    """Every wording of a vocabulary phrase (lower case) -> the component it names."""
    table = {}
    for shape in VOCABULARY.shapes:
        table.update({w.lower(): "body" for w in wordings(shape.phrase)})
    for colour in VOCABULARY.colours:
        table.update({w.lower(): "body" for w in wordings(colour.phrase)})
    for kind in VOCABULARY.kinds:
        for value in kind.values:
            table.update({w.lower(): kind.name for w in wordings(value.phrase)})
    return table


def phrase_component(phrase: str) -> str | None:
    """The component a description phrase names ('body' or a part kind), or None for a phrase that names
    none (generic filler, or wording of a user's own description file that parts world does not know)."""
    return _phrase_table().get(phrase.strip().lower())


def selection_precision(selected: np.ndarray, components: np.ndarray) -> float:
    """Share of selected patches ``[n, k]`` (patch indices) that lie on a local part."""
    return float(_is_part()[np.take_along_axis(components, selected, axis=1)].mean())


def random_precision(components: np.ndarray) -> float:
    """Expected selection precision of choosing patches uniformly at random."""
    return float(_is_part()[components].mean())


def phrase_assignment_accuracy(plans: np.ndarray, selected: np.ndarray, components: np.ndarray,
                               token_components: Sequence[Sequence[str]]) -> float:
    """Share of mass from part-X patches sent to part X's phrase (parts the class has a phrase for).

    plans: [n, k, N] transport plans of each image's own class; selected: [n, k] patch indices;
    token_components[i][n]: the component named by token n of image i's class (valid tokens only).
    """
    names = component_names()
    good = total = 0.0
    for plan, sel, comp, kinds in zip(plans, selected, components, token_components):
        kinds = np.asarray(kinds)
        for row, patch in zip(plan, sel):
            name = names[comp[patch]]
            if name in NON_PART or name not in kinds:
                continue
            mass = row[: len(kinds)]
            total += float(mass.sum())
            good += float(mass[kinds == name].sum())
    return good / total if total > 0 else float("nan")


@dataclass
class Mechanism:
    """The patch branch's mechanism metrics for one trained learner (see the module docstring)."""

    selection_precision: float
    random_precision: float
    phrase_assignment: float
    patch_accuracy: float
    part_phrase_share: float = float("nan")  # share of the used phrases that name one of their class's parts

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@torch.no_grad()
def measure_mechanism(learner, patches: torch.Tensor, labels: torch.Tensor, components: np.ndarray,
                      class_specs: Sequence[ClassSpec], n_seen: int, chunk: int = 256) -> Mechanism:
    """Mechanism metrics of an SPA learner on test patches ``[n, P, D]`` with true labels (scenario order).

    ``class_specs[c]`` is the spec of scenario class ``c``; ``learner.patch_evidence`` gives the scores,
    plans and selected indices exactly as the learner scores images.
    """
    sem = learner.semantic
    own_index, own_plans, correct = [], [], 0
    for i in range(0, len(labels), chunk):
        y = labels[i:i + chunk]
        score, plan, index = learner.patch_evidence(patches[i:i + chunk], n_seen)
        rows = torch.arange(len(y))
        correct += int((score.argmax(-1) == y).sum())
        own_index.append(index[rows, y].cpu().numpy())
        if plan is not None:
            own_plans.append(plan[rows, y].cpu().numpy())
    selected = np.concatenate(own_index)
    phrase_acc = float("nan")
    kinds_of = [[phrase_component(p) for p in sem.phrases[c]] for c in range(n_seen)]
    if own_plans:
        token_kinds = []
        for c in labels.tolist():
            n_valid = int(sem.mask[c].sum())
            token_kinds.append([kinds_of[c][int(sem.token_phrase[c, n])] for n in range(n_valid)])
        phrase_acc = phrase_assignment_accuracy(np.concatenate(own_plans), selected, components, token_kinds)
    used = [k for kinds in kinds_of for k in kinds]
    part_share = float(np.mean([k is not None and k not in NON_PART for k in used])) if used else float("nan")
    return Mechanism(selection_precision(selected, components), random_precision(components), phrase_acc,
                     100.0 * correct / len(labels), part_share)
