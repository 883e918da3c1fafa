"""The fair parts world: within-class variation, alt-text captions, the simulated describer."""

import hashlib
import json

import numpy as np
import pytest
import torch

from spacil.descriptions import load_description_file
from spacil.descriptions.generator import ClassImages, DescriptionGenerator, GenerationParameters
from spacil.descriptions.guidance import select_guidance
from spacil.errors import UsageError
from spacil.partsworld import class_descriptions, make_class_specs, write_image_folder
from spacil.partsworld.captions import AltTextConfig, alt_text_caption, seen_kinds
from spacil.partsworld.describer import (DescriberSettings, ImageAnnotation, SimulatedDescriber, annotate_images,
                                         siblings_of)
from spacil.partsworld.mechanism import phrase_component
from spacil.partsworld.render import RenderConfig, Variation, render_layers
from spacil.partsworld.vocabulary import VOCABULARY
from spacil.partsworld.wording import GENERIC_PHRASES, _check_complete, wordings

SPECS = make_class_specs(10, seed=5)
NO_VARIATION = RenderConfig(p_occluder=0, p_faded_part=0, p_out_of_frame=0)


def _layers(spec, seed, config):
    return render_layers(spec, np.random.default_rng(seed), 64, config)


def test_every_vocabulary_phrase_has_other_wordings():
    _check_complete()


def test_an_occluder_hides_its_part_and_nothing_else_changes_the_draws():
    spec = SPECS[0]
    hidden = RenderConfig(p_occluder=1.0, p_faded_part=0, p_out_of_frame=0, occluder_radius=(0.9, 0.9))
    for seed in range(6):
        plain, occluded = _layers(spec, seed, NO_VARIATION), _layers(spec, seed, hidden)
        kind = occluded.variation.occluded
        assert plain.variation == Variation() and kind in VOCABULARY.kind_names
        if spec.parts.get(kind) != "none":
            assert occluded.visible_pixels()[kind] < plain.visible_pixels()[kind]
        # same pose, jitter and clutter: the label maps differ only where the blob (clutter) now is
        changed = occluded.labels != plain.labels
        assert changed.any() and (occluded.labels[changed] == occluded.labels.max(initial=0) * 0 + 1).all()


def test_a_faded_part_is_drawn_close_to_the_body_colour():
    spec = SPECS[1]
    faded = RenderConfig(p_occluder=0, p_faded_part=1.0, p_out_of_frame=0, noise_sigma=(0.0, 0.0))
    checked = 0
    for seed in range(10):
        out = _layers(spec, seed, faded)
        kind = out.variation.faded
        plain = _layers(spec, seed, RenderConfig(p_occluder=0, p_faded_part=0, p_out_of_frame=0, noise_sigma=(0.0, 0.0)))
        mask = out.mask(kind)
        if mask.sum() < 10:
            continue
        body = np.asarray(plain.image, dtype=float)[plain.mask("body")].mean(0)
        dist_faded = np.abs(np.asarray(out.image, dtype=float)[mask] - body).sum(1).mean()
        dist_plain = np.abs(np.asarray(plain.image, dtype=float)[mask] - body).sum(1).mean()
        assert dist_faded < 0.5 * dist_plain
        checked += 1
    assert checked >= 3


def _gap(result, side: str) -> int:
    """Pixels between the creature (body and parts) and the image border on ``side``."""
    ys, xs = np.nonzero(result.labels >= 2)
    last = result.labels.shape[0] - 1
    return {"top": ys.min(), "bottom": last - ys.max(), "back": min(xs.min(), last - xs.max())}[side]


def test_out_of_frame_moves_the_creature_to_that_border():
    spec = SPECS[2]
    cut = RenderConfig(p_occluder=0, p_faded_part=0, p_out_of_frame=1.0)
    closer, sides = [], set()
    for seed in range(20):
        out, plain = _layers(spec, seed, cut), _layers(spec, seed, NO_VARIATION)
        side = out.variation.out_of_frame
        sides.add(side)
        closer.append(_gap(out, side) < _gap(plain, side) and _gap(out, side) <= 8)
    assert sides == {"back", "top", "bottom"} and np.mean(closer) >= 0.9


def test_classes_of_a_group_share_each_image_variation():
    a, b = SPECS[0], SPECS[1]  # same group: same global look
    assert a.group == b.group
    for seed in range(5):
        assert _layers(a, seed, RenderConfig()).variation == _layers(b, seed, RenderConfig()).variation


def test_alt_text_names_only_seen_parts_in_some_wording():
    spec = SPECS[3]
    rng = np.random.default_rng(0)
    seen = ["ears", "tail"]
    allowed = {w for kind in seen for w in wordings(VOCABULARY.kind(kind).value(spec.parts.get(kind)).phrase)
               if spec.parts.get(kind) != "none"}
    every_phrase = {w for k in VOCABULARY.kinds for v in k.values for w in wordings(v.phrase)}
    captions = [alt_text_caption(spec.parts, seen, rng) for _ in range(200)]
    for caption in captions:
        for phrase in every_phrase - allowed:
            assert f" {phrase}" not in caption and not caption.startswith(phrase), (phrase, caption)
    assert any(not any(w in c for w in allowed) for c in captions)  # sometimes no part at all
    assert len({c for c in captions}) > 100
    never = alt_text_caption(spec.parts, seen, np.random.default_rng(1), AltTextConfig(p_part=0.0))
    assert not any(w in never for w in allowed)


