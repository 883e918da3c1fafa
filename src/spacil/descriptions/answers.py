"""Phrase lists out of what chat models actually answer.

Asked for strict JSON ``{"phrases": [...]}``, hosted and local models still return other shapes: another
key, a bare list, JSON after a sentence or inside a markdown fence, list items as objects, or a plain
bulleted list. Everything usable is accepted; an answer with nothing usable is :class:`InvalidAnswer`,
which the generator retries.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .fileformat import is_only_class_name

_DECODER = json.JSONDecoder()
_JSON_START = re.compile(r"[\[{]")
_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d{1,2}[.)])\s+(?P<text>\S.*)$")
_WRAPPING = "\"'*_` ,;"


class InvalidAnswer(ValueError):
    """The model answered, but not with a usable phrase list."""


def _as_phrase(item: Any) -> str | None:
    """A list item as text: a string, or an object with exactly one string value ({"phrase": ...})."""
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        texts = [v for v in item.values() if isinstance(v, str)]
        if len(texts) == 1:
            return texts[0]
    return None


def _phrase_list(doc: Any) -> list[str] | None:
    """The phrases of one JSON value, or None when it holds no single unambiguous phrase list."""
    if isinstance(doc, list):
        phrases = [_as_phrase(item) for item in doc]
        return phrases if phrases and all(p is not None for p in phrases) else None  # type: ignore[return-value]
    if not isinstance(doc, dict):
        return None
    if "phrases" in doc:
        return _phrase_list(doc["phrases"])
    found = [p for p in (_phrase_list(v) for v in doc.values() if isinstance(v, (list, dict))) if p is not None]
    return found[0] if len(found) == 1 else None


def _from_json(text: str) -> list[str] | None:
    """The first JSON value in the text (prose or a fence around it is fine) that holds a phrase list.

    A value that decodes but holds none is skipped whole, so an ambiguous object is not mined for a list.
    """
    position = 0
    while (match := _JSON_START.search(text, position)) is not None:
        try:
            doc, position = _DECODER.raw_decode(text, match.start())
        except json.JSONDecodeError:
            position = match.start() + 1
            continue
        phrases = _phrase_list(doc)
        if phrases is not None:
            return phrases
    return None


def _from_bullets(text: str) -> list[str] | None:
    """One phrase per bulleted or numbered line; other lines (an intro, a fence) are ignored."""
    phrases = [m.group("text") for m in map(_BULLET.match, text.splitlines()) if m]
    return phrases or None


def extract_phrases(content: str | None) -> list[str]:
    """The raw phrase strings of an answer, in order; :class:`InvalidAnswer` when none can be found."""
    if content is None or not content.strip():
        raise InvalidAnswer("empty answer")
    phrases = _from_json(content) or _from_bullets(content)
    if phrases is None:
        snippet = " ".join(content.split())[:80]
        raise InvalidAnswer(f"no phrase list found (JSON list of strings or bulleted lines) in {snippet!r}")
    return phrases


def _clean(raw: str) -> str:
    """Whitespace normalised, without a list bullet, wrapping quotes/markdown, or a trailing full stop."""
    bullet = _BULLET.match(raw)
    text = bullet.group("text") if bullet else raw
    return " ".join(text.split()).strip(_WRAPPING).rstrip(".").strip(_WRAPPING)


def parse_answer(content: str | None, class_name: str, min_phrases: int, max_phrases: int,
                 max_words: int) -> list[str]:
    """Validated phrases of one answer, or :class:`InvalidAnswer` saying why it is unusable.

    Phrases are cleaned (:func:`_clean`); empty ones, case-insensitive duplicates, the bare class name and
    phrases over ``max_words`` words are dropped, then the count must lie in ``[min_phrases, max_phrases]``.
    """
    given = extract_phrases(content)
    kept: list[str] = []
    seen: set[str] = set()
    for raw in given:
        phrase = _clean(raw)
        if not phrase or phrase.casefold() in seen or is_only_class_name(phrase, class_name):
            continue
        if len(phrase.split()) > max_words:
            continue
        seen.add(phrase.casefold())
        kept.append(phrase)
    if not min_phrases <= len(kept) <= max_phrases:
        raise InvalidAnswer(f"{len(kept)} usable phrases (of {len(given)} given), expected {min_phrases}-{max_phrases}")
    return kept
