"""The description-file contract: round trip, checksum, every validation rule, shipped files, fallback."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from pathlib import Path

import pytest

import spacil.descriptions
from spacil.descriptions import (
    DescriptionFileError,
    DescriptionSet,
    compute_checksum,
    fallback_phrases,
    load_description_file,
    load_shipped,
    save_description_file,
    shipped_dataset_keys,
    validate_document,
)

PANDA = ["rusty red fur on the back", "white face mask markings", "dark reddish brown legs",
         "long ringed bushy tail", "small pointed white edged ears"]
MAPLE = ["five lobed leaves with pointed tips", "winged paired seeds", "red and orange autumn foliage",
         "grey furrowed bark", "dense rounded crown"]


def make_set() -> DescriptionSet:
    return DescriptionSet(dataset="toy", classes={"red_panda": list(PANDA), "maple_tree": list(MAPLE)},
                          produced_by="written by hand for a unit test; no images, no LLM API called",
                          generator=None, provenance={"maple_tree": {"model": "none", "note": "ünïcode"}})


def hand_checksum(classes: list[dict]) -> str:
    # the contract's definition, written out independently of the package
    text = json.dumps(classes, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def good_doc() -> dict:
    return make_set().to_document()


def test_round_trip_is_byte_exact_and_checksum_is_the_contract_one(tmp_path):
    path = save_description_file(make_set(), tmp_path / "toy.json")
    raw = path.read_bytes()
    doc = json.loads(raw)
    assert list(doc) == ["format", "version", "dataset", "produced_by", "generator", "checksum", "classes"]
    assert doc["checksum"] == hand_checksum(doc["classes"])
    assert raw == (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    assert "ünïcode".encode("utf-8") in raw  # UTF-8, not \u escapes

    loaded = load_description_file(path, dataset="toy")
    assert loaded.names == ["red_panda", "maple_tree"]  # label order kept
    assert loaded.phrases_for("red_panda") == PANDA
    assert loaded.phrases_for("red panda") == PANDA  # readable form finds the canonical name
    assert loaded.phrases_for("giant panda") is None
    assert loaded.provenance == {"maple_tree": {"model": "none", "note": "ünïcode"}}
    save_description_file(loaded, tmp_path / "again.json")
    assert (tmp_path / "again.json").read_bytes() == raw


def test_checksum_detects_a_tampered_phrase(tmp_path):
    path = save_description_file(make_set(), tmp_path / "toy.json")
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc["classes"][0]["phrases"][1] = "white face mask markings and stripes"
    path.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    with pytest.raises(DescriptionFileError) as info:
        load_description_file(path)
    assert "checksum" in str(info.value) and str(path) in str(info.value)
    assert [v.rule for v in info.value.violations] == ["checksum"]


def test_wrong_dataset_key_is_rejected(tmp_path):
    path = save_description_file(make_set(), tmp_path / "toy.json")
    with pytest.raises(DescriptionFileError, match="rule 'dataset'"):
        load_description_file(path, dataset="cifar100")


def _with_phrases(phrases):
    doc = good_doc()
    doc["classes"][0]["phrases"] = phrases
    doc["checksum"] = compute_checksum(doc["classes"])
    return doc


@pytest.mark.parametrize("phrases, rule", [
    (PANDA[:4], "phrase-count"),
    (PANDA + [f"extra cue number {i}" for i in range(6)], "phrase-count"),
    (PANDA[:4] + [""], "phrase-empty"),
    (PANDA[:4] + ["   "], "phrase-empty"),
    (PANDA[:4] + [3], "phrase-empty"),
    (PANDA[:4] + [" padded phrase"], "phrase-stripped"),
    (PANDA[:4] + ["White Face Mask Markings"], "phrase-unique"),
    (PANDA[:4] + ["Red Panda"], "phrase-not-class-name"),
    (PANDA[:4] + ["red-panda"], "phrase-not-class-name"),
    (PANDA[:4] + ["a red panda."], "phrase-not-class-name"),
    (PANDA[:4] + [" ".join(["stripe"] * 13)], "phrase-words"),
    ("rusty red fur", "phrases-type"),
])
def test_each_phrase_rule_names_the_class_and_the_rule(phrases, rule):
    doc = _with_phrases(phrases)
    with pytest.raises(DescriptionFileError) as info:
        validate_document(doc, "toy.json")
    message = str(info.value)
    assert "toy.json" in message and "class 'red_panda'" in message and f"rule '{rule}'" in message
    assert {v.class_name for v in info.value.violations} == {"red_panda"}
    assert rule in {v.rule for v in info.value.violations}


def test_twelve_words_is_still_fine():
    validate_document(_with_phrases(PANDA[:4] + [" ".join(["stripe"] * 12)]))


def _mutations():
    def dup_name(d):
        d["classes"][1]["name"] = "red_panda"

    def extra_class_key(d):
        d["classes"][0]["colour"] = "red"

    def bad_provenance(d):
        d["classes"][0]["provenance"] = "gpt"

    def padded_name(d):
        d["classes"][0]["name"] = " red_panda"

    return [
        (dup_name, "red_panda", "class-unique"),
        (extra_class_key, "red_panda", "class-keys"),
        (bad_provenance, "red_panda", "provenance"),
        (padded_name, "#0", "class-name"),
    ]


@pytest.mark.parametrize("mutate, class_name, rule", _mutations())
def test_class_level_rules(mutate, class_name, rule):
    doc = good_doc()
    mutate(doc)
    doc["checksum"] = compute_checksum(doc["classes"])
    with pytest.raises(DescriptionFileError) as info:
        validate_document(doc, "f.json")
    assert (class_name, rule) in {(v.class_name, v.rule) for v in info.value.violations}
    assert f"class {class_name!r}" in str(info.value)


@pytest.mark.parametrize("key, value, rule", [
    ("format", "other-format", "format"),
    ("version", 2, "version"),
    ("dataset", "", "dataset"),
    ("produced_by", " ", "produced_by"),
    ("generator", "gpt-5", "generator"),
    ("generator", {"model": "gpt-5"}, "generator"),
    ("classes", [], "classes"),
    ("checksum", "md5:abc", "checksum"),
    ("surprise", 1, "keys"),
])
def test_file_level_rules(key, value, rule):
    doc = good_doc()
    doc[key] = value
    with pytest.raises(DescriptionFileError) as info:
        validate_document(doc, "f.json")
    assert rule in {v.rule for v in info.value.violations}


def test_invalid_json_and_save_refuses_bad_sets(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(DescriptionFileError, match="rule 'json'"):
        load_description_file(bad)
    broken = make_set()
    broken.classes["red_panda"] = PANDA[:2]
    with pytest.raises(DescriptionFileError, match="red_panda"):
        save_description_file(broken, tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists()
    assert list(tmp_path.iterdir()) == [bad]  # no temp file left behind


def test_shipped_files_load_and_match_their_raw_json():
    keys = shipped_dataset_keys()
    assert {"cifar100", "cub200", "imagenet_r"} <= set(keys)
    folder = Path(spacil.descriptions.__file__).parent / "data"
    for key in keys:
        loaded = load_shipped(key)
        raw = json.loads((folder / f"{key}.json").read_text(encoding="utf-8"))
        assert loaded.dataset == key
        assert loaded.names == [c["name"] for c in raw["classes"]]
        assert loaded.checksum == raw["checksum"]
    with pytest.raises(ValueError, match="no shipped description file"):
        load_shipped("no_such_dataset")


def test_fallback_warns_once_naming_the_classes(caplog):
    with caplog.at_level(logging.WARNING, logger="spacil.descriptions"):
        filled = fallback_phrases(["otter", "sea lion"], ["a photo of a {}.", "a close-up of the {}."])
    assert filled == {"otter": ["a photo of a otter.", "a close-up of the otter."],
                      "sea lion": ["a photo of a sea lion.", "a close-up of the sea lion."]}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "otter" in warnings[0].getMessage() and "sea lion" in warnings[0].getMessage()

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="spacil.descriptions"):
        assert fallback_phrases([], ["a photo of a {}."]) == {}
    assert not caplog.records
    with pytest.raises(ValueError, match="placeholder"):
        fallback_phrases(["otter"], ["a photo"])


def test_description_set_ambiguous_readable_name_is_not_guessed():
    s = DescriptionSet("toy", {"sea_lion": PANDA, "Sea-Lion": MAPLE}, "hand")
    assert s.phrases_for("sea_lion") == PANDA
    assert s.phrases_for("sea lion") is None  # two canonical names fold to it
