"""The table of learners: one registration per method names it, its config section and its variants.

A decorator on the learner class fills a name -> :class:`MethodEntry` table (as timm's model registry
does); the config schema (one ``method.<name>`` section per entry), ``spa-cil info``, ``compare`` and the
demo read it. Adding a method is one module plus its import in :mod:`spacil.methods`::

    @register_method("ncm", config=NCMConfig, variants={"ncm": []})
    class NCM(Learner): ...

Variant overrides are written relative to the method's section (``"ot.aggregation=mean"`` means
``method.spa.ot.aggregation=mean``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping, Sequence, TypeVar

from pydantic import BaseModel

from ..errors import UsageError
from ..suggest import did_you_mean

if TYPE_CHECKING:
    from ..config import Config
    from .base import Learner

L = TypeVar("L", bound="type[Learner]")


@dataclass(frozen=True)
class Variant:
    """A named method setting for ``compare``: full dotted overrides on top of a base config."""

    name: str
    method: str
    overrides: tuple[str, ...]
    default: bool  # run by `compare` and the demo unless variants are named


@dataclass(frozen=True)
class MethodEntry:
    """Everything the rest of the package needs to know about one method."""

    name: str
    learner: "type[Learner]"
    config: type[BaseModel]
    variants: tuple[Variant, ...]
    exemplars: bool = False  # keeps training samples (as features) of old classes: not exemplar-free
    features: tuple[str, ...] = ("global",)  # what it reads: global, patches, prompts, descriptions

    @property
    def summary(self) -> str:
        doc = (self.learner.__doc__ or self.config.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


_METHODS: dict[str, MethodEntry] = {}
FEATURE_KINDS = frozenset({"global", "patches", "prompts", "descriptions"})


def _variants(method: str, table: Mapping[str, Sequence[str]], default: bool) -> list[Variant]:
    return [Variant(name, method, (f"method.name={method}", *(f"method.{method}.{o}" for o in overrides)), default)
            for name, overrides in table.items()]


def register_method(name: str, config: type[BaseModel], variants: Mapping[str, Sequence[str]] | None = None,
                    extra_variants: Mapping[str, Sequence[str]] | None = None, exemplars: bool = False,
                    features: Sequence[str] = ("global",)) -> Callable[[L], L]:
    """Class decorator: register a learner under ``name`` with its config section.

    ``variants`` run by default in ``compare`` and the demo (default: the method itself, ``{name: []}``);
    ``extra_variants`` can be named but do not run by default. ``exemplars`` marks a method that stores
    samples of old classes (a protocol setting users compare on); ``features`` names what it reads
    (``global`` [CLS], ``patches``, class ``prompts``, ``descriptions``), both shown by ``spa-cil info``.
    """
    unknown = sorted(set(features) - FEATURE_KINDS)
    if unknown:
        raise ValueError(f"method {name!r}: unknown feature kinds {unknown}; known: {sorted(FEATURE_KINDS)}")
    def wrap(cls: L) -> L:
        if name in _METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        taken = {v.name for entry in _METHODS.values() for v in entry.variants}
        found = _variants(name, variants if variants is not None else {name: []}, True)
        found += _variants(name, extra_variants or {}, False)
        clash = sorted(taken & {v.name for v in found})
        if clash:
            raise ValueError(f"method {name!r}: variant names already taken: {', '.join(clash)}")
        cls.name = name
        _METHODS[name] = MethodEntry(name, cls, config, tuple(found), exemplars, tuple(features))
        return cls

    return wrap


def list_methods() -> list[MethodEntry]:
    """Registered methods in registration order."""
    return list(_METHODS.values())


def get_method(name: str) -> MethodEntry:
    if name not in _METHODS:
        raise UsageError(f"unknown method {name!r}{did_you_mean(name, _METHODS)}; known: {', '.join(_METHODS)}")
    return _METHODS[name]


def all_variants() -> dict[str, Variant]:
    """Every variant of every method, by name, in registration order."""
    return {v.name: v for entry in _METHODS.values() for v in entry.variants}


def default_variants() -> list[str]:
    """What ``compare`` and the demo run when no variants are named."""
    return [name for name, v in all_variants().items() if v.default]


def make_learner(config: "Config") -> "Learner":
    """The learner named by ``config.method.name``, built from its section of the config."""
    return get_method(config.method.name).learner.from_config(config)
