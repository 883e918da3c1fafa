"""Text-side class features (prompts, descriptions) from the frozen text encoder."""

from ..names import readable
from .class_texts import ClassTexts, build_class_texts, encode_prompts

__all__ = ["ClassTexts", "build_class_texts", "encode_prompts", "readable"]
