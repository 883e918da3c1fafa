"""One typed configuration schema for every run.

Every tunable of the project lives here, so a run folder's ``config.yaml`` is the complete
description of what ran. Unknown keys are errors (``extra="forbid"``) because a silently ignored
typo in a hyperparameter is the worst kind of irreproducibility.
"""

from __future__ import annotations

import copy
import os
import re
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, create_model, field_validator, model_validator

from .errors import MissingFileError
from .methods import list_methods
from .schema import ConfigError, StrictModel
from .suggest import did_you_mean



class BackboneConfig(StrictModel):
    """Which frozen CLIP encodes images and texts, and how it runs."""

    name: str = Field("tiny-test", description="Registered backbone (see `spa-cil info`) or ARCH@TAG / ARCH@/path/to/weights.")
    checkpoint: Path | None = Field(None, description="Local weights file overriding the named weights (same architecture).")
    device: str = Field("auto", description="'auto' picks cuda when available, else cpu.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="'auto' is bf16 autocast on GPU and fp32 on CPU."
    )
    batch_size: int = Field(128, ge=1, description="Images per encoder forward during feature extraction.")
    patch_layer: int = Field(
        -1, description="Image block whose tokens are the patch tokens (-1 = the last: CLIP's output tokens; -2 "
        "the one before, ...), read through ln_post and the projection like the output tokens. Part of the "
        "feature-cache key.")
    patch_path: Literal["block", "value"] = Field(
        "block", description="'block': that block's output; 'value': its value path alone (MaskCLIP: ln_1, value "
        "and output projections, without query-key attention, residual or MLP), which localises better on large "
        "CLIPs. Part of the feature-cache key.")
    num_workers: int | Literal["auto"] = Field(
        "auto", description="DataLoader processes that decode images during extraction, per machine: 'auto' = "
        "min(8, CPU cores); under torchrun the number is divided over the machine's ranks (at least 1 each).")

    @field_validator("num_workers")
    @classmethod
    def _workers(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 0:
            raise ValueError("num_workers must be 'auto' or a count >= 0")
        return v


class DataConfig(StrictModel):
    """Which dataset and which class-incremental split."""

    dataset: str = Field("image_folder", description="Dataset key (see `spa-cil info`).")
    root: Path | None = Field(None, description="Dataset folder; defaults to $SPACIL_DATA_ROOT/<dataset>.")
    class_order: Literal["shipped", "natural"] | list[int] | Path = Field(
        "shipped",
        description="'shipped' = the seed-1993 order data file of the dataset, 'natural' = label order, "
        "a list of class indices, or a path to a JSON/text file holding one.",
    )
    init_cls: int = Field(10, ge=1, description="Classes in the first task (B0 -> equal to increment, B50 -> 50).")
    increment: int = Field(10, ge=1, description="Classes added by each later task (the last may be smaller).")
    bad_images: Literal["skip", "error"] = Field(
        "skip", description="Unreadable images: 'skip' logs each file and leaves it out, 'error' stops before training."
    )
    download: bool = Field(False, description="Allow torchvision datasets to download when absent.")
    resize: Literal["squash", "crop"] = Field(
        "crop", description="Image transform before the encoder, train and test alike: 'squash' = the LAMDA "
        "protocol's Resize((S, S), bicubic) of the whole image + CenterCrop(S) + CLIP mean/std (S = the model's "
        "image size; the protocol presets use it); 'crop' = open_clip's preprocess (shorter side to S, centre "
        "crop). Part of the feature-cache key.")
    validation_fraction: float = Field(
        0.0, ge=0.0, lt=1.0, description="Share of each class's training images held out as a validation split "
        "(round(fraction * n), at least 1 per class when > 0): methods train on the rest, and every stage is also "
        "scored on these images, so settings can be chosen without the test split. 0 = no validation split.")
    validation_seed: int = Field(
        0, description="Which training images are held out (ranked per class by a hash of this seed and the "
        "image's id; independent of train.seed so every training seed sees the same split).")

    @field_validator("root")
    @classmethod
    def _absolute_root(cls, v: Path | None) -> Path | None:
        """Stored absolute, so a run folder's config.yaml finds the data from any working directory
        (``spa-cil eval <run>`` elsewhere); the run hash leaves ``data.root`` out, so this changes no run key."""
        return absolute_path(v)


def absolute_path(path: Path | None) -> Path | None:
    """A relative path made absolute against the working directory; ``~/...`` is kept as typed, so a run folder
    moved to another machine (another home) still finds that machine's folder."""
    if path is None or str(path).startswith("~") or Path(path).is_absolute():
        return path
    return Path(os.path.abspath(path))  # normalises "..", unlike Path.absolute


class CacheConfig(StrictModel):
    """Where frozen features are stored so the encoder runs once per image."""

    enabled: bool = True
    root: Path = Field(Path("~/.cache/spacil/features"), description="Folder of the feature cache.")
    verify: Literal["fast", "full"] = Field(
        "fast", description="'fast' checks manifest, shapes and sizes, and finds an image folder's content hash "
        "by its fingerprint (paths, sizes, modification times) without reading the images; 'full' also "
        "re-hashes the stored arrays and every image file.")
    dtype: Literal["float16", "float32"] = Field(
        "float16", description="Storage of the cached features: float16 halves disk and memory (ViT-B/16 patch "
        "tokens of CIFAR-100: ~12 GB); float32 keeps the encoder's output exactly.")

    @field_validator("root")
    @classmethod
    def _absolute_root(cls, v: Path) -> Path:
        """Absolute for the same reason as ``data.root`` (result-neutral, so no run key changes)."""
        return absolute_path(v)


class TextConfig(StrictModel):
    """How classes are turned into text for the frozen text encoder."""

    templates: list[str] = Field(default_factory=lambda: ["a photo of a {}."],
                                 description="Prompt templates averaged into each class's [EOS] embedding.")

    @field_validator("templates")
    @classmethod
    def _has_slot(cls, v: list[str]) -> list[str]:
        if not v or any("{}" not in t for t in v):
            raise ValueError("each template needs one '{}' for the class name")
        return v


class DescriptionsConfig(StrictModel):
    """Where class-wise visual-cue descriptions come from (no run ever calls an LLM)."""

    source: Literal["auto", "file", "templates"] = Field(
        "auto",
        description="'auto': <data.root>/descriptions.json if present, else the shipped file of the dataset, "
        "else prompt templates (with a warning naming the classes); 'file': `path`; 'templates': prompts only.",
    )
    path: Path | None = Field(None, description="Description file (spacil-descriptions JSON) for source=file.")

    @model_validator(mode="after")
    def _path_given(self) -> "DescriptionsConfig":
        if self.source == "file" and self.path is None:
            raise ValueError("descriptions.source=file needs descriptions.path")
        return self


DEFAULT_METHOD = "spa"


def _method_config() -> type[StrictModel]:
    """``method``: the chosen ``name`` and one section per registered method (only the chosen one is used)."""
    entries = list_methods()
    sections: dict[str, Any] = {e.name: (e.config, Field(default_factory=e.config)) for e in entries}
    names = Literal[tuple(e.name for e in entries)]  # type: ignore[valid-type]
    model = create_model("MethodConfig", __base__=StrictModel, name=(names, DEFAULT_METHOD), **sections)
    model.__doc__ = "The learner and its settings; only the section of the chosen ``name`` is used."
    return model


MethodConfig = _method_config()

class TrainConfig(StrictModel):
    """Optimisation on cached features."""

    seed: int = Field(1993, description="Seeds every generator of the run (no global RNG is touched).")
    epochs: int = Field(5, ge=0)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    device: str = Field("auto", description="Device for training on cached features.")
    eval_batch_size: int = Field(256, ge=1, description="Images scored at once (memory knob, not a hyperparameter).")
    eval_features: Literal["device", "stream"] = Field(
        "device", description="'device' copies the test split's cached features onto the training device once "
        "per run (patches in cache.dtype: ~200 KB per ViT-B/16 image) and checks them for NaN once; 'stream' "
        "reads each stage's rows from the cache batch by batch (less device memory, more host traffic). "
        "Results are identical.")


class RunConfig(StrictModel):
    """Where results go."""

    output_dir: Path = Field(Path("runs"), description="Parent folder of run folders.")
    name: str | None = Field(None, description="Run folder name; default <dataset>-<method>-<config hash>, "
                             "so the same command finds the same folder.")
    resume: bool = Field(True, description="Continue an unfinished run of the same config from its last finished task.")
    overwrite: bool = Field(False, description="Delete this run's existing folder and redo the run (e.g. after a "
                            "code change: a folder computed by other code is refused otherwise).")
    save_checkpoints: bool = Field(True, description="Per-task trainable state (also what resuming needs).")
    tensorboard: bool = Field(False, description="Also log stage accuracies to <run>/tensorboard (needs spacil[tracking]).")
    plots: bool = True

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str | None) -> str | None:
        if v is not None and (not v or "/" in v or v in {".", ".."}):
            raise ValueError("run.name must be a plain folder name")
        return v


