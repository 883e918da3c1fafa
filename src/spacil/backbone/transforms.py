"""The image transform in front of the frozen encoder: the protocol's squash or open_clip's crop.

The LAMDA line (PROOF ``utils/data.py``, ``build_transform``) resizes the whole image to a square
(aspect ratio not kept), centre-crops (a no-op after the square resize) and normalises with CLIP's mean
and std, for train and test alike. open_clip's own preprocess resizes the shorter side and centre-crops,
which cuts the edges of every non-square image: other pixels, so other numbers. Both read the image size,
mean, std and interpolation from the model's preprocess config, so a 32 px test model gets 32 px.
"""

from __future__ import annotations

from typing import Any, Callable, Literal

from torchvision import transforms as T

ResizeMode = Literal["squash", "crop"]
RESIZE_MODES: tuple[str, ...] = ("squash", "crop")


def squash_transform(cfg: dict[str, Any]) -> Callable:
    """``Resize((S, S))`` of the whole image + ``CenterCrop(S)`` + CLIP normalisation (the protocol's)."""
    size = cfg["size"]
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    interpolation = T.InterpolationMode(cfg.get("interpolation", "bicubic"))
    return T.Compose([
        T.Resize((height, width), interpolation=interpolation),
        T.CenterCrop((height, width)),
        T.ToTensor(),
        T.Normalize(mean=tuple(cfg["mean"]), std=tuple(cfg["std"])),
    ])


def image_transform(mode: str, cfg: dict[str, Any], open_clip_preprocess: Callable) -> Callable:
    """The transform of ``mode``: 'squash' (protocol) or 'crop' (open_clip's preprocess, unchanged)."""
    if mode == "crop":
        return open_clip_preprocess
    if mode == "squash":
        return squash_transform(cfg)
    raise ValueError(f"unknown resize mode {mode!r}; expected one of {', '.join(RESIZE_MODES)} (data.resize)")
