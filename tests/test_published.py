"""Our protocol runs land on the same line as their method's published figures."""

from spacil.evaluation.published import beside_published, markdown_table, published_results
from spacil.methods import list_methods


def test_each_published_row_names_a_registered_method_or_none():
    registered = {m.name for m in list_methods()}
    rows = published_results()
    assert all(r["ours"] is None or r["ours"] in registered for r in rows)
    table = {(r["dataset"], r["ours"]): (r["average"], r["last"]) for r in rows}
    assert table[("cifar100", "engine")] == (86.9, 79.22) and table[("imagenet_r", "engine")] == (86.2, 80.3)
    assert table[("imagenet_r", "proof")] == (84.19, 78.50) and table[("cub200", "proof")] == (84.87, 79.86)


def test_runs_sit_beside_their_published_figures():
    runs = [{"dataset": "cifar100", "split": "b0_inc10", "method": "proof", "average": 80.0, "last": 70.0},
            {"dataset": "cifar100", "split": "b0_inc10", "method": "rapf", "average": 75.0, "last": 65.0}]
    rows = {r["method"]: r for r in beside_published(runs)}
    assert rows["proof (PROOF)"]["ours_average"] == 80.0 and rows["proof (PROOF)"]["published_average"] == 86.77
    assert rows["rapf"]["published_average"] is None  # no published figure stored for it
    assert rows["BOFA"]["ours_average"] is None and rows["BOFA"]["published_last"] == 79.34
    assert all(r["dataset"] == "cifar100" for r in rows.values())  # only the splits that were run
    assert "| cifar100 | b0_inc10 | proof (PROOF) | 80.00 | 70.00 | 86.77 | 79.11 |" in markdown_table(list(rows.values()))
