"""The ``spa-cil`` command line. Only this module configures logging and prints to the terminal."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import List, Optional

import typer
from pydantic import ValidationError

from .config import list_presets, load_config
from .errors import MissingFileError, SpacilError, UsageError
from .descriptions.fileformat import MAX_PHRASES, MIN_PHRASES
from .methods import all_variants, default_variants, list_methods

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="SPA (Semantic-guided Patch-level Alignment) for CLIP-based class-incremental learning.")

#: What the CLI reports in a few lines: problems the user can fix. Everything else is a bug or an
#: environment failure (out of memory, a shape mismatch) and keeps its full traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (SpacilError,)
MAX_MESSAGE_LINES = 8  # a description file's first violations, not a screenful

_STATE = {"verbose": False, "quiet": False}

ConfigOption = typer.Option(None, "--config", "-c", help="Preset name (see `spa-cil info`) or path to a YAML file.")
SetOption = typer.Option(None, "--set", "-s", help="Override a config value, e.g. --set train.epochs=3 (repeatable).")
# -v / -q are accepted before the command (spa-cil -v train) and after it (spa-cil train -v)
VerboseOption = typer.Option(False, "--verbose", "-v", help="Debug logging and full tracebacks.")
QuietOption = typer.Option(False, "--quiet", "-q", help="Warnings and errors only.")
ProgressOption = typer.Option(None, "--progress/--no-progress",
                              help="Progress bars (default: only when stderr is a terminal, so a log file gets no "
                                   "carriage returns).")


def _root_chatter(record: logging.LogRecord) -> bool:
    """open_clip logs chatter on the root logger (INFO) and a random-init notice (WARNING): hidden unless -v."""
    return _STATE["verbose"] or record.name != "root" or record.levelno > logging.WARNING


def _configure_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Merge the flags given before and after the command and set the root level (the only logging set-up)."""
    _STATE["verbose"] = _STATE["verbose"] or verbose
    _STATE["quiet"] = (_STATE["quiet"] or quiet) and not _STATE["verbose"]
    level = logging.DEBUG if _STATE["verbose"] else logging.WARNING if _STATE["quiet"] else logging.INFO
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    root.setLevel(level)
    for handler in root.handlers:
        if _root_chatter not in handler.filters:
            handler.addFilter(_root_chatter)


def _bars(progress: Optional[bool]) -> bool:
    """Progress bars when asked, else only on a terminal: tqdm's carriage returns garble log files."""
    return sys.stderr.isatty() if progress is None else progress


def _require_config(command: str, config: Optional[str], overrides: list[str]) -> None:
    """Without -c the schema defaults would run the random-weights test backbone: refuse unless it is named."""
    if config is None and not any(o.strip().startswith("backbone.name=") for o in overrides):
        raise UsageError(f"`spa-cil {command}` needs a config: -c PRESET (e.g. -c partsworld_demo or "
                         "-c cifar100_b0_inc10; `spa-cil info` lists them) or -c path/to/config.yaml; without one "
                         "the defaults would use random weights, so to do that on purpose pass "
                         "--set backbone.name=tiny-test")


def _fail(exc: BaseException, where: str = "") -> None:
    """A few lines on stderr instead of a traceback for errors the user can fix (the traceback too under -v)."""
    if _STATE["verbose"]:
        logging.getLogger(__name__).error("traceback of the error below", exc_info=exc)
    lines = str(exc).strip().splitlines() or [exc.__class__.__name__]
    if len(lines) > MAX_MESSAGE_LINES:
        lines = lines[:MAX_MESSAGE_LINES - 1] + [f"  ... {len(lines) - MAX_MESSAGE_LINES + 1} more lines"]
    typer.secho(f"error{f' ({where})' if where else ''}: " + "\n".join(lines), err=True, fg=typer.colors.RED)
    raise typer.Exit(code=2)


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--seeds must be comma-separated integers, got {text!r}") from None


@app.callback()
def main(verbose: bool = VerboseOption, quiet: bool = QuietOption) -> None:
    _STATE["verbose"], _STATE["quiet"] = verbose, quiet
    _configure_logging()


