"""Parts-world datasets: labelled splits, an on-disk image folder, and image-caption pairs for CLIP pretraining.

Seeding: every image has its own ``np.random.SeedSequence(seed, spawn_key=(domain, split, class, index))``
where ``class`` is derived from the class's part values (not its label or name). So image ``i`` of a
class is the same whatever other classes are generated, in whatever order, and however many images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np
from PIL import Image

from .classes import ClassSpec, descriptions_document
from .render import DEFAULT_CAPTION_TEMPLATES, RenderConfig, RenderResult, caption_for, render_image, render_layers
from .vocabulary import NONE, VOCABULARY, PartValues

logger = logging.getLogger(__name__)

GENERATOR_VERSION = "2"  # bump when the vocabulary, class design or renderer changes the pixels

#: The ground-truth vocabulary phrases of every class (an upper bound for descriptions, never a default).
GROUND_TRUTH_DESCRIPTIONS = "ground_truth_descriptions.json"

_DOMAIN_SPLIT_IMAGE = 21
_DOMAIN_RANDOM_PARTS = 22
_DOMAIN_PAIR = 23
_SPLIT_KEYS = {"train": 0, "test": 1}


class Sample(NamedTuple):
    """One labelled parts-world image."""

    image: Image.Image
    label: int
    caption: str
    part_values: PartValues


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def _split_key(split: str) -> int:
    return _SPLIT_KEYS.get(split, _stable_int(f"split:{split}"))


def _item_rngs(seed: int, *key: int) -> tuple[np.random.Generator, np.random.Generator]:
    image_ss, caption_ss = np.random.SeedSequence(entropy=seed, spawn_key=key).spawn(2)
    return np.random.default_rng(image_ss), np.random.default_rng(caption_ss)


def _check_unique(specs: Sequence[ClassSpec]) -> None:
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError("class names must be unique")
    if len({s.parts for s in specs}) != len(specs):
        raise ValueError("class part values must be unique")


def generate_item(spec: ClassSpec, label: int, index: int, seed: int, size: int = 64, split: str = "train",
                  config: RenderConfig | None = None,
                  templates: Sequence[str] = DEFAULT_CAPTION_TEMPLATES) -> Sample:
    """Image ``index`` of class ``spec`` in ``split`` (depends only on seed, split, the parts and index)."""
    image_rng, caption_rng = _item_rngs(seed, _DOMAIN_SPLIT_IMAGE, _split_key(split),
                                        _stable_int(spec.parts.key()), index)
    image = render_image(spec.parts, image_rng, size, config)
    return Sample(image, label, caption_for(spec.parts, caption_rng, templates), spec.parts)


def generate_item_layers(spec: ClassSpec, index: int, seed: int, size: int = 64, split: str = "train",
                         config: RenderConfig | None = None) -> RenderResult:
    """The image of :func:`generate_item` with its per-pixel component labels (same seed, same pixels)."""
    image_rng, _ = _item_rngs(seed, _DOMAIN_SPLIT_IMAGE, _split_key(split), _stable_int(spec.parts.key()), index)
    return render_layers(spec.parts, image_rng, size, config)


def generate_split(specs: Sequence[ClassSpec], n_per_class: int, seed: int, size: int = 64,
                   split: str = "train", config: RenderConfig | None = None,
                   templates: Sequence[str] = DEFAULT_CAPTION_TEMPLATES) -> list[Sample]:
    """``n_per_class`` images per class, class-major (label = position in ``specs``)."""
    _check_unique(specs)
    return [generate_item(spec, label, i, seed, size, split, config, templates)
            for label, spec in enumerate(specs) for i in range(n_per_class)]


def _image_name(index: int) -> str:
    return f"{index:05d}.png"


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_class(root: Path, split: str, label: int, spec: ClassSpec, n: int, seed: int, size: int,
                 config: RenderConfig, templates: Sequence[str]) -> list[str]:
    """Write one class's images of one split; returns its captions.jsonl lines (in index order)."""
    folder = root / split / spec.name
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        item = generate_item(spec, label, i, seed, size, split, config, templates)
        rel = f"{split}/{spec.name}/{_image_name(i)}"
        item.image.save(root / rel)
        lines.append(json.dumps({"path": rel, "split": split, "label": label, "class": spec.name,
                                 "caption": item.caption, "parts": spec.parts.to_dict()}) + "\n")
    return lines


