"""The shipped description files obey the spacil-descriptions contract and match the canonical class lists.

The files are read with plain ``json`` (not the package loader) and every rule is re-implemented here,
so a bug in the build script cannot hide itself. Class lists are checked against independent facts:
CIFAR-100's fine labels are alphabetical, CUB's classes.txt has well-known first/last entries, and
ImageNet-R's wnids must be in the same order as torchvision's ImageNet category list (ImageNet labels
are sorted wnids, so the 200 ImageNet-R classes must map to strictly increasing ImageNet indices).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DESCRIPTIONS = REPO / "src" / "spacil" / "descriptions" / "data"
CLASS_NAMES = REPO / "src" / "spacil" / "data" / "class_names"
BUILD_SCRIPT = REPO / "scripts" / "build_description_files.py"
DATASETS = {"cifar100": 100, "cub200": 200, "imagenet_r": 200}


def load(dataset: str) -> dict:
    return json.loads((DESCRIPTIONS / f"{dataset}.json").read_text(encoding="utf-8"))


def class_names(dataset: str) -> list[str]:
    return (CLASS_NAMES / f"{dataset}.txt").read_text(encoding="utf-8").splitlines()


def contract_checksum(classes: list[dict]) -> str:
    blob = json.dumps(classes, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def build_script():
    spec = importlib.util.spec_from_file_location("build_description_files", BUILD_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_header_checksum_and_layout(dataset: str) -> None:
    path = DESCRIPTIONS / f"{dataset}.json"
    raw = path.read_bytes()
    doc = json.loads(raw.decode("utf-8"))
    assert doc["format"] == "spacil-descriptions"
    assert doc["version"] == 1
    assert doc["dataset"] == dataset
    assert doc["generator"] is None
    statement = doc["produced_by"].lower()
    assert "by hand" in statement and "no images" in statement and "llm api" in statement
    assert doc["checksum"] == contract_checksum(doc["classes"])
    # 2-space indent, UTF-8 without escapes, trailing newline: re-serialising gives the same bytes.
    assert raw == (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_classes_match_canonical_name_list(dataset: str) -> None:
    doc = load(dataset)
    names = [c["name"] for c in doc["classes"]]
    listed = class_names(dataset)
    assert len(names) == DATASETS[dataset]
    assert names == listed
    assert len(set(names)) == len(names)
    for entry in doc["classes"]:
        assert set(entry) <= {"name", "phrases", "provenance"}


@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_phrases_follow_contract(dataset: str) -> None:
    problems = []
    for entry in load(dataset)["classes"]:
        name, phrases = entry["name"], entry["phrases"]
        plain_name = " ".join(name.replace("_", " ").replace("-", " ").lower().split())
        if not 5 <= len(phrases) <= 10:
            problems.append(f"{name}: {len(phrases)} phrases")
        folded = [p.casefold() for p in phrases]
        if len(set(folded)) != len(folded):
            problems.append(f"{name}: duplicate phrases")
        for phrase in phrases:
            if not isinstance(phrase, str) or not phrase.strip() or phrase != phrase.strip():
                problems.append(f"{name}: bad phrase {phrase!r}")
                continue
            if len(phrase.split()) > 12:
                problems.append(f"{name}: too long {phrase!r}")
            if " ".join(phrase.replace("-", " ").lower().split()) == plain_name:
                problems.append(f"{name}: phrase is the class name {phrase!r}")
    assert not problems, problems[:10]


def test_checksum_changes_when_a_phrase_changes() -> None:
    doc = load("cifar100")
    doc["classes"][0]["phrases"][0] += " and more"
    assert contract_checksum(doc["classes"]) != doc["checksum"]


def test_cifar100_names_are_torchvision_fine_labels_in_order() -> None:
    names = class_names("cifar100")
    # torchvision's CIFAR100.classes are the fine-label names in alphabetical order.
    assert names == sorted(names)
    assert names[:6] == ["apple", "aquarium_fish", "baby", "bear", "beaver", "bed"]
    assert names[-3:] == ["wolf", "woman", "worm"]
    for multiword in ("lawn_mower", "maple_tree", "oak_tree", "palm_tree", "pickup_truck", "pine_tree",
                      "sweet_pepper", "willow_tree"):
        assert multiword in names
    assert all(re.fullmatch(r"[a-z_]+", n) for n in names)


def test_cub200_names_follow_classes_txt() -> None:
    names = class_names("cub200")
    assert names[0] == "Black_footed_Albatross"
    assert names[16] == "Cardinal"  # 017.Cardinal
    assert names[102] == "Sayornis"  # 103.Sayornis
    assert names[140] == "Artic_Tern"  # classes.txt keeps this spelling
    assert names[-1] == "Common_Yellowthroat"
    assert not any(re.match(r"\d", n) for n in names), "numeric prefixes must be dropped"


def test_imagenet_r_wnids_sorted_and_aligned() -> None:
    wnids = (CLASS_NAMES / "imagenet_r_wnids.txt").read_text().splitlines()
    assert len(wnids) == 200 == len(set(wnids))
    assert all(re.fullmatch(r"n\d{8}", w) for w in wnids)
    assert wnids == sorted(wnids)
    assert wnids[0] == "n01443537" and wnids[-1] == "n12267677"
    assert len(class_names("imagenet_r")) == len(wnids)


def test_imagenet_r_names_follow_imagenet_label_order() -> None:
    meta = pytest.importorskip("torchvision.models._meta")
    categories = list(meta._IMAGENET_CATEGORIES)
    # Our readable names where torchvision keeps ImageNet's first (less readable) synonym.
    aliases = {
        "basset hound": "basset", "Boston terrier": "Boston bull", "Scottish terrier": "Scotch terrier",
        "German shepherd dog": "German shepherd", "chow chow": "chow", "Pembroke Welsh corgi": "Pembroke",
        "tabby cat": "tabby", "polar bear": "ice bear", "monarch butterfly": "monarch", "wheelbarrow": "barrow",
        "lighthouse": "beacon", "cauldron": "caldron", "pickup truck": "pickup", "pirate ship": "pirate",
        "saxophone": "sax", "scarf": "stole", "baseball player": "ballplayer",
    }
    indices = [categories.index(aliases.get(n, n)) for n in class_names("imagenet_r")]
    assert all(a < b for a, b in zip(indices, indices[1:])), "names are not in ImageNet (sorted wnid) order"
    assert indices[0] == 1 and indices[-1] == 988  # goldfish ... acorn


def test_build_script_reproduces_shipped_files() -> None:
    outputs = build_script().build_outputs()
    assert len(outputs) == 7
    for path, text in outputs.items():
        assert path.read_bytes() == text.encode("utf-8"), f"{path} is stale; rerun the build script"


def test_build_script_rejects_contract_violations() -> None:
    script = build_script()
    good = script.build_document("toy", [("red_panda", ["a", "b", "c", "d", "e"])])
    assert script.document_errors(good, "toy") == []
    cases = {
        "count": ["a", "b", "c", "d"],
        "words": ["a", "b", "c", "d", " ".join(["word"] * 13)],
        "duplicate": ["a", "b", "c", "d", "A"],
        "name": ["a", "b", "c", "d", "red panda"],
        "stripped": ["a", "b", "c", "d", " e"],
        "abstract": ["a", "b", "c", "d", "lives in bamboo forests"],
    }
    for label, phrases in cases.items():
        doc = script.build_document("toy", [("red_panda", phrases)])
        assert script.document_errors(doc, "toy"), label
    tampered = script.build_document("toy", [("red_panda", ["a", "b", "c", "d", "e"])])
    tampered["classes"][0]["phrases"][0] = "z"
    assert any("checksum" in e for e in script.document_errors(tampered, "toy"))