@app.command()
def train(config: Optional[str] = ConfigOption, set_: Optional[List[str]] = SetOption,
          progress: Optional[bool] = ProgressOption,
          verbose: bool = VerboseOption, quiet: bool = QuietOption) -> None:
    """Train and evaluate a method over all tasks of a scenario; writes a run folder."""
    _configure_logging(verbose, quiet)
    progress = _bars(progress)
    from .training.harness import run_experiment

    try:
        cfg = load_config(config, set_ or [])
        _require_config("train", config, set_ or [])
        result = run_experiment(cfg, progress=progress)
    except USER_ERRORS as exc:
        _fail(exc)
    s = result.summary
    forgot = "-" if s.get("forgetting") is None else f"{s['forgetting']:.2f}"  # None with a single task
    typer.echo(f"average accuracy {s['average_accuracy']:.2f}  last accuracy {s['last_accuracy']:.2f}  "
               f"forgetting {forgot}  stages {['%.1f' % a for a in s['stage_accuracies']]}")
    if s.get("val_average_accuracy") is not None:
        typer.echo(f"validation: average accuracy {s['val_average_accuracy']:.2f}  "
                   f"last accuracy {s['val_last_accuracy']:.2f}  ({s['n_validation_images']} held-out training images)")
    typer.echo(f"run folder: {result.folder}")


@app.command("eval")
def eval_(run_dir: Path = typer.Argument(..., help="A run folder written by `spa-cil train`."),
          progress: Optional[bool] = ProgressOption,
          verbose: bool = VerboseOption, quiet: bool = QuietOption) -> None:
    """Re-evaluate a finished run from its config and per-task checkpoints."""
    _configure_logging(verbose, quiet)
    progress = _bars(progress)
    from .runs import read_metrics
    from .training.harness import evaluate_run

    try:
        if not (run_dir / "config.yaml").is_file():
            raise MissingFileError(f"{run_dir} is not a run folder (no config.yaml)")
        metrics = evaluate_run(run_dir, progress=progress)
    except USER_ERRORS as exc:
        _fail(exc)
    recorded = [row["accuracy"] for row in read_metrics(run_dir)]
    for stage, acc in enumerate(metrics.stage_accuracies):
        was = f"{recorded[stage]:.2f}" if stage < len(recorded) else "-"
        typer.echo(f"stage {stage}: accuracy {acc:.2f} (recorded {was})")
    typer.echo(json.dumps({k: v for k, v in metrics.summary().items() if k != "stage_accuracies"}))


@app.command()
def extract(config: Optional[str] = ConfigOption, set_: Optional[List[str]] = SetOption,
            split: str = typer.Option("both", help="train, test or both."),
            progress: Optional[bool] = ProgressOption,
            verbose: bool = VerboseOption, quiet: bool = QuietOption) -> None:
    """Encode a dataset once with the frozen backbone and store the features in the cache.

    Under `torchrun --nproc_per_node=N` the images are sharded across processes (one per GPU) and merged
    into the same cache entry a single process writes.
    """
    _configure_logging(verbose, quiet)
    progress = _bars(progress)
    from .backbone import load_backbone
    from .data.catalog import load_split
    from .features import FeatureCache
    from .features import distributed

    env = distributed.dist_env()
    rank = f"rank {env.rank}/{env.world_size}" if env else ""
    try:
        cfg = load_config(config, set_ or [])
        _require_config("extract", config, set_ or [])
        if split not in {"train", "test", "both"}:
            raise UsageError("--split must be train, test or both")
        # the dataset is checked before the backbone loads: a wrong key or folder fails in seconds
        sources = {name: load_split(cfg.data.dataset, name, cfg.data.root, cfg.data.download)
                   for name in (["train", "test"] if split == "both" else [split])}
        if env is not None:  # the process group (and this rank's CUDA device) first, then the weights onto it
            distributed.init_distributed()
        backbone = load_backbone(cfg.backbone.name, cfg.backbone.checkpoint,
                                 distributed.rank_device(cfg.backbone.device), cfg.backbone.precision, cfg.data.resize)
        backbone.set_patch_source(cfg.backbone.patch_layer, cfg.backbone.patch_path)
        cache = FeatureCache(cfg.cache.root, verify=cfg.cache.verify, dtype=cfg.cache.dtype)
        for name, source in sources.items():
            feats = distributed.get_features_distributed(source, backbone, cache, cfg.backbone.batch_size,
                                                         cfg.backbone.num_workers, cfg.data.bad_images,
                                                         progress and (env is None or env.rank == 0))
            if env is None or env.rank == 0:
                typer.echo(f"{cfg.data.dataset}/{name}: {len(feats)} images, {len(feats.skipped)} skipped, "
                           f"global {tuple(feats.global_.shape)}, patches {tuple(feats.patches.shape)} "
                           f"-> {feats.location}")
        typer.echo(f"{rank + ': ' if rank else ''}images encoded in this call: {backbone.images_encoded}")
    except USER_ERRORS as exc:
        _fail(exc, rank)
    finally:
        distributed.shutdown_distributed()


