"""A frozen open_clip model that exposes what SPA needs: global and token-level features.

open_clip's ``encode_image`` gives only the pooled [CLS] embedding and ``encode_text`` only the [EOS]
embedding. SPA also needs the patch tokens and the text tokens *in the joint space*, so this adapter
runs the towers itself and applies the same final projections (``visual.proj``, ``text_projection``)
to every token. Nothing here trains: the model is in eval mode with gradients off.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor

from ..errors import SpacilError, UsageError
from .registry import BackboneSpec, local_model_config_dir, resolve_backbone
from .transforms import RESIZE_MODES, image_transform

PATCH_PATHS = ("block", "value")  # backbone.patch_path

logger = logging.getLogger(__name__)


class BackboneLoadError(SpacilError, RuntimeError):
    """The backbone could not be built (unknown name, weights absent offline, unsupported tower)."""


@dataclass
class ImageFeatures:
    """Frozen image features in the joint space (not L2-normalised)."""

    global_: Tensor  # [B, D] projected [CLS]
    patches: Tensor  # [B, P, D] projected patch tokens


@dataclass
class TextFeatures:
    """Frozen text features in the joint space (not L2-normalised)."""

    eos: Tensor  # [B, D] projected [EOS] embedding (what encode_text returns)
    tokens: Tensor  # [B, L, D] every position projected
    mask: Tensor  # [B, L] True on word tokens (between start and end of text, both excluded)


def pick_device(device: str) -> torch.device:
    """Resolve 'auto' to cuda when available."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a precision setting; None means plain fp32."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def register_model_configs() -> None:
    """Make our shipped open_clip model configs known to open_clip (idempotent)."""
    import open_clip

    folder = local_model_config_dir()
    if not all(p.stem in open_clip.list_models() for p in folder.glob("*.json")):
        open_clip.add_model_config(folder)