def test_seen_kinds_needs_pixels_and_no_fading():
    assert seen_kinds({"ears": 20, "tail": 3, "eyes": 30}, faded="eyes", min_pixels=8) == ["ears"]


def _annotation(spec, visible=40, faded=None):
    pixels = {k: (visible if spec.parts.get(k) != "none" else 0) for k in VOCABULARY.kind_names}
    return ImageAnnotation(spec.name, spec.parts, pixels, Variation(faded=faded))


def _describer(**rates):
    return SimulatedDescriber(DescriberSettings(**rates), {}, siblings_of(SPECS), 5, 10)


def test_an_error_free_describer_writes_the_vocabulary_phrases_of_what_it_sees():
    spec = SPECS[4]
    d = _describer(miss_rate=0, confusion_rate=0, filler_rate=0, reword_rate=0)
    phrases = d.describe([_annotation(spec)] * 5)
    truth = class_descriptions(spec)
    assert set(truth) <= set(phrases) and set(phrases) - set(truth) <= set(GENERIC_PHRASES)
    # a part that no shown image shows clearly is never described
    ears = VOCABULARY.kind("ears").value(spec.parts.get("ears")).phrase if spec.parts.get("ears") != "none" else None
    if ears:
        faded = d.describe([_annotation(spec, faded="ears")] * 5)
        assert ears not in faded


def test_describer_errors_behave_as_documented():
    spec = SPECS[6]
    shown = [_annotation(spec)] * 5
    only_filler = _describer(miss_rate=1.0).describe(shown)
    assert set(only_filler) <= set(GENERIC_PHRASES) and len(only_filler) == 5  # padded to the minimum
    confused = _describer(miss_rate=0, confusion_rate=1.0, filler_rate=0, reword_rate=0).describe(shown)
    own = {VOCABULARY.kind(k).value(v).phrase for k, v in spec.parts.parts if v != "none"}
    assert not (own & set(confused))  # every named part carries another value
    assert all(phrase_component(p) is not None for p in confused if p not in GENERIC_PHRASES)
    reworded = _describer(miss_rate=0, confusion_rate=0, filler_rate=0, reword_rate=1.0).describe(shown)
    assert not (set(reworded) & set(class_descriptions(spec)))
    assert {phrase_component(p) for p in reworded} >= {"body"}
    # seeded: the same class gets the same answer, another seed another one
    assert _describer().describe(shown) == _describer().describe(shown)
    assert any(_describer(seed=s).describe(shown) != _describer().describe(shown) for s in range(1, 6))


def test_describer_answers_through_the_generator_and_checks_the_images(tmp_path):
    specs = SPECS[:3]
    root = write_image_folder(tmp_path / "world", specs, n_train=6, n_test=1, seed=2)
    ids = [f"train/{s.name}/{i:05d}.png" for s in specs for i in range(3)]
    annotations = annotate_images(root, ids)
    by_sha = {hashlib.sha256((root / i).read_bytes()).hexdigest(): a for i, a in annotations.items()}
    settings = DescriberSettings()
    client = SimulatedDescriber(settings, by_sha, siblings_of(specs), 5, 10)
    generator = DescriptionGenerator(settings.model_name, tmp_path / "cache.jsonl", parameters=GenerationParameters(),
                                     client=client)
    requests = [ClassImages(s.name, [root / i for i in ids if f"/{s.name}/" in i],
                            [i for i in ids if f"/{s.name}/" in i]) for s in specs]
    summary = generator.generate(requests)
    assert summary.complete and summary.entries[specs[0].name].provenance["image_ids"] == ids[:3]
    again = DescriptionGenerator(settings.model_name, tmp_path / "cache.jsonl", client=client).generate(requests)
    assert len(again.cached) == 3  # resumable like a real describe run
    # an image that is not what its manifest renders is refused
    (root / ids[0]).write_bytes((root / ids[1]).read_bytes())
    with pytest.raises(UsageError, match="differs"):
        annotate_images(root, ids[:1])


def test_random_guidance_is_seeded_and_distinct():
    x = np.random.default_rng(0).normal(size=(30, 8))
    a = select_guidance(x, 3, 2, seed=4, method="random")
    assert len(set(a.indices)) == 5 and a.indices == select_guidance(x, 3, 2, seed=4, method="random").indices
    assert a.indices != select_guidance(x, 3, 2, seed=5, method="random").indices


def test_trimmed_text_encoding_equals_open_clip():
    import open_clip

    from spacil.backbone import register_model_configs
    from spacil.partsworld.pretrain import encode_text_trimmed

    register_model_configs()
    torch.manual_seed(0)
    model = open_clip.create_model("spacil-partsworld-tiny", pretrained=None).eval()
    ids = open_clip.get_tokenizer("spacil-partsworld-tiny")(["a red round creature with two eyes", "a critter"])
    with torch.no_grad():
        assert torch.allclose(encode_text_trimmed(model, ids), model.encode_text(ids), atol=1e-5)


def test_world_folder_keeps_ground_truth_out_of_the_default_lookup(tmp_path):
    root = write_image_folder(tmp_path / "w", SPECS[:2], n_train=1, n_test=1, seed=0)
    assert not (root / "descriptions.json").exists()
    truth = load_description_file(root / "ground_truth_descriptions.json")
    assert truth.phrases_for(SPECS[0].name) == class_descriptions(SPECS[0])
    assert json.loads((root / "manifest.json").read_text())["render_config"]["p_occluder"] > 0
