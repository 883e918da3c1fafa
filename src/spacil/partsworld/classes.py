"""Class design for parts world: groups of classes that look alike globally and differ in local parts.

SPA's premise is that fine-grained classes share a global look and are told apart by small local cues.
Here that holds by construction: classes come in *groups* (``group_size`` consecutive labels); all
classes of a group share body shape and body colour (the global look) and differ pairwise in only
``parts_per_class_diff`` local parts. Different groups have different (shape, colour) pairs.

Design of one group (seeded by ``(seed, group)`` only, so a prefix of the class list never depends on
how many classes were asked for):

* a random *base* creature (eyes always present, at most one other part absent);
* ``parts_per_class_diff == 1``: one varied kind; the classes take distinct values of it
  (every pair differs in exactly that one part);
* ``parts_per_class_diff == 2``: ``ceil(group_size / 2)`` varied kinds; class ``j`` is the base with
  kind ``j mod n_varied`` changed to a value not used before, so two classes differ in one part (same
  varied kind) or two parts (different kinds).

Naming (``naming=``):

* ``"creature"`` (default): ``<colour>_<shape>_<word>`` with an invented pronounceable word,
  e.g. ``red_round_zibo``. The name says the global look but not the parts, like real fine-grained
  names, so within a group the name alone does not tell classes apart and the descriptions must.
  The mapping name -> parts is written to the dataset manifest and kept in each :class:`ClassSpec`.
* ``"parts"``: fully compositional, e.g. ``red-round-pointyears-spikehorn-twoeyes-stripes-curlytail``
  (absent parts omitted).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..descriptions.fileformat import FORMAT, VERSION, compute_checksum, validate_document
from .vocabulary import NONE, VOCABULARY, PartValues

logger = logging.getLogger(__name__)

# Seed-sequence domains (spawn_key prefixes) so the different random streams never collide.
_DOMAIN_GROUP_LOOK = 11
_DOMAIN_GROUP_DESIGN = 12
_DOMAIN_NAME = 13

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


@dataclass(frozen=True)
class ClassSpec:
    """One parts-world class: its unique name, its group and its ground-truth part values."""

    name: str
    group: int
    parts: PartValues

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "group": self.group, "parts": self.parts.to_dict()}


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=key))


def _group_looks(n_groups: int, seed: int) -> list[tuple[str, str]]:
    """Distinct (shape, colour) pairs, spreading shapes and colours evenly (greedy, prefix-stable)."""
    pairs = [(s.name, c.name) for s in VOCABULARY.shapes for c in VOCABULARY.colours]
    if n_groups > len(pairs):
        raise ValueError(f"parts world has {len(pairs)} (shape, colour) pairs, cannot make {n_groups} groups")
    order = _rng(seed, _DOMAIN_GROUP_LOOK).permutation(len(pairs))
    remaining = [pairs[i] for i in order]
    shape_use: dict[str, int] = {}
    colour_use: dict[str, int] = {}
    looks = []
    for _ in range(n_groups):
        best = min(range(len(remaining)),
                   key=lambda i: shape_use.get(remaining[i][0], 0) + colour_use.get(remaining[i][1], 0))
        shape, colour = remaining.pop(best)
        shape_use[shape] = shape_use.get(shape, 0) + 1
        colour_use[colour] = colour_use.get(colour, 0) + 1
        looks.append((shape, colour))
    return looks


def _base_parts(rng: np.random.Generator, max_absent: int) -> dict[str, str]:
    """Random part values: every kind present except at most ``max_absent`` optional kinds."""
    parts = {k.name: str(rng.choice([v.name for v in k.values])) for k in VOCABULARY.kinds}
    optional = [k.name for k in VOCABULARY.kinds if k.optional]
    n_absent = int(rng.integers(0, max_absent + 1))
    for kind in rng.choice(optional, size=n_absent, replace=False):
        parts[str(kind)] = NONE
    return parts


def _group_parts(rng: np.random.Generator, group_size: int, max_diff: int) -> list[dict[str, str]]:
    base = _base_parts(rng, max_absent=1)
    if max_diff == 1:
        kinds = [k for k in VOCABULARY.kinds if len(k.choices) >= group_size]
        if not kinds:
            raise ValueError(f"no part kind has {group_size} values; use a smaller group_size")
        kind = kinds[int(rng.integers(len(kinds)))]
        values = [str(v) for v in rng.permutation(kind.choices)[:group_size]]
        return [{**base, kind.name: v} for v in values]
    n_varied = math.ceil(group_size / 2)
    varied = [str(k) for k in rng.permutation(VOCABULARY.kind_names)[:n_varied]]
    used: dict[str, set[str]] = {k: {base[k]} for k in varied}
    designs = []
    for j in range(group_size):
        kind = varied[j % n_varied]
        options = [v for v in VOCABULARY.kind(kind).choices if v not in used[kind]]
        if not options:
            raise ValueError(f"group_size {group_size} too large: kind {kind!r} ran out of values")
        value = str(options[int(rng.integers(len(options)))])
        used[kind].add(value)
        designs.append({**base, kind: value})
    return designs


def _creature_word(rng: np.random.Generator, taken: set[str]) -> str:
    for attempt in range(1000):
        n_syllables = 2 if attempt < 50 else 3
        word = "".join(str(rng.choice(list(_CONSONANTS))) + str(rng.choice(list(_VOWELS)))
                       for _ in range(n_syllables))
        if word not in taken:
            return word
    raise RuntimeError("could not find an unused creature name")


def parts_name(parts: PartValues) -> str:
    """The compositional class name, e.g. ``red-round-longears-twoeyes-curlytail``."""
    tokens = [parts.colour, parts.shape] + [value.token for _, value in parts.present_parts()]
    return "-".join(tokens)


def make_class_specs(n_classes: int, seed: int, parts_per_class_diff: int = 2, group_size: int = 5,
                     naming: str = "creature") -> list[ClassSpec]:
    """Deterministic parts-world classes, ``group_size`` per group (see the module docstring).

    ``make_class_specs(n, seed)`` is a prefix of ``make_class_specs(m, seed)`` for ``n <= m``.
    """
    if n_classes < 1:
        raise ValueError("n_classes must be >= 1")
    if parts_per_class_diff not in (1, 2):
        raise ValueError("parts_per_class_diff must be 1 or 2")
    if group_size < 1:
        raise ValueError("group_size must be >= 1")
    if naming not in ("creature", "parts"):
        raise ValueError("naming must be 'creature' or 'parts'")
    n_groups = math.ceil(n_classes / group_size)
    looks = _group_looks(n_groups, seed)
    specs: list[ClassSpec] = []
    words: set[str] = set()
    for group, (shape, colour) in enumerate(looks):
        designs = _group_parts(_rng(seed, _DOMAIN_GROUP_DESIGN, group), group_size, parts_per_class_diff)
        for j, design in enumerate(designs):
            if len(specs) == n_classes:
                break
            parts = PartValues.from_dict({"shape": shape, "colour": colour, **design})
            if naming == "parts":
                name = parts_name(parts)
            else:
                word = _creature_word(_rng(seed, _DOMAIN_NAME, group, j), words)
                words.add(word)
                name = f"{colour}_{shape}_{word}"
            specs.append(ClassSpec(name=name, group=group, parts=parts))
    logger.debug("made %d parts-world classes in %d groups (seed %d)", len(specs), n_groups, seed)
    return specs


def class_descriptions(spec: ClassSpec | PartValues) -> list[str]:
    """Visual-cue phrases of a class: body shape, body colour, then each present part (kind order)."""
    parts = spec.parts if isinstance(spec, ClassSpec) else spec
    phrases = [VOCABULARY.shape(parts.shape).phrase, VOCABULARY.colour(parts.colour).phrase]
    phrases += [value.phrase for _, value in parts.present_parts()]
    return phrases


def descriptions_document(specs: Sequence[ClassSpec], dataset_key: str = "partsworld") -> dict[str, Any]:
    """A ``spacil-descriptions`` document (label order = ``specs`` order), validated against the contract."""
    classes = [{"name": s.name, "phrases": class_descriptions(s),
                "provenance": {"source": "parts-world ground-truth part vocabulary", "group": s.group,
                               "parts": s.parts.to_dict()}}
               for s in specs]
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "dataset": dataset_key,
        "produced_by": ("generated programmatically from the ground-truth part vocabulary of the synthetic "
                        "parts-world benchmark (spacil.partsworld): each phrase is the vocabulary phrase of the "
                        "class's body shape, body colour or one of its local parts; no images were shown and "
                        "no LLM was called"),
        "generator": None,
        "checksum": compute_checksum(classes),
        "classes": classes,
    }
    validate_document(doc, source=f"parts-world descriptions ({dataset_key})", expected_dataset=dataset_key)
    return doc