class FrozenCLIP:
    """Frozen CLIP backbone with global and token-level image/text features.

    ``images_encoded`` counts images passed through the visual encoder, so callers (the feature cache
    tests, the benchmark) can verify how many encoder forwards a run really made.
    """

    def __init__(self, model: torch.nn.Module, preprocess: Callable, tokenizer: Callable, spec: BackboneSpec,
                 device: torch.device, precision: str = "auto", resize: str = "crop") -> None:
        import open_clip

        if not isinstance(model, open_clip.CLIP):
            raise BackboneLoadError(
                f"backbone {spec.alias}: only open_clip.CLIP models with the built-in text tower are supported"
            )
        if not isinstance(model.visual, open_clip.transformer.VisionTransformer):
            raise BackboneLoadError(f"backbone {spec.alias}: patch tokens need a ViT image tower")
        self.model = model.eval().requires_grad_(False).to(device)
        self._open_clip_preprocess = preprocess
        self.resize = "crop"
        self.set_resize(resize)
        self.tokenizer = tokenizer
        self.spec = spec
        self.device = device
        self.precision = precision
        self.amp_dtype = autocast_dtype(precision, device)
        self.images_encoded = 0
        self._fingerprint: str | None = None
        self.patch_layer = len(model.visual.transformer.resblocks) - 1
        self.patch_path = "block"

    # ------------------------------------------------------------------ properties
    @property
    def name(self) -> str:
        return self.spec.alias

    @property
    def embed_dim(self) -> int:
        return int(self.model.visual.output_dim)

    @property
    def grid_size(self) -> tuple[int, int]:
        return tuple(int(g) for g in self.model.visual.grid_size)  # type: ignore[return-value]

    @property
    def num_patches(self) -> int:
        h, w = self.grid_size
        return h * w

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(int(s) for s in self.model.visual.image_size)  # type: ignore[return-value]

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp().item())

    def fingerprint(self) -> str:
        """sha256 of the weights, so a cache built with other weights is never reused."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            for key, tensor in sorted(self.model.state_dict().items()):
                digest.update(key.encode())
                digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def set_resize(self, mode: str) -> None:
        """Choose the image transform (``data.resize``): 'squash' (the protocol's) or 'crop' (open_clip's)."""
        import open_clip

        if mode not in RESIZE_MODES:
            raise ValueError(f"unknown resize mode {mode!r}; expected one of {', '.join(RESIZE_MODES)} (data.resize)")
        self.resize = mode
        self.preprocess = image_transform(mode, open_clip.get_model_preprocess_cfg(self.model),
                                          self._open_clip_preprocess)

    def transform_description(self) -> dict:
        """What the image transform does, as data (part of the feature-cache key).

        'crop' adds nothing, so cache entries written before the setting existed (all 'crop') stay valid;
        'squash' adds ``resize: squash``.
        """
        import open_clip

        cfg = open_clip.get_model_preprocess_cfg(self.model)
        described = {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(cfg.items())}
        if self.resize != "crop":
            described["resize"] = self.resize
        return described

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def set_patch_source(self, layer: int = -1, path: str = "block") -> None:
        """Choose where patch tokens are read (``backbone.patch_layer`` / ``backbone.patch_path``).

        CLIP trains its last block for the [CLS] token only, so its output patch tokens localise poorly;
        an earlier block's output, or the last block's value path alone (MaskCLIP, Zhou et al. ECCV 2022),
        are the usual dense alternatives. The default (the last block's output) is open_clip's own forward.
        """
        visual = self.model.visual
        n = len(visual.transformer.resblocks)
        if path not in PATCH_PATHS:
            raise UsageError(f"backbone.patch_path={path!r}: expected one of {', '.join(PATCH_PATHS)}")
        if not -n <= layer < n:
            raise UsageError(f"backbone.patch_layer={layer}: {self.name} has {n} image blocks; use {-n}..{n - 1}")
        layer %= n
        if (layer, path) != (n - 1, "block"):
            if visual.attn_pool is not None:
                raise UsageError(f"backbone.patch_layer / patch_path: {self.name} pools with attention; only "
                                 "the default patch tokens (patch_layer=-1, patch_path=block) are supported")
            attn = getattr(visual.transformer.resblocks[layer], "attn", None)
            if path == "value" and not isinstance(attn, torch.nn.MultiheadAttention):
                raise UsageError(f"backbone.patch_path=value: block {layer} of {self.name} is not a plain "
                                 "attention block to take the value path from; use backbone.patch_path=block")
        self.patch_layer, self.patch_path = layer, path

    def patch_source_description(self) -> dict:
        """Where the patch tokens come from, as data (part of the feature-cache key): empty for the default
        (the last block's output), so entries written before the setting existed stay valid."""
        if (self.patch_layer, self.patch_path) == (len(self.model.visual.transformer.resblocks) - 1, "block"):
            return {}
        return {"patch_layer": self.patch_layer, "patch_path": self.patch_path}

    # ------------------------------------------------------------------ encoders
    @torch.inference_mode()
    def encode_images(self, images: Tensor) -> ImageFeatures:
        """Global and patch features of preprocessed images [B, 3, H, W], float32, joint space."""
        visual = self.model.visual
        images = images.to(self.device, non_blocking=True)
        previous = visual.output_tokens
        visual.output_tokens = True
        try:
            with self._autocast():
                if self.patch_source_description():
                    pooled, tokens = self._forward_with_patch_source(images)
                else:
                    pooled, tokens = visual(images)
                patches = tokens @ visual.proj
        finally:
            visual.output_tokens = previous
        self.images_encoded += images.shape[0]
        return ImageFeatures(global_=pooled.float(), patches=patches.float())

    def _forward_with_patch_source(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """open_clip's image forward (no attention pool), with the patch tokens taken from block
        ``patch_layer``: its output, or its value path alone; both then normalised and pooled as open_clip
        does the output tokens (ln_post first unless the model applies it after pooling). Uses open_clip
        3.x's ``_embeds`` / ``_pool`` / ``_global_pool`` (the dependency range); tests/test_patch_source.py
        checks it against hooks on open_clip's own forward."""
        visual = self.model.visual
        x = visual._embeds(images)
        transformer = visual.transformer
        if not transformer.batch_first:
            x = x.transpose(0, 1)
        chosen = x
        for i, block in enumerate(transformer.resblocks):
            if i == self.patch_layer and self.patch_path == "value":
                chosen = value_path(block, x)
            x = block(x)
            if i == self.patch_layer and self.patch_path == "block":
                chosen = x
        if not transformer.batch_first:
            x, chosen = x.transpose(0, 1), chosen.transpose(0, 1)
        pooled, _ = visual._pool(x)
        if visual.proj is not None:
            pooled = pooled @ visual.proj
        _, tokens = visual._global_pool(chosen if visual.final_ln_after_pool else visual.ln_post(chosen))
        return pooled, tokens

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        return self.tokenizer(list(texts))

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> TextFeatures:
        """[EOS] and per-token features of texts, float32, joint space, with a word-token mask."""
        m = self.model
        ids = self.tokenize(texts).to(self.device)
        with self._autocast():
            cast = m.transformer.get_cast_dtype()
            x = m.token_embedding(ids).to(cast) + m.positional_embedding.to(cast)
            x = m.transformer(x, attn_mask=m.attn_mask)
            x = m.ln_final(x)
            proj = m.text_projection
            tokens = proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
        eos_index = ids.argmax(dim=-1)  # the end-of-text id is the largest id in CLIP's vocabulary
        rows = torch.arange(ids.shape[0], device=ids.device)
        eos = tokens[rows, eos_index]
        positions = torch.arange(ids.shape[1], device=ids.device)[None, :]
        mask = (positions > 0) & (positions < eos_index[:, None])
        return TextFeatures(eos=eos.float(), tokens=tokens.float(), mask=mask)


def value_path(block: torch.nn.Module, x: Tensor) -> Tensor:
    """MaskCLIP's dense tokens of a residual attention block: ``out_proj(W_v ln_1(x) + b_v)``, i.e. the
    attention branch with every token attending to itself only (no query-key attention, no residual, no MLP)."""
    attn = block.attn
    d = attn.embed_dim
    bias = attn.in_proj_bias[2 * d:] if attn.in_proj_bias is not None else None
    v = torch.nn.functional.linear(block.ln_1(x), attn.in_proj_weight[2 * d:], bias)
    return block.ls_1(attn.out_proj(v))


def load_backbone(name: str = "tiny-test", checkpoint: Path | str | None = None, device: str = "auto",
                  precision: str = "auto", resize: str = "crop") -> FrozenCLIP:
    """Build a frozen CLIP by name (see :mod:`spacil.backbone.registry`); ``resize`` picks the image transform."""
    import open_clip

    spec = resolve_backbone(name, checkpoint)
    register_model_configs()
    if spec.arch not in open_clip.list_models():
        raise BackboneLoadError(f"open_clip has no architecture {spec.arch!r} (backbone {spec.alias})")
    torch_device = pick_device(device)
    try:
        if spec.pretrained is None:
            # Random init draws from torch's global RNG; fork it so the caller's RNG state is untouched.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(spec.init_seed)
                model, _, preprocess = open_clip.create_model_and_transforms(spec.arch, pretrained=None)
        else:
            model, _, preprocess = open_clip.create_model_and_transforms(spec.arch, pretrained=spec.pretrained)
    except Exception as exc:  # noqa: BLE001 - open_clip raises many types; the user needs one clear line
        hint = ""
        if spec.pretrained and not Path(spec.pretrained).exists():
            hint = (" (weights are downloaded from the Hugging Face hub on first use: run once online, "
                    "or pass backbone.checkpoint=/path/to/weights)")
        raise BackboneLoadError(f"could not load backbone {spec.alias}: {exc}{hint}") from exc
    tokenizer = open_clip.get_tokenizer(spec.arch)
    logger.info("loaded backbone %s (%s, weights=%s) on %s", spec.alias, spec.arch, spec.pretrained or "random", torch_device)
    return FrozenCLIP(model, preprocess, tokenizer, spec, torch_device, precision, resize)
