"""Parts world: determinism, labels vs parts, group design, locality of the parts, and the on-disk folder."""

from __future__ import annotations

import hashlib
import itertools
import json
import re

import numpy as np
import pytest
from PIL import Image

from spacil.descriptions import validate_document
from spacil.partsworld import (
    NONE,
    VOCABULARY,
    PartValues,
    RenderConfig,
    caption_for,
    class_descriptions,
    component_names,
    descriptions_document,
    generate_caption_pairs,
    generate_split,
    make_class_specs,
    parts_name,
    random_part_combinations,
    render_image,
    render_layers,
    write_image_folder,
)


@pytest.fixture(scope="module")
def specs50():
    return make_class_specs(50, seed=3)


def _arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def _grow(mask: np.ndarray) -> np.ndarray:
    """Dilate a boolean mask by one pixel (4-neighbourhood): anti-aliasing smears edges by about that."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def _expected_phrases(parts: PartValues) -> list[str]:
    """Phrases straight from the vocabulary tables (shape, colour, then each present part)."""
    out = [VOCABULARY.shape(parts.shape).phrase, VOCABULARY.colour(parts.colour).phrase]
    for kind in VOCABULARY.kinds:
        value = parts.to_dict()[kind.name]
        if value != NONE:
            out.append(kind.value(value).phrase)
    return out


# ----------------------------------------------------------------------------- vocabulary


def test_vocabulary_phrases_are_short_unique_and_tokens_unique():
    phrases = [s.phrase for s in VOCABULARY.shapes] + [c.phrase for c in VOCABULARY.colours]
    phrases += [v.phrase for k in VOCABULARY.kinds for v in k.values]
    assert len({p.casefold() for p in phrases}) == len(phrases)
    assert all(0 < len(p.split()) <= 12 and p == p.strip() for p in phrases)
    tokens = [v.token for k in VOCABULARY.kinds for v in k.values]
    assert len(set(tokens)) == len(tokens)
    assert all(re.fullmatch(r"[a-z]+", t) for t in tokens)


def test_part_values_validation():
    good = {"shape": "round", "colour": "red", "eyes": "two"}
    parts = PartValues.from_dict(good)
    assert parts.get("ears") == NONE and parts.get("eyes") == "two"
    with pytest.raises(ValueError):
        PartValues.from_dict({**good, "ears": "antlers"})
    with pytest.raises(ValueError):
        PartValues.from_dict({**good, "eyes": NONE})  # eyes are not optional
    with pytest.raises(KeyError):
        PartValues.from_dict({**good, "shape": "cube"})
    with pytest.raises(ValueError):
        PartValues.from_dict({**good, "wings": "big"})


def test_every_vocabulary_value_draws_visible_pixels_where_its_label_says():
    """Each part value changes pixels, and the changed pixels sit in that part's label mask."""
    base = PartValues.from_dict({"shape": "round", "colour": "green", "eyes": "two"})
    cfg = RenderConfig(n_clutter=(0, 0), p_detached_part=0.0)
    plain = _arr(render_image(base, np.random.default_rng(0), config=cfg))
    for kind in VOCABULARY.kinds:
        for value in kind.values:
            if value.name == base.get(kind.name):
                continue
            res = render_layers(base.replace(**{kind.name: value.name}), np.random.default_rng(0), config=cfg)
            changed = (_arr(res.image) != plain).any(-1)
            mask = res.mask(kind.name)
            assert mask.sum() >= 6, (kind.name, value.name)
            assert changed.sum() >= 6, (kind.name, value.name)
            # Changed pixels outside the part's (1-pixel dilated) mask: only anti-aliasing crumbs.
            if kind.name == "eyes":  # replacing the eyes also uncovers the body under the old eyes
                mask = mask | render_layers(base, np.random.default_rng(0), config=cfg).mask("eyes")
            grown = _grow(mask)
            assert (changed & ~grown).sum() <= 0.05 * changed.sum() + 3, (kind.name, value.name)