@app.command()
def compare(config: Optional[str] = ConfigOption, set_: Optional[List[str]] = SetOption,
            variants: Optional[str] = typer.Option(None, help="Comma-separated variants (see `spa-cil info`; "
                                                   "default: every method's default variants)."),
            seeds: str = typer.Option("1993", help="Comma-separated training seeds; >1 gives mean ± std."),
            output: Path = typer.Option(Path("runs/comparison"), help="Folder for the table and the runs."),
            progress: Optional[bool] = ProgressOption,
            verbose: bool = VerboseOption, quiet: bool = QuietOption) -> None:
    """Run methods and ablations on the same cached features and write one comparison table."""
    _configure_logging(verbose, quiet)
    progress = _bars(progress)
    from .training.compare import comparison_markdown, run_comparison

    try:
        cfg = load_config(config, set_ or [])
        _require_config("compare", config, set_ or [])
        names = [v.strip() for v in variants.split(",") if v.strip()] if variants else default_variants()
        seed_list = _seeds(seeds)
        rows = run_comparison(cfg, names, seed_list, output, progress=progress)
    except USER_ERRORS as exc:
        _fail(exc)
    typer.echo(comparison_markdown(rows))
    typer.echo(f"table: {output / 'comparison.md'} (also .csv, .json, accuracy_per_stage.png)")


@app.command()
def demo(output: Path = typer.Option(Path("spacil-demo"), help="Report folder (data, cache and runs go inside)."),
         seeds: str = typer.Option("1993", help="Comma-separated training seeds; 3 seeds give mean ± std."),
         variants: Optional[str] = typer.Option(None, help="Comma-separated variants (default: SPA, baselines, "
                                                "ablations)."),
         n_classes: int = typer.Option(50, min=2, help="Parts-world classes."),
         n_train: int = typer.Option(60, min=1, help="Training images per class."),
         n_test: int = typer.Option(20, min=1, help="Test images per class."),
         image_size: int = typer.Option(64, min=16, help="Rendered image side in pixels."),
         world_seed: int = typer.Option(0, help="Data seed of parts world (class design and rendering)."),
         descriptions: str = typer.Option("simulated", help="simulated (the simulated describer, shown guidance "
                                          "images) or ground_truth (exact vocabulary phrases: an upper bound)."),
         describer: Optional[List[str]] = typer.Option(None, help="Simulated describer setting KEY=VALUE "
                                                       "(e.g. miss_rate=0.4, guidance=random); repeatable."),
         ablations: bool = typer.Option(True, help="Also run the description ablations (guidance, error rates)."),
         set_: Optional[List[str]] = SetOption,
         progress: Optional[bool] = ProgressOption,
         verbose: bool = VerboseOption, quiet: bool = QuietOption) -> None:
    """The built-in default: SPA vs baselines and ablations on parts world, with a report folder."""
    _configure_logging(verbose, quiet)
    progress = _bars(progress)
    from .partsworld.demo import DemoSettings, run_demo
    from .training.compare import comparison_markdown

    try:
        describer_settings = {}
        for item in describer or []:
            key, sep, value = item.partition("=")
            if not sep:
                raise UsageError(f"--describer {item!r}: expected KEY=VALUE, e.g. miss_rate=0.4")
            describer_settings[key.strip()] = value.strip()
        settings = DemoSettings(output=output, overrides=list(set_ or []),
                                variants=[v.strip() for v in variants.split(",")] if variants else default_variants(),
                                seeds=_seeds(seeds), n_classes=n_classes,
                                n_train=n_train, n_test=n_test, image_size=image_size, data_seed=world_seed,
                                descriptions=descriptions, describer=describer_settings, ablations=ablations)
        report, rows = run_demo(settings, progress=progress)
    except ValidationError as exc:
        _fail(UsageError(f"demo option: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}"))
    except USER_ERRORS as exc:
        _fail(exc)
    typer.echo(comparison_markdown(rows))
    for extra in ("mechanism.md", "description_ablations.md"):
        if (output / extra).is_file():
            typer.echo((output / extra).read_text())
    typer.echo(f"report: {report} (and {report.with_suffix('.html')})")


