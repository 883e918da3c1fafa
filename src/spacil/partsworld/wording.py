"""Other ways of saying the vocabulary's phrases, and phrases that say nothing about any part.

Web captions and a describer's answers never use one fixed wording. Alt-text captions for pretraining
and the simulated describer both draw from these tables, so the text encoder has met the words, but the
phrase a describer writes is seldom the exact string a caption used for the same part.

Data, not tunables: changing it changes the benchmark (bump ``GENERATOR_VERSION``).
"""

from __future__ import annotations

from .vocabulary import VOCABULARY

# canonical phrase -> alternatives (the canonical phrase is always one of the choices as well)
PARAPHRASES: dict[str, tuple[str, ...]] = {
    # body shapes
    "round ball-shaped body": ("round body", "ball-like round body", "circular body"),
    "wide oval egg-shaped body": ("oval body", "egg-shaped body", "wide oval torso"),
    "square boxy body": ("square body", "boxy body", "block-shaped square body"),
    "triangular body with a pointed top": ("triangle-shaped body", "triangular body", "body shaped like a triangle"),
    "diamond-shaped body": ("diamond body", "rhombus-shaped body", "tilted square diamond body"),
    "six-sided hexagonal body": ("hexagon body", "hexagonal body", "six-sided body"),
    "five-sided pentagonal body": ("pentagon body", "pentagonal body", "five-sided body"),
    "long pill-shaped capsule body": ("capsule body", "pill-shaped body", "elongated rounded body"),
    # colours
    "bright red skin": ("red body", "red skin", "vivid red colouring"),
    "orange skin": ("orange body", "orange colouring", "orange skin tone"),
    "yellow skin": ("yellow body", "yellow colouring", "bright yellow skin"),
    "grass green skin": ("green body", "green skin", "leafy green colouring"),
    "teal blue-green skin": ("teal body", "turquoise skin", "blue-green colouring"),
    "deep blue skin": ("blue body", "dark blue skin", "blue colouring"),
    "purple skin": ("purple body", "violet skin", "purple colouring"),
    "pink skin": ("pink body", "light pink skin", "pink colouring"),
    "brown skin": ("brown body", "brown colouring", "dark brown skin"),
    "grey skin": ("grey body", "gray skin", "grey colouring"),
    # ears
    "pointy triangular ears": ("pointed ears", "triangle ears", "sharp pointy ears"),
    "long upright ears": ("tall ears", "long ears standing up", "rabbit-like long ears"),
    "small round ears": ("round ears", "little rounded ears", "short round ears"),
    "floppy drooping ears": ("floppy ears", "droopy ears", "ears hanging down"),
    # horns
    "single sharp horn on top": ("one horn", "a pointed horn", "single horn on the head"),
    "two antennae with ball tips": ("antennae", "two antennas with knobs", "feelers with round tips"),
    "spiky crest of three points": ("spiky crest", "three-pointed crest", "red spikes on the head"),
    # eyes
    "one big central eye": ("one eye", "a single large eye", "cyclops eye"),
    "two round eyes": ("two eyes", "pair of round eyes", "two big eyes"),
    "three small eyes in a row": ("three eyes", "row of three eyes", "three little eyes"),
    "two closed sleepy eyes": ("closed eyes", "sleepy eyes", "eyes shut"),
    # patterns
    "striped texture patch": ("stripes", "striped patch", "patch with stripes"),
    "polka dot texture patch": ("dots", "spotted patch", "polka dots on the belly"),
    "checkered texture patch": ("checkered patch", "checkerboard pattern", "chequered square"),
    "zigzag texture patch": ("zigzag pattern", "zigzag lines", "wavy zigzag patch"),
    # tails
    "curly spiral tail": ("curly tail", "spiral tail", "curled tail"),
    "fluffy round tail": ("fluffy tail", "puffy tail", "round bushy tail"),
    "long straight tail": ("straight tail", "long tail", "thin straight tail"),
    "forked tail tip": ("forked tail", "split tail", "tail with a fork"),
    # legs
    "two long thin legs": ("two legs", "thin legs", "long skinny legs"),
    "four short stubby legs": ("four legs", "stubby legs", "short legs"),
    "two round wheels underneath": ("wheels", "two wheels", "wheels instead of feet"),
    "wavy tentacles underneath": ("tentacles", "wavy tentacles", "squiggly tentacles"),
}

# What a describer adds when it has nothing more specific to say: true of every class, so useless to
# tell them apart (and what a real multimodal model often pads its answer with).
GENERIC_PHRASES: tuple[str, ...] = (
    "cartoon creature", "simple flat colours", "dark outline around the body", "small creature in the centre",
    "cute friendly face", "plain background with shapes", "soft shading", "smooth body outline",
)


def wordings(phrase: str) -> tuple[str, ...]:
    """The canonical phrase followed by its alternatives (just the phrase when it has none)."""
    return (phrase, *PARAPHRASES.get(phrase, ()))


def _check_complete() -> None:
    """Every vocabulary phrase has alternatives (called by the tests; the table is data)."""
    phrases = ([s.phrase for s in VOCABULARY.shapes] + [c.phrase for c in VOCABULARY.colours]
               + [v.phrase for k in VOCABULARY.kinds for v in k.values])
    missing = [p for p in phrases if p not in PARAPHRASES]
    if missing:
        raise AssertionError(f"no paraphrases for {missing}")
