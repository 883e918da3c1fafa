"""Class names as words: the one normaliser every module uses (prompts, descriptions, file lookups)."""

from __future__ import annotations


def readable(name: str) -> str:
    """Dataset label to words: ``Black_footed_Albatross`` -> ``Black footed Albatross`` (runs of spaces folded)."""
    return " ".join(name.replace("_", " ").split())


def comparable(text: str) -> str:
    """Key for comparing names and phrases: :func:`readable`, hyphens as spaces, case folded."""
    return " ".join(readable(text).replace("-", " ").casefold().split())
