"""The instruction sent to the multimodal LLM with a class's guidance images.

The prompt text is versioned: any change to the wording must bump :data:`PROMPT_VERSION`, because the
generator's cache key and every description file's provenance record it.
"""

from __future__ import annotations

from ..names import readable
from .fileformat import MAX_WORDS

PROMPT_VERSION = "v1"


def build_prompt(class_name: str, dataset_hint: str | None, min_phrases: int, max_phrases: int,
                 max_words: int = MAX_WORDS, n_images: int | None = None) -> str:
    """The user message asking for strict JSON ``{"phrases": [...]}`` of short visual-cue phrases.

    ``dataset_hint`` (e.g. "CUB-200 birds") tells the model the domain, so it describes the cues that
    separate this class from its neighbours rather than generic ones.
    """
    if not 1 <= min_phrases <= max_phrases:
        raise ValueError(f"need 1 <= min_phrases <= max_phrases, got {min_phrases}, {max_phrases}")
    if max_words < 1:
        raise ValueError("max_words must be >= 1")
    name = readable(class_name)
    if n_images is None:
        seen = "The attached images"
    else:
        seen = "The attached image" if n_images == 1 else f"The {n_images} attached images"
    domain = f" of the image-classification dataset \"{dataset_hint}\"" if dataset_hint else ""
    return (
        f"{seen} show examples of the class \"{name}\"{domain}.\n"
        f"Describe what \"{name}\" looks like as {min_phrases} to {max_phrases} short phrases of visual cues: "
        "parts, shapes, textures, colours and patterns that a small region of a photo could show "
        "(for example \"long upright ears\" or \"fluffy white round tail\"). "
        "Prefer cues that tell this class apart from similar classes; use what the images show.\n"
        "Rules for every phrase:\n"
        f"- at most {max_words} words, a noun phrase, not a sentence;\n"
        "- no facts that cannot be seen (habitat, behaviour, range, taxonomy, uses);\n"
        "- not just the class name, and no phrase repeated.\n"
        "Answer with strict JSON only, no markdown and no other text, exactly in this form:\n"
        "{\"phrases\": [\"first phrase\", \"second phrase\"]}"
    )
