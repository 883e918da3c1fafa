"""Which description phrases each class of a run uses, and where they came from.

Resolution for ``descriptions.source=auto``: ``<data.root>/descriptions.json`` when the dataset folder
ships one (parts world does), else the description file shipped in the package for the dataset, else
prompt templates. Classes a file does not cover fall back to the templates, with one warning naming them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..config import Config
from ..data.datasets import DatasetError, default_root
from ..descriptions import DescriptionSet, fallback_phrases, load_description_file, load_shipped, shipped_dataset_keys
from ..names import readable

logger = logging.getLogger(__name__)


@dataclass
class ClassPhrases:
    phrases: list[list[str]]  # per class, in the order of the class names given
    source: str  # human-readable origin (file path, "shipped:<key>", "templates")
    fallback_classes: list[str]


def dataset_root(config: Config) -> Path | None:
    """The folder the run reads its images from: ``data.root``, else ``$SPACIL_DATA_ROOT/<dataset>``."""
    try:
        return default_root(config.data.dataset, config.data.root)
    except DatasetError:  # neither is set: there is no dataset folder to look in
        return None


def find_description_set(config: Config) -> tuple[DescriptionSet | None, str]:
    """The description set ``config.descriptions`` points at, validated (:class:`DescriptionFileError` if broken)."""
    d = config.descriptions
    if d.source == "templates":
        return None, "templates"
    if d.source == "file":
        return load_description_file(Path(d.path).expanduser()), str(d.path)
    root = dataset_root(config)
    if root is not None and (root / "descriptions.json").is_file():
        path = root / "descriptions.json"
        return load_description_file(path), str(path)
    if config.data.dataset in shipped_dataset_keys():
        return load_shipped(config.data.dataset), f"shipped:{config.data.dataset}"
    return None, "templates"  # no warning here: this runs twice per run (check, prepare); resolve_class_phrases warns


def resolve_class_phrases(config: Config, class_names: Sequence[str]) -> ClassPhrases:
    """Phrases for ``class_names`` following ``config.descriptions``."""
    found, source = find_description_set(config)
    templates = config.text.templates
    phrases, missing = [], []
    for name in class_names:
        own = found.phrases_for(name) if found is not None else None
        if not own:
            missing.append(name)
        phrases.append(list(own) if own else None)
    if missing and found is None and config.descriptions.source == "auto":
        # one warning for the whole run (not one per lookup plus one per class list)
        logger.warning("no description file for dataset %s (none in the dataset folder, none shipped): all %d "
                       "classes use prompt templates; set descriptions.source=file and descriptions.path to use one",
                       config.data.dataset, len(missing))
    if missing:
        filled = fallback_phrases([readable(n) for n in missing], templates, warn=found is not None)
        phrases = [p if p is not None else list(filled[readable(n)]) for n, p in zip(class_names, phrases)]
    return ClassPhrases(phrases, source, missing)


def shipped_coverage(dataset: str, class_names: Sequence[str]) -> str:
    """Where ``descriptions.source=auto`` finds phrases for ``dataset`` when its folder has no
    ``descriptions.json``: the shipped file and how many of ``class_names`` it covers, or templates."""
    if dataset not in shipped_dataset_keys():
        return "prompt templates (no shipped description file)"
    found = load_shipped(dataset)
    covered = sum(found.phrases_for(n) is not None for n in class_names)
    return f"shipped spacil/descriptions/data/{dataset}.json: {covered} of {len(class_names)} classes"
