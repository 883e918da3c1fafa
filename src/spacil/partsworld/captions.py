"""Alt-text captions: what a web page would say about a parts-world picture, for CLIP-style pretraining.

Real CLIPs learn from captions that name the subject and a few salient attributes in whatever words the
writer chose, and often nothing specific at all. So a caption here names the colour and the body shape
most of the time, some of the parts that are *visible in this image* (never a hidden or faded one), each
in one of several wordings (:mod:`.wording`), in a varied sentence, and sometimes no part at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .vocabulary import VOCABULARY, PartValues
from .wording import wordings

NOUNS = ("creature", "monster", "critter", "cartoon animal", "little character")
WITH_PARTS = (
    "{subject} with {parts}",
    "{subject} that has {parts}",
    "illustration of {subject} with {parts}",
    "{subject}. it has {parts}",
    "{parts} on {subject}",
    "photo of {subject} showing {parts}",
)
WITHOUT_PARTS = ("{subject}", "a picture of {subject}", "cute drawing of {subject}", "{subject} on a background")


@dataclass(frozen=True)
class AltTextConfig:
    """How much an alt-text caption says (each mention drawn independently per caption)."""

    p_colour: float = 1.0
    p_shape: float = 0.9
    p_part: float = 0.85  # each visible part
    p_no_parts: float = 0.03  # the whole caption names no part
    min_visible_pixels: int = 8  # a part with fewer visible pixels is not seen by the caption writer


def seen_kinds(visible_pixels: Mapping[str, int], faded: str | None, min_pixels: int) -> list[str]:
    """Part kinds a viewer of the image would notice: enough visible pixels and not drawn faded."""
    return [k for k in VOCABULARY.kind_names if visible_pixels.get(k, 0) >= min_pixels and k != faded]


def _join(texts: list[str]) -> str:
    return texts[0] if len(texts) == 1 else ", ".join(texts[:-1]) + " and " + texts[-1]


def alt_text_caption(parts: PartValues, seen: list[str], rng: np.random.Generator,
                     config: AltTextConfig = AltTextConfig()) -> str:
    """One caption of a creature whose parts ``seen`` (kinds) are visible, from a fixed number of draws."""
    u = rng.uniform(size=3 + len(VOCABULARY.kind_names))
    picks = rng.integers(0, 1 << 30, size=4 + len(VOCABULARY.kind_names))
    order = rng.permutation(len(VOCABULARY.kind_names))
    adjectives = []
    if u[0] < config.p_colour:
        adjectives.append(parts.colour)
    if u[1] < config.p_shape:
        adjectives.append(VOCABULARY.shape(parts.shape).word)
    noun = NOUNS[picks[0] % len(NOUNS)]
    subject = "a " + " ".join(adjectives + [noun])
    if subject.startswith("a o") or subject.startswith("a a"):
        subject = "an" + subject[1:]
    texts = []
    if u[2] >= config.p_no_parts:
        for i in order:
            kind = VOCABULARY.kind_names[i]
            if kind in seen and u[3 + i] < config.p_part:
                options = wordings(VOCABULARY.kind(kind).value(parts.get(kind)).phrase)
                texts.append(options[picks[4 + i] % len(options)])
    if texts:
        template = WITH_PARTS[picks[1] % len(WITH_PARTS)]
        return template.format(subject=subject, parts=_join(texts))
    return WITHOUT_PARTS[picks[2] % len(WITHOUT_PARTS)].format(subject=subject)
