"""The README's parts-world results: tuning and held-out worlds x training seeds, chosen on validation only.

    python scripts/partsworld_results.py            # writes docs/partsworld_results.md and the README block

Which worlds serve what (printed with the tables):
- tuning worlds (``--tuning-worlds``, default 0,1): the worlds any setting is chosen on, and only on their
  *validation* accuracy (training images held out by ``data.validation_fraction`` of the demo preset);
- held-out worlds (``--held-out``, default 3,4,5): run with the final settings and reported only.
Every world runs with every training seed. Tables give mean ± sample std (ddof=1) over the runs, and SPA
minus the best other row (best by mean over the same runs; SPA's own ablations ``spa_*`` excluded) as the
mean of per-(world, seed) differences with a 95% Student-t interval. Every number comes from
`spa-cil demo`'s own code path (``run_demo``), one output folder per world under ``--output``.
The table functions take plain run records (dicts), so they are tested without training.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Iterable, Sequence

from spacil.evaluation.statistics import mean_std, paired_difference
from spacil.methods import all_variants, default_variants
from spacil.partsworld.demo import DemoSettings, run_demo

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- partsworld-results:start -->", "<!-- partsworld-results:end -->"
LABELS = {"simplecil": "SimpleCIL", "clsonly": "CLS-only (SPA without patch branch)", "spa": "**SPA**",
          "ranpac": "RanPAC", "zeroshot": "zero-shot CLIP",
          "clsonly_desc": "descriptions without patches (`clsonly_desc`)", "proof": "PROOF (exemplars)",
          "rapf": "RAPF", "engine": "ENGINE", "clg_cbm": "CLG-CBM"}
CORE_VARIANTS = ("zeroshot", "simplecil", "clsonly", "clsonly_desc", "spa", "ranpac")
REFERENCE = "spa"
METRIC_NAMES = {"average": "Ā", "last": "A_B", "forgetting": "forgetting"}


def default_result_variants() -> list[str]:
    """The core rows, then every other default row that is not one of SPA's ablations (``spa_*``)."""
    known = all_variants()
    core = [v for v in CORE_VARIANTS if v in known]
    return core + [v for v in default_variants() if v not in core and not v.startswith(f"{REFERENCE}_")]


def records_from_rows(world: int, rows: Iterable) -> list[dict]:
    """One record per (variant, seed) of a world's comparison rows (:class:`ComparisonRow`)."""
    records = []
    for row in rows:
        for i, seed in enumerate(row.seeds):
            val_average = row.val_average[i] if i < len(row.val_average) else None
            val_last = row.val_last[i] if i < len(row.val_last) else None
            records.append({"variant": row.variant, "world": world, "seed": seed, "average": row.average[i],
                            "last": row.last[i], "forgetting": row.forgetting[i], "val_average": val_average,
                            "val_last": val_last})
    return records


def _variants(records: Sequence[dict]) -> list[str]:
    return list(dict.fromkeys(r["variant"] for r in records))


def _values(records: Sequence[dict], variant: str, key: str) -> list:
    return [r[key] for r in records if r["variant"] == variant]


def _label(variant: str) -> str:
    return LABELS.get(variant, variant)


def spread_table(records: Sequence[dict], keys: Sequence[str] = ("average", "last", "forgetting"),
                 prefix: str = "") -> str:
    """Per variant, mean ± sample std over its runs of each metric in ``keys`` (``prefix`` names the split)."""
    head = " | ".join(f"{prefix}{METRIC_NAMES[k.removeprefix('val_')]}" for k in keys)
    lines = [f"| method | {head} | runs |", "|---" * (len(keys) + 2) + "|"]
    for variant in _variants(records):
        cells = [mean_std(_values(records, variant, k)).format() for k in keys]
        lines.append(f"| {_label(variant)} | {' | '.join(cells)} | {len(_values(records, variant, keys[0]))} |")
    return "\n".join(lines) + "\n"


def best_other(records: Sequence[dict], key: str, reference: str = REFERENCE) -> str | None:
    """The variant other than ``reference`` (and its ablations ``reference_*``) with the highest mean ``key``."""
    others = [v for v in _variants(records) if v != reference and not v.startswith(f"{reference}_")]
    scored = [(mean_std(_values(records, v, key)).mean, v) for v in others if mean_std(_values(records, v, key)).n]
    return max(scored, key=lambda mv: mv[0])[1] if scored else None


def _by_pair(records: Sequence[dict], variant: str, key: str) -> dict:
    return {(r["world"], r["seed"]): r[key] for r in records if r["variant"] == variant and r[key] is not None}


def paired_table(records: Sequence[dict], keys: Sequence[str] = ("average", "last"),
                 reference: str = REFERENCE) -> str:
    """SPA minus the best other row per metric: mean paired difference over (world, seed), 95% t-interval."""
    lines = [f"| metric | best other row | {_label(reference)} | best other | {_label(reference)} − best other, "
             "mean [95% CI] | pairs |", "|---|---|---|---|---|---|"]
    for key in keys:
        other = best_other(records, key, reference)
        if other is None or reference not in _variants(records):
            continue
        diff = paired_difference(_by_pair(records, reference, key), _by_pair(records, other, key))
        lines.append(f"| {METRIC_NAMES[key]} | {_label(other)} | {mean_std(_values(records, reference, key)).format()}"
                     f" | {mean_std(_values(records, other, key)).format()} | {diff.format()} | {diff.n} |")
    return "\n".join(lines) + "\n"


