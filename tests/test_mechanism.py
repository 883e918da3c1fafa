"""Mechanism metrics against hand-computed values and the renderer's own masks."""

import numpy as np

from spacil.partsworld import class_descriptions, make_class_specs
from spacil.partsworld.dataset import generate_item, generate_item_layers
from spacil.partsworld.mechanism import (
    patch_components,
    phrase_assignment_accuracy,
    phrase_component,
    random_precision,
    selection_precision,
)
from spacil.partsworld.render import component_names

NAMES = component_names()
BG, BODY, EARS, HORN = NAMES.index("background"), NAMES.index("body"), NAMES.index("ears"), NAMES.index("horn")


def test_patch_components_by_hand():
    labels = np.full((4, 4), BG, dtype=np.uint8)  # 2x2 grid of 2x2 patches
    labels[0:2, 2:4] = BODY  # patch 1: all body
    labels[2:4, 0:2] = BODY
    labels[2, 0] = EARS  # patch 2: a quarter ears on body -> ears (>= 0.25)
    labels[2:4, 2] = HORN  # patch 3: half horn, half background -> horn
    comp = patch_components(labels, patch=2, min_fraction=0.25)
    assert comp.tolist() == [BG, BODY, EARS, HORN]
    assert patch_components(labels, patch=2, min_fraction=0.3).tolist() == [BG, BODY, BODY, HORN]


def test_precision_and_phrase_assignment_by_hand():
    components = np.array([[BG, BODY, EARS, HORN]])
    assert selection_precision(np.array([[2, 3]]), components) == 1.0
    assert selection_precision(np.array([[0, 2]]), components) == 0.5
    assert random_precision(components) == 0.5
    # patch 2 (ears) sends 0.3 to the ears phrase and 0.1 to the horn phrase; patch 0 (background) is ignored
    plans = np.array([[[0.2, 0.0, 0.0], [0.0, 0.3, 0.1]]])
    acc = phrase_assignment_accuracy(plans, np.array([[0, 2]]), components, [["body", "ears", "horn"]])
    assert abs(acc - 0.75) < 1e-9


def test_layers_match_the_exported_image_and_phrases_name_parts():
    spec = make_class_specs(5, seed=4)[2]
    image = generate_item(spec, 2, index=7, seed=4, size=64, split="test").image
    layers = generate_item_layers(spec, index=7, seed=4, size=64, split="test")
    assert np.array_equal(np.asarray(image), np.asarray(layers.image))
    kinds = [phrase_component(p) for p in class_descriptions(spec)]
    assert kinds[:2] == ["body", "body"] and set(kinds[2:]) <= set(NAMES)
    present = {NAMES[i] for i in np.unique(layers.labels)}
    assert set(kinds[2:]) & present  # at least one described part is visible


def test_phrase_component_reads_rewordings_and_names_nothing_for_filler():
    assert phrase_component("long upright ears") == "ears"
    assert phrase_component("Rabbit-like long ears") == "ears"  # a rewording, any case
    assert phrase_component("spiral tail") == "tail"
    assert phrase_component("grey skin") == "body"
    assert phrase_component("cartoon creature") is None  # generic filler
    assert phrase_component("a phrase from someone else's file") is None
