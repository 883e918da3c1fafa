"""Description files (``spacil-descriptions`` JSON): load, validate, save, and the template fallback.

Every description file, shipped or generated, goes through :func:`validate_document`, so a run never
trains on phrases that break the contract (wrong count, duplicates, the bare class name, stale checksum).
Violations raise :class:`DescriptionFileError` naming the file, the class and the rule.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import SpacilError
from ..io import write_text_atomic
from ..names import comparable

logger = logging.getLogger(__name__)

# Rules of the file contract (not tunables: changing them means a new format version).
FORMAT = "spacil-descriptions"
VERSION = 1
MIN_PHRASES = 5
MAX_PHRASES = 10
MAX_WORDS = 12
TOP_LEVEL_KEYS = ("format", "version", "dataset", "produced_by", "generator", "checksum", "classes")
CLASS_KEYS = ("name", "phrases", "provenance")
_ARTICLES = ("a ", "an ", "the ")


@dataclass(frozen=True)
class Violation:
    """One broken rule: which class (None for file-level rules), which rule, and what was found."""

    class_name: str | None
    rule: str
    detail: str

    def __str__(self) -> str:
        where = f"class {self.class_name!r}" if self.class_name is not None else "file"
        return f"{where}: rule '{self.rule}': {self.detail}"


class DescriptionFileError(SpacilError, ValueError):
    """A description file breaks the contract; ``violations`` lists every broken rule (the first few in the message)."""

    SHOWN = 5

    def __init__(self, source: str, violations: Sequence[Violation]):
        self.source = source
        self.violations = list(violations)
        shown = [str(v) for v in self.violations[:self.SHOWN]]
        if len(self.violations) > self.SHOWN:
            shown.append(f"... and {len(self.violations) - self.SHOWN} more (DescriptionFileError.violations)")
        lines = "\n  ".join(shown)
        super().__init__(f"{source}: {len(self.violations)} contract violation(s):\n  {lines}\n"
                         f"fix the file (its checksum is recomputed by save_description_file) or regenerate it")


def compute_checksum(classes: Sequence[Mapping[str, Any]]) -> str:
    """The contract's checksum: sha256 over the canonical JSON of the ``classes`` list."""
    blob = json.dumps(list(classes), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def verify_checksum(doc: Mapping[str, Any]) -> bool:
    """True when the stored checksum matches the classes (i.e. nothing was edited behind its back)."""
    return doc.get("checksum") == compute_checksum(doc.get("classes", []))


def is_only_class_name(phrase: str, class_name: str) -> bool:
    """Whether ``phrase`` says nothing but the class name (ignoring case, ``_``/``-``, a leading article, a dot)."""
    p = comparable(phrase).rstrip(".").strip()
    for article in _ARTICLES:
        if p.startswith(article):
            p = p[len(article):]
            break
    return p == comparable(class_name)


def phrase_violations(class_name: str, phrases: Any) -> list[Violation]:
    """Contract violations of one class's phrase list (empty when fine)."""
    if not isinstance(phrases, list):
        return [Violation(class_name, "phrases-type", f"phrases must be a list, got {type(phrases).__name__}")]
    found: list[Violation] = []
    if not MIN_PHRASES <= len(phrases) <= MAX_PHRASES:
        found.append(Violation(class_name, "phrase-count",
                               f"{len(phrases)} phrases, expected {MIN_PHRASES}-{MAX_PHRASES}"))
    seen: set[str] = set()
    for phrase in phrases:
        if not isinstance(phrase, str) or not phrase.strip():
            found.append(Violation(class_name, "phrase-empty", f"empty or non-string phrase {phrase!r}"))
            continue
        if phrase != phrase.strip():
            found.append(Violation(class_name, "phrase-stripped", f"leading/trailing whitespace in {phrase!r}"))
        key = phrase.strip().casefold()
        if key in seen:
            found.append(Violation(class_name, "phrase-unique", f"duplicate phrase (case-insensitive) {phrase!r}"))
        seen.add(key)
        if is_only_class_name(phrase, class_name):
            found.append(Violation(class_name, "phrase-not-class-name", f"phrase is only the class name: {phrase!r}"))
        if len(phrase.split()) > MAX_WORDS:
            found.append(Violation(class_name, "phrase-words",
                                   f"{len(phrase.split())} words, at most {MAX_WORDS}: {phrase!r}"))
    return found


def document_violations(doc: Any, expected_dataset: str | None = None) -> list[Violation]:
    """Every contract violation of a whole description document (empty list when valid)."""
    if not isinstance(doc, dict):
        return [Violation(None, "document-type", f"top level must be a JSON object, got {type(doc).__name__}")]
    found: list[Violation] = []
    unknown = sorted(set(doc) - set(TOP_LEVEL_KEYS))
    if unknown:
        found.append(Violation(None, "keys", f"unknown top-level keys {unknown}"))
    missing = [k for k in TOP_LEVEL_KEYS if k not in doc]
    if missing:
        found.append(Violation(None, "keys", f"missing top-level keys {missing}"))
    if doc.get("format") != FORMAT:
        found.append(Violation(None, "format", f"format must be {FORMAT!r}, got {doc.get('format')!r}"))
    if doc.get("version") != VERSION:
        found.append(Violation(None, "version", f"version must be {VERSION}, got {doc.get('version')!r}"))
    dataset = doc.get("dataset")
    if not isinstance(dataset, str) or not dataset.strip():
        found.append(Violation(None, "dataset", f"dataset must be a non-empty string, got {dataset!r}"))
    elif expected_dataset is not None and dataset != expected_dataset:
        found.append(Violation(None, "dataset", f"file is for dataset {dataset!r}, expected {expected_dataset!r}"))
    produced_by = doc.get("produced_by")
    if not isinstance(produced_by, str) or not produced_by.strip():
        found.append(Violation(None, "produced_by", "produced_by must be a non-empty statement of how the "
                                                    "phrases were produced"))
    found.extend(_generator_violations(doc.get("generator")))
    classes = doc.get("classes")
    if not isinstance(classes, list) or not classes:
        found.append(Violation(None, "classes", "classes must be a non-empty list"))
        return found
    if not isinstance(doc.get("checksum"), str) or not doc["checksum"].startswith("sha256:"):
        found.append(Violation(None, "checksum", f"checksum must be 'sha256:<hex>', got {doc.get('checksum')!r}"))
    elif not verify_checksum(doc):
        found.append(Violation(None, "checksum", f"checksum {doc['checksum']} does not match the classes "
                                                 f"({compute_checksum(classes)}); was a phrase edited?"))
    seen_names: set[str] = set()
    for index, entry in enumerate(classes):
        found.extend(_class_violations(index, entry, seen_names))
    return found


def _generator_violations(generator: Any) -> list[Violation]:
    if generator is None:
        return []
    if not isinstance(generator, dict):
        return [Violation(None, "generator", "generator must be an object or null")]
    found = []
    for key in ("model", "prompt_version"):
        if not isinstance(generator.get(key), str) or not generator[key].strip():
            found.append(Violation(None, "generator", f"generator.{key} must be a non-empty string"))
    if "parameters" in generator and not isinstance(generator["parameters"], dict):
        found.append(Violation(None, "generator", "generator.parameters must be an object"))
    return found


def _class_violations(index: int, entry: Any, seen_names: set[str]) -> list[Violation]:
    if not isinstance(entry, dict):
        return [Violation(f"#{index}", "class-type", "each class must be an object")]
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        return [Violation(f"#{index}", "class-name", f"class name must be a non-empty stripped string, got {name!r}")]
    found = []
    if name in seen_names:
        found.append(Violation(name, "class-unique", "class name appears more than once"))
    seen_names.add(name)
    unknown = sorted(set(entry) - set(CLASS_KEYS))
    if unknown:
        found.append(Violation(name, "class-keys", f"unknown keys {unknown}"))
    if "provenance" in entry and not isinstance(entry["provenance"], dict):
        found.append(Violation(name, "provenance", "provenance must be an object"))
    found.extend(phrase_violations(name, entry.get("phrases")))
    return found


def validate_document(doc: Any, source: str = "<document>", expected_dataset: str | None = None) -> None:
    """Raise :class:`DescriptionFileError` listing every violation; return silently when valid."""
    found = document_violations(doc, expected_dataset)
    if found:
        raise DescriptionFileError(source, found)


@dataclass
class DescriptionSet:
    """The phrases of one dataset's classes (in label order) plus where they came from."""

    dataset: str
    classes: dict[str, list[str]]
    produced_by: str
    generator: dict[str, Any] | None = None
    provenance: dict[str, dict[str, Any]] = field(default_factory=dict)
    checksum: str | None = None
    source: str | None = None

    @property
    def names(self) -> list[str]:
        return list(self.classes)

    def __len__(self) -> int:
        return len(self.classes)

    def __contains__(self, name: object) -> bool:
        return self.phrases_for(name) is not None if isinstance(name, str) else False

    def phrases_for(self, name: str) -> list[str] | None:
        """Phrases of ``name`` (a copy), or None when the file has no such class.

        Exact names first; otherwise a case/underscore/hyphen-insensitive match when it is unambiguous,
        so ``aquarium fish`` finds ``aquarium_fish``.
        """
        if name in self.classes:
            return list(self.classes[name])
        hits = [n for n in self.classes if comparable(n) == comparable(name)]
        return list(self.classes[hits[0]]) if len(hits) == 1 else None

    def to_document(self) -> dict[str, Any]:
        """The contract document, with a freshly computed checksum (keys in the contract's order)."""
        classes = []
        for name, phrases in self.classes.items():
            entry: dict[str, Any] = {"name": name, "phrases": list(phrases)}
            if name in self.provenance:
                entry["provenance"] = dict(self.provenance[name])
            classes.append(entry)
        return {"format": FORMAT, "version": VERSION, "dataset": self.dataset, "produced_by": self.produced_by,
                "generator": self.generator, "checksum": compute_checksum(classes), "classes": classes}

    @classmethod
    def from_document(cls, doc: Any, source: str = "<document>",
                      expected_dataset: str | None = None) -> "DescriptionSet":
        """Validate ``doc`` and wrap it."""
        validate_document(doc, source, expected_dataset)
        return cls(dataset=doc["dataset"], classes={c["name"]: list(c["phrases"]) for c in doc["classes"]},
                   produced_by=doc["produced_by"], generator=doc["generator"],
                   provenance={c["name"]: c["provenance"] for c in doc["classes"] if "provenance" in c},
                   checksum=doc["checksum"], source=source)


def parse_description_text(text: str, source: str = "<text>", expected_dataset: str | None = None) -> DescriptionSet:
    """Parse and validate the JSON text of a description file."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DescriptionFileError(source, [Violation(None, "json", f"not valid JSON: {exc}")]) from exc
    return DescriptionSet.from_document(doc, source, expected_dataset)


def load_description_file(path: str | os.PathLike[str], dataset: str | None = None) -> DescriptionSet:
    """Read and validate a description file; ``dataset`` (optional) must match the file's dataset key."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DescriptionFileError(str(path), [Violation(None, "encoding", f"not UTF-8: {exc}")]) from exc
    return parse_description_text(text, str(path), dataset)


def render_document(doc: Mapping[str, Any]) -> str:
    """The exact on-disk text: 2-space indent, UTF-8 without escapes, trailing newline."""
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def save_description_file(descriptions: DescriptionSet, path: str | os.PathLike[str]) -> Path:
    """Validate and write ``descriptions`` atomically (temp file + rename), so readers never see half a file."""
    path = Path(path)
    doc = descriptions.to_document()
    validate_document(doc, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, render_document(doc))
    descriptions.checksum = doc["checksum"]
    return path


def _shipped_folder():
    return resources.files(__package__).joinpath("data")


def shipped_dataset_keys() -> list[str]:
    """Dataset keys that have a description file shipped inside the package."""
    folder = _shipped_folder()
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def load_shipped(dataset_key: str) -> DescriptionSet:
    """The package's own description file for ``dataset_key`` (validated; dataset key must match)."""
    keys = shipped_dataset_keys()
    if dataset_key not in keys:
        raise ValueError(f"no shipped description file for dataset {dataset_key!r}; shipped: {keys}")
    resource = _shipped_folder().joinpath(f"{dataset_key}.json")
    source = f"spacil/descriptions/data/{dataset_key}.json"
    try:
        text = resource.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DescriptionFileError(source, [Violation(None, "encoding", f"not UTF-8: {exc}")]) from exc
    return parse_description_text(text, source, dataset_key)


def fallback_phrases(class_names: Sequence[str], templates: Sequence[str], warn: bool = True) -> dict[str, list[str]]:
    """Prompt-template phrases (``"a photo of a {}."``) for classes that have no description.

    Logs one warning naming all of them, so a run never silently trains on templates instead of descriptions
    (``warn=False`` where the caller has already said so in its own words). The result keeps the order of
    ``class_names``.
    """
    if not templates:
        raise ValueError("fallback_phrases needs at least one prompt template")
    for template in templates:
        if "{}" not in template:
            raise ValueError(f"prompt template {template!r} has no '{{}}' placeholder for the class name")
    names = list(dict.fromkeys(class_names))
    if not names:
        return {}
    if warn:
        logger.warning("no description for %d class(es), using prompt templates instead: %s",
                       len(names), ", ".join(names))
    return {name: [template.format(name) for template in templates] for name in names}