def mechanism_line(mechanism: dict[str, list[dict]]) -> str:
    """SPA's patch-mechanism numbers averaged over worlds ('' when SPA did not run)."""
    runs = mechanism.get(REFERENCE)
    if not runs:
        return ""
    m = {k: sum(x[k] for x in runs) / len(runs) for k in runs[0]}
    return (f"SPA's patch mechanism (mean over worlds, first seed): selection precision {m['selection_precision']:.3f}"
            f" (random selection {m['random_precision']:.3f}), phrase assignment {m['phrase_assignment']:.3f}, "
            f"patch-branch accuracy {m['patch_accuracy']:.2f}.\n")


def _csv(values: Sequence[int]) -> str:
    return ",".join(map(str, values))


def results_text(tuning: Sequence[dict], held_out: Sequence[dict], tuning_worlds: Sequence[int],
                 held_out_worlds: Sequence[int], seeds: Sequence[int], tuning_mechanism: dict | None = None,
                 held_out_mechanism: dict | None = None) -> str:
    """The whole markdown block: which worlds served what, held-out tables, paired differences, tuning tables."""
    parts = [f"Default 50-class parts world (world = data seed), training seeds {_csv(seeds)}, every world with "
             f"every seed. **Tuning worlds {_csv(tuning_worlds) or 'none'}**: settings are chosen on their "
             "validation accuracy (training images held out by the demo preset's `data.validation_fraction`), "
             f"never on test. **Held-out worlds {_csv(held_out_worlds) or 'none'}**: run with the final settings, "
             "reported only. Mean ± sample std (ddof=1) over runs; forgetting as PyCIL computes it.\n"]
    if held_out:
        parts.append(f"Held-out worlds {_csv(held_out_worlds)}, test accuracy:\n\n{spread_table(held_out)}")
        parts.append(f"{_label(REFERENCE)} minus the best other row on the held-out worlds (best by mean over the "
                     f"same runs, SPA's ablations excluded), paired by (world, seed), mean difference and 95% "
                     f"t-interval:\n\n{paired_table(held_out)}")
        if held_out_mechanism:
            parts.append(mechanism_line(held_out_mechanism))
    if tuning:
        parts.append(f"Tuning worlds {_csv(tuning_worlds)}, validation accuracy (what settings are chosen on):\n\n"
                     f"{spread_table(tuning, ('val_average', 'val_last'), prefix='validation ')}")
        parts.append(f"Tuning worlds {_csv(tuning_worlds)}, test accuracy (shown, never used to choose):\n\n"
                     f"{spread_table(tuning)}")
        if tuning_mechanism:
            parts.append(mechanism_line(tuning_mechanism))
    return "\n".join(parts)


def replace_readme_block(body: str, text: str) -> str:
    """``body`` with the text between the results markers replaced (unchanged when the markers are missing)."""
    if START not in body or END not in body:
        return body
    return re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: f"{START}\n{text}{END}", body, flags=re.S)


def run_worlds(worlds: list[int], seeds: list[int], variants: list[str], output: Path) -> tuple[list[dict], dict]:
    """Run the demo on every world with every seed; run records and SPA mechanism numbers per world."""
    records: list[dict] = []
    mechanism: dict[str, list[dict]] = {}
    for world in worlds:
        out = output / f"world-{world}"
        _, rows = run_demo(DemoSettings(output=out, variants=variants, seeds=seeds, data_seed=world, ablations=False),
                           progress=False)
        records += records_from_rows(world, rows)
        if (out / "mechanism.json").is_file():
            for variant, m in json.loads((out / "mechanism.json").read_text()).items():
                mechanism.setdefault(variant, []).append(m)
    return records, mechanism


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("spacil-results"))
    parser.add_argument("--tuning-worlds", "--worlds", dest="tuning_worlds", default="0,1",
                        help="worlds whose validation accuracy settings are chosen on")
    parser.add_argument("--held-out", default="3,4,5", help="worlds reported only (\"\" for none)")
    parser.add_argument("--seeds", default="1993,1994")
    parser.add_argument("--variants", default=",".join(default_result_variants()))
    parser.add_argument("--table-file", type=Path, default=ROOT / "docs" / "partsworld_results.md")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--no-readme", action="store_true", help="do not replace the README block")
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    tuning_worlds, held_worlds, seeds = _ints(args.tuning_worlds), _ints(args.held_out), _ints(args.seeds)
    tuning, tuning_mech = run_worlds(tuning_worlds, seeds, variants, args.output)
    held, held_mech = run_worlds(held_worlds, seeds, variants, args.output)
    text = results_text(tuning, held, tuning_worlds, held_worlds, seeds, tuning_mech, held_mech)
    text += "\nWritten by `python scripts/partsworld_results.py` (defaults).\n" if not args.no_readme else ""
    args.table_file.parent.mkdir(parents=True, exist_ok=True)
    args.table_file.write_text(text)
    if not args.no_readme and args.readme.is_file():
        args.readme.write_text(replace_readme_block(args.readme.read_text(), text))
    print(text)


if __name__ == "__main__":
    main()
