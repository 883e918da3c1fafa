"""``spa-cil results DIR``: one table over every finished run folder below DIR, beside published figures.

Why: a matrix (or any set of ``train`` / ``compare`` runs) leaves one folder per (split, method, seed); a
paper table wants method x split with mean +- sample std over seeds and the peers' published numbers next
to ours. Everything is read back from the run folders, so the table can be rebuilt at any time.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from ..errors import MissingFileError
from ..evaluation.published import published_results
from ..io import write_text_atomic

logger = logging.getLogger(__name__)


@dataclass
class RunRecord:
    dataset: str
    split: str  # b<base>_inc<increment>, as the presets and the published table name it
    method: str  # the matrix / compare variant when recorded, else method.name
    seed: int
    average: float
    last: float
    forgetting: float | None
    folder: Path


@dataclass
class ResultRow:
    dataset: str
    split: str
    method: str
    average: list[float] = field(default_factory=list)
    last: list[float] = field(default_factory=list)
    forgetting: list[float] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    published: bool = False
    source: str = "ours"

    @property
    def n(self) -> int:
        return len(self.average) if not self.published else 0


def split_name(init_cls: int, increment: int) -> str:
    """``b0_inc10`` when the first task is as large as the others (the B0 splits), else ``b50_inc10``."""
    return f"b{0 if init_cls == increment else init_cls}_inc{increment}"


def read_run(folder: Path) -> RunRecord | None:
    """A finished run folder as one record (None when it is not finished or not readable)."""
    try:
        summary = json.loads((folder / "summary.json").read_text())
        config = yaml.safe_load((folder / "config.yaml").read_text())
    except (OSError, ValueError, yaml.YAMLError) as exc:
        logger.warning("%s: not read (%s)", folder, exc.__class__.__name__)
        return None
    cell = folder / "cell.json"
    method = json.loads(cell.read_text())["variant"] if cell.is_file() else _variant_from_name(folder.name)
    method = method or config["method"]["name"]
    data = config["data"]
    return RunRecord(data["dataset"], split_name(int(data["init_cls"]), int(data["increment"])), method,
                     int(config["train"]["seed"]), float(summary["average_accuracy"]), float(summary["last_accuracy"]),
                     summary.get("forgetting"), folder)


def _variant_from_name(name: str) -> str | None:
    """``spa_no_ot-seed1993-ab12cd34`` (compare's folder names) -> ``spa_no_ot``."""
    head, sep, _ = name.rpartition("-seed")
    return head if sep else None


def collect_runs(root: Path) -> list[RunRecord]:
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(f"{root} is not a folder; give the folder that holds the run folders (e.g. runs/matrix)")
    records = [r for summary in sorted(root.rglob("summary.json")) if (r := read_run(summary.parent)) is not None]
    return records


def result_rows(records: list[RunRecord], published: bool = True) -> list[ResultRow]:
    """Our runs grouped by (dataset, split, method), then the published figures of the same splits."""
    groups: dict[tuple[str, str, str], ResultRow] = {}
    for r in records:
        row = groups.setdefault((r.dataset, r.split, r.method), ResultRow(r.dataset, r.split, r.method))
        if r.seed in row.seeds:
            logger.warning("%s/%s/%s: seed %d appears in more than one run folder (%s); both are counted",
                           r.dataset, r.split, r.method, r.seed, r.folder)
        row.seeds.append(r.seed)
        row.average.append(r.average)
        row.last.append(r.last)
        if r.forgetting is not None:
            row.forgetting.append(r.forgetting)
    rows = sorted(groups.values(), key=lambda x: (x.dataset, x.split, x.method))
    if published:
        ours = {(r.dataset, r.split) for r in rows}
        for p in published_results():
            if (p["dataset"], p["split"]) in ours:
                rows.append(ResultRow(p["dataset"], p["split"], p["method"],
                                      [p["average"]] if p["average"] is not None else [],
                                      [p["last"]] if p["last"] is not None else [], published=True,
                                      source="published"))
        rows.sort(key=lambda x: (x.dataset, x.split, x.published, x.method))
    return rows


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; nan for one value)."""
    if not values:
        return math.nan, math.nan
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else math.nan


def _fmt(values: list[float]) -> str:
    mean, std = mean_std(values)
    if math.isnan(mean):
        return "-"
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def results_markdown(rows: list[ResultRow]) -> str:
    lines = ["| dataset | split | method | Ā | A_B | forgetting | runs | source |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.dataset} | {r.split} | {r.method} | {_fmt(r.average)} | {_fmt(r.last)} | "
                     f"{_fmt(r.forgetting)} | {r.n if not r.published else '-'} | {r.source} |")
    return "\n".join(lines) + "\n"


def results_csv(rows: list[ResultRow]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["dataset", "split", "method", "source", "runs", "seeds", "average_mean", "average_std",
                     "last_mean", "last_std", "forgetting_mean", "forgetting_std"])
    for r in rows:
        stats = [v for values in (r.average, r.last, r.forgetting) for v in mean_std(values)]
        writer.writerow([r.dataset, r.split, r.method, r.source, r.n, " ".join(map(str, r.seeds)),
                         *["" if math.isnan(v) else f"{v:.4f}" for v in stats]])
    return buf.getvalue()


def write_results(root: Path, output: Path | None = None, published: bool = True) -> tuple[list[ResultRow], Path]:
    """Collect the runs below ``root`` and write ``results.md`` / ``results.csv`` into ``output`` (default root)."""
    rows = result_rows(collect_runs(root), published)
    output = Path(output or root)
    output.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output / "results.md", results_markdown(rows))
    write_text_atomic(output / "results.csv", results_csv(rows))
    return rows, output / "results.md"
