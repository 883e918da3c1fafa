"""``spa-cil describe``: from a dataset to a description file, through visual guidance and an LLM.

Steps: frozen global features of the training split (from the feature cache), per class the
representative and diverse images chosen by :func:`select_guidance`, one LLM request per class with
those images, then a contract description file in the dataset's class order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import UsageError
from ..config import Config
from .generator import (ClassImages, DescriptionGenerator, GenerationParameters, GenerationSummary, ProgressEvent,
                        export_description_file)
from .guidance import select_guidance

logger = logging.getLogger(__name__)


@dataclass
class DescribeSettings:
    """What the user chose on the command line (everything that is not the dataset config)."""

    model: str
    output: Path
    cache: Path
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    n_representative: int = 3
    n_diverse: int = 2
    selection: str = "centroid"
    seed: int = 1993
    parameters: GenerationParameters = GenerationParameters()
    timeout: float = 120.0
    max_attempts: int = 5
    on_failure: str = "raise"


def guidance_requests(config: Config, settings: DescribeSettings, progress: bool = True) -> list[ClassImages]:
    """Per class, the guidance images (file paths where the dataset has files, else PIL images).

    They are picked among the training images the runs train on: the rows ``data.validation_fraction`` holds
    out are skipped, so validation accuracy never scores images the descriptions were written from.
    """
    from ..backbone import load_backbone
    from ..data.catalog import load_split
    from ..data.datasets import ImageFolderSource
    from ..data.validation import validation_mask
    from ..features import FeatureCache, get_features

    source = load_split(config.data.dataset, "train", config.data.root, config.data.download)
    backbone = load_backbone(config.backbone.name, config.backbone.checkpoint, config.backbone.device,
                             config.backbone.precision, config.data.resize)
    backbone.set_patch_source(config.backbone.patch_layer, config.backbone.patch_path)  # shares the run's cache
    feats = get_features(source, backbone, FeatureCache(config.cache.root, config.cache.verify, config.cache.dtype),
                         config.backbone.batch_size, config.backbone.num_workers, config.data.bad_images, progress)
    row_of_id = {sid: i for i, sid in enumerate(source.sample_id(i) for i in range(len(source)))}
    global_ = np.asarray(feats.global_, dtype=np.float32)
    global_ /= np.linalg.norm(global_, axis=1, keepdims=True).clip(min=1e-12)
    held_out = validation_mask(feats.labels, feats.sample_ids, config.data.validation_fraction,
                               config.data.validation_seed, feats.class_names)
    requests = []
    for label, name in enumerate(feats.class_names):
        rows = np.flatnonzero((feats.labels == label) & ~held_out)
        if rows.size == 0:
            raise UsageError(f"class {name!r} has no readable training images")
        picked = select_guidance(global_[rows], settings.n_representative, settings.n_diverse,
                                 seed=settings.seed + label, method=settings.selection)
        ids = [feats.sample_ids[rows[i]] for i in picked.indices]
        if isinstance(source, ImageFolderSource):
            images = [source.root / sid for sid in ids]
        else:
            images = [source.load(row_of_id[sid]) for sid in ids]
        requests.append(ClassImages(name, images, ids))
    return requests


def describe_dataset(config: Config, settings: DescribeSettings,
                     progress: Callable[[ProgressEvent], None] | None = None,
                     show_bars: bool = True) -> GenerationSummary:
    """Generate (or resume) descriptions for every class and write the description file when complete."""
    requests = guidance_requests(config, settings, show_bars)
    generator = DescriptionGenerator(settings.model, settings.cache, base_url=settings.base_url,
                                     api_key_env=settings.api_key_env, dataset_hint=config.data.dataset,
                                     parameters=settings.parameters, timeout=settings.timeout,
                                     max_attempts=settings.max_attempts)
    summary = generator.generate(requests, progress=progress, on_failure=settings.on_failure)  # type: ignore[arg-type]
    if summary.complete:
        selection = (f"{settings.n_representative} representative ({settings.selection}) + {settings.n_diverse} "
                     f"diverse (farthest-point) training images per class (validation rows excluded) chosen from frozen "
                     f"{config.backbone.name} features, seed {settings.seed}")
        export_description_file(summary.entries, [r.name for r in requests], config.data.dataset, settings.output,
                                image_selection=selection)
    return summary
