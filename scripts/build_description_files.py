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
import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

from spacil.descriptions import compute_checksum, document_violations, phrase_violations

REPO = Path(__file__).resolve().parents[1]
TABLES = Path(__file__).resolve().parent / "description_tables"
DESCRIPTIONS_OUT = REPO / "src" / "spacil" / "descriptions" / "data"
CLASS_NAMES_OUT = REPO / "src" / "spacil" / "data" / "class_names"

FORMAT = "spacil-descriptions"
VERSION = 1
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
    """The contract's checksum over the ``classes`` list (the package's own implementation)."""
    return compute_checksum(classes)


def _style_errors(name: str, phrases: object) -> list[str]:
    """Rules this script adds to the contract for hand-written files: tidy spacing, no abstract facts."""
    errors = []
    for phrase in phrases if isinstance(phrases, list) else []:
        if not isinstance(phrase, str):
            continue
        if "  " in phrase:
            errors.append(f"{name}: phrase has double spaces: {phrase!r}")
        low = f" {phrase.lower()} "
        for fragment in ABSTRACT_FRAGMENTS:
            if fragment in low:
                errors.append(f"{name}: phrase reads as an abstract fact ({fragment.strip()!r}): {phrase!r}")
    return errors


def phrase_errors(name: str, phrases: object) -> list[str]:
    """Contract violations (checked by ``spacil.descriptions``) plus this script's style rules, for one class."""
    return [str(v) for v in phrase_violations(name, phrases)] + _style_errors(name, phrases)


def document_errors(doc: dict, dataset: str) -> list[str]:
    """Every contract violation of a whole description document, plus the expected class count."""
    errors = [str(v) for v in document_violations(doc, expected_dataset=dataset)]
    classes = doc.get("classes")
    if dataset in EXPECTED_CLASSES and isinstance(classes, list) and len(classes) != EXPECTED_CLASSES[dataset]:
        errors.append(f"{len(classes)} classes, expected {EXPECTED_CLASSES[dataset]}")
    for entry in classes if isinstance(classes, list) else []:
        if isinstance(entry, dict):
            errors.extend(_style_errors(str(entry.get("name")), entry.get("phrases")))
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