data_app = typer.Typer(no_args_is_help=True, help="Dataset tools.")
app.add_typer(data_app, name="data")


@data_app.command("check")
def data_check(path: Path = typer.Argument(..., help="Dataset folder (root/train/<class>/..., root/test/...)."),
               dataset: str = typer.Option("image_folder", "--dataset", "-d",
                                           help="Dataset key (see `spa-cil info`); default: a generic image folder."),
               quick: bool = typer.Option(False, help="Skip opening every image."),
               workers: int = typer.Option(4, min=1, help="Threads that open images."),
               progress: Optional[bool] = ProgressOption,
               verbose: bool = VerboseOption, quiet: bool = QuietOption) -> None:
    """Validate a dataset folder: classes, images per split, empty, non-image and unreadable files; one screen."""
    _configure_logging(verbose, quiet)
    progress = _bars(progress)
    from .data.check import check_dataset
    from .data.folder_check import check_image_folder

    try:
        if dataset == "image_folder":
            report = check_image_folder(path, verify_images=not quick, workers=workers, progress=progress)
        else:
            report = check_dataset(dataset, path, verify_images=not quick, workers=workers, progress=progress)
    except USER_ERRORS as exc:
        _fail(exc)
    typer.echo(report.render())
    raise typer.Exit(code=0 if report.ok else 1)


@data_app.command("convert")
def data_convert(dataset: str = typer.Argument(..., help="cub200, food101, imagenet_r, objectnet, aircraft, sun397 "
                                                         "or cars."),
                 src: Path = typer.Argument(..., help="The extracted official release."),
                 dst: Path = typer.Argument(..., help="New folder for the protocol layout."),
                 link: str = typer.Option("hardlink", help="hardlink, copy or symlink."),
                 seed: int = typer.Option(1993, help="Split seed (ImageNet-R, ObjectNet)."),
                 test_fraction: float = typer.Option(0.2, help="Test share per class (ImageNet-R, ObjectNet)."),
                 partition: int = typer.Option(1, help="SUN397 partition number (1..10)."),
                 verbose: bool = VerboseOption, quiet: bool = QuietOption) -> None:
    """Convert an official dataset release into the train/test folder layout of the protocol."""
    _configure_logging(verbose, quiet)
    from .data.convert import convert

    try:
        if link not in {"hardlink", "copy", "symlink"}:
            raise UsageError("--link must be hardlink, copy or symlink")
        summary = convert(dataset, src, dst, link, seed, test_fraction, partition)
    except USER_ERRORS as exc:
        _fail(exc)
    counts = summary["counts"]
    typer.echo(f"{dataset}: {counts.get('train', 0)} train / {counts.get('test', 0)} test images of "
               f"{summary['n_classes']} classes -> {dst} "
               f"({', '.join(f'{n} {m}' for m, n in summary['files'].items())})")
    typer.echo(f"next: spa-cil data check {dst} --dataset {dataset}")


@app.command()
def info(verbose: bool = VerboseOption, quiet: bool = QuietOption) -> None:
    """List backbones, datasets, presets, shipped class orders, methods and their variants."""
    _configure_logging(verbose, quiet)
    from .backbone.registry import ALIASES
    from .data.catalog import list_datasets
    from .data.scenario import shipped_class_order_datasets

    typer.echo("backbones (also ARCH@TAG, ARCH@/path/to/weights, ARCH@random for any open_clip model):")
    for alias, spec in ALIASES.items():
        typer.echo(f"  {alias:22s} {spec.description}")
    typer.echo("datasets:")
    for key, text in list_datasets().items():
        typer.echo(f"  {key:22s} {text}")
    typer.echo("presets (--config NAME):")
    typer.echo("  " + ", ".join(list_presets()))
    typer.echo("shipped class orders (seed 1993): " + ", ".join(shipped_class_order_datasets()))
    _echo_description_sources()
    typer.echo("methods (method.name; exemplars = stores training samples of old classes; features it reads):")
    for entry in list_methods():
        typer.echo(f"  {entry.name:22s} {entry.summary}")
        typer.echo(f"  {'':22s} exemplars: {'yes' if entry.exemplars else 'no'}; features: {', '.join(entry.features)}")
    typer.echo("compare variants (* = run by default in compare and demo):")
    variants = all_variants()
    width = max(map(len, variants)) + 1
    for name, variant in variants.items():
        typer.echo(f"  {name:{width}s}{'*' if variant.default else ' '} {' '.join(variant.overrides)}")


