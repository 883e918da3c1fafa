"""Run protocol presets and collect one table beside the peers' published figures.

    python scripts/run_protocol.py --data-root /data [--presets cifar100_b0_inc10,cub200_b0_inc20] \
        [--methods spa,simplecil] [--output runs/protocol] [--set backbone.batch_size=512]

Each (preset, method) is one `spa-cil train` run through the same harness (resumable: rerunning the
command skips finished runs). Writes ``protocol.md`` / ``protocol.csv``: our Ā / A_B of each method on
the same line as its published figures, stored in ``src/spacil/data/published_results.json`` (with their
source; ``spacil.evaluation.published``).
"""

from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path

from spacil.config import list_presets, load_config
from spacil.evaluation.published import beside_published, markdown_table
from spacil.training.harness import run_experiment


def protocol_presets() -> list[str]:
    return [p for p in list_presets() if "_b" in p and "_inc" in p]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, required=True, help="Folder with one sub-folder per dataset.")
    parser.add_argument("--presets", default=",".join(protocol_presets()))
    parser.add_argument("--methods", default="spa,simplecil,ranpac,proof,rapf,engine,clg_cbm")
    parser.add_argument("--output", type=Path, default=Path("runs/protocol"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    rows = []
    for preset in [p.strip() for p in args.presets.split(",") if p.strip()]:
        for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
            cfg = load_config(preset)
            cfg = load_config(preset, [f"data.root={args.data_root / cfg.data.dataset}", f"method.name={method}",
                                       f"run.output_dir={args.output}", *args.overrides])
            summary = run_experiment(cfg).summary
            dataset, split = preset.split("_b", 1)
            rows.append({"dataset": dataset, "split": "b" + split, "method": method,
                         "average": round(summary["average_accuracy"], 2), "last": round(summary["last_accuracy"], 2)})
    table = beside_published(rows)
    args.output.mkdir(parents=True, exist_ok=True)
    with open(args.output / "protocol.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    (args.output / "protocol.md").write_text(markdown_table(table))
    print(markdown_table(table))


if __name__ == "__main__":
    main()
