"""``spa-cil demo``: the built-in benchmark, end to end on a CPU in minutes.

1. render parts world (classes that share a global look and differ in local parts, each image with its
   own occlusions, faded or cut-off parts) into an image folder; reused when already there;
2. encode it once with the CLIP-like tiny backbone pretrained on parts world (shipped with the package);
3. describe every class with the simulated multimodal describer, through `spa-cil describe`'s path
   (guidance images from the frozen features, validation, file format, provenance);
4. run every registered method's default variants on the same features (:mod:`spacil.training.compare`);
5. with ``ablations``: SPA on descriptions from random guidance images, and the description-reading rows
   again at other describer error rates (SPA's margin over the best other row per error rate);
6. write a report folder: table, accuracy curves, accuracy-matrix heatmaps, OT alignment pictures,
   the patch mechanism measured against the renderer's part masks, and the description ablations.

This module sits on top of the library: it uses its public API, and nothing in the library imports it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from typing import Literal

from pydantic import Field

from ..config import Config, load_config
from ..methods import default_variants
from ..schema import StrictModel
from ..training.compare import ComparisonRow, prepare_variants, run_comparison
from . import GENERATOR_VERSION, make_class_specs, write_image_folder
from .dataset import GROUND_TRUTH_DESCRIPTIONS
from .describer import DescriberSettings, describe_world

logger = logging.getLogger(__name__)


class DemoSettings(StrictModel):
    """Everything the demo decides besides the run config (which is the ``preset`` plus ``overrides``)."""

    output: Path = Field(Path("spacil-demo"), description="Report folder; data, cache and runs go inside.")
    preset: str = "partsworld_demo"
    overrides: list[str] = Field(default_factory=list, description="--set overrides of the run config.")
    variants: list[str] = Field(default_factory=default_variants,
                                description="Comparison rows; default: every method's default variants.")
    seeds: list[int] = Field(default_factory=lambda: [1993], description="Training seeds (>1: mean ± std).")
    n_classes: int = Field(50, ge=2, description="Parts-world classes.")
    n_train: int = Field(60, ge=1, description="Training images per class.")
    n_test: int = Field(20, ge=1, description="Test images per class.")
    image_size: int = Field(64, ge=16, description="Rendered image side in pixels.")
    data_seed: int = Field(0, description="World seed: the class design and the rendering (`--world-seed`).")
    descriptions: Literal["simulated", "ground_truth"] = Field(
        "simulated", description="'simulated': the simulated describer shown guidance images (default); "
        "'ground_truth': every class's exact vocabulary phrases (an upper bound no real describer reaches).")
    describer: DescriberSettings = Field(default_factory=DescriberSettings)
    ablations: bool = Field(True, description="Also run the description ablations (random guidance images; "
                            "describer error rates x error_factors).")
    error_factors: list[float] = Field(default_factory=lambda: [0.0, 2.0],
                                       description="Describer error-rate multipliers of the sweep (1 = the main table).")
    description_rows: list[str] = Field(
        default_factory=lambda: ["spa", "clsonly_desc", "engine", "clg_cbm"],
        description="Rows that read the description file: rerun in the ablations (the other rows do not read it).")


def ensure_partsworld(root: Path, n_classes: int, n_train: int, n_test: int, seed: int, size: int) -> Path:
    """Render the parts-world image folder unless the same one is already on disk."""
    wanted = {"generator_version": GENERATOR_VERSION, "n_classes": n_classes, "n_train": n_train,
              "n_test": n_test, "seed": seed, "size": size}
    stamp = root / "demo_request.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        logger.info("reusing parts world in %s", root)
        return root
    logger.info("rendering parts world: %d classes x (%d train + %d test) images", n_classes, n_train, n_test)
    write_image_folder(root, make_class_specs(n_classes, seed), n_train=n_train, n_test=n_test, seed=seed, size=size)
    stamp.write_text(json.dumps(wanted) + "\n")
    return root


def world_folder(settings: DemoSettings) -> Path:
    """Where the demo renders its world: one folder per world seed, so worlds never mix."""
    return settings.output / "data" / f"world-{settings.data_seed}"


def demo_config(settings: DemoSettings, descriptions: Path | None = None) -> Config:
    """The run config of the demo; ``descriptions``: the description file every row reads."""
    root = world_folder(settings)
    chosen = ["descriptions.source=file", f"descriptions.path={descriptions}"] if descriptions else []
    return load_config(settings.preset, [f"data.root={root}", f"cache.root={settings.output / 'cache'}",
                                         f"run.output_dir={settings.output / 'runs'}", *chosen, *settings.overrides])


def demo_descriptions(settings: DemoSettings, describer: DescriberSettings, progress: bool = True) -> Path:
    """The description file for ``describer`` (or the ground truth): described once per world and setting."""
    if settings.descriptions == "ground_truth":
        return world_folder(settings) / GROUND_TRUTH_DESCRIPTIONS
    return describe_world(demo_config(settings), world_folder(settings), describer, progress)


def run_demo(settings: DemoSettings, progress: bool = True) -> tuple[Path, list[ComparisonRow]]:
    """Run the whole demo and return the report path and the table rows."""
    from .report import write_demo_report

    settings.output.mkdir(parents=True, exist_ok=True)
    ensure_partsworld(world_folder(settings), settings.n_classes, settings.n_train, settings.n_test,
                      settings.data_seed, size=settings.image_size)
    base = demo_config(settings, demo_descriptions(settings, settings.describer, progress))
    data = prepare_variants(base, settings.variants, progress=progress)
    rows = run_comparison(base, settings.variants, settings.seeds, settings.output, data=data, progress=progress)
    ablations = None
    if settings.ablations and settings.descriptions == "simulated":
        ablations = description_ablations(settings, rows, progress)
    report = write_demo_report(settings.output, base, data, rows, settings.image_size, settings.data_seed,
                               ablations=ablations)
    return report, rows


def _rows_with(settings: DemoSettings, describer: DescriberSettings, variants: list[str], tag: str,
               progress: bool) -> list[ComparisonRow]:
    config = demo_config(settings, demo_descriptions(settings, describer, progress))
    data = prepare_variants(config, variants, progress=progress)
    return run_comparison(config, variants, settings.seeds, settings.output / "ablations" / tag, data=data,
                          progress=progress)


def best_other(rows: list[ComparisonRow], metric: str, exclude: str = "spa") -> tuple[str, float]:
    """The best row other than ``exclude`` and SPA's own ablations (``spa_*``) by mean ``metric``."""
    others = [(r.variant, r.stat(getattr(r, metric))[0]) for r in rows
              if r.variant != exclude and not r.variant.startswith("spa_")]
    return max(others, key=lambda vm: vm[1]) if others else ("-", float("nan"))


