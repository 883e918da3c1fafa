"""Pretrain a tiny CLIP on parts world, the way CLIP is trained: images against alt-text captions.

The default objective is CLIP's alone: the symmetric contrastive loss between the [CLS] embedding and
an alt-text caption (:mod:`.captions`: colour and shape most of the time, some of the parts visible in
that image, varied wording, sometimes no part). No patch ever sees a label, as in real CLIPs, so the
patch tokens are not taught the description phrases; the report measures how well they align anyway
(``patch_phrase_top1``).

``patch_loss_weight > 0`` adds a second, non-CLIP objective: each patch token that mostly covers one
part is classified against the phrases of the whole vocabulary. That gives the *part-supervised*
backbone (``partsworld-partsup``), an upper bound of what SPA's frozen patch branch can do when patch
tokens and phrases already meet in the joint space; it is not a fair stand-in for a real CLIP.
CPU only; the results are shipped with the package.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .captions import AltTextConfig, alt_text_caption, seen_kinds
from .dataset import random_part_combinations
from .render import caption_for, component_names, render_layers
from .vocabulary import NONE, VOCABULARY

logger = logging.getLogger(__name__)

SEED_DOMAIN_PRETRAIN = 7_001  # keeps pretraining images apart from benchmark images of the same seed


@dataclass(frozen=True)
class PretrainSettings:
    """Everything that determines the shipped weights (recorded in their metadata)."""

    arch: str = "spacil-partsworld-tiny"
    n_pairs: int = 32768
    image_size: int = 64
    epochs: int = 30
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    captions: str = "alt_text"  # 'alt_text' (CLIP-like) or 'ground_truth' (every part, fixed wording)
    patch_loss_weight: float = 0.0  # > 0: the part-supervised objective (not how CLIP is trained)
    min_part_fraction: float = 0.3  # a patch is labelled with a part when the part covers this much of it
    seed: int = 0
    threads: int = 2  # torch threads, set by the script that runs this (library code leaves them alone)


def phrase_vocabulary() -> list[str]:
    """Every phrase a patch can be labelled with: part values, then body shapes."""
    return ([v.phrase for kind in VOCABULARY.kinds for v in kind.values]
            + [s.phrase for s in VOCABULARY.shapes])


def _patch_targets(labels: np.ndarray, parts, patch: int, min_fraction: float, phrase_index: dict[str, int]) -> np.ndarray:
    """Per patch, the phrase index of the component covering at least ``min_fraction`` of it (else -1)."""
    names = component_names()
    g = labels.shape[0] // patch
    blocks = labels[: g * patch, : g * patch].reshape(g, patch, g, patch).transpose(0, 2, 1, 3).reshape(g * g, -1)
    targets = np.full(g * g, -1, dtype=np.int64)
    for comp_id, name in enumerate(names):
        if name in ("background", "clutter"):
            continue
        if name == "body":
            phrase = VOCABULARY.shape(parts.shape).phrase
        else:
            value = parts.get(name)
            if value == NONE:
                continue
            phrase = VOCABULARY.kind(name).value(value).phrase
        share = (blocks == comp_id).mean(axis=1)
        better = (share >= min_fraction) & ((targets == -1) | (name != "body"))  # a part beats the body behind it
        targets[better] = phrase_index[phrase]
    return targets


def build_pretraining_data(settings: PretrainSettings, patch_size: int, progress: bool = True):
    """Images [n, H, W, 3] uint8, captions, patch phrase targets [n, P] and the phrase list."""
    phrases = phrase_vocabulary()
    index = {p: i for i, p in enumerate(phrases)}
    combos = random_part_combinations(settings.n_pairs, settings.seed + SEED_DOMAIN_PRETRAIN)
    images, captions, targets = [], [], []
    if settings.captions not in ("alt_text", "ground_truth"):
        raise ValueError(f"captions must be 'alt_text' or 'ground_truth', got {settings.captions!r}")
    alt = AltTextConfig()
    for i, parts in enumerate(tqdm(combos, desc="render pretraining pairs", disable=not progress, leave=False)):
        seeds = np.random.SeedSequence([settings.seed, SEED_DOMAIN_PRETRAIN, i]).spawn(2)
        layers = render_layers(parts, np.random.default_rng(seeds[0]), settings.image_size)
        images.append(np.asarray(layers.image, dtype=np.uint8))
        caption_rng = np.random.default_rng(seeds[1])
        if settings.captions == "alt_text":
            seen = seen_kinds(layers.visible_pixels(), layers.variation.faded, alt.min_visible_pixels)
            captions.append(alt_text_caption(parts, seen, caption_rng, alt))
        else:
            captions.append(caption_for(parts, caption_rng))
        targets.append(_patch_targets(layers.labels, parts, patch_size, settings.min_part_fraction, index))
    return np.stack(images), captions, np.stack(targets), phrases


def encode_text_trimmed(model, ids: torch.Tensor) -> torch.Tensor:
    """``model.encode_text(ids)`` on the first L token positions only (L = longest text in ``ids``).

    The text tower's mask is causal and the text is read at its end-of-text token, so the padding after
    it never changes the result; dropping it makes pretraining steps cheaper (captions are short).
    """
    from open_clip.transformer import text_global_pool

    length = int((ids != 0).sum(1).max())
    ids = ids[:, :length]
    x = model.token_embedding(ids) + model.positional_embedding[:length]
    mask = model.attn_mask[:length, :length] if model.attn_mask is not None else None
    x = model.ln_final(model.transformer(x, attn_mask=mask))
    x = text_global_pool(x, ids, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    return x @ model.text_projection


def _normalise(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> normalised float NCHW (what the model's eval transform does at native size)."""
    return (images.permute(0, 3, 1, 2).float() / 255.0 - mean[:, None, None]) / std[:, None, None]


