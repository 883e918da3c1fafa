"""The class-incremental loop shared by every method: one code path for every number in a table.

Order of work in a run: check what needs no backbone (description files, dataset folders, the split), load
the backbone, get frozen features of both splits (from the cache when possible, so the encoder runs at most
once per image), build the class texts, then for
each task: learn it, evaluate on every class seen so far, append the stage to the run folder and save the
trainable state.

With ``data.validation_fraction > 0`` a validation split is carved out of the cached training features
(:mod:`spacil.data.validation`): methods never train on it, and every stage is scored on it as on the test
split, so settings can be chosen on validation accuracy. The features are still extracted once.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..backbone import FrozenCLIP, load_backbone, pick_device
from ..config import Config
from ..data.catalog import load_split
from ..data.scenario import Scenario, build_scenario, resolve_class_order
from ..data.validation import validation_mask
from ..errors import UsageError
from ..evaluation.metrics import IncrementalMetrics, StageResult, evaluate_stage, stage_from_row
from ..features import FeatureCache, FeatureSet, get_features
from ..methods import FeatureBatch, Learner, TaskContext, get_method, make_learner
from ..ot import deferred_convergence_checks
from ..runs import RunFolder
from ..runs.run_folder import VALIDATION_COUNT, VALIDATION_PREFIX
from ..text import ClassTexts, build_class_texts
from .resident import ResidentFeatures

logger = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """Everything a run needs before its first task: features, scenario, class texts."""

    backbone: FrozenCLIP
    train: FeatureSet
    test: FeatureSet
    scenario: Scenario
    texts: ClassTexts
    train_labels: np.ndarray  # new labels of train rows
    test_labels: np.ndarray  # new labels of test rows
    descriptions: dict | None = None  # what the methods' prepare hooks recorded (SPA: where its phrases came from)
    resident_test: dict[str, ResidentFeatures] = field(default_factory=dict, repr=False)  # device -> test split

    def test_on(self, device: torch.device) -> ResidentFeatures:
        """The test split held on ``device``, copied (and checked finite) on first use, shared by every run
        and stage that uses this data."""
        if str(device) not in self.resident_test:
            self.resident_test[str(device)] = ResidentFeatures.load(self.test, self.test_labels, device)
        return self.resident_test[str(device)]

    @property
    def feature_keys(self) -> dict[str, str]:
        """Feature-cache key per split: with the config, what a run folder is keyed on."""
        return {split: feats.key for split, feats in (("train", self.train), ("test", self.test)) if feats.key}


@dataclass
class RunResult:
    folder: Path
    summary: dict
    metrics: IncrementalMetrics


def task_seed(seed: int, task: int) -> int:
    """An independent seed per task derived from the run seed (no global RNG involved)."""
    return int(np.random.SeedSequence([seed, task]).generate_state(1)[0])


def prepare_data(config: Config, backbone: FrozenCLIP | None = None, cache_root: Path | None = None,
                 progress: bool = True, methods: Sequence[Config] | None = None) -> PreparedData:
    """Backbone, cached features of both splits, scenario and class texts for ``config``.

    The ``prepare`` hook of the method of each config in ``methods`` (default: ``config`` alone) adds
    what that method needs to the class texts, so one set of prepared data can serve several methods.
    A ``backbone`` passed in is set to this config's image transform and patch source, and keeps them.
    """
    # Everything that needs no backbone is checked first (descriptions, dataset key and folders, the split):
    # a mistake there fails in seconds, not after loading the encoder and hours of encoding.
    for method_config in methods or [config]:
        get_method(method_config.method.name).learner.check(method_config)
    sources = {split: load_split(config.data.dataset, split, config.data.root, config.data.download)
               for split in ("train", "test")}
    if sources["train"].class_names != sources["test"].class_names:
        raise UsageError(f"{config.data.dataset}: train and test splits list different classes")
    class_names = sources["train"].class_names
    order = resolve_class_order(config.data.class_order, config.data.dataset, len(class_names))
    scenario = build_scenario(class_names, order, config.data.init_cls, config.data.increment)
    backbone = backbone or load_backbone(config.backbone.name, config.backbone.checkpoint,
                                         config.backbone.device, config.backbone.precision)
    backbone.set_resize(config.data.resize)  # a backbone passed in follows this config's transform too
    backbone.set_patch_source(config.backbone.patch_layer, config.backbone.patch_path)
    cache = FeatureCache(cache_root or config.cache.root, verify=config.cache.verify, dtype=config.cache.dtype)
    feats = {split: get_features(src, backbone, cache, config.backbone.batch_size, config.backbone.num_workers,
                                 config.data.bad_images, progress) for split, src in sources.items()}
    texts = build_class_texts(backbone, scenario.class_names, config.text.templates)
    descriptions = None
    for method_config in methods or [config]:
        recorded = get_method(method_config.method.name).learner.prepare(method_config, backbone, texts)
        descriptions = recorded if recorded is not None else descriptions
    return PreparedData(backbone, feats["train"], feats["test"], scenario, texts,
                        scenario.remap(feats["train"].labels), scenario.remap(feats["test"].labels), descriptions)


def load_rows(features: FeatureSet, rows: np.ndarray, new_labels: np.ndarray, device: torch.device) -> FeatureBatch:
    """Rows of a (memory-mapped) feature set as tensors: global float32, patches in their storage dtype."""
    rows = np.sort(rows)
    global_ = np.asarray(features.global_[rows], dtype=np.float32)
    patches = np.ascontiguousarray(features.patches[rows])
    features.check_finite(rows, (global_, patches))
    return FeatureBatch(
        global_=torch.from_numpy(global_).to(device),
        patches=torch.from_numpy(patches).to(device),
        labels=torch.from_numpy(new_labels[rows].astype(np.int64)).to(device),
    )


@torch.no_grad()
def predict(learner: Learner, features: FeatureSet, rows: np.ndarray, new_labels: np.ndarray, n_seen: int,
            device: torch.device, batch_size: int, resident: ResidentFeatures | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """Predicted and true new labels of ``rows`` (sorted), scored in batches against the ``n_seen`` classes.

    With ``resident`` (the rows of ``features`` already on ``device``) no row is read from the cache; either
    way the predictions stay on the device until one copy at the end (no host sync per batch).
    """
    rows = np.sort(rows)
    index = torch.from_numpy(rows.astype(np.int64)).to(device) if resident is not None else None
    preds = []
    with deferred_convergence_checks():  # one host sync for the pass, not one per batch
        for start in range(0, len(rows), batch_size):
            if index is not None:
                batch = resident.batch(index[start:start + batch_size])
            else:
                batch = load_rows(features, rows[start:start + batch_size], new_labels, device)
            preds.append(learner.logits(batch, n_seen).argmax(dim=-1))
    predicted = torch.cat(preds).cpu().numpy() if preds else np.zeros(0, dtype=np.int64)
    return predicted, new_labels[rows].astype(np.int64)


def task_context(config: Config, data: PreparedData, task: int, device: torch.device) -> TaskContext:
    return TaskContext(task=task, new_classes=data.scenario.task_range(task), n_seen=data.scenario.seen_classes(task),
                       texts=data.texts, device=device, seed=task_seed(config.train.seed, task))


def evaluate_rows(learner: Learner, data: PreparedData, ctx: TaskContext, batch_size: int, features: FeatureSet,
                  rows: np.ndarray, new_labels: np.ndarray, resident: "ResidentFeatures | None" = None) -> StageResult:
    """Accuracy after task ``ctx.task`` on those of ``rows`` whose class has been seen so far (``resident``: the
    split already held on the device)."""
    rows = rows[new_labels[rows] < ctx.n_seen]
    preds, targets = predict(learner, features, rows, new_labels, ctx.n_seen, ctx.device, batch_size, resident)
    return evaluate_stage(ctx.task, preds, targets, data.scenario.task_of_label(np.arange(data.scenario.n_classes)))


def evaluate_task(learner: Learner, data: PreparedData, ctx: TaskContext, batch_size: int,
                  on_device: bool = True) -> StageResult:
    """Accuracy after task ``ctx.task`` on the test images of every class seen so far (the test split held on
    the device when ``on_device``, else read from the cache batch by batch)."""
    resident = data.test_on(ctx.device) if on_device else None
    return evaluate_rows(learner, data, ctx, batch_size, data.test, np.arange(len(data.test)), data.test_labels,
                         resident)


def validation_split(config: Config, data: PreparedData) -> np.ndarray:
    """Mask over the training rows: True for those held out as validation (all False without a split)."""
    return validation_mask(data.train.labels, data.train.sample_ids, config.data.validation_fraction,
                           config.data.validation_seed, data.train.class_names)


def restore_learner(config: Config, data: PreparedData, folder: Path, task: int, device: torch.device) -> Learner:
    """The learner of a run folder as it was after ``task`` (from its checkpoint)."""
    learner = make_learner(config)
    learner.load_trainable_state(RunFolder(folder).load_checkpoint(task), task_context(config, data, task, device))
    return learner


def run_experiment(config: Config, data: PreparedData | None = None, progress: bool = True) -> RunResult:
    """Train and evaluate ``config.method`` over every task; write the run folder as it goes.

    If the run folder of this config already holds finished tasks (a killed run), training resumes after
    the last finished task from its checkpoint; a finished run is not repeated.
    """
    with tempfile.TemporaryDirectory(prefix="spacil-nocache-") as scratch:
        device = pick_device(config.train.device)
        cache_root = None if config.cache.enabled else Path(scratch)
        # data first: the run folder is keyed on the features, and bad data leaves no empty folder behind
        data = data or prepare_data(config, cache_root=cache_root, progress=progress)
        folder = RunFolder.create(config, device, features=data.feature_keys)
        if folder.finished:
            logger.info("run %s is already finished; reading its results", folder.path)
            return RunResult(folder.path, json.loads((folder.path / "summary.json").read_text()),
                             _metrics_from_rows(folder.finished_rows(), None))
        learner = make_learner(config)
        scenario = data.scenario
        held_out = validation_split(config, data)
        val_rows = np.flatnonzero(held_out)
        done = folder.completed_stages()
        metrics = _metrics_from_rows(done, scenario.n_tasks)
        val_metrics = _metrics_from_rows(done, scenario.n_tasks, VALIDATION_PREFIX) if val_rows.size else None
        if done:
            last = len(done) - 1
            learner.load_trainable_state(folder.load_checkpoint(last), task_context(config, data, last, device))
            logger.info("resuming %s after task %d", folder.path, last)
        logger.info("run %s: %s on %s, %d tasks %s", folder.path.name, learner.name, config.data.dataset,
                    scenario.n_tasks, list(scenario.task_sizes))
        stages = tqdm(range(len(done), scenario.n_tasks), desc=f"{learner.name} tasks", unit="task",
                      disable=not progress, initial=len(done), total=scenario.n_tasks)
        for task in stages:
            ctx = task_context(config, data, task, device)
            train_rows = np.flatnonzero(np.isin(data.train_labels, list(ctx.new_classes)) & ~held_out)
            start = time.perf_counter()
            with deferred_convergence_checks():  # OT checks of the task's scoring passes: one host sync
                stats = learner.learn_task(ctx, load_rows(data.train, train_rows, data.train_labels, device))
            train_seconds = time.perf_counter() - start
            result = evaluate_task(learner, data, ctx, config.train.eval_batch_size,
                                   config.train.eval_features == "device")
            metrics.add(result)
            validation = None
            if val_metrics is not None:
                validation = evaluate_rows(learner, data, ctx, config.train.eval_batch_size, data.train, val_rows,
                                           data.train_labels)
                val_metrics.add(validation)
            # checkpoint first: a stage counts as finished only when both its state and its row exist
            if config.run.save_checkpoints:
                folder.save_checkpoint(task, learner.trainable_state())
            folder.log_stage(result, {"n_seen": ctx.n_seen, "n_train": int(train_rows.size),
                                      "train_seconds": round(train_seconds, 3), **stats}, validation=validation)
            folder.write_accuracy_matrix(metrics.accuracy_matrix)
            if val_metrics is not None:
                folder.write_accuracy_matrix(val_metrics.accuracy_matrix, "validation_accuracy_matrix.csv")
            stages.set_postfix(acc=f"{result.accuracy:.1f}")
        extra = {"method": learner.name, "dataset": config.data.dataset, "backbone": config.backbone.name,
                 "task_sizes": list(scenario.task_sizes), "descriptions": data.descriptions}
        if val_metrics is not None:
            extra.update({f"{VALIDATION_PREFIX}{k}": v for k, v in val_metrics.summary().items()})
            extra["n_validation_images"] = int(val_rows.size)
        summary = folder.finish(metrics, extra, plots=config.run.plots)
    return RunResult(folder.path, summary, metrics)


def _metrics_from_rows(rows: list[dict], n_tasks: int | None, prefix: str = "") -> IncrementalMetrics:
    """Test metrics (or, with ``prefix``, validation metrics) of the stages recorded in ``rows``."""
    metrics = IncrementalMetrics(n_tasks if n_tasks is not None else len(rows))
    for row in rows:
        metrics.add(stage_from_row(row, prefix, VALIDATION_COUNT if prefix else "n_test"))
    return metrics


def evaluate_run(folder: Path, progress: bool = True) -> IncrementalMetrics:
    """Re-evaluate a finished run from its config and per-task checkpoints (the features come from the cache)."""
    from ..config import load_config

    folder = Path(folder)
    config = load_config(folder / "config.yaml")
    data = prepare_data(config, progress=progress)
    recorded = RunFolder(folder).recorded_features()
    if recorded is not None and recorded != data.feature_keys:
        logger.warning("%s was trained on other images than %s now holds; the accuracies differ for that reason",
                       folder, config.data.root)
    device = pick_device(config.train.device)
    metrics = IncrementalMetrics(data.scenario.n_tasks)
    for task in range(data.scenario.n_tasks):
        learner = restore_learner(config, data, folder, task, device)
        metrics.add(evaluate_task(learner, data, task_context(config, data, task, device),
                                  config.train.eval_batch_size, config.train.eval_features == "device"))
    return metrics
