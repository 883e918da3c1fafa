"""Class-wise visual-cue descriptions: the file format, visual guidance, and the LLM generator."""

from __future__ import annotations

from .fileformat import (
    FORMAT,
    MAX_PHRASES,
    MAX_WORDS,
    MIN_PHRASES,
    VERSION,
    DescriptionFileError,
    DescriptionSet,
    Violation,
    compute_checksum,
    document_violations,
    fallback_phrases,
    is_only_class_name,
    load_description_file,
    load_shipped,
    parse_description_text,
    phrase_violations,
    render_document,
    save_description_file,
    shipped_dataset_keys,
    validate_document,
    verify_checksum,
)
from .answers import InvalidAnswer, parse_answer
from .generator import (
    RESPONSE_FORMATS,
    CacheEntry,
    ClassImages,
    DescriptionGenerationError,
    DescriptionGenerator,
    GenerationParameters,
    GenerationSummary,
    ProgressEvent,
    append_cache,
    cache_key,
    encode_image,
    export_description_file,
    load_cache,
)
from .guidance import GuidanceSelection, select_guidance, spherical_kmeans
from .prompt import PROMPT_VERSION, build_prompt

__all__ = [
    "FORMAT", "VERSION", "MIN_PHRASES", "MAX_PHRASES", "MAX_WORDS",
    "DescriptionFileError", "DescriptionSet", "Violation", "compute_checksum", "verify_checksum",
    "document_violations", "phrase_violations", "validate_document", "is_only_class_name", "fallback_phrases",
    "load_description_file", "parse_description_text", "render_document", "save_description_file",
    "load_shipped", "shipped_dataset_keys",
    "GuidanceSelection", "select_guidance", "spherical_kmeans",
    "PROMPT_VERSION", "build_prompt",
    "CacheEntry", "ClassImages", "DescriptionGenerationError", "DescriptionGenerator", "GenerationParameters",
    "GenerationSummary", "InvalidAnswer", "ProgressEvent", "append_cache", "cache_key", "encode_image",
    "export_description_file", "load_cache", "parse_answer", "RESPONSE_FORMATS",
]
