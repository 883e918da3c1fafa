"""The parts-world vocabulary: body shapes, body colours and local part kinds, each value with its phrase.

Everything else in parts world (class design, rendering, captions, descriptions) is driven by this one
table, so a class's description phrases and its pixels can never disagree. The phrases are what a
description file would say about a patch ("long upright ears", "striped texture patch").

The vocabulary is data, not a tunable; changing it changes the benchmark, so bump
``spacil.partsworld.dataset.GENERATOR_VERSION`` with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Mapping

NONE = "none"  # the value of an optional part kind that is absent (drawn as nothing, no phrase)


@dataclass(frozen=True)
class BodyShape:
    """A global body shape. ``word`` is the caption adjective, ``phrase`` the description phrase."""

    name: str
    word: str
    phrase: str


@dataclass(frozen=True)
class BodyColour:
    """A global body colour (sRGB 0-255). The name doubles as the caption word."""

    name: str
    rgb: tuple[int, int, int]
    phrase: str


@dataclass(frozen=True)
class PartValue:
    """One value of a local part kind.

    ``token`` is the short tag used in compositional class names; ``article`` is put in front of the
    phrase in captions ("a single sharp horn"), empty for plurals.
    """

    name: str
    phrase: str
    token: str
    article: str = ""

    @property
    def caption_text(self) -> str:
        return f"{self.article} {self.phrase}" if self.article else self.phrase


@dataclass(frozen=True)
class PartKind:
    """A local part kind (ears, tail, ...). ``optional`` kinds also take the value :data:`NONE`."""

    name: str
    values: tuple[PartValue, ...]
    optional: bool = True

    @property
    def choices(self) -> tuple[str, ...]:
        """All value names this kind accepts, :data:`NONE` first when optional."""
        names = tuple(v.name for v in self.values)
        return ((NONE,) + names) if self.optional else names

    def value(self, name: str) -> PartValue:
        for v in self.values:
            if v.name == name:
                return v
        raise KeyError(f"part kind {self.name!r} has no value {name!r}; choices: {self.choices}")


@dataclass(frozen=True)
class Vocabulary:
    """Shapes, colours and part kinds (kinds in their canonical order)."""

    shapes: tuple[BodyShape, ...]
    colours: tuple[BodyColour, ...]
    kinds: tuple[PartKind, ...]

    @property
    def kind_names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.kinds)

    def shape(self, name: str) -> BodyShape:
        return _find(self.shapes, name, "body shape")

    def colour(self, name: str) -> BodyColour:
        return _find(self.colours, name, "body colour")

    def kind(self, name: str) -> PartKind:
        return _find(self.kinds, name, "part kind")

    def part_phrase(self, kind: str, value: str) -> str | None:
        """The phrase of ``kind=value``, or None for an absent part."""
        return None if value == NONE else self.kind(kind).value(value).phrase


def _find(items: tuple[Any, ...], name: str, what: str) -> Any:
    for item in items:
        if item.name == name:
            return item
    raise KeyError(f"unknown {what} {name!r}; known: {[i.name for i in items]}")


VOCABULARY = Vocabulary(
    shapes=(
        BodyShape("round", "round", "round ball-shaped body"),
        BodyShape("oval", "oval", "wide oval egg-shaped body"),
        BodyShape("square", "square", "square boxy body"),
        BodyShape("triangle", "triangular", "triangular body with a pointed top"),
        BodyShape("diamond", "diamond-shaped", "diamond-shaped body"),
        BodyShape("hexagon", "hexagonal", "six-sided hexagonal body"),
        BodyShape("pentagon", "pentagonal", "five-sided pentagonal body"),
        BodyShape("capsule", "pill-shaped", "long pill-shaped capsule body"),
    ),
    colours=(
        BodyColour("red", (215, 40, 40), "bright red skin"),
        BodyColour("orange", (240, 135, 25), "orange skin"),
        BodyColour("yellow", (238, 210, 35), "yellow skin"),
        BodyColour("green", (45, 160, 60), "grass green skin"),
        BodyColour("teal", (25, 150, 150), "teal blue-green skin"),
        BodyColour("blue", (40, 80, 215), "deep blue skin"),
        BodyColour("purple", (135, 55, 185), "purple skin"),
        BodyColour("pink", (240, 125, 185), "pink skin"),
        BodyColour("brown", (125, 75, 35), "brown skin"),
        BodyColour("grey", (135, 135, 135), "grey skin"),
    ),
    kinds=(
        PartKind("ears", (
            PartValue("pointy", "pointy triangular ears", "pointyears"),
            PartValue("long", "long upright ears", "longears"),
            PartValue("round", "small round ears", "roundears"),
            PartValue("floppy", "floppy drooping ears", "floppyears"),
        )),
        PartKind("horn", (
            PartValue("spike", "single sharp horn on top", "spikehorn", "a"),
            PartValue("antennae", "two antennae with ball tips", "antennae"),
            PartValue("crest", "spiky crest of three points", "crest", "a"),
        )),
        PartKind("eyes", (
            PartValue("one", "one big central eye", "oneeye"),
            PartValue("two", "two round eyes", "twoeyes"),
            PartValue("three", "three small eyes in a row", "threeeyes"),
            PartValue("sleepy", "two closed sleepy eyes", "sleepyeyes"),
        ), optional=False),
        PartKind("pattern", (
            PartValue("stripes", "striped texture patch", "stripes", "a"),
            PartValue("dots", "polka dot texture patch", "dots", "a"),
            PartValue("checker", "checkered texture patch", "checker", "a"),
            PartValue("zigzag", "zigzag texture patch", "zigzag", "a"),
        )),
        PartKind("tail", (
            PartValue("curly", "curly spiral tail", "curlytail", "a"),
            PartValue("fluffy", "fluffy round tail", "fluffytail", "a"),
            PartValue("straight", "long straight tail", "straighttail", "a"),
            PartValue("forked", "forked tail tip", "forkedtail", "a"),
        )),
        PartKind("legs", (
            PartValue("two", "two long thin legs", "twolegs"),
            PartValue("four", "four short stubby legs", "fourlegs"),
            PartValue("wheels", "two round wheels underneath", "wheels"),
            PartValue("tentacles", "wavy tentacles underneath", "tentacles"),
        )),
    ),
)


@dataclass(frozen=True)
class PartValues:
    """One creature: body shape, body colour and a value for every part kind (canonical kind order).

    Hashable and comparable, so it is both the class identity (a :class:`ClassSpec` wraps one) and the
    per-image ground truth.
    """

    shape: str
    colour: str
    parts: tuple[tuple[str, str], ...]

    def __post_init__(self) -> None:
        VOCABULARY.shape(self.shape)
        VOCABULARY.colour(self.colour)
        kinds = tuple(k for k, _ in self.parts)
        if kinds != VOCABULARY.kind_names:
            raise ValueError(f"parts must list kinds {VOCABULARY.kind_names} in order, got {kinds}")
        for kind, value in self.parts:
            if value not in VOCABULARY.kind(kind).choices:
                raise ValueError(f"{kind}={value!r} is not one of {VOCABULARY.kind(kind).choices}")

    @classmethod
    def from_dict(cls, values: Mapping[str, str]) -> "PartValues":
        """From ``{"shape": ..., "colour": ..., "<kind>": ...}``; missing optional kinds are :data:`NONE`."""
        unknown = set(values) - {"shape", "colour", *VOCABULARY.kind_names}
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}")
        parts = tuple((k, str(values.get(k, NONE))) for k in VOCABULARY.kind_names)
        return cls(str(values["shape"]), str(values["colour"]), parts)

    def to_dict(self) -> dict[str, str]:
        return {"shape": self.shape, "colour": self.colour, **dict(self.parts)}

    def get(self, kind: str) -> str:
        for k, v in self.parts:
            if k == kind:
                return v
        raise KeyError(kind)

    def replace(self, **changes: str) -> "PartValues":
        """A copy with some fields changed (``shape``, ``colour`` or part kinds)."""
        values = self.to_dict()
        values.update(changes)
        return PartValues.from_dict(values)

    def present_parts(self) -> Iterator[tuple[str, PartValue]]:
        """(kind, value) of the parts that are drawn (not :data:`NONE`), in kind order."""
        for kind, value in self.parts:
            if value != NONE:
                yield kind, VOCABULARY.kind(kind).value(value)

    def part_differences(self, other: "PartValues") -> list[str]:
        """Kinds whose values differ (body shape and colour are not counted)."""
        return [k for (k, a), (_, b) in zip(self.parts, other.parts) if a != b]

    def key(self) -> str:
        """A canonical string of all values (stable seed material; independent of any class name)."""
        return "|".join([self.shape, self.colour] + [f"{k}={v}" for k, v in self.parts])
