"""Names users type for a backbone, and how each maps onto open_clip.

A backbone name is one of:
- a registered alias (``laion400m/ViT-B-16``, ``openai/ViT-B-16``, ``tiny-test`` ...),
- ``ARCH@TAG`` for any open_clip architecture and pretrained tag (``ViT-L-14@datacomp_xl_s13b_b90k``),
- ``ARCH@/path/to/weights`` for a local checkpoint file (``.pt``, ``.bin``, ``.safetensors``),
- ``ARCH@random`` for a randomly initialised model (timing runs, tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import MissingFileError, UsageError
from ..suggest import did_you_mean


@dataclass(frozen=True)
class BackboneSpec:
    """What open_clip needs to build a backbone."""

    alias: str
    arch: str  # open_clip model name (config), e.g. "ViT-B-16-quickgelu"
    pretrained: str | None  # open_clip pretrained tag, a local file path, or None for random init
    description: str = ""
    init_seed: int = 0  # used only when pretrained is None


ALIASES: dict[str, BackboneSpec] = {
    spec.alias: spec
    for spec in [
        BackboneSpec("laion400m/ViT-B-16", "ViT-B-16", "laion400m_e32", "OpenCLIP ViT-B/16 LAION-400M e32 (the protocol backbone)"),
        BackboneSpec("openai/ViT-B-16", "ViT-B-16-quickgelu", "openai", "OpenAI CLIP ViT-B/16 (QuickGELU, as trained)"),
        BackboneSpec("laion2b/ViT-B-16", "ViT-B-16", "laion2b_s34b_b88k", "OpenCLIP ViT-B/16 LAION-2B"),
        BackboneSpec("openai/ViT-L-14", "ViT-L-14-quickgelu", "openai", "OpenAI CLIP ViT-L/14 (QuickGELU)"),
        BackboneSpec("tiny-test", "spacil-tiny-test", None, "Tiny random-init ViT (32px, 16 patches, 32-d) for tests; no download"),
        BackboneSpec("partsworld-clip", "spacil-partsworld-tiny", "package:assets/partsworld_clip.safetensors",
                     "Tiny ViT (64px, 8x8 patches, 64-d) pretrained on parts world the way CLIP is (alt-text "
                     "captions, contrastive loss only); the demo's backbone; shipped, no download"),
        BackboneSpec("partsworld-partsup", "spacil-partsworld-tiny", "package:assets/partsworld_partsup_clip.safetensors",
                     "Tiny ViT pretrained on parts world with part-level supervision (patch tokens taught the "
                     "vocabulary phrases): an upper bound for SPA's patch branch, not a fair CLIP; shipped"),
    ]
}

#: ``pretrained`` values starting with this prefix name a file shipped inside the package.
PACKAGE_PREFIX = "package:"

#: Architectures we ship as open_clip model configs (registered lazily with ``add_model_config``).
LOCAL_MODEL_CONFIG_PACKAGE = "spacil.backbone.model_configs"


def local_model_config_dir() -> Path:
    """Folder of the open_clip model configs shipped with this package."""
    return Path(str(resources.files(LOCAL_MODEL_CONFIG_PACKAGE)))


def package_file(relative: str) -> Path:
    return Path(str(resources.files("spacil"))) / relative


def resolve_backbone(name: str, checkpoint: Path | str | None = None) -> BackboneSpec:
    """Turn a user-facing backbone name (and optional local checkpoint) into a :class:`BackboneSpec`."""
    if name in ALIASES:
        spec = ALIASES[name]
        if spec.pretrained and spec.pretrained.startswith(PACKAGE_PREFIX):
            path = package_file(spec.pretrained[len(PACKAGE_PREFIX):])
            if not path.is_file():
                raise MissingFileError(f"backbone {name}: shipped weights {path} are missing from the installation")
            spec = BackboneSpec(spec.alias, spec.arch, str(path), spec.description)
    elif "@" in name:
        arch, _, tag = name.partition("@")
        if not arch or not tag:
            raise UsageError(f"backbone {name!r}: expected ARCH@TAG, ARCH@/path/to/weights or ARCH@random")
        spec = BackboneSpec(name, arch, None if tag == "random" else tag, "user-specified open_clip model")
    else:
        known = ", ".join(sorted(ALIASES))
        raise UsageError(f"unknown backbone {name!r}{did_you_mean(name, ALIASES)}; use one of {known}, "
                         "or ARCH@TAG / ARCH@/path/to/weights")
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise MissingFileError(f"backbone checkpoint not found: {path}")
        spec = BackboneSpec(spec.alias, spec.arch, str(path), f"{spec.arch} with local weights {path.name}")
    return spec