class Config(StrictModel):
    """The whole run."""

    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    text: TextConfig = Field(default_factory=TextConfig)
    descriptions: DescriptionsConfig = Field(default_factory=DescriptionsConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    run: RunConfig = Field(default_factory=RunConfig)

    @model_validator(mode="after")
    def _split_fits(self) -> "Config":
        if isinstance(self.data.class_order, list) and len(self.data.class_order) < self.data.init_cls:
            raise ValueError(
                f"data.init_cls={self.data.init_cls} exceeds the {len(self.data.class_order)} classes of data.class_order"
            )
        return self


# --------------------------------------------------------------------------- loading

PRESET_PACKAGE = "spacil.configs"


def list_presets() -> list[str]:
    """Names of the YAML presets shipped with the package."""
    folder = resources.files(PRESET_PACKAGE)
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _read_yaml(source: str | Path) -> dict[str, Any]:
    """Read a preset name or a YAML file path into a dict."""
    path = Path(source).expanduser()
    if _looks_like_path(str(source)) or path.exists():
        if not path.is_file():
            raise MissingFileError(f"config file not found: {path} ({'a folder' if path.is_dir() else 'no such file'}, "
                                   f"looked from {Path.cwd()}); give the path of a YAML file, or a preset name "
                                   "(`spa-cil info` lists them)")
        text = path.read_text()
    else:
        name = str(source)
        preset = resources.files(PRESET_PACKAGE) / f"{name}.yaml"
        if not preset.is_file():
            hint = did_you_mean(name, list_presets())
            raise ConfigError(f"unknown preset {name!r}{hint}; "
                              + ("`spa-cil info` lists the presets" if hint else f"presets: {', '.join(list_presets())}")
                              + " (a config file is given by its path, e.g. ./my.yaml)")
        text = preset.read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_error_line(source, exc)) from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {source} must be a YAML mapping at top level")
    base = data.pop("extends", None)
    if base is not None:
        data = deep_merge(_read_yaml(base), data)
    return data


