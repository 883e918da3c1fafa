"""'Did you mean ...?' for names a user typed: config keys, presets, methods, variants, datasets.

A typo should cost one glance at the error, not a trip to the docs; :mod:`difflib` is enough for that.
"""

from __future__ import annotations

import difflib
from typing import Iterable


def did_you_mean(word: str, choices: Iterable[str], cutoff: float = 0.6) -> str:
    """``" (did you mean 'x'?)"`` for the closest of ``choices``, or ``""`` when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=cutoff)
    return f" (did you mean {close[0]!r}?)" if close else ""
