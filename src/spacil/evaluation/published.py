"""Our protocol runs beside the peers' published figures (``spacil/data/published_results.json``).

Each published row names the method of this package that implements it (``ours``), so a run of ours
and the figure its authors report land on one line: ``dataset | split | method | ours Ā / A_B |
published Ā / A_B``. Published rows without a run of ours, and runs without a published figure, keep
their line with ``-`` on the missing side.
"""

from __future__ import annotations

import json
from importlib import resources


def published_results() -> list[dict]:
    """The published rows: dataset, split, method (as its paper names it), ours, average, last."""
    return json.loads((resources.files("spacil.data") / "published_results.json").read_text())["results"]


def beside_published(runs: list[dict], published: list[dict] | None = None) -> list[dict]:
    """Rows ``dataset, split, method, ours_average, ours_last, published_average, published_last``.

    ``runs`` hold ``dataset, split, method`` (our method name), ``average`` and ``last``; only published
    rows of the (dataset, split) pairs that were run are kept.
    """
    published = published_results() if published is None else published
    wanted = {(r["dataset"], r["split"]) for r in runs}
    rows: dict[tuple[str, str, str], dict] = {}
    for r in runs:
        rows[(r["dataset"], r["split"], r["method"])] = {
            "dataset": r["dataset"], "split": r["split"], "method": r["method"],
            "ours_average": r["average"], "ours_last": r["last"], "published_average": None, "published_last": None}
    for p in published:
        if (p["dataset"], p["split"]) not in wanted:
            continue
        key = (p["dataset"], p["split"], p["ours"] or p["method"])
        row = rows.setdefault(key, {"dataset": p["dataset"], "split": p["split"], "method": key[2],
                                    "ours_average": None, "ours_last": None})
        row["method"] = p["ours"] and f"{p['ours']} ({p['method']})" or p["method"]
        row["published_average"], row["published_last"] = p["average"], p["last"]
    return sorted(rows.values(), key=lambda r: (r["dataset"], r["split"], r["method"]))


def markdown_table(rows: list[dict]) -> str:
    def cell(v):
        return "-" if v is None else f"{v:.2f}"

    lines = ["| dataset | split | method | ours Ā | ours A_B | published Ā | published A_B |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['dataset']} | {r['split']} | {r['method']} | {cell(r['ours_average'])} | {cell(r['ours_last'])} | "
              f"{cell(r['published_average'])} | {cell(r['published_last'])} |" for r in rows]
    return "\n".join(lines) + "\n"