def _looks_like_path(source: str) -> bool:
    """A file path rather than a preset name: it names a folder or has a suffix (presets are bare words)."""
    return "/" in source or "\\" in source or Path(source).suffix != "" or source.startswith("~")


def _yaml_error_line(source: str | Path, exc: yaml.YAMLError) -> str:
    """``file:line:column: what`` for a YAML syntax error (lines and columns counted from 1, as editors do)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(source)
    what = " ".join(str(p) for p in (getattr(exc, "context", None), getattr(exc, "problem", None)) if p)
    return f"{where}: YAML syntax error: {what or exc.__class__.__name__}; fix the file (indentation, a missing ':')"


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``override`` into a copy of ``base`` (mappings merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value``; the value is read as YAML so numbers, booleans and lists keep their type."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.path=value")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({exc.__class__.__name__})") from None
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted ``--set`` overrides to a raw config dict."""
    out = copy.deepcopy(data)
    for item in overrides:
        parts, value = parse_override(item)
        node = out
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return out


def _format_validation_error(exc: ValidationError) -> str:
    """One line per problem, naming the dotted key, instead of pydantic's multi-line dump."""
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            siblings = _field_names(Config, err["loc"][:-1])
            hint = did_you_mean(str(err["loc"][-1]), siblings)
            if hint and len(err["loc"]) > 1:  # name the whole dotted key, as it would be typed in --set
                hint = hint.replace("'", f"'{'.'.join(map(str, err['loc'][:-1]))}.", 1)
            problems.append(f"unknown key '{loc}'{hint}")
        elif err["type"] == "literal_error" and isinstance(err.get("input"), str):
            choices = re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", "")))
            problems.append(f"{loc}: {err['msg']}{did_you_mean(err['input'], choices)}")
        else:
            problems.append(f"{loc}: {err['msg']}")
    return "invalid config: " + "; ".join(problems)


def _field_names(model: Any, loc: tuple) -> list[str]:
    """The field names of the config section at ``loc`` (``("train",)`` -> TrainConfig's), or [] if unknown."""
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        candidates = [field.annotation, *typing.get_args(field.annotation)]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return []
    return list(getattr(model, "model_fields", {}))


def build_config(data: dict[str, Any]) -> Config:
    """Validate a raw dict into a :class:`Config`, raising :class:`ConfigError` with a one-line message."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc)) from None


def load_config(source: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a preset name or YAML file (or the defaults), then apply ``--set`` overrides."""
    data = _read_yaml(source) if source is not None else {}
    return build_config(apply_overrides(data, overrides or []))


def config_to_yaml(config: Config) -> str:
    """The resolved config as YAML, as written into every run folder."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
