"""The README's parts-world results: several worlds x training seeds, mean ± std, plus held-out worlds.

    python scripts/partsworld_results.py            # writes docs/partsworld_results.md and the README block

Tuning worlds (the method's choices were made looking at worlds 0 and 1) and held-out worlds (never used
to choose a setting) are reported in separate tables. Every number comes from `spa-cil demo`'s
own code path (``run_demo``), one output folder per world under ``--output``.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

from spacil.partsworld.demo import DemoSettings, run_demo

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- partsworld-results:start -->", "<!-- partsworld-results:end -->"
LABELS = {"simplecil": "SimpleCIL", "clsonly": "CLS-only (SPA without patch branch)", "spa": "**SPA**",
          "ranpac": "RanPAC", "zeroshot": "zero-shot CLIP"}


def _table(results: dict[str, list[dict]], mechanism: dict[str, list[dict]]) -> str:
    lines = ["| method | Ā | A_B | forgetting | runs |", "|---|---|---|---|---|"]
    for variant, runs in results.items():
        cells = []
        for key in ("average", "last", "forgetting"):
            values = np.array([r[key] for r in runs], dtype=float)
            cells.append(f"{values.mean():.2f} ± {values.std(ddof=0):.2f}")
        lines.append(f"| {LABELS.get(variant, variant)} | {' | '.join(cells)} | {len(runs)} |")
    if mechanism.get("spa"):
        m = {k: np.mean([x[k] for x in mechanism["spa"]]) for k in mechanism["spa"][0]}
        lines += ["", f"SPA's patch mechanism (mean over worlds, first seed): selection precision "
                  f"{m['selection_precision']:.3f} (random selection {m['random_precision']:.3f}), phrase assignment "
                  f"{m['phrase_assignment']:.3f}, patch-branch accuracy {m['patch_accuracy']:.2f}."]
    return "\n".join(lines) + "\n"


def run_worlds(worlds: list[int], seeds: list[int], variants: list[str], output: Path) -> tuple[dict, dict]:
    results: dict[str, list[dict]] = {v: [] for v in variants}
    mechanism: dict[str, list[dict]] = {}
    for world in worlds:
        out = output / f"world-{world}"
        _, rows = run_demo(DemoSettings(output=out, variants=variants, seeds=seeds, data_seed=world), progress=False)
        for row in rows:
            for i, _seed in enumerate(row.seeds):
                results[row.variant].append({"average": row.average[i], "last": row.last[i],
                                             "forgetting": row.forgetting[i]})
        if (out / "mechanism.json").is_file():
            for variant, m in json.loads((out / "mechanism.json").read_text()).items():
                mechanism.setdefault(variant, []).append(m)
    return results, mechanism


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("spacil-results"))
    parser.add_argument("--worlds", default="0,1,2")
    parser.add_argument("--held-out", default="3,4,5")
    parser.add_argument("--seeds", default="1993,1994,1995")
    parser.add_argument("--variants", default="simplecil,clsonly,spa")
    parser.add_argument("--table-file", type=Path, default=ROOT / "docs" / "partsworld_results.md")
    parser.add_argument("--no-readme", action="store_true", help="do not replace the README block")
    args = parser.parse_args()
    ints = lambda s: [int(x) for x in s.split(",") if x.strip()]  # noqa: E731
    variants = [v.strip() for v in args.variants.split(",")]
    tuned, tuned_mech = run_worlds(ints(args.worlds), ints(args.seeds), variants, args.output)
    text = (f"Worlds {args.worlds} (default 50-class parts world, world = data seed; the method was tuned on worlds 0 "
            f"and 1) x training seeds {args.seeds}, mean ± std over the {len(ints(args.worlds)) * len(ints(args.seeds))}"
            f" runs:\n\n{_table(tuned, tuned_mech)}\n")
    if ints(args.held_out):
        held, held_mech = run_worlds(ints(args.held_out), ints(args.seeds)[:1], variants, args.output)
        text += (f"Held-out worlds {args.held_out} (never used to choose any setting; seed {ints(args.seeds)[0]}):\n\n"
                 f"{_table(held, held_mech)}\n")
    text += "Written by `python scripts/partsworld_results.py` (defaults).\n" if not args.no_readme else ""
    args.table_file.parent.mkdir(parents=True, exist_ok=True)
    args.table_file.write_text(text)
    readme = ROOT / "README.md"
    body = readme.read_text()
    if not args.no_readme and START in body and END in body:
        body = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: f"{START}\n{text}{END}", body, flags=re.S)
        readme.write_text(body)
    print(text)


if __name__ == "__main__":
    main()
