"""Parts world: a synthetic benchmark where classes share a global look and differ only in local parts.

Groups of classes share body shape and colour and differ in one or two small parts (ears, horn, eyes,
texture patch, tail, legs), so patch-level cues are what separates them: SPA's premise by construction.
It needs no downloads; one CPU core renders a few hundred 64x64 images per second.
"""

from __future__ import annotations

from .classes import ClassSpec, class_descriptions, descriptions_document, make_class_specs, parts_name
from .dataset import (
    GENERATOR_VERSION,
    Sample,
    generate_caption_pairs,
    generate_item,
    generate_item_layers,
    generate_split,
    random_part_combinations,
    random_part_values,
    write_image_folder,
)
from .render import (
    DEFAULT_CAPTION_TEMPLATES,
    RenderConfig,
    RenderResult,
    caption_for,
    component_names,
    render_image,
    render_layers,
)
from .vocabulary import NONE, VOCABULARY, BodyColour, BodyShape, PartKind, PartValue, PartValues, Vocabulary

__all__ = [
    "ClassSpec", "make_class_specs", "class_descriptions", "descriptions_document", "parts_name",
    "GENERATOR_VERSION", "Sample", "generate_item", "generate_item_layers", "generate_split", "write_image_folder",
    "random_part_values", "random_part_combinations", "generate_caption_pairs",
    "DEFAULT_CAPTION_TEMPLATES", "RenderConfig", "RenderResult", "render_image", "render_layers",
    "caption_for", "component_names",
    "NONE", "VOCABULARY", "Vocabulary", "BodyShape", "BodyColour", "PartKind", "PartValue", "PartValues",
]