def description_ablations(settings: DemoSettings, rows: list[ComparisonRow], progress: bool = True) -> dict | None:
    """SPA on randomly chosen guidance images, and SPA's margin over the best other row per describer error
    rate (rows that read descriptions rerun; the others are the main table's)."""
    reading = [v for v in settings.description_rows if v in settings.variants]
    out: dict = {"guidance": {}, "error_rates": []}
    if not reading:  # no row of this table reads the descriptions: nothing to ablate
        return None
    if "spa" in reading:
        random_rows = _rows_with(settings, settings.describer.model_copy(update={"guidance": "random"}), ["spa"],
                                 "random-guidance", progress)
        main_spa = next(r for r in rows if r.variant == "spa")
        out["guidance"] = {"representative+diverse": {"average": main_spa.average, "last": main_spa.last},
                           "random": {"average": random_rows[0].average, "last": random_rows[0].last}}
    fixed = [r for r in rows if r.variant not in reading]
    for factor in sorted({1.0, *settings.error_factors}):
        if factor == 1.0:
            table = rows
        else:
            table = fixed + _rows_with(settings, settings.describer.scaled(factor), reading, f"errors-x{factor:g}",
                                       progress)
        entry: dict = {"factor": factor, "describer": settings.describer.scaled(factor).model_name}
        spa = next((r for r in table if r.variant == "spa"), None)
        for metric in ("average", "last"):
            name, value = best_other(table, metric)
            entry[metric] = {"spa": spa.stat(getattr(spa, metric))[0] if spa else float("nan"),
                             "best_other": name, "best_other_value": value}
            entry[metric]["margin"] = entry[metric]["spa"] - value
        out["error_rates"].append(entry)
    return out
