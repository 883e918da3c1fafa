"""The folder every run writes, built so that no finished result is ever lost.

::

    <output_dir>/<name>/
        config.yaml            resolved config (everything that ran)
        environment.json       versions, git SHA, device
        code.json              the code that computed it: package version, sha256 of its sources, git commit
        metrics.jsonl          one JSON row per finished stage, appended and fsynced as it happens
                               (with a validation split also val_accuracy, val_per_task, ..., n_val)
        accuracy_matrix.csv    R[t, j] (rewritten atomically after each stage)
        validation_accuracy_matrix.csv   R[t, j] on the validation split (when data.validation_fraction > 0)
        summary.json           average / last accuracy, forgetting, BWT (at the end); val_* on validation
        checkpoints/task_XX.safetensors   trainable state after each task
        features.json          the feature-cache keys of the train and test features the run used
        plots/*.png            accuracy per stage, accuracy-matrix heatmap
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..config import Config, config_to_yaml
from ..errors import MissingExtraError, MissingFileError, RunFolderError
from ..evaluation.metrics import IncrementalMetrics, StageResult, stage_row
from ..io import atomic_path, write_json_atomic, write_text_atomic
from .code_version import code_difference, code_version
from .environment import collect_environment

logger = logging.getLogger(__name__)

#: How validation-split fields are named in ``metrics.jsonl`` rows and in ``summary.json``.
VALIDATION_PREFIX, VALIDATION_COUNT = "val_", "n_val"

#: Settings that cannot change a run's results, left out of its key so that moving a run to another
#: machine (other data path, cores, memory) or asking for other side outputs resumes it instead of
#: starting over: where the data and results live, loader workers, scoring batch size and where the test
#: features are held while scoring, optional outputs.
#: ``cache.root``/``cache.enabled``/``cache.verify`` only decide where features are kept and how hard they are checked.
RESULT_NEUTRAL_FIELDS = ("data.root", "data.download", "backbone.num_workers", "train.eval_batch_size",
                         "train.eval_features", "cache.root", "cache.enabled", "cache.verify", "run")

#: The validation split's settings, left out of the key while ``data.validation_fraction`` is 0 (then they
#: change nothing), so runs without a validation split keep the keys they had before the split existed.
VALIDATION_FIELDS = ("validation_fraction", "validation_seed")

#: Fields added after runs were keyed, with the value every earlier run had: left out of the key at that
#: value, so those runs keep their keys (and folders); any other value is part of it.
ADDED_FIELD_DEFAULTS = {"backbone.patch_layer": -1, "backbone.patch_path": "block"}


def config_digest(config: Config) -> str:
    """sha256 of the resolved config over what determines the results: without :data:`RESULT_NEUTRAL_FIELDS`,
    without the sections of methods other than the chosen one, without :data:`VALIDATION_FIELDS` when
    there is no validation split, and without :data:`ADDED_FIELD_DEFAULTS` at their defaults."""
    data = config.model_dump(mode="json")
    for dotted in RESULT_NEUTRAL_FIELDS:
        *parents, last = dotted.split(".")
        node = data
        for part in parents:
            node = node[part]
        node.pop(last)
    for dotted, before in ADDED_FIELD_DEFAULTS.items():
        section, field = dotted.split(".")
        if data[section].get(field) == before:
            data[section].pop(field)
    if not data["data"]["validation_fraction"]:
        for unused in VALIDATION_FIELDS:  # no validation split: its seed changes nothing, and old keys stay
            data["data"].pop(unused)
    data["method"] = {"name": config.method.name, config.method.name: data["method"][config.method.name]}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def run_key(config: Config, features: Mapping[str, str] | None = None) -> str:
    """:func:`config_digest` joined with the keys of the features used (split -> feature-cache key).

    The feature keys hash the images' bytes and relative paths (not where the data root is), so a moved
    dataset finds its run again while deleted or changed images give a new run instead of stale results.
    """
    if not features:
        return config_digest(config)
    blob = json.dumps({"config": config_digest(config), "features": dict(features)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def default_run_name(config: Config, features: Mapping[str, str] | None = None) -> str:
    """Deterministic, so rerunning the same command on the same data finds (and resumes) the same folder."""
    return f"{config.data.dataset}-{config.method.name}-{run_key(config, features)[:10]}"


class RunFolder:
    """Writes one run's results as they are produced."""

    def __init__(self, path: Path, tensorboard: bool = False) -> None:
        self.path = Path(path)
        self._tb = None
        if tensorboard:
            try:
                import tensorboard  # noqa: F401  (checked up front: fail before any work, not at stage 0)
            except ImportError:
                raise MissingExtraError("run.tensorboard=true needs tensorboard: pip install 'spacil[tracking]'") from None
        self._tensorboard = tensorboard

    def _writer(self):
        """The TensorBoard writer, opened on first use so a finished run's folder is never touched."""
        if self._tensorboard and self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.path / "tensorboard"))
        return self._tb

    @classmethod
    def create(cls, config: Config, device: torch.device | None = None,
               features: Mapping[str, str] | None = None) -> "RunFolder":
        """A new run folder, or the unfinished one of the same config and features when ``run.resume`` is on.

        ``features`` (split -> feature-cache key) is part of the default name and recorded in
        ``features.json``; a folder recorded with other features or computed by other code (``code.json``)
        is refused, never silently reused. ``run.overwrite`` deletes the folder first and redoes the run.
        """
        name = config.run.name or default_run_name(config, features)
        path = Path(config.run.output_dir).expanduser() / name
        folder = cls(path, tensorboard=config.run.tensorboard)
        code = code_version()
        if config.run.overwrite and (path / "config.yaml").exists():
            logger.warning("run.overwrite: deleting %s to redo the run", path)
            shutil.rmtree(path)
        if (path / "config.yaml").exists() and (path / "metrics.jsonl").exists():
            if not config.run.resume:
                raise RunFolderError(f"run folder {path} already holds results; choose another run.name "
                                     "or set run.resume=true")
            if folder.config_digest() != config_digest(config):
                raise RunFolderError(f"run folder {path} holds a run of a different config; choose another run.name")
            folder._check_features(features)
            folder._check_code(code)
        if folder.finished:
            return folder  # leave a finished run exactly as it is
        (path / "checkpoints").mkdir(parents=True, exist_ok=True)
        write_text_atomic(path / "config.yaml", config_to_yaml(config))
        write_json_atomic(path / "environment.json", collect_environment(device))
        write_json_atomic(path / "code.json", code)
        if features:
            write_json_atomic(path / "features.json", dict(features))
        return folder

    def recorded_features(self) -> dict[str, str] | None:
        """The feature-cache keys the run was computed on (``None`` for runs written before they were recorded)."""
        path = self.path / "features.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def _check_features(self, features: Mapping[str, str] | None) -> None:
        recorded = self.recorded_features()
        if not features or recorded is None or recorded == dict(features):
            return
        changed = [s for s in sorted(set(recorded) | set(features)) if recorded.get(s) != features.get(s)]
        raise RunFolderError(f"run folder {self.path} was computed on other {'/'.join(changed)} images than the "
                             "data now holds (its results would be stale); delete that folder or choose another "
                             "run.name")

    def recorded_code(self) -> dict | None:
        """The code version the run was computed by (``None`` for runs written before it was recorded)."""
        path = self.path / "code.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def _check_code(self, current: dict) -> None:
        difference = code_difference(self.recorded_code(), current)
        if difference is not None:
            raise RunFolderError(f"run folder {self.path} was computed by other code ({difference}); redo it with "
                                 "--set run.overwrite=true (spa-cil matrix: --overwrite), or set another "
                                 "run.output_dir to keep both")

    def config_digest(self) -> str:
        from ..config import load_config

        return config_digest(load_config(self.path / "config.yaml"))

    @property
    def finished(self) -> bool:
        return (self.path / "summary.json").is_file()

    def completed_stages(self) -> list[dict]:
        """Stages whose metrics row and checkpoint were both written; a torn last line is dropped.

        The metrics file is rewritten to exactly these rows, so a resumed run appends after them.
        """
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return []
        rows = []
        lines = path.read_text().splitlines()
        for line in lines:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                break
            if row.get("stage") != len(rows) or not self.checkpoint_path(len(rows)).is_file():
                break
            rows.append(row)
        if len(rows) < len(lines):
            logger.warning("%s: dropping %d unfinished stage row(s)", path, len(lines) - len(rows))
            write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
        return rows

    def checkpoint_path(self, task: int) -> Path:
        return self.path / "checkpoints" / f"task_{task:02d}.safetensors"

    # ------------------------------------------------------------------ per stage
    def log_stage(self, result: StageResult, extra: dict | None = None, validation: StageResult | None = None) -> None:
        """Append one stage's row: test accuracies, then (``val_*``, ``n_val``) those on the validation split."""
        row = {"stage": result.stage, **stage_row(result)}
        if validation is not None:
            row.update(stage_row(validation, VALIDATION_PREFIX, VALIDATION_COUNT))
        row.update(extra or {})
        with open(self.path / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        if self._writer() is not None:
            for key in ("accuracy", "old_accuracy", "new_accuracy", "val_accuracy"):
                if row.get(key) is not None:
                    self._tb.add_scalar(f"stage/{key}", row[key], result.stage)
            self._tb.flush()

    def write_accuracy_matrix(self, matrix: np.ndarray, name: str = "accuracy_matrix.csv") -> None:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["after_task"] + [f"task_{j}" for j in range(matrix.shape[1])])
        for t, row in enumerate(matrix):
            writer.writerow([t] + ["" if np.isnan(v) else f"{v:.4f}" for v in row])
        write_text_atomic(self.path / name, buf.getvalue())

    def save_checkpoint(self, task: int, state: dict[str, torch.Tensor]) -> Path:
        path = self.checkpoint_path(task)
        with atomic_path(path) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp),
                      metadata={"task": str(task)})
        return path

    def load_checkpoint(self, task: int) -> dict[str, torch.Tensor]:
        path = self.checkpoint_path(task)
        if not path.is_file():
            raise MissingFileError(f"no checkpoint for task {task} in {self.path}")
        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a torn file
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise RunFolderError(
                f"checkpoint {path} cannot be read ({exc.__class__.__name__}: {reason}; truncated or corrupt); "
                f"delete it and {self.path / 'summary.json'} if present, then rerun the same command to redo "
                f"task {task} onwards, or delete the run folder {self.path} (or set run.resume=false with "
                "another run.name) to start over") from None

    def finished_rows(self) -> list[dict]:
        """Every stage row of a finished run, as written (runs without checkpoints included)."""
        return read_metrics(self.path)

    # ------------------------------------------------------------------ end
    def finish(self, metrics: IncrementalMetrics, extra: dict | None = None, plots: bool = True) -> dict:
        summary = {**metrics.summary(), **(extra or {})}
        write_json_atomic(self.path / "summary.json", summary)
        if self._writer() is not None:
            self._tb.add_scalar("summary/average_accuracy", summary["average_accuracy"], 0)
            self._tb.add_scalar("summary/last_accuracy", summary["last_accuracy"], 0)
            self._tb.close()
        if plots:
            from .plots import plot_run

            try:
                plot_run(self.path, metrics.accuracy_matrix, metrics.stage_accuracies)
            except Exception as exc:  # noqa: BLE001 - a plot must never cost the results
                logger.warning("plots not written: %s", exc)
        return summary


def read_metrics(path: Path) -> list[dict]:
    """Rows of a run's ``metrics.jsonl``."""
    with open(Path(path) / "metrics.jsonl") as fh:
        return [json.loads(line) for line in fh if line.strip()]