# ----------------------------------------------------------------------------- class design


def test_groups_share_global_look_and_differ_in_one_or_two_parts(specs50):
    assert len(specs50) == 50
    groups: dict[int, list] = {}
    for spec in specs50:
        groups.setdefault(spec.group, []).append(spec)
    assert sorted(groups) == list(range(10)) and all(len(g) == 5 for g in groups.values())
    looks = set()
    for members in groups.values():
        assert len({(s.parts.shape, s.parts.colour) for s in members}) == 1
        looks.add((members[0].parts.shape, members[0].parts.colour))
        for a, b in itertools.combinations(members, 2):
            diff = [k for k in VOCABULARY.kind_names if a.parts.get(k) != b.parts.get(k)]
            assert 1 <= len(diff) <= 2, (a.name, b.name, diff)
    assert len(looks) == 10  # different groups look different globally
    assert len({s.parts for s in specs50}) == 50
    assert len({s.name for s in specs50}) == 50
    # Groups are contiguous label ranges.
    assert [s.group for s in specs50] == [i // 5 for i in range(50)]


def test_class_specs_are_deterministic_and_prefix_stable(specs50):
    assert make_class_specs(50, seed=3) == specs50
    assert make_class_specs(7, seed=3) == specs50[:7]
    other = make_class_specs(50, seed=4)
    assert [s.parts for s in other] != [s.parts for s in specs50]


def test_single_part_difference_mode_and_parts_naming():
    specs = make_class_specs(20, seed=1, parts_per_class_diff=1, naming="parts")
    for g in range(4):
        members = [s for s in specs if s.group == g]
        for a, b in itertools.combinations(members, 2):
            assert len(a.parts.part_differences(b.parts)) == 1
    for spec in specs:
        tokens = spec.name.split("-")
        assert tokens[:2] == [spec.parts.colour, spec.parts.shape]
        expected = [VOCABULARY.kind(k).value(v).token for k, v in spec.parts.parts if v != NONE]
        assert tokens[2:] == expected
        assert parts_name(spec.parts) == spec.name
    assert len({s.name for s in specs}) == 20


def test_creature_names_are_readable():
    for spec in make_class_specs(30, seed=9):
        colour, shape, word = spec.name.split("_")
        assert (colour, shape) == (spec.parts.colour, spec.parts.shape)
        assert re.fullmatch(r"[a-z]{4,6}", word)


def test_descriptions_follow_the_parts_and_the_contract(specs50):
    for spec in specs50:
        phrases = class_descriptions(spec)
        assert phrases == _expected_phrases(spec.parts)
        assert 5 <= len(phrases) <= 8
    doc = descriptions_document(specs50, "partsworld")
    validate_document(doc, expected_dataset="partsworld")
    assert doc["format"] == "spacil-descriptions" and doc["version"] == 1 and doc["generator"] is None
    assert "vocabulary" in doc["produced_by"] and "no LLM" in doc["produced_by"]
    assert [c["name"] for c in doc["classes"]] == [s.name for s in specs50]
    blob = json.dumps(doc["classes"], sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    assert doc["checksum"] == "sha256:" + hashlib.sha256(blob).hexdigest()
    # Two classes of a group differ in exactly the phrases of the parts they differ in.
    a, b = specs50[0], specs50[1]
    changed = set(class_descriptions(a)) ^ set(class_descriptions(b))
    kinds = a.parts.part_differences(b.parts)
    expected = {VOCABULARY.part_phrase(k, s.parts.get(k)) for k in kinds for s in (a, b)} - {None}
    assert changed == expected


# ----------------------------------------------------------------------------- generation


def test_generate_split_is_deterministic_and_independent_of_the_class_count(specs50):
    three = generate_split(specs50[:3], 2, seed=11)
    again = generate_split(specs50[:3], 2, seed=11)
    five = generate_split(specs50[:5], 3, seed=11)
    assert len(three) == 6 and len(five) == 15
    for x, y in zip(three, again):
        assert np.array_equal(_arr(x.image), _arr(y.image)) and x.caption == y.caption
    for label in range(3):
        for i in range(2):
            x, y = three[label * 2 + i], five[label * 3 + i]
            assert x.label == y.label == label
            assert np.array_equal(_arr(x.image), _arr(y.image)) and x.caption == y.caption
    # Seeds follow the class itself, not its label: class 2 alone (label 0) gets the same images.
    alone = generate_split([specs50[2]], 2, seed=11)
    for i in range(2):
        assert np.array_equal(_arr(alone[i].image), _arr(three[4 + i].image)) and alone[i].label == 0
    # Images of one class differ from each other, and another seed gives other images.
    assert not np.array_equal(_arr(three[0].image), _arr(three[1].image))
    other = generate_split(specs50[:3], 2, seed=12)
    assert all(not np.array_equal(_arr(x.image), _arr(y.image)) for x, y in zip(three, other))
    # Train and test images of the same index differ.
    test = generate_split(specs50[:3], 2, seed=11, split="test")
    assert all(not np.array_equal(_arr(x.image), _arr(y.image)) for x, y in zip(three, test))


def test_items_carry_their_class_parts_and_captions_name_them(specs50):
    items = generate_split(specs50[:10], 3, seed=5, size=48)
    assert [it.label for it in items] == [c for c in range(10) for _ in range(3)]
    for it in items:
        assert it.image.size == (48, 48) and it.image.mode == "RGB"
        assert it.part_values == specs50[it.label].parts
        parts = it.part_values
        assert parts.colour in it.caption and VOCABULARY.shape(parts.shape).word in it.caption
        for kind, value in parts.parts:
            if value != NONE:
                assert VOCABULARY.kind(kind).value(value).phrase in it.caption, (it.caption, kind)
    assert len({it.caption for it in items}) > 10  # templates and part order vary


def test_caption_for_accepts_dicts_and_varies_with_the_rng():
    parts = {"shape": "square", "colour": "blue", "ears": "long", "eyes": "one", "tail": "curly"}
    captions = {caption_for(parts, np.random.default_rng(s)) for s in range(30)}
    assert len(captions) > 3
    for c in captions:
        for phrase in ("long upright ears", "one big central eye", "curly spiral tail", "blue", "square"):
            assert phrase in c


def test_parts_are_local_and_the_body_dominates(specs50):
    """Two classes of a group rendered from the same rng differ only in a small area; the body is big."""
    diffs, bodies = [], []
    for group in range(0, 10, 2):
        members = [s for s in specs50 if s.group == group]
        for a, b in itertools.combinations(members, 2):
            seed = 100 * group + members.index(a)
            ra = render_layers(a, np.random.default_rng(seed))
            rb = render_layers(b, np.random.default_rng(seed))
            changed = (_arr(ra.image) != _arr(rb.image)).any(-1)
            diffs.append(changed.mean())
            bodies.append(ra.mask("body").mean())
            # Changes sit on the differing parts (either class's masks, dilated for anti-aliasing).
            kinds = a.parts.part_differences(b.parts)
            where = np.zeros_like(changed)
            for res in (ra, rb):
                for kind in kinds:
                    where |= res.mask(kind)
            grown = _grow(where)
            assert (changed & ~grown).sum() <= 0.05 * changed.sum() + 3
    diffs, bodies = np.array(diffs), np.array(bodies)
    assert diffs.max() < 0.15, diffs.max()
    assert diffs.min() > 0.0
    assert bodies.mean() > 3 * diffs.mean(), (bodies.mean(), diffs.mean())
    assert bodies.min() > 0.08


def test_render_layers_image_equals_render_image(specs50):
    a = render_layers(specs50[3], np.random.default_rng(8), size=40)
    b = render_image(specs50[3].parts.to_dict(), np.random.default_rng(8), size=40)
    assert np.array_equal(_arr(a.image), _arr(b))
    assert a.labels.shape == (40, 40)
    assert set(np.unique(a.labels)) <= set(range(len(component_names())))


def test_caption_pairs_cover_many_combinations():
    combos = random_part_combinations(200, seed=2)
    assert combos == random_part_combinations(200, seed=2)
    assert random_part_combinations(50, seed=2) == combos[:50]
    assert len(set(combos)) > 190
    assert {c.shape for c in combos} == {s.name for s in VOCABULARY.shapes}
    assert any(c.get("ears") == NONE for c in combos) and any(c.get("ears") != NONE for c in combos)
    pairs = list(generate_caption_pairs(6, seed=2, size=32))
    again = list(generate_caption_pairs(4, seed=2, size=32))
    for (im, cap), (im2, cap2) in zip(pairs, again):
        assert np.array_equal(_arr(im), _arr(im2)) and cap == cap2
    for (im, cap), parts in zip(pairs, combos):
        assert im.size == (32, 32)
        assert parts.colour in cap
        for _, value in parts.present_parts():
            assert value.phrase in cap


# ----------------------------------------------------------------------------- on disk


def test_write_image_folder(tmp_path, specs50):
    specs = specs50[:3]
    root = write_image_folder(tmp_path / "pw", specs, n_train=2, n_test=1, seed=4, size=32)
    names = [s.name for s in specs]
    assert (root / "classes.txt").read_text(encoding="utf-8").splitlines() == names
    for split, n in (("train", 2), ("test", 1)):
        assert sorted(p.name for p in (root / split).iterdir()) == sorted(names)
        for name in names:
            files = sorted(p.name for p in (root / split / name).iterdir())
            assert files == [f"{i:05d}.png" for i in range(n)]
            for f in files:
                with Image.open(root / split / name / f) as img:
                    assert img.format == "PNG" and img.size == (32, 32) and img.mode == "RGB"
    # Files hold exactly the generated images (PNG is lossless).
    items = generate_split(specs, 2, seed=4, size=32)
    with Image.open(root / "train" / names[1] / "00001.png") as img:
        assert np.array_equal(_arr(img.convert("RGB")), _arr(items[3].image))

    doc = json.loads((root / "ground_truth_descriptions.json").read_text(encoding="utf-8"))
    validate_document(doc, expected_dataset="partsworld")
    blob = json.dumps(doc["classes"], sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    assert doc["checksum"] == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert [c["name"] for c in doc["classes"]] == names
    assert [c["phrases"] for c in doc["classes"]] == [_expected_phrases(s.parts) for s in specs]

    lines = [json.loads(line) for line in (root / "captions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 3 * 3
    for rec in lines:
        assert (root / rec["path"]).is_file()
        assert rec["class"] == names[rec["label"]] and rec["parts"] == specs[rec["label"]].parts.to_dict()
    manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["seed"] == 4 and manifest["image_size"] == 32 and manifest["n_classes"] == 3
    assert manifest["n_train_per_class"] == 2 and manifest["n_test_per_class"] == 1
    assert manifest["generator_version"] and manifest["render_config"]["supersample"] >= 1
    assert [c["name"] for c in manifest["classes"]] == names

    # The project's own image-folder loader reads it with the right labels.
    from spacil.data.datasets import ImageFolderSource

    source = ImageFolderSource(root, "train", dataset="partsworld")
    assert source.class_names == names
    assert source.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert source.load(0).size == (32, 32)


def test_write_image_folder_with_workers_matches(tmp_path, specs50):
    specs = specs50[:2]
    a = write_image_folder(tmp_path / "a", specs, n_train=1, n_test=1, seed=4, size=24)
    b = write_image_folder(tmp_path / "b", specs, n_train=1, n_test=1, seed=4, size=24, workers=2)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
