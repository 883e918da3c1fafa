"""The shipped description files obey the spacil-descriptions contract and match the canonical class lists.

The files are read with plain ``json`` (not the package loader) and every rule is re-implemented here,
so a bug in the package's validator cannot hide itself. Class lists are checked against independent facts:
CIFAR-100's fine labels are alphabetical, CUB's classes.txt has well-known first/last entries, and
ImageNet-R's wnids must be in the same order as torchvision's ImageNet category list (ImageNet labels
are sorted wnids, so the 200 ImageNet-R classes must map to strictly increasing ImageNet indices).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DESCRIPTIONS = REPO / "src" / "spacil" / "descriptions" / "data"
CLASS_NAMES = REPO / "src" / "spacil" / "data" / "class_names"
# dataset -> classes in its file: every line of the shipped class list (Cars, Food, UCF, SUN list more
# classes than the protocol uses; SUN's list is the 362 merged scenes of sun397_merged.txt).
DATASETS = {"cifar100": 100, "cub200": 200, "imagenet_r": 200, "objectnet": 200, "aircraft": 100, "cars": 196,
            "food101": 101, "ucf101": 101, "sun397": 362}
CLASS_FILES = {"sun397": "sun397_merged.txt"}
WRITTEN_BY_THE_TEAM = {"cifar100", "cub200", "imagenet_r"}  # the other six state that a language model wrote them


def load(dataset: str) -> dict:
    return json.loads((DESCRIPTIONS / f"{dataset}.json").read_text(encoding="utf-8"))


def class_names(dataset: str) -> list[str]:
    return (CLASS_NAMES / CLASS_FILES.get(dataset, f"{dataset}.txt")).read_text(encoding="utf-8").splitlines()


def contract_checksum(classes: list[dict]) -> str:
    blob = json.dumps(classes, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return "sha256:" + hashlib.sha256(blob).hexdigest()


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
    if dataset not in WRITTEN_BY_THE_TEAM:  # honest about its author and the list it covers
        assert "language model" in statement and "no generator or llm api was run" in statement
        assert f"spacil/data/class_names/{CLASS_FILES.get(dataset, dataset + '.txt')}" in doc["produced_by"]
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


# Visual cues, not facts a patch cannot show: these fragments flag the usual slips in hand-written phrases.
ABSTRACT_FRAGMENTS = (
    "lives in", "native to", "found in", "known for", "belongs to", "is a ", "is an ", "species",
    "habitat", "mammal", "migrat", "endangered", "extinct", "nocturnal", "diet", "feeds on",
)


@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_phrases_are_tidy_visual_cues(dataset: str) -> None:
    for entry in load(dataset)["classes"]:
        for phrase in entry["phrases"]:
            assert "  " not in phrase, (entry["name"], phrase)
            low = f" {phrase.lower()} "
            assert not [f for f in ABSTRACT_FRAGMENTS if f in low], (entry["name"], phrase)


@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_package_validator_accepts_shipped_files(dataset: str) -> None:
    from spacil.descriptions import load_shipped

    assert len(load_shipped(dataset).classes) == DATASETS[dataset]


def test_package_validator_rejects_contract_violations() -> None:
    from spacil.descriptions.fileformat import compute_checksum, document_violations

    def document(phrases: list[str]) -> dict:
        classes = [{"name": "red_panda", "phrases": phrases}]
        return {"format": "spacil-descriptions", "version": 1, "dataset": "toy", "produced_by": "a test",
                "generator": None, "checksum": compute_checksum(classes), "classes": classes}

    assert document_violations(document(["a", "b", "c", "d", "e"]), "toy") == []
    cases = {
        "phrase-count": ["a", "b", "c", "d"],
        "phrase-words": ["a", "b", "c", "d", " ".join(["word"] * 13)],
        "phrase-unique": ["a", "b", "c", "d", "A"],
        "phrase-not-class-name": ["a", "b", "c", "d", "red panda"],
        "phrase-stripped": ["a", "b", "c", "d", " e"],
    }
    for rule, phrases in cases.items():
        assert rule in {v.rule for v in document_violations(document(phrases), "toy")}, rule
    tampered = document(["a", "b", "c", "d", "e"])
    tampered["classes"][0]["phrases"][0] = "z"
    assert "checksum" in {v.rule for v in document_violations(tampered, "toy")}
