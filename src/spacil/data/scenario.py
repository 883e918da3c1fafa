"""Class-incremental scenarios: which classes arrive in which task, and in what order.

Labels are remapped to *order of appearance*: the first class of the class order becomes label 0,
and so on. After the remap, task ``t`` owns a contiguous label range, which is what every learner,
metric and report in the project assumes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import SpacilError

CLASS_ORDER_PACKAGE = "spacil.data.class_orders"


class ScenarioError(SpacilError, ValueError):
    """A class order or split that cannot describe a valid class-incremental scenario."""


def shipped_class_order(dataset: str) -> list[int]:
    """The protocol's seed-1993 order shipped for ``dataset``."""
    path = resources.files(CLASS_ORDER_PACKAGE) / f"{dataset}.json"
    if not path.is_file():
        raise ScenarioError(f"no shipped class order for dataset {dataset!r}; pass data.class_order explicitly")
    return list(json.loads(path.read_text())["order"])


def protocol_permutation(n_classes: int, seed: int = 1993) -> list[int]:
    """``np.random.seed(seed); np.random.permutation(n)`` computed on a private RandomState."""
    return np.random.RandomState(seed).permutation(n_classes).tolist()


def shipped_class_order_datasets() -> list[str]:
    folder = resources.files(CLASS_ORDER_PACKAGE)
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def read_class_order_file(path: Path) -> list[int]:
    """A class order from a JSON file (a list, or an object with ``order``) or whitespace-separated ints."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ScenarioError(f"class order file not found: {path}")
    text = path.read_text()
    try:
        data = json.loads(text)
        order = data["order"] if isinstance(data, dict) else data
    except json.JSONDecodeError:
        try:
            order = [int(tok) for tok in text.replace(",", " ").split()]
        except ValueError:
            raise ScenarioError(f"class order file {path} holds something other than integers") from None
    return [int(c) for c in order]


def validate_class_order(order: Sequence[int], n_classes: int) -> list[int]:
    """Check that ``order`` is a permutation of ``range(n_classes)`` and name what is wrong if not."""
    order = [int(c) for c in order]
    seen: set[int] = set()
    duplicates = sorted({c for c in order if c in seen or seen.add(c)})  # type: ignore[func-returns-value]
    if duplicates:
        raise ScenarioError(f"class order repeats classes {duplicates[:10]}")
    out_of_range = sorted(c for c in order if not 0 <= c < n_classes)
    if out_of_range:
        raise ScenarioError(f"class order names classes {out_of_range[:10]} outside 0..{n_classes - 1}")
    missing = sorted(set(range(n_classes)) - set(order))
    if missing:
        raise ScenarioError(f"class order misses {len(missing)} of {n_classes} classes, e.g. {missing[:10]}")
    return order


@dataclass(frozen=True)
class Scenario:
    """A class-incremental split over classes already remapped to order of appearance."""

    class_order: tuple[int, ...]  # original label of new label i
    class_names: tuple[str, ...]  # name of new label i
    task_sizes: tuple[int, ...]

    @property
    def n_tasks(self) -> int:
        return len(self.task_sizes)

    @property
    def n_classes(self) -> int:
        return len(self.class_order)

    def task_range(self, task: int) -> range:
        """New labels of task ``task``."""
        start = sum(self.task_sizes[:task])
        return range(start, start + self.task_sizes[task])

    def seen_classes(self, task: int) -> int:
        """Number of classes seen after training ``task`` (labels 0..n-1)."""
        return sum(self.task_sizes[: task + 1])

    def task_of_label(self, labels: np.ndarray) -> np.ndarray:
        """Task index of each new label."""
        bounds = np.cumsum(self.task_sizes)
        return np.searchsorted(bounds, np.asarray(labels), side="right")

    def remap(self, original_labels: np.ndarray) -> np.ndarray:
        """Original dataset labels -> new labels (order of appearance)."""
        lookup = np.full(max(self.class_order) + 1, -1, dtype=np.int64)
        lookup[list(self.class_order)] = np.arange(self.n_classes)
        original_labels = np.asarray(original_labels, dtype=np.int64)
        if original_labels.size and (original_labels.max() >= lookup.size or original_labels.min() < 0):
            raise ScenarioError("labels outside the class order")
        return lookup[original_labels]


def task_sizes_for(n_classes: int, init_cls: int, increment: int) -> list[int]:
    """``[init_cls, increment, increment, ..., remainder]`` covering ``n_classes``."""
    if init_cls > n_classes:
        raise ScenarioError(f"data.init_cls={init_cls} exceeds the dataset's {n_classes} classes; set data.init_cls "
                            f"(and data.increment) to at most {n_classes}, e.g. --set data.init_cls={max(1, n_classes // 2)} "
                            f"--set data.increment={max(1, n_classes // 2)}")
    if init_cls < 1 or increment < 1:
        raise ScenarioError("init_cls and increment must be positive")
    sizes = [init_cls]
    remaining = n_classes - init_cls
    while remaining > 0:
        sizes.append(min(increment, remaining))
        remaining -= sizes[-1]
    return sizes


def build_scenario(class_names: Sequence[str], order: Sequence[int], init_cls: int, increment: int) -> Scenario:
    """Scenario for a dataset with ``class_names`` (original label order) and a class ``order``."""
    if len(set(class_names)) != len(class_names):
        dup = sorted({n for n in class_names if list(class_names).count(n) > 1})
        raise ScenarioError(f"duplicate class names {dup[:10]}")
    order = validate_class_order(order, len(class_names))
    sizes = task_sizes_for(len(order), init_cls, increment)
    return Scenario(tuple(order), tuple(class_names[c] for c in order), tuple(sizes))


def resolve_class_order(spec: str | list[int] | Path, dataset: str, n_classes: int) -> list[int]:
    """The class order a config asks for: 'shipped', 'natural', a list, or a file."""
    if isinstance(spec, list):
        order = spec
    elif isinstance(spec, Path):
        order = read_class_order_file(spec)
    elif spec == "natural":
        order = list(range(n_classes))
    elif spec == "shipped":
        if dataset in shipped_class_order_datasets():
            order = shipped_class_order(dataset)
        else:
            # Same recipe as the shipped files, for datasets we ship no file for (image folders, parts world).
            order = protocol_permutation(n_classes)
    else:
        order = read_class_order_file(Path(spec))
    return validate_class_order(order, n_classes)
