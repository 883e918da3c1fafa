"""Frozen CLIP backbones (open_clip) exposing global and token-level features."""

from .clip_adapter import (BackboneLoadError, FrozenCLIP, ImageFeatures, TextFeatures, load_backbone, pick_device,
                           register_model_configs)
from .registry import ALIASES, BackboneSpec, resolve_backbone

__all__ = [
    "ALIASES", "BackboneLoadError", "BackboneSpec", "FrozenCLIP", "ImageFeatures", "TextFeatures",
    "load_backbone", "pick_device", "register_model_configs", "resolve_backbone",
]