def pretrain(settings: PretrainSettings, output: Path, progress: bool = True) -> dict:
    """Train from random init and write ``output`` (safetensors, fp16) plus a JSON report beside it."""
    import open_clip
    from safetensors.torch import save_file

    from ..backbone import register_model_configs

    register_model_configs()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        model = open_clip.create_model(settings.arch, pretrained=None)
    tokenizer = open_clip.get_tokenizer(settings.arch)
    cfg = open_clip.get_model_preprocess_cfg(model)
    mean, std = torch.tensor(cfg["mean"]), torch.tensor(cfg["std"])
    patch = int(model.visual.patch_size[0])

    start = time.perf_counter()
    images, captions, targets, phrases = build_pretraining_data(settings, patch, progress)
    render_seconds = time.perf_counter() - start
    images_t = torch.from_numpy(images)
    caption_ids = tokenizer(captions)
    phrase_ids = tokenizer(phrases)
    targets_t = torch.from_numpy(targets)

    params_decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    params_other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": params_decay, "weight_decay": settings.weight_decay},
                             {"params": params_other, "weight_decay": 0.0}], lr=settings.lr)
    n = len(captions)
    steps_per_epoch = n // settings.batch_size
    total = steps_per_epoch * settings.epochs

    def lr_at(step: int) -> float:
        if step < settings.warmup_steps:
            return settings.lr * (step + 1) / settings.warmup_steps
        return 0.5 * settings.lr * (1 + np.cos(np.pi * (step - settings.warmup_steps) / max(1, total - settings.warmup_steps)))

    gen = torch.Generator().manual_seed(settings.seed)
    model.train()
    history = []
    step = 0
    bar = tqdm(total=total, desc="pretrain tiny CLIP", disable=not progress)
    for epoch in range(settings.epochs):
        order = torch.randperm(n, generator=gen)
        sums = np.zeros(3)
        for b in range(steps_per_epoch):
            idx = order[b * settings.batch_size:(b + 1) * settings.batch_size]
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            x = _normalise(images_t[idx], mean, std)
            model.visual.output_tokens = True
            pooled, tokens = model.visual(x)
            model.visual.output_tokens = False
            img = F.normalize(pooled, dim=-1)
            txt = F.normalize(encode_text_trimmed(model, caption_ids[idx]), dim=-1)
            scale = model.logit_scale.exp().clamp(max=100)
            logits = scale * img @ txt.T
            labels = torch.arange(len(idx))
            global_loss = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
            if settings.patch_loss_weight > 0:
                patches = F.normalize(tokens @ model.visual.proj, dim=-1)
                ph = F.normalize(model.encode_text(phrase_ids), dim=-1)
                patch_logits = scale * patches @ ph.T  # [B, P, n_phrases]
                patch_loss = F.cross_entropy(patch_logits.reshape(-1, len(phrases)), targets_t[idx].reshape(-1),
                                             ignore_index=-1)
            else:  # CLIP's objective alone: the phrases are not encoded, no patch is labelled
                patch_loss = torch.zeros(())
            loss = global_loss + settings.patch_loss_weight * patch_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sums += [loss.item(), global_loss.item(), patch_loss.item()]
            step += 1
            bar.update(1)
        history.append({"epoch": epoch, **dict(zip(["loss", "global_loss", "patch_loss"], (sums / steps_per_epoch).round(4)))})
        bar.set_postfix(loss=f"{history[-1]['loss']:.3f}")
        logger.info("epoch %d: %s", epoch, history[-1])
    bar.close()
    model.eval()

    metrics = _alignment_check(model, tokenizer, settings, mean, std, patch, phrases)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    output.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(output), metadata={"arch": settings.arch, "settings": str(asdict(settings))})
    report = {"settings": asdict(settings), "history": history, "held_out": metrics,
              "render_seconds": round(render_seconds, 1), "train_seconds": round(time.perf_counter() - start - render_seconds, 1)}
    return report


@torch.no_grad()
def _alignment_check(model, tokenizer, settings: PretrainSettings, mean, std, patch: int, phrases: list[str]) -> dict:
    """Held-out image-caption retrieval and patch-phrase accuracy (pairs the training never saw)."""
    held = PretrainSettings(**{**asdict(settings), "n_pairs": 512, "seed": settings.seed + 1})
    images, captions, targets, _ = build_pretraining_data(held, patch, progress=False)
    x = _normalise(torch.from_numpy(images), mean, std)
    model.visual.output_tokens = True
    pooled, tokens = model.visual(x)
    model.visual.output_tokens = False
    img = F.normalize(pooled, dim=-1)
    txt = F.normalize(model.encode_text(tokenizer(captions)), dim=-1)
    ph = F.normalize(model.encode_text(tokenizer(phrases)), dim=-1)
    patches = F.normalize(tokens @ model.visual.proj, dim=-1)
    retrieval = float(((img @ txt.T).argmax(-1) == torch.arange(len(captions))).float().mean())
    t = torch.from_numpy(targets)
    pred = (patches @ ph.T).argmax(-1)
    valid = t >= 0
    return {"image_to_caption_top1": round(retrieval, 4),
            "patch_phrase_top1": round(float((pred[valid] == t[valid]).float().mean()), 4),
            "n_pairs": len(captions)}
