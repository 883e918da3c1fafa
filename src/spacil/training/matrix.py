"""``spa-cil matrix``: presets x variants x seeds, every cell a normal resumable run folder.

Why a matrix command: the protocol is 18 splits x several methods x seeds; run one by one it stops at the
first failure and uses one device. Here every cell is the run ``spa-cil compare`` would make (same harness,
same folder naming), failures are kept per cell and listed at the end, and a finished cell is not redone.

Work happens in two phases so that each split's features are extracted once: first one extraction per
preset (all its cells share the feature-cache entry), then the cells, which find the features cached.
Executors (existing engines only): in this process (``sequential``), one worker process per device
(``gpus``: :class:`concurrent.futures.ProcessPoolExecutor`, each worker pinned with CUDA_VISIBLE_DEVICES),
or a Slurm cluster through submitit (``slurm``: job arrays; a preempted or timed-out cell is requeued and
resumes from its run folder's per-task checkpoints).
"""

from __future__ import annotations

import concurrent.futures as futures
import json
import logging
import multiprocessing
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml
from pydantic import Field, ValidationError

from ..config import build_config, list_presets, load_config
from ..errors import MissingExtraError, UsageError
from ..io import write_json_atomic
from ..runs.code_version import code_difference, code_version
from ..runs.run_folder import RunFolder
from ..schema import ConfigError, StrictModel

logger = logging.getLogger(__name__)

#: ``--presets protocol`` expands to the 18 splits of the LAMDA protocol.
PROTOCOL_ALIAS = "protocol"


class SlurmSettings(StrictModel):
    """Slurm jobs through submitit (one array job for the extractions, one for the cells)."""

    partition: str | None = Field(None, description="Slurm partition (None: the cluster's default).")
    time_min: int = Field(240, ge=1, description="Time limit per job in minutes; a cell that hits it is requeued "
                          "and resumes from its last finished task.")
    gpus_per_job: int = Field(1, ge=0)
    cpus_per_job: int = Field(8, ge=1)
    mem_gb: int | None = Field(None, ge=1, description="Memory per job (None: the partition's default).")
    array_parallelism: int = Field(64, ge=1, description="Most cells running at once.")
    max_requeues: int = Field(3, ge=0, description="Times a preempted or timed-out job is requeued.")
    cluster: Literal["slurm", "local"] = Field(
        "slurm", description="'local' runs the same submitit jobs as local processes (tests, a box without Slurm).")
    folder: Path | None = Field(None, description="submitit's logs and pickles (default <output>/submitit).")


class MatrixSpec(StrictModel):
    """What ``spa-cil matrix`` runs; the YAML file of ``--file`` holds these keys."""

    presets: list[str] = Field(..., min_length=1, description="Preset names or YAML paths; 'protocol' = all 18 splits.")
    variants: list[str] = Field(..., min_length=1, description="Compare variants (see `spa-cil info`).")
    seeds: list[int] = Field([1993], min_length=1)
    overrides: list[str] = Field([], description="--set overrides applied to every cell.")
    data_root: Path | None = Field(None, description="Folder with one sub-folder per dataset: data.root becomes "
                                   "<data_root>/<dataset> (an override of data.root wins).")
    output: Path = Field(Path("runs/matrix"), description="Run folders go to <output>/<preset>/.")
    overwrite: bool = Field(False, description="Redo every cell even when finished (run.overwrite).")
    executor: Literal["sequential", "gpus", "slurm"] = "sequential"
    devices: list[str] = Field([], description="gpus executor: one worker per entry ('0', 'cuda:1', 'cpu'); "
                               "default every visible GPU.")
    slurm: SlurmSettings = Field(default_factory=SlurmSettings)


