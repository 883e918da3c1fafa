"""``spa-cil demo``: the built-in benchmark, end to end on a CPU in minutes.

1. render parts world (classes that share a global look and differ in local parts) into an image folder,
   with its ground-truth description file; reused when already there;
2. encode it once with the tiny CLIP pretrained on parts world (shipped with the package);
3. run every registered method's default variants on the same features (:mod:`spacil.training.compare`);
4. write a report folder: table, accuracy curves, accuracy-matrix heatmaps and OT alignment pictures.

This module sits on top of the library: it uses its public API, and nothing in the library imports it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pydantic import Field

from ..config import Config, load_config
from ..methods import default_variants
from ..schema import StrictModel
from ..training.compare import ComparisonRow, prepare_variants, run_comparison
from . import GENERATOR_VERSION, make_class_specs, write_image_folder

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


def demo_config(settings: DemoSettings) -> Config:
    root = world_folder(settings)
    return load_config(settings.preset, [f"data.root={root}", f"cache.root={settings.output / 'cache'}",
                                         f"run.output_dir={settings.output / 'runs'}", *settings.overrides])


def run_demo(settings: DemoSettings, progress: bool = True) -> tuple[Path, list[ComparisonRow]]:
    """Run the whole demo and return the report path and the table rows."""
    from .report import write_demo_report

    settings.output.mkdir(parents=True, exist_ok=True)
    ensure_partsworld(world_folder(settings), settings.n_classes, settings.n_train, settings.n_test,
                      settings.data_seed, size=settings.image_size)
    base = demo_config(settings)
    data = prepare_variants(base, settings.variants, progress=progress)
    rows = run_comparison(base, settings.variants, settings.seeds, settings.output, data=data, progress=progress)
    report = write_demo_report(settings.output, base, data, rows, settings.image_size, settings.data_seed)
    return report, rows
