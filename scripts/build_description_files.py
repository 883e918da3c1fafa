"""Write the shipped class-description files (spacil-descriptions JSON) from hand-written phrase tables.

The phrase tables live in ``scripts/description_tables/<dataset>.py``; this script turns them into
``src/spacil/descriptions/data/<dataset>.json`` plus the canonical class-name lists under
``src/spacil/data/class_names/``. It checks every rule of the description-file contract before it
writes anything, so a bad table never reaches the package. Output is deterministic: rerunning gives
byte-identical files.

    python scripts/build_description_files.py            # validate and write
    python scripts/build_description_files.py --check    # validate; exit 1 if files on disk differ
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
TABLES = Path(__file__).resolve().parent / "description_tables"
DESCRIPTIONS_OUT = REPO / "src" / "spacil" / "descriptions" / "data"
CLASS_NAMES_OUT = REPO / "src" / "spacil" / "data" / "class_names"

FORMAT = "spacil-descriptions"
VERSION = 1
MIN_PHRASES, MAX_PHRASES, MAX_WORDS = 5, 10, 12
EXPECTED_CLASSES = {"cifar100": 100, "cub200": 200, "imagenet_r": 200}

PRODUCED_BY = (
    "Written by hand from general knowledge of the classes (field-guide style visual cues) by an engineer "
    "of the project, an AI assistant. No images were shown to the author, and no generator or LLM API "
    "was run or called to produce the phrases. The phrase tables are in scripts/description_tables/ and "
    "this file is built from them by scripts/build_description_files.py."
)

# Phrases should be visual cues, not facts a patch cannot show. These fragments flag the usual slips
# (habitat, taxonomy, behaviour, range); a phrase containing one is rejected.
ABSTRACT_FRAGMENTS = (
    "lives in", "native to", "found in", "known for", "belongs to", "is a ", "is an ", "species",
    "habitat", "mammal", "migrat", "endangered", "extinct", "nocturnal", "diet", "feeds on",
)
WNID = re.compile(r"^n\d{8}$")


def load_table(dataset: str) -> ModuleType:
    """Import ``description_tables/<dataset>.py`` by path (the scripts folder is not a package)."""
    path = TABLES / f"{dataset}.py"
    spec = importlib.util.spec_from_file_location(f"description_tables_{dataset}", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def checksum(classes: list[dict]) -> str:
    """The contract's checksum over the ``classes`` list."""
    payload = json.dumps(classes, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return "sha256:" + hashlib.sha256(payload).hexdigest()


def _normalise(text: str) -> str:
    return " ".join(text.replace("_", " ").replace("-", " ").lower().split())


def phrase_errors(name: str, phrases: object) -> list[str]:
    """Contract violations in one class's phrase list (empty when the class is fine)."""
    if not isinstance(phrases, list):
        return [f"{name}: phrases must be a list"]
    errors = []
    if not MIN_PHRASES <= len(phrases) <= MAX_PHRASES:
        errors.append(f"{name}: {len(phrases)} phrases, expected {MIN_PHRASES}-{MAX_PHRASES}")
    seen: set[str] = set()
    for phrase in phrases:
        if not isinstance(phrase, str) or not phrase.strip():
            errors.append(f"{name}: empty or non-string phrase {phrase!r}")
            continue
        if phrase != phrase.strip() or "  " in phrase:
            errors.append(f"{name}: phrase not stripped / has double spaces: {phrase!r}")
        key = phrase.casefold()
        if key in seen:
            errors.append(f"{name}: duplicate phrase {phrase!r}")
        seen.add(key)
        if _normalise(phrase) == _normalise(name):
            errors.append(f"{name}: phrase is only the class name: {phrase!r}")
        if len(phrase.split()) > MAX_WORDS:
            errors.append(f"{name}: phrase over {MAX_WORDS} words: {phrase!r}")
        low = f" {phrase.lower()} "
        for fragment in ABSTRACT_FRAGMENTS:
            if fragment in low:
                errors.append(f"{name}: phrase reads as an abstract fact ({fragment.strip()!r}): {phrase!r}")
    return errors


def document_errors(doc: dict, dataset: str) -> list[str]:
    """Every contract violation of a whole description document."""
    errors = []
    if doc.get("format") != FORMAT:
        errors.append(f"format must be {FORMAT!r}")
    if doc.get("version") != VERSION:
        errors.append(f"version must be {VERSION}")
    if doc.get("dataset") != dataset:
        errors.append(f"dataset must be {dataset!r}")
    if not isinstance(doc.get("produced_by"), str) or not doc["produced_by"].strip():
        errors.append("produced_by must be a non-empty statement")
    if doc.get("generator") is not None and not isinstance(doc.get("generator"), dict):
        errors.append("generator must be an object or null")
    classes = doc.get("classes")
    if not isinstance(classes, list) or not classes:
        return errors + ["classes must be a non-empty list"]
    if doc.get("checksum") != checksum(classes):
        errors.append("checksum does not match the classes")
    names = [c.get("name") for c in classes]
    if any(not isinstance(n, str) or not n or n != n.strip() for n in names):
        errors.append("every class needs a non-empty stripped name")
    if len(set(names)) != len(names):
        errors.append("class names are not unique")
    if dataset in EXPECTED_CLASSES and len(classes) != EXPECTED_CLASSES[dataset]:
        errors.append(f"{len(classes)} classes, expected {EXPECTED_CLASSES[dataset]}")
    for entry in classes:
        extra = set(entry) - {"name", "phrases", "provenance"}
        if extra:
            errors.append(f"{entry.get('name')}: unknown keys {sorted(extra)}")
        errors.extend(phrase_errors(str(entry.get("name")), entry.get("phrases")))
    return errors


def build_document(dataset: str, rows: list[tuple[str, list[str]]]) -> dict:
    """The description document of one dataset, keys in a fixed order."""
    classes = [{"name": name, "phrases": list(phrases)} for name, phrases in rows]
    return {
        "format": FORMAT,
        "version": VERSION,
        "dataset": dataset,
        "produced_by": PRODUCED_BY,
        "generator": None,
        "checksum": checksum(classes),
        "classes": classes,
    }


def render_json(doc: dict) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def render_lines(lines: list[str]) -> str:
    return "".join(f"{line}\n" for line in lines)


def build_outputs() -> dict[Path, str]:
    """Every file this script owns, mapped to its exact text; raises ValueError on any rule broken."""
    outputs: dict[Path, str] = {}
    problems: list[str] = []

    cifar = load_table("cifar100").CLASSES
    cifar_names = [n for n, _ in cifar]
    if cifar_names != sorted(cifar_names):
        problems.append("cifar100: classes must be in alphabetical (torchvision label) order")

    cub = load_table("cub200").CLASSES
    cub_names = [n for n, _ in cub]
    if any(re.match(r"^\d", n) for n in cub_names):
        problems.append("cub200: names must not keep the numeric classes.txt prefix")

    inr = load_table("imagenet_r").CLASSES
    wnids = [w for w, _, _ in inr]
    if any(not WNID.match(w) for w in wnids):
        problems.append("imagenet_r: malformed wnid")
    if wnids != sorted(set(wnids)):
        problems.append("imagenet_r: wnids must be unique and ascending (ImageFolder label order)")
    inr_rows = [(name, phrases) for _, name, phrases in inr]

    for dataset, rows in (("cifar100", cifar), ("cub200", cub), ("imagenet_r", inr_rows)):
        doc = build_document(dataset, rows)
        problems.extend(f"{dataset}: {e}" for e in document_errors(doc, dataset))
        outputs[DESCRIPTIONS_OUT / f"{dataset}.json"] = render_json(doc)
        outputs[CLASS_NAMES_OUT / f"{dataset}.txt"] = render_lines([n for n, _ in rows])
    outputs[CLASS_NAMES_OUT / "imagenet_r_wnids.txt"] = render_lines(wnids)

    if problems:
        raise ValueError("description tables break the contract:\n  " + "\n  ".join(problems))
    return outputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare with the files on disk")
    args = parser.parse_args(argv)
    try:
        outputs = build_outputs()
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 1
    stale = [p for p, text in outputs.items() if not p.is_file() or p.read_bytes() != text.encode("utf-8")]
    if args.check:
        for path in stale:
            print(f"out of date: {path.relative_to(REPO)}", file=sys.stderr)
        return 1 if stale else 0
    for path, text in outputs.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode("utf-8"))
        print(f"{'wrote' if path in stale else 'unchanged'} {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
