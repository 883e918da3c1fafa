"""Run protocol presets and collect one table beside the peers' published figures.

    python scripts/run_protocol.py --data-root /data [--presets cifar100_b0_inc10,cub200_b0_inc20] \
        [--methods spa,simplecil] [--output runs/protocol] [--set backbone.batch_size=512]

Each (preset, method) is one `spa-cil train` run through the same harness (resumable: rerunning the
command skips finished runs). Writes ``protocol.md`` / ``protocol.csv``: our Ā / A_B next to the
published figures stored in ``src/spacil/data/published_results.json`` (with their source).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from importlib import resources
from pathlib import Path

from spacil.config import list_presets, load_config
from spacil.training.harness import run_experiment


def published() -> list[dict]:
    return json.loads((resources.files("spacil.data") / "published_results.json").read_text())["results"]


def protocol_presets() -> list[str]:
    return [p for p in list_presets() if "_b" in p and "_inc" in p]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, required=True, help="Folder with one sub-folder per dataset.")
    parser.add_argument("--presets", default=",".join(protocol_presets()))
    parser.add_argument("--methods", default="spa,simplecil")
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
            rows.append({"dataset": dataset, "split": "b" + split, "method": f"{method} (ours)",
                         "average": round(summary["average_accuracy"], 2), "last": round(summary["last_accuracy"], 2)})
    wanted = {(r["dataset"], r["split"]) for r in rows}
    rows += [r for r in published() if (r["dataset"], r["split"]) in wanted]
    rows.sort(key=lambda r: (r["dataset"], r["split"], "(ours)" not in r["method"], r["method"]))
    args.output.mkdir(parents=True, exist_ok=True)
    with open(args.output / "protocol.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["dataset", "split", "method", "average", "last"])
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| dataset | split | method | Ā | A_B |", "|---|---|---|---|---|"]
    lines += [f"| {r['dataset']} | {r['split']} | {r['method']} | {r['average'] if r['average'] is not None else '-'} | "
              f"{r['last'] if r['last'] is not None else '-'} |" for r in rows]
    (args.output / "protocol.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
