"""scripts/partsworld_results.py's tables on hand-made run records (no training)."""

import random

import pytest

from repo_scripts import load_script
from spacil.training.compare import ComparisonRow


@pytest.fixture(scope="module")
def script():
    return load_script("scripts/partsworld_results.py", "partsworld_results")


PAIRS = [(3, 1), (3, 2), (4, 1), (4, 2)]
AVERAGE = {"spa": [60, 62, 64, 66], "simplecil": [58, 59, 61, 62], "ranpac": [61, 60, 63, 64],
           "spa_adapted_patches": [70, 71, 72, 73]}
LAST = {"spa": [50, 51, 52, 53], "simplecil": [52, 52, 52, 56], "ranpac": [49, 50, 51, 52],
        "spa_adapted_patches": [60, 60, 60, 60]}


def _records(shuffle_seed=0):
    records = [{"variant": v, "world": w, "seed": s, "average": float(AVERAGE[v][i]), "last": float(LAST[v][i]),
                "forgetting": 10.0 + i, "val_average": float(AVERAGE[v][i]) - 1, "val_last": float(LAST[v][i]) - 1}
               for v in AVERAGE for i, (w, s) in enumerate(PAIRS)]
    random.Random(shuffle_seed).shuffle(records)  # pairs must be matched by (world, seed), not by position
    return records


def test_best_other_excludes_spa_and_its_ablations(script):
    records = _records()
    assert script.best_other(records, "average") == "ranpac"  # spa_adapted_patches scores higher but is excluded
    assert script.best_other(records, "last") == "simplecil"


def test_paired_table_hand_computed(script):
    table = script.paired_table(_records(1))
    # Ā: spa - ranpac = -1, 2, 1, 2 -> mean 1, sample std sqrt(2), half width t(0.975, 3) * sqrt(2) / 2 = 2.250
    assert "| Ā | RanPAC | 63.00 ± 2.58 | 62.00 ± 1.83 | +1.00 [-1.25, +3.25] | 4 |" in table
    # A_B: spa - simplecil = -2, -1, 0, -3 -> mean -1.5, sample std 1.291, half width 3.182 * 1.291 / 2 = 2.054
    assert "| A_B | SimpleCIL | 51.50 ± 1.29 | 53.00 ± 2.00 | -1.50 [-3.55, +0.55] | 4 |" in table


def test_spread_table_uses_the_sample_std_and_counts_runs(script):
    table = script.spread_table(_records())
    assert "| **SPA** | 63.00 ± 2.58 | 51.50 ± 1.29 | 11.50 ± 1.29 | 4 |" in table
    one = script.spread_table([r for r in _records() if (r["world"], r["seed"]) == (3, 1)])
    assert "| **SPA** | 60.00 ± n/a | 50.00 ± n/a | 10.00 ± n/a | 1 |" in one
    val = script.spread_table(_records(), ("val_average", "val_last"), prefix="validation ")
    assert val.splitlines()[0] == "| method | validation Ā | validation A_B | runs |"
    assert "| **SPA** | 62.00 ± 2.58 | 50.50 ± 1.29 | 4 |" in val


def test_records_from_comparison_rows(script):
    row = ComparisonRow("spa", [1993, 1994], [60.0, 61.0], [50.0, 51.0], [9.0, 8.0], [[1.0], [1.0]], 1.0,
                        ["a", "b"], val_average=[59.0, 58.0], val_last=[49.0, 48.0], val_forgetting=[1.0, 2.0])
    records = script.records_from_rows(7, [row])
    assert records[1] == {"variant": "spa", "world": 7, "seed": 1994, "average": 61.0, "last": 51.0,
                          "forgetting": 8.0, "val_average": 58.0, "val_last": 48.0}
    no_val = ComparisonRow("simplecil", [1993], [1.0], [2.0], [None], [[1.0]], 1.0, ["a"])
    assert script.records_from_rows(0, [no_val])[0]["val_average"] is None


def test_default_variants_are_the_core_rows_without_spa_ablations(script):
    variants = script.default_result_variants()
    assert variants[:6] == ["zeroshot", "simplecil", "clsonly", "clsonly_desc", "spa", "ranpac"]
    assert not any(v.startswith("spa_") for v in variants)


def test_main_writes_the_text_and_the_readme_block(script, tmp_path, monkeypatch):
    records = _records()
    calls = []

    def fake_run_worlds(worlds, seeds, variants, output):
        calls.append((list(worlds), list(seeds)))
        return [dict(r, world=w) for r in records for w in worlds if r["world"] == 3], {}

    monkeypatch.setattr(script, "run_worlds", fake_run_worlds)
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{script.START}\nold table\n{script.END}\noutro\n")
    table = tmp_path / "results.md"
    script.main(["--tuning-worlds", "0,1", "--held-out", "3,4,5", "--seeds", "1,2", "--table-file", str(table),
                 "--readme", str(readme), "--output", str(tmp_path / "out")])
    assert calls == [([0, 1], [1, 2]), ([3, 4, 5], [1, 2])]  # held-out worlds run with every seed too
    text = table.read_text()
    assert "**Tuning worlds 0,1**" in text and "**Held-out worlds 3,4,5**" in text
    assert "validation accuracy (what settings are chosen on)" in text and "95%" in text
    body = readme.read_text()
    assert "old table" not in body and body.startswith("intro\n") and body.endswith("outro\n") and text in body
