"""Class orders and class-incremental splits."""

import json

import numpy as np
import pytest

from spacil.data.scenario import (ScenarioError, build_scenario, protocol_permutation, resolve_class_order,
                                  shipped_class_order, task_sizes_for)


def test_shipped_cifar_order_is_the_protocol_permutation():
    order = shipped_class_order("cifar100")
    assert order[:5] == [68, 56, 78, 8, 23]
    assert sorted(order) == list(range(100))
    # the same numbers as the protocol's global-RNG recipe, reproduced on a private stream
    state = np.random.get_state()
    np.random.seed(1993)
    expected = np.random.permutation(100).tolist()
    np.random.set_state(state)
    assert order == expected


@pytest.mark.parametrize("dataset,n", [("cub200", 200), ("imagenet_r", 200), ("sun397", 300), ("aircraft", 100)])
def test_shipped_orders_are_permutations(dataset, n):
    order = shipped_class_order(dataset)
    assert sorted(order) == list(range(n))
    assert order == protocol_permutation(n)


def test_task_sizes_with_remainder():
    assert task_sizes_for(10, 4, 3) == [4, 3, 3]
    assert task_sizes_for(11, 4, 3) == [4, 3, 3, 1]
    assert task_sizes_for(100, 50, 10) == [50] + [10] * 5
    with pytest.raises(ScenarioError):
        task_sizes_for(5, 6, 1)


def test_scenario_remaps_labels_and_names():
    names = ["a", "b", "c", "d", "e"]
    sc = build_scenario(names, [3, 0, 4, 1, 2], init_cls=2, increment=2)
    assert sc.class_names == ("d", "a", "e", "b", "c")
    assert sc.task_sizes == (2, 2, 1)
    assert sc.remap(np.array([3, 0, 4, 1, 2])).tolist() == [0, 1, 2, 3, 4]
    assert list(sc.task_range(1)) == [2, 3]
    assert sc.seen_classes(1) == 4
    assert sc.task_of_label(np.arange(5)).tolist() == [0, 0, 1, 1, 2]


def test_bad_orders_are_named():
    with pytest.raises(ScenarioError, match="repeats"):
        build_scenario(list("abc"), [0, 0, 1], 1, 1)
    with pytest.raises(ScenarioError, match="misses"):
        build_scenario(list("abc"), [0, 1], 1, 1)
    with pytest.raises(ScenarioError, match="outside"):
        build_scenario(list("abc"), [0, 1, 7], 1, 1)
    with pytest.raises(ScenarioError, match="duplicate class names"):
        build_scenario(["a", "a", "b"], [0, 1, 2], 1, 1)


def test_resolve_class_order_sources(tmp_path):
    assert resolve_class_order("natural", "x", 4) == [0, 1, 2, 3]
    assert resolve_class_order([2, 1, 0], "x", 3) == [2, 1, 0]
    assert resolve_class_order("shipped", "cifar100", 100)[:2] == [68, 56]
    assert resolve_class_order("shipped", "unknown_folder", 10) == protocol_permutation(10)
    f = tmp_path / "order.json"
    f.write_text(json.dumps({"order": [1, 0, 2]}))
    assert resolve_class_order(f, "x", 3) == [1, 0, 2]
    t = tmp_path / "order.txt"
    t.write_text("2 0\n1\n")
    assert resolve_class_order(t, "x", 3) == [2, 0, 1]


def test_published_peer_figures_are_data_with_a_source():
    from importlib import resources

    doc = json.loads((resources.files("spacil.data") / "published_results.json").read_text())
    assert "PROOF" in doc["source"] and "arXiv" in doc["source"] and "DESIGN" not in json.dumps(doc)
    table = {(r["dataset"], r["method"]): (r["average"], r["last"]) for r in doc["results"]}
    assert table[("cifar100", "PROOF")] == (86.77, 79.11)
    assert table[("cifar100", "SimpleCIL")] == (84.15, 76.63)
    assert table[("imagenet_r", "BOFA")] == (85.42, 79.62)