def load_matrix_file(path: Path) -> dict[str, Any]:
    """The raw mapping of a matrix YAML file (validated later with the command-line options merged in)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"matrix file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: YAML syntax error ({exc.__class__.__name__}); fix the file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"matrix file {path} must be a YAML mapping (presets:, variants:, seeds: ...)")
    return data


def build_spec(data: dict[str, Any], where: str = "matrix options") -> MatrixSpec:
    """Validate a raw matrix mapping; a bad key or value is one line naming it."""
    try:
        return MatrixSpec.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        hint = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        raise ConfigError(f"{where}: {loc}: {hint} (keys: {', '.join(MatrixSpec.model_fields)})") from None


def expand_presets(names: Sequence[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        out += [p for p in list_presets() if "_b" in p and "_inc" in p] if name == PROTOCOL_ALIAS else [name]
    return list(dict.fromkeys(out))


def preset_config(spec: MatrixSpec, preset: str):
    """The base config of one preset: the preset, ``data.root`` from ``data_root``, then the overrides."""
    root = []
    if spec.data_root is not None:
        root = [f"data.root={spec.data_root / load_config(preset, spec.overrides).data.dataset}"]
    return load_config(preset, [*root, *spec.overrides])


def preset_label(preset: str) -> str:
    """A folder name for a preset name or a YAML path."""
    return Path(preset).stem if preset.endswith((".yaml", ".yml")) else preset


# ---------------------------------------------------------------------------------------------- cells

@dataclass
class Cell:
    """One run of the matrix: its final config (run folder named, as compare names it) and where it lands."""

    preset: str
    variant: str
    seed: int
    config: dict  # the resolved config, JSON-able (pickled to worker processes and Slurm jobs)
    folder: str


@dataclass
class CellOutcome:
    preset: str
    variant: str
    seed: int
    folder: str | None
    status: Literal["done", "reused", "failed"]
    error: str | None = None
    summary: dict = field(default_factory=dict)
    images_encoded: int = 0  # encoder forwards in the cell (0: its features came from the cache)
    seconds: float = 0.0


def _one_line(exc: BaseException) -> str:
    from ..errors import SpacilError

    text = (str(exc).strip().splitlines() or [""])[0]
    return text if isinstance(exc, SpacilError) else f"{exc.__class__.__name__}: {text}"


def extract_preset(config: dict, variants: list[str], progress: bool = False) -> dict:
    """Phase 1 for one preset: extract (or find) both splits' features; run the methods' prepare hooks once
    (bad description files fail here, before any cell). Returns the feature keys and encoder forwards."""
    from .compare import prepare_variants

    data = prepare_variants(build_config(config), variants, progress=progress)
    return {"features": data.feature_keys, "images_encoded": data.backbone.images_encoded, "data": data}


def run_cell(cell: Cell, data=None, progress: bool = False) -> CellOutcome:
    """Run one cell through the harness (resuming its folder); never raises: a failure is its outcome."""
    from .harness import prepare_data, run_experiment

    start = time.perf_counter()
    try:
        config = build_config(cell.config)
        data = data or prepare_data(config, progress=progress)
        before = data.backbone.images_encoded
        result = run_experiment(config, data=data, progress=progress)
        write_json_atomic(result.folder / "cell.json", {"preset": cell.preset, "variant": cell.variant,
                                                        "seed": cell.seed})
        keep = ("average_accuracy", "last_accuracy", "forgetting")
        return CellOutcome(cell.preset, cell.variant, cell.seed, str(result.folder), "done",
                           summary={k: result.summary.get(k) for k in keep},
                           images_encoded=data.backbone.images_encoded - before,
                           seconds=time.perf_counter() - start)
    except Exception as exc:  # noqa: BLE001 - one failed cell must not stop the matrix
        logger.error("cell %s / %s / seed %d failed: %s", cell.preset, cell.variant, cell.seed, _one_line(exc))
        logger.debug("traceback", exc_info=exc)
        return CellOutcome(cell.preset, cell.variant, cell.seed, cell.folder, "failed", _one_line(exc),
                           seconds=time.perf_counter() - start)


def plan_cells(spec: MatrixSpec, preset: str, features: dict) -> list[Cell]:
    """Every (variant, seed) cell of one preset, named from the extracted features as compare names them."""
    from .compare import variant_config

    base = preset_config(spec, preset).model_dump(mode="json")
    out_dir = spec.output / preset_label(preset)
    cells = []
    for variant in spec.variants:
        for seed in spec.seeds:
            cfg = variant_config(base, variant, seed, out_dir, features)
            cfg.run.overwrite = spec.overwrite
            cells.append(Cell(preset, variant, seed, cfg.model_dump(mode="json"),
                              str(Path(cfg.run.output_dir) / str(cfg.run.name))))
    return cells


def already_done(cell: Cell, code: dict) -> CellOutcome | None:
    """The outcome of a finished cell computed by this code (not redone), else None (it runs)."""
    folder = RunFolder(Path(cell.folder))
    if cell.config["run"]["overwrite"] or not folder.finished or code_difference(folder.recorded_code(), code):
        return None  # a finished run of other code runs too, and the harness refuses it with what differs
    summary = json.loads((folder.path / "summary.json").read_text())
    return CellOutcome(cell.preset, cell.variant, cell.seed, cell.folder, "reused",
                       summary={k: summary.get(k) for k in ("average_accuracy", "last_accuracy", "forgetting")})


# ---------------------------------------------------------------------------------------------- executors

class SequentialExecutor:
    """In this process, one cell after another; each preset's prepared data is shared by its cells."""

    def __init__(self, progress: bool = True) -> None:
        self.progress = progress
        self._data: dict[str, Any] = {}

    def extract(self, jobs: dict[str, tuple[dict, list[str]]]) -> dict[str, dict]:
        out = {}
        for preset, (config, variants) in jobs.items():
            try:
                res = extract_preset(config, variants, self.progress)
                self._data[preset] = res.pop("data")
                out[preset] = res
            except Exception as exc:  # noqa: BLE001
                out[preset] = {"error": _one_line(exc)}
        return out

    def run(self, cells: list[Cell]) -> list[CellOutcome]:
        return [run_cell(c, self._data.get(c.preset), self.progress) for c in cells]