def _echo_description_sources() -> None:
    """Per protocol dataset, where SPA's descriptions come from (descriptions.source=auto)."""
    from .data.protocol import PROTOCOL_DATASETS, protocol_class_names
    from .text.class_phrases import shipped_coverage

    typer.echo("descriptions (source=auto; <data.root>/descriptions.json wins when present):")
    for key in PROTOCOL_DATASETS:
        typer.echo(f"  {key:22s} {shipped_coverage(key, protocol_class_names(key))}")


@app.command()
def describe(config: Optional[str] = ConfigOption, set_: Optional[List[str]] = SetOption,
             model: str = typer.Option(..., help="Multimodal model name served by the endpoint."),
             base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 "
                                                    "(vLLM, Ollama); default: the OpenAI API."),
             api_key_env: str = typer.Option("OPENAI_API_KEY", help="Environment variable holding the API key."),
             output: Path = typer.Option(Path("descriptions.json"), help="Description file to write."),
             cache: Optional[Path] = typer.Option(None, help="JSONL cache of answers (resume); default <output>.cache.jsonl."),
             n_representative: int = typer.Option(3, min=0, help="Images nearest the class centre."),
             n_diverse: int = typer.Option(2, min=0, help="Farthest-point images."),
             selection: str = typer.Option("centroid", help="Representative rule: centroid or kmeans."),
             min_phrases: int = typer.Option(MIN_PHRASES, min=1), max_phrases: int = typer.Option(MAX_PHRASES, min=1),
             response_format: str = typer.Option(
                 "auto", help="How the answer's JSON form is requested: auto (json_schema, else json_object, else "
                 "none, as the server accepts), json_schema, json_object or none."),
             json_mode: Optional[bool] = typer.Option(None, "--json-mode/--no-json-mode", hidden=True,
                                                      help="Deprecated: --response-format json_object / none."),
             max_attempts: int = typer.Option(5, min=1, help="Tries per class (backoff on 429, timeouts, 5xx)."),
             timeout: float = typer.Option(120.0, help="Seconds per request."),
             skip_failed: bool = typer.Option(False, help="Go on after a class fails (the file is then not written)."),
             progress: Optional[bool] = ProgressOption,
             verbose: bool = VerboseOption, quiet: bool = QuietOption) -> None:
    """Generate class-wise descriptions from representative and diverse images with a multimodal LLM."""
    _configure_logging(verbose, quiet)
    progress = _bars(progress)
    from .descriptions.generator import GenerationParameters
    from .descriptions.pipeline import DescribeSettings, describe_dataset

    def report(event) -> None:
        typer.echo(f"[{event.index + 1}/{event.total}] {event.class_name}: {event.status}"
                   + (f" ({event.attempts} attempts)" if event.attempts > 1 else ""))

    try:
        if json_mode is not None:
            if response_format != "auto":
                raise UsageError("give --response-format alone (--json-mode/--no-json-mode are its old spelling)")
            response_format = "json_object" if json_mode else "none"
        cfg = load_config(config, set_ or [])
        settings = DescribeSettings(
            model=model, output=output, cache=cache or output.with_suffix(".cache.jsonl"), base_url=base_url,
            api_key_env=api_key_env, n_representative=n_representative, n_diverse=n_diverse, selection=selection,
            seed=cfg.train.seed, parameters=GenerationParameters(min_phrases=min_phrases, max_phrases=max_phrases,
                                                                 response_format=response_format),
            timeout=timeout, max_attempts=max_attempts, on_failure="skip" if skip_failed else "raise")
        summary = describe_dataset(cfg, settings, progress=report, show_bars=progress)
    except USER_ERRORS as exc:
        _fail(exc)
    typer.echo(f"done {len(summary.done)}, from cache {len(summary.cached)}, failed {len(summary.failed)}")
    for name, reason in summary.failed.items():
        typer.echo(f"  failed {name}: {reason}")
    if summary.complete:
        typer.echo(f"description file: {output}")
    else:
        typer.echo("not all classes are described: rerun the same command to resume", err=True)
        raise typer.Exit(code=1)


from .cli_matrix import matrix as _matrix, results as _results  # noqa: E402  (their own module)

app.command("matrix")(_matrix)
app.command("results")(_results)


if __name__ == "__main__":  # pragma: no cover
    app()
