"""``spa-cil demo``: the built-in benchmark, end to end on a CPU in minutes.

1. render parts world (classes that share a global look and differ in local parts) into an image folder,
   with its ground-truth description file; reused when already there;
2. encode it once with the tiny CLIP pretrained on parts world (shipped with the package);
3. run SPA, its baselines and ablations on the same features (:mod:`spacil.experiments.compare`);
4. write a report folder: table, accuracy curves, accuracy-matrix heatmaps and OT alignment pictures.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..config import Config, load_config
from ..training.harness import prepare_data
from .compare import ComparisonRow, run_comparison

logger = logging.getLogger(__name__)

DEMO_VARIANTS = ("zeroshot", "simplecil", "clsonly", "spa", "spa_no_ot", "spa_no_replay", "spa_shared_projector",
                 "spa_random_selection")


@dataclass
class DemoSettings:
    output: Path = Path("spacil-demo")
    preset: str = "partsworld_demo"
    overrides: list[str] = field(default_factory=list)
    variants: Sequence[str] = DEMO_VARIANTS
    seeds: Sequence[int] = (1993,)


def ensure_partsworld(root: Path, n_classes: int, n_train: int, n_test: int, seed: int, size: int) -> Path:
    """Render the parts-world image folder unless the same one is already on disk."""
    from ..partsworld import GENERATOR_VERSION, make_class_specs, write_image_folder

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


def demo_config(settings: DemoSettings) -> Config:
    root = settings.output / "data"
    return load_config(settings.preset, [f"data.root={root}", f"cache.root={settings.output / 'cache'}",
                                         f"run.output_dir={settings.output / 'runs'}", *settings.overrides])


def run_demo(settings: DemoSettings, n_classes: int = 50, n_train: int = 60, n_test: int = 20, data_seed: int = 0,
             progress: bool = True) -> tuple[Path, list[ComparisonRow]]:
    """Run the whole demo and return the report path and the table rows."""
    from ..reports.demo_report import write_demo_report

    settings.output.mkdir(parents=True, exist_ok=True)
    ensure_partsworld(settings.output / "data", n_classes, n_train, n_test, data_seed, size=64)
    base = demo_config(settings)
    spa_cfg = load_config(settings.preset, [f"data.root={base.data.root}", f"cache.root={base.cache.root}",
                                            *settings.overrides, "method.name=spa"])
    data = prepare_data(spa_cfg, progress=progress)
    rows = run_comparison(base, settings.variants, settings.seeds, settings.output, data=data, progress=progress)
    report = write_demo_report(settings.output, base, data, rows)
    return report, rows