_WORKER: dict[str, str] = {}  # in a gpus-executor worker process only: the device it is pinned to


def _pin_worker(devices, n_cpu_workers: int) -> None:
    """Pool initializer: take one device from the queue and pin this process to it before CUDA starts."""
    import torch

    device = devices.get()
    _WORKER["device"] = device
    os.environ["CUDA_VISIBLE_DEVICES"] = "" if device == "cpu" else device
    if device == "cpu":  # CPU workers share the cores instead of each spinning all of them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, n_cpu_workers)))


def _extract_in_worker(config: dict, variants: list[str]) -> dict:
    try:
        res = extract_preset(config, variants)
        res.pop("data")
        return {**res, "device": _WORKER.get("device")}
    except Exception as exc:  # noqa: BLE001
        return {"error": _one_line(exc)}


def _cell_in_worker(cell: Cell) -> CellOutcome:
    return run_cell(cell)


def parse_devices(devices: Sequence[str]) -> list[str]:
    """``0``, ``cuda:1`` or ``cpu`` entries; default every visible GPU."""
    import torch

    if not devices:
        count = torch.cuda.device_count()
        if count == 0:
            raise UsageError("--executor gpus: no GPU is visible; give --devices (e.g. --devices cpu,cpu runs "
                             "two CPU workers) or use the sequential executor")
        return [str(i) for i in range(count)]
    out = []
    for d in devices:
        d = d.strip()
        if d != "cpu" and not d.removeprefix("cuda:").isdigit():
            raise UsageError(f"--devices: {d!r} is not a GPU index (0, cuda:1) or 'cpu'")
        out.append(d if d == "cpu" else d.removeprefix("cuda:"))
    return out


class DeviceExecutor:
    """One worker process per device (a process pool with as many workers); cells go to whichever is free."""

    def __init__(self, devices: Sequence[str]) -> None:
        self.devices = parse_devices(devices)
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: CUDA is not initialised before pinning
        queue = ctx.Queue()
        for d in self.devices:
            queue.put(d)
        self.pool = futures.ProcessPoolExecutor(len(self.devices), mp_context=ctx, initializer=_pin_worker,
                                                initargs=(queue, self.devices.count("cpu")))

    def extract(self, jobs: dict[str, tuple[dict, list[str]]]) -> dict[str, dict]:
        submitted = {p: self.pool.submit(_extract_in_worker, c, v) for p, (c, v) in jobs.items()}
        return {p: _result_or_error(f) for p, f in submitted.items()}

    def run(self, cells: list[Cell]) -> list[CellOutcome]:
        submitted = [self.pool.submit(_cell_in_worker, c) for c in cells]
        out = []
        for cell, fut in zip(cells, submitted):
            try:
                out.append(fut.result())
            except Exception as exc:  # noqa: BLE001 - a worker that died (killed, out of memory)
                out.append(CellOutcome(cell.preset, cell.variant, cell.seed, cell.folder, "failed", _one_line(exc)))
        self.pool.shutdown()
        return out


def _result_or_error(fut) -> dict:
    try:
        return fut.result()
    except Exception as exc:  # noqa: BLE001
        return {"error": _one_line(exc)}


def _submitit():
    try:
        import submitit
    except ImportError:
        raise MissingExtraError("--executor slurm needs submitit: pip install 'spacil[slurm]'") from None
    return submitit


class CellJob:
    """A cell as a submitit job. On preemption or timeout submitit calls :meth:`checkpoint` and requeues the
    same cell, which resumes from its run folder (never with ``run.overwrite``: that would delete the progress)."""

    def __call__(self, cell: Cell) -> CellOutcome:
        return run_cell(cell)

    def checkpoint(self, cell: Cell):
        submitit = _submitit()
        config = {**cell.config, "run": {**cell.config["run"], "overwrite": False}}
        return submitit.helpers.DelayedSubmission(CellJob(), replace(cell, config=config))


class ExtractJob:
    def __call__(self, config: dict, variants: list[str]) -> dict:
        res = extract_preset(config, variants)
        res.pop("data")
        return res

    def checkpoint(self, config: dict, variants: list[str]):  # extraction restarts (a partial entry is removed)
        return _submitit().helpers.DelayedSubmission(ExtractJob(), config, variants)