def write_image_folder(root: str | os.PathLike[str], specs: Sequence[ClassSpec], n_train: int, n_test: int,
                       seed: int, size: int = 64, dataset_key: str = "partsworld",
                       config: RenderConfig | None = None,
                       templates: Sequence[str] = DEFAULT_CAPTION_TEMPLATES, workers: int = 1) -> Path:
    """Write ``root/{train,test}/<class>/<idx>.png`` plus classes.txt, ground_truth_descriptions.json,
    captions.jsonl and manifest.json.

    The layout is what :class:`spacil.data.datasets.ImageFolderSource` reads; ``classes.txt`` fixes
    the label order (= ``specs`` order). ``workers > 1`` renders classes in that many processes; the
    files are identical either way (every image has its own seed).
    """
    _check_unique(specs)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    cfg = config or RenderConfig()
    jobs = [(root, split, label, spec, n, seed, size, cfg, tuple(templates))
            for split, n in (("train", n_train), ("test", n_test)) for label, spec in enumerate(specs)]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_write_class, *zip(*jobs)))
    else:
        results = [_write_class(*job) for job in jobs]
    with open(root / "captions.jsonl", "w", encoding="utf-8", newline="\n") as captions:
        for lines in results:
            captions.writelines(lines)
    (root / "classes.txt").write_text("".join(f"{s.name}\n" for s in specs), encoding="utf-8")
    # not descriptions.json: a run on this folder must not pick the ground truth up by itself
    _write_json(root / GROUND_TRUTH_DESCRIPTIONS, descriptions_document(specs, dataset_key))
    manifest = {
        "generator": "spacil.partsworld",
        "generator_version": GENERATOR_VERSION,
        "dataset": dataset_key,
        "seed": seed,
        "image_size": size,
        "n_classes": len(specs),
        "n_train_per_class": n_train,
        "n_test_per_class": n_test,
        "render_config": dataclasses.asdict(cfg),
        "caption_templates": list(templates),
        "classes": [{"label": label, **spec.to_dict()} for label, spec in enumerate(specs)],
    }
    _write_json(root / "manifest.json", manifest)
    logger.info("wrote parts world to %s: %d classes, %d train + %d test images per class",
                root, len(specs), n_train, n_test)
    return root


def random_part_values(rng: np.random.Generator, p_absent: float = 0.3) -> PartValues:
    """Uniform shape and colour; each optional part absent with probability ``p_absent``, else a uniform value."""
    values: dict[str, str] = {
        "shape": VOCABULARY.shapes[int(rng.integers(len(VOCABULARY.shapes)))].name,
        "colour": VOCABULARY.colours[int(rng.integers(len(VOCABULARY.colours)))].name,
    }
    for kind in VOCABULARY.kinds:
        absent = rng.uniform() < p_absent  # drawn for every kind, so the stream does not depend on `optional`
        value = kind.values[int(rng.integers(len(kind.values)))].name
        values[kind.name] = NONE if (absent and kind.optional) else value
    return PartValues.from_dict(values)


def random_part_combinations(n: int, seed: int, p_absent: float = 0.3) -> list[PartValues]:
    """``n`` random creatures (combination ``i`` depends only on ``seed`` and ``i``)."""
    return [random_part_values(np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_DOMAIN_RANDOM_PARTS, i))),
                               p_absent)
            for i in range(n)]


def generate_caption_pairs(n: int, seed: int, size: int = 64, p_absent: float = 0.3,
                           config: RenderConfig | None = None,
                           templates: Sequence[str] = DEFAULT_CAPTION_TEMPLATES) -> Iterator[tuple[Image.Image, str]]:
    """(image, caption) pairs over ``n`` random part combinations, for contrastive CLIP pretraining.

    Lazy (a generator), so large ``n`` does not sit in memory; pair ``i`` depends only on seed and ``i``.
    """
    combos = random_part_combinations(n, seed, p_absent)
    for i, parts in enumerate(combos):
        image_rng, caption_rng = _item_rngs(seed, _DOMAIN_PAIR, i)
        yield render_image(parts, image_rng, size, config), caption_for(parts, caption_rng, templates)
