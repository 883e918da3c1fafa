"""Run several methods / ablations on the same cached features and collect one comparison table.

Each variant is a named list of ``--set`` overrides registered with its method
(:mod:`spacil.methods.registry`) and applied to one base config, so every row of the table
comes from the same harness, the same features and the same scenario. With several seeds, each variant
runs once per seed and the table reports mean +- sample std. With a validation split
(``data.validation_fraction > 0``) every row also carries its validation accuracies (``val_*``), the
numbers a tuning script should choose settings on.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..config import Config, apply_overrides, build_config, config_to_yaml
from ..io import write_json_atomic, write_text_atomic
from ..methods import all_variants
from ..runs.plots import plot_stage_curves
from ..errors import UsageError
from ..evaluation.statistics import mean_std
from ..suggest import did_you_mean
from ..runs.run_folder import run_key
from .harness import PreparedData, prepare_data, run_experiment

logger = logging.getLogger(__name__)

@dataclass
class ComparisonRow:
    variant: str
    seeds: list[int]
    average: list[float]
    last: list[float]
    forgetting: list[float | None]
    stage_accuracies: list[list[float]]
    seconds: float
    folders: list[str]
    # on the validation split, one per seed (empty without a validation split)
    val_average: list[float | None] = field(default_factory=list)
    val_last: list[float | None] = field(default_factory=list)
    val_forgetting: list[float | None] = field(default_factory=list)

    def stat(self, values: Sequence[float | None]) -> tuple[float, float]:
        """Mean and sample std (ddof=1) of the values given; NaN std with fewer than two."""
        spread = mean_std(values)
        return spread.mean, (float("nan") if spread.std is None else spread.std)

    @property
    def has_validation(self) -> bool:
        return any(v is not None for v in self.val_average)


def variant_config(base: dict, variant: str, seed: int, output_dir: Path,
                   features: Mapping[str, str] | None = None) -> Config:
    """The config of one row of the table: the registered variant's overrides on the base config.

    ``features`` (split -> feature-cache key) enter the run folder's name, so the same table on other data
    (another parts world, images added or removed) gets new folders instead of refusing the old ones."""
    known = all_variants()
    if variant not in known:
        raise UsageError(f"unknown variant {variant!r}{did_you_mean(variant, known)}; `spa-cil info` lists them: "
                         f"{', '.join(known)}")
    overrides = [*known[variant].overrides, f"train.seed={seed}", f"run.output_dir={output_dir}"]
    config = build_config(apply_overrides(base, overrides))
    # named by variant, seed and run key: rerunning resumes, changing any setting or the data starts a new folder
    config.run.name = f"{variant}-seed{seed}-{run_key(config, features)[:8]}"
    return config


def prepare_variants(base: Config, variants: Sequence[str], progress: bool = True) -> PreparedData:
    """Features, scenario and class texts once for all ``variants``: each method's prepare hook runs once."""
    if not variants:
        raise UsageError("no variants to compare")
    raw = base.model_dump(mode="json")
    first_of_method: dict[str, Config] = {}
    for variant in variants:
        cfg = variant_config(raw, variant, base.train.seed, Path(base.run.output_dir))
        if cfg.backbone != base.backbone:  # one extraction serves every variant
            raise UsageError(f"variant {variant!r} changes the backbone section; variants share one set of "
                             "features: set backbone.* for the whole comparison (--set) instead")
        first_of_method.setdefault(cfg.method.name, cfg)
    configs = list(first_of_method.values())
    return prepare_data(configs[0], progress=progress, methods=configs)