class SlurmExecutor:
    """Job arrays on Slurm through submitit (``cluster='local'``: the same jobs as local processes)."""

    def __init__(self, settings: SlurmSettings, output: Path) -> None:
        submitit = _submitit()
        folder = settings.folder or output / "submitit"
        self.executor = submitit.AutoExecutor(folder=str(folder) + "/%j", cluster=settings.cluster,
                                              slurm_max_num_timeout=settings.max_requeues)
        params: dict[str, Any] = dict(timeout_min=settings.time_min, gpus_per_node=settings.gpus_per_job,
                                      cpus_per_task=settings.cpus_per_job, tasks_per_node=1, name="spacil-matrix",
                                      slurm_array_parallelism=settings.array_parallelism)
        if settings.partition:
            params["slurm_partition"] = settings.partition
        if settings.mem_gb:
            params["mem_gb"] = settings.mem_gb
        self.executor.update_parameters(**params)

    def extract(self, jobs: dict[str, tuple[dict, list[str]]]) -> dict[str, dict]:
        presets = list(jobs)
        submitted = self.executor.map_array(ExtractJob(), [jobs[p][0] for p in presets], [jobs[p][1] for p in presets])
        logger.info("submitted extraction jobs %s", ", ".join(j.job_id for j in submitted))
        return {p: _result_or_error(j) for p, j in zip(presets, submitted)}

    def run(self, cells: list[Cell]) -> list[CellOutcome]:
        if not cells:
            return []
        submitted = self.executor.map_array(CellJob(), cells)
        logger.info("submitted %d cells as jobs %s", len(cells), ", ".join(j.job_id for j in submitted))
        out = []
        for cell, job in zip(cells, submitted):
            try:
                out.append(job.result())
            except Exception as exc:  # noqa: BLE001 - the job itself failed (node failure, out of memory, limit)
                out.append(CellOutcome(cell.preset, cell.variant, cell.seed, cell.folder, "failed",
                                       f"job {job.job_id}: {_one_line(exc)}"))
        return out


def make_executor(spec: MatrixSpec, progress: bool = True):
    if spec.executor == "sequential":
        return SequentialExecutor(progress)
    if spec.executor == "gpus":
        return DeviceExecutor(spec.devices)
    return SlurmExecutor(spec.slurm, spec.output)


# ---------------------------------------------------------------------------------------------- the matrix

def run_matrix(spec: MatrixSpec, executor=None, progress: bool = True) -> list[CellOutcome]:
    """Extract each preset's features once, then run every cell not finished yet; write ``matrix.json``."""
    from ..methods import all_variants

    unknown = [v for v in spec.variants if v not in all_variants()]
    if unknown:
        raise UsageError(f"unknown variants {', '.join(unknown)}; known: {', '.join(all_variants())}")
    presets = expand_presets(spec.presets)
    bases = {p: preset_config(spec, p) for p in presets}  # bad presets and overrides fail before any work
    executor = executor or make_executor(spec, progress)
    jobs = {p: (cfg.model_dump(mode="json"), list(spec.variants)) for p, cfg in bases.items()}
    extracted = executor.extract(jobs)
    code = code_version()
    outcomes: list[CellOutcome] = []
    pending: list[Cell] = []
    for preset in presets:
        res = extracted[preset]
        if "error" in res:
            outcomes += [CellOutcome(preset, v, s, None, "failed", f"features of {preset}: {res['error']}")
                         for v in spec.variants for s in spec.seeds]
            continue
        for cell in plan_cells(spec, preset, res["features"]):
            done = already_done(cell, code)
            (outcomes.append(done) if done else pending.append(cell))
    logger.info("matrix: %d cells, %d already finished, %d to run", len(outcomes) + len(pending),
                sum(o.status == "reused" for o in outcomes), len(pending))
    outcomes += executor.run(pending)
    order = {(p, v, s): i for i, (p, v, s) in enumerate((p, v, s) for p in presets for v in spec.variants
                                                         for s in spec.seeds)}
    outcomes.sort(key=lambda o: order[(o.preset, o.variant, o.seed)])
    spec.output.mkdir(parents=True, exist_ok=True)
    write_json_atomic(spec.output / "matrix.json", {"spec": spec.model_dump(mode="json"),
                                                   "extracted": {p: {k: v for k, v in r.items() if k != "data"}
                                                                 for p, r in extracted.items()},
                                                   "cells": [o.__dict__ for o in outcomes]})
    return outcomes


def outcomes_markdown(outcomes: Sequence[CellOutcome]) -> str:
    lines = ["| preset | variant | seed | status | Ā | A_B | folder |", "|---|---|---|---|---|---|---|"]
    for o in outcomes:
        avg, last = (o.summary.get(k) for k in ("average_accuracy", "last_accuracy"))
        lines.append(f"| {o.preset} | {o.variant} | {o.seed} | {o.status} | "
                     f"{'-' if avg is None else f'{avg:.2f}'} | {'-' if last is None else f'{last:.2f}'} | "
                     f"{o.folder or '-'} |")
    return "\n".join(lines) + "\n"
