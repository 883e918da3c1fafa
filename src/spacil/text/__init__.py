"""Text-side class features (prompts, descriptions) from the frozen text encoder."""

from .class_texts import ClassTexts, build_class_texts, encode_prompts, readable

__all__ = ["ClassTexts", "build_class_texts", "encode_prompts", "readable"]