def run_comparison(base: Config, variants: Sequence[str], seeds: Sequence[int], output_dir: Path,
                   data: PreparedData | None = None, progress: bool = True) -> list[ComparisonRow]:
    """Run every variant for every seed on one set of prepared features; write table files into ``output_dir``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    raw = base.model_dump(mode="json")
    write_text_atomic(output_dir / "base_config.yaml", config_to_yaml(base))
    data = data or prepare_variants(base, variants, progress=progress)
    rows = []
    for variant in variants:
        results, folders = [], []
        start = time.perf_counter()
        for seed in seeds:
            cfg = variant_config(raw, variant, seed, output_dir / "runs", data.feature_keys)
            run = run_experiment(cfg, data=data, progress=progress)
            results.append(run.summary)
            folders.append(str(run.folder))
        rows.append(ComparisonRow(variant, list(seeds), [r["average_accuracy"] for r in results],
                                  [r["last_accuracy"] for r in results], [r["forgetting"] for r in results],
                                  [r["stage_accuracies"] for r in results], time.perf_counter() - start, folders,
                                  val_average=[r.get("val_average_accuracy") for r in results],
                                  val_last=[r.get("val_last_accuracy") for r in results],
                                  val_forgetting=[r.get("val_forgetting") for r in results]))
        logger.info("%s: average %.2f last %.2f", variant, *[rows[-1].stat(rows[-1].average)[0],
                                                                rows[-1].stat(rows[-1].last)[0]])
    write_comparison(rows, output_dir)
    return rows


def _fmt(mean: float, std: float, n: int) -> str:
    if np.isnan(mean):
        return "-"
    return f"{mean:.2f} ± {std:.2f}" if n > 1 else f"{mean:.2f}"


def comparison_markdown(rows: Sequence[ComparisonRow]) -> str:
    """The table (test accuracies; with a validation split also validation Ā and A_B, last columns)."""
    n = len(rows[0].seeds) if rows else 0
    validation = any(r.has_validation for r in rows)
    head = "| method | average acc. (Ā) | last acc. (A_B) | forgetting | seconds | seeds |"
    rule = "|---|---|---|---|---|---|"
    if validation:
        head, rule = head + " validation Ā | validation A_B |", rule + "---|---|"
    lines = [head, rule]
    for r in rows:
        line = (f"| {r.variant} | {_fmt(*r.stat(r.average), n)} | {_fmt(*r.stat(r.last), n)} | "
                f"{_fmt(*r.stat(r.forgetting), n)} | {r.seconds:.1f} | {','.join(map(str, r.seeds))} |")
        if validation:
            line += f" {_fmt(*r.stat(r.val_average), n)} | {_fmt(*r.stat(r.val_last), n)} |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def _csv_cells(row: ComparisonRow, values: Sequence[float | None]) -> list[str]:
    """Mean and sample std as CSV cells; an undefined std (one seed) is left empty."""
    return ["" if np.isnan(v) else f"{v:.4f}" for v in row.stat(values)]


def write_comparison(rows: Sequence[ComparisonRow], output_dir: Path) -> None:
    """``comparison.md``, ``comparison.csv``, ``comparison.json`` and a stage-accuracy plot."""
    write_text_atomic(output_dir / "comparison.md", comparison_markdown(rows))
    buf = io.StringIO()
    writer = csv.writer(buf)
    validation = any(r.has_validation for r in rows)
    writer.writerow(["method", "seeds", "average_mean", "average_std", "last_mean", "last_std",
                     "forgetting_mean", "forgetting_std", "seconds"]
                    + (["val_average_mean", "val_average_std", "val_last_mean", "val_last_std",
                        "val_forgetting_mean", "val_forgetting_std"] if validation else []))
    for r in rows:
        writer.writerow([r.variant, " ".join(map(str, r.seeds)), *_csv_cells(r, r.average), *_csv_cells(r, r.last),
                         *_csv_cells(r, r.forgetting), f"{r.seconds:.2f}"]
                        + ([*_csv_cells(r, r.val_average), *_csv_cells(r, r.val_last),
                            *_csv_cells(r, r.val_forgetting)] if validation else []))
    write_text_atomic(output_dir / "comparison.csv", buf.getvalue())
    write_json_atomic(output_dir / "comparison.json", [r.__dict__ for r in rows])
    curves = {r.variant: np.mean(np.array(r.stage_accuracies), axis=0).tolist() for r in rows}
    try:
        plot_stage_curves(output_dir / "accuracy_per_stage.png", curves, "Accuracy on all seen classes (mean over seeds)")
    except Exception as exc:  # noqa: BLE001 - never lose the table for a plot
        logger.warning("comparison plot not written: %s", exc)
