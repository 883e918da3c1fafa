"""Performance benchmark of spacil: every figure is a ratio measured in this one run.

    python benchmarks/run_benchmarks.py [--out FOLDER] [--quick] [--compile] [--sections a,b]

``--quick`` runs every section at small sizes in seconds (the test suite runs it, so a section that breaks
fails CI); its figures are not the ones to report. Without ``--out``, only a full run (every section, not
quick) writes ``benchmarks/results``, the files docs/performance.md quotes; a quick run or a subset of sections
goes to ``benchmarks/results/scratch`` (ignored by git).

Writes ``results.json`` and ``results.md`` (a table with each goal and PASS/MISS). Measures:
1. batched masked Sinkhorn vs a per-pair Python loop over the same B x C problems;
2. patch-level OT scoring time relative to the encoder forward of the same images (ViT-B/16, random init);
3. encoder forwards per full run / (train + test images), counted by the backbone;
4. memory saved for backward by the OT score at 50 vs 10 iterations (plan detached);
5. convergence of the default iteration count against a 1000-iteration solve;
6. training throughput on cached features, extraction throughput, and GPU extraction when a GPU is present.
7. OT at the protocol's problem sizes: our Sinkhorn (auto/log domain, compiled) vs POT's batched solver and a
   per-pair POT loop.
8. SPA's learner at protocol scale (P=196, D=512, C in {100, 200, 300}): training step, scoring and the default
   scope=global path, old formulation (gather features) vs new (gather similarities), peak memory per step in a
   fresh subprocess; on a GPU also CUDA peak memory, bf16 throughput and an 18-split wall-time estimate.
9. evaluation throughput per stage (test split streamed from the cache vs held on the device) and a warm
   command (cache hit found by the folder's fingerprint) vs a cold one on 5,000 small PNGs (``gpu_paths.py``).
   ``--sections`` runs a subset of the sections.
Timings use the median of repeats after a warm-up. No assertion here: the table reports MISS honestly.

Adding a section: a function ``bench_<name>(opts: BenchOptions) -> dict`` decorated with ``@section("<name>")``
(registration order is run order); ``opts.quick`` asks for small sizes, ``opts.results`` holds the sections
measured before it in this run, ``opts.workdir`` is a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from spacil.backbone import load_backbone  # noqa: E402
from spacil.config import load_config  # noqa: E402
from spacil.methods.spa import SPAConfig  # noqa: E402
from spacil.ot import ot_score, sinkhorn_log, sinkhorn_loop_reference, sinkhorn_plan, uniform_masses  # noqa: E402
from spacil.methods.spa.learner import SPALearner  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_paths  # noqa: E402  (issue 23's sections: evaluation per stage, warm vs cold cache lookup)


@dataclass
class BenchOptions:
    """What every section receives: the command-line switches, a scratch folder and the results so far."""

    quick: bool = False  # small sizes: every section in seconds (smoke test; figures not for reporting)
    compile: bool = False  # also time torch.compile
    ot_threads: int = 0  # torch threads for the OT protocol-size section (0: leave as is)
    workdir: Path = Path(".")
    results: dict = field(default_factory=dict)


#: name -> section function, in run order (see :func:`section`).
SECTIONS: dict[str, Callable[[BenchOptions], dict]] = {}


def section(name: str) -> Callable:
    """Register ``fn(opts) -> dict`` as the section ``name`` (run in registration order)."""
    def register(fn: Callable[[BenchOptions], dict]) -> Callable[[BenchOptions], dict]:
        if name in SECTIONS:
            raise ValueError(f"benchmark section {name!r} registered twice")
        SECTIONS[name] = fn
        return fn
    return register


def timed(fn: Callable[[], object], repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time of ``fn`` in seconds (CUDA synchronised when used)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ot_problem(b: int, c: int, m: int, n: int, seed: int = 0, ragged: bool = True):
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(b, m, 32, generator=g), dim=-1)
    y = F.normalize(torch.randn(c, n, 32, generator=g), dim=-1)
    sim = torch.einsum("bmd,cnd->bcmn", x, y)
    mask = torch.ones(c, n, dtype=torch.bool)
    if ragged:  # classes with fewer tokens, as descriptions have
        lengths = torch.randint(n // 2, n + 1, (c,), generator=g)
        mask = torch.arange(n)[None] < lengths[:, None]
    a = torch.full((b, c, m), 1.0 / m)
    return sim, a, uniform_masses(mask)[None].expand(b, c, n).contiguous()


@section("sinkhorn")
def bench_sinkhorn(args: BenchOptions) -> dict:
    b, c = (16, 25) if args.quick else (64, 100)
    sim, a, bm = ot_problem(b, c, 32, 32)
    cost = 1 - sim
    eps, iters = 0.1, 30
    # the default solver (auto domain: exp here, cosine costs with eps 0.1) and the log domain, vs the loop
    batched = timed(lambda: sinkhorn_plan(cost, a, bm, eps, iters, domain="auto", cost_range=2.0))
    batched_log = timed(lambda: sinkhorn_log(cost, a, bm, eps, iters))
    loop = timed(lambda: sinkhorn_loop_reference(cost, a, bm, eps, iters), repeats=1, warmup=0)
    out = {"problems": f"B={b} x C={c}, M=N=32, {iters} iterations", "batched_s": batched,
           "batched_log_s": batched_log, "loop_s": loop, "speedup": loop / batched,
           "speedup_log_domain": loop / batched_log}
    if args.compile:
        try:
            compiled = torch.compile(sinkhorn_log, dynamic=False)
            compiled_s = timed(lambda: compiled(cost, a, bm, eps, iters), warmup=2)
            out.update(compiled_s=compiled_s, compiled_speedup_vs_eager=batched_log / compiled_s)
        except Exception as exc:  # noqa: BLE001 - report, don't crash the benchmark
            out["compiled_error"] = f"{exc.__class__.__name__}: {exc}"[:200]
    return out


@section("ot_overhead")
def bench_ot_overhead(args: BenchOptions) -> dict:
    """Patch-level scoring (selection + OT) vs the ViT-B/16 forward of the same images (quick: the tiny
    test encoder, so the figure is not the ViT-B/16 ratio)."""
    bsz, n_classes = (4, 10) if args.quick else (32, 100)
    backbone = load_backbone("tiny-test" if args.quick else "ViT-B-16@random", device="cpu")
    size = backbone.image_size[0] if args.quick else 224
    images = torch.randn(bsz, 3, size, size, generator=torch.Generator().manual_seed(0))
    encode = timed(lambda: backbone.encode_images(images), repeats=2)
    feats = backbone.encode_images(images)
    learner, side = _learner_with_classes(n_classes, feats.global_.shape[1],
                                          SPAConfig(replay={"enabled": False}), _repeat(feats, 2 * n_classes))
    patches = learner.visual(feats.patches)
    with torch.no_grad():
        score = timed(lambda: learner.patch_scores(patches, side), repeats=3)
    return {"encoder": backbone.name if args.quick else "ViT-B/16 (random init)",
            "images": bsz, "classes": n_classes, "encoder_s": encode, "patch_scoring_s": score,
            "ratio": score / encode, "k": learner.config.selection.k, "iterations": learner.config.ot.iterations}


def _synthetic_texts(n_classes: int, dim: int, n_tokens: int = 8):
    """Class prompts and ragged semantic tokens (5..n_tokens per class) of random unit vectors."""
    from spacil.text.class_texts import ClassTexts
    from spacil.text.semantic_tokens import SemanticTokens

    g = torch.Generator().manual_seed(1)
    tokens = F.normalize(torch.randn(n_classes, n_tokens, dim, generator=g), dim=-1)
    mask = torch.arange(n_tokens)[None] < torch.randint(5, n_tokens + 1, (n_classes,), generator=g)[:, None]
    sem = SemanticTokens(tokens * mask[..., None], mask, F.normalize(tokens.mean(1), dim=-1),
                         [["p"] * n_tokens] * n_classes, torch.zeros(n_classes, n_tokens, dtype=torch.long))
    prompts = F.normalize(torch.randn(n_classes, dim, generator=g), dim=-1)
    return ClassTexts([str(i) for i in range(n_classes)], prompts, semantic=sem)


def _context(n_classes: int, dim: int):
    from spacil.methods.base import TaskContext

    return TaskContext(0, range(n_classes), n_classes, _synthetic_texts(n_classes, dim), torch.device("cpu"), 0)


def _learner_with_classes(n_classes: int, dim: int, cfg: SPAConfig, features):
    """An untrained SPA learner that has seen ``n_classes`` classes (prototypes from ``features``).

    Row i belongs to class ``i % n_classes``; every class needs two rows (its calibration statistics
    are a covariance), so pass at least ``2 * n_classes`` rows (:func:`_repeat`)."""
    from spacil.config import TrainConfig
    from spacil.methods.base import FeatureBatch

    learner = SPALearner(cfg, TrainConfig(epochs=0))
    labels = torch.arange(features.global_.shape[0]) % n_classes
    learner.learn_task(_context(n_classes, dim), FeatureBatch(features.global_, features.patches, labels))
    with torch.no_grad():
        side = learner.class_side(n_classes)
    return learner, side


def _repeat(feats, n: int, noise: float = 1e-2):
    """At least ``n`` rows of features (tiled, with a little seeded noise so the copies of a row are not
    identical and a class's covariance is not degenerate)."""
    from spacil.methods.base import FeatureBatch

    reps = -(-n // feats.global_.shape[0])
    g = torch.Generator().manual_seed(5)
    global_, patches = feats.global_.repeat(reps, 1), feats.patches.repeat(reps, 1, 1)
    global_ = global_ + noise * torch.randn(global_.shape, generator=g)
    patches = patches + noise * torch.randn(patches.shape, generator=g)
    return FeatureBatch(global_, patches, torch.zeros(0))


@section("forwards")
def bench_forwards_per_run(args: BenchOptions) -> dict:
    """A real 3-task run (10 epochs) through the harness and the cache: count encoder forwards."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import write_image_folder

    from spacil.training.harness import prepare_data, run_experiment

    workdir = args.workdir / "forwards"
    root = write_image_folder(workdir / "images", n_classes=6, n_train=8, n_test=4)
    backbone = load_backbone("tiny-test", device="cpu")
    cfg = load_config(None, [f"data.root={root}", "data.init_cls=2", "data.increment=2", "train.epochs=10",
                             f"cache.root={workdir / 'cache'}", f"run.output_dir={workdir / 'runs'}",
                             "backbone.num_workers=0", "run.plots=false"])
    run_experiment(cfg, data=prepare_data(cfg, backbone=backbone, progress=False), progress=False)
    n_images = 6 * (8 + 4)
    first = backbone.images_encoded
    cfg2 = load_config(None, [f"data.root={root}", "data.init_cls=2", "data.increment=2", "train.epochs=10",
                              f"cache.root={workdir / 'cache'}", f"run.output_dir={workdir / 'runs2'}",
                              "backbone.num_workers=0", "run.plots=false"])
    run_experiment(cfg2, data=prepare_data(cfg2, backbone=backbone, progress=False), progress=False)
    # a peer re-encoding every image of every batch of every epoch would do: epochs * train + stages * test
    peer = 10 * (6 * 8) + sum(2 * (t + 1) * 4 for t in range(3))
    return {"images": n_images, "forwards_first_run": first, "ratio_first_run": first / n_images,
            "forwards_second_run": backbone.images_encoded - first, "peer_style_forwards": peer,
            "peer_ratio": peer / n_images}


def saved_bytes(fn: Callable[[], torch.Tensor]) -> int:
    """Bytes of tensors autograd keeps for backward while building ``fn``'s graph."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    out.sum().backward()
    return total


@section("memory")
def bench_backward_memory(args: BenchOptions) -> dict:
    sim, a, bm = ot_problem(16, 50, 16, 16)
    out = {}
    for detach in (True, False):
        for iters in (10, 50):
            s = sim.clone().requires_grad_(True)
            out[f"{'detached' if detach else 'unrolled'}_{iters}"] = saved_bytes(
                lambda: ot_score(s, a, bm, 0.1, iters, detach_plan=detach)[0])
    out["ratio_detached"] = out["detached_50"] / out["detached_10"]
    out["ratio_unrolled"] = out["unrolled_50"] / out["unrolled_10"]
    return out


@section("convergence")
def bench_convergence(args: BenchOptions) -> dict:
    """Default iterations vs 1000 on real-like features: the shipped parts-world CLIP on rendered images,
    patches selected by each class's descriptions and transported onto its phrase tokens, as SPA does."""
    from spacil.partsworld import class_descriptions, generate_split, make_class_specs
    from spacil.methods.spa.patch_selection import patch_relevance, select_top_k
    from spacil.text.semantic_tokens import build_semantic_tokens

    cfg = SPAConfig()
    k = 16
    backbone = load_backbone("partsworld-clip", device="cpu")
    specs = make_class_specs(8 if args.quick else 20, seed=0)
    samples = generate_split(specs, 2 if args.quick else 3, seed=5, split="test")
    images = torch.stack([backbone.preprocess(s.image) for s in samples])
    patches = F.normalize(backbone.encode_images(images).patches, dim=-1)
    sem = build_semantic_tokens(backbone, [s.name for s in specs], [class_descriptions(s) for s in specs])
    rel = patch_relevance(patches, "description", sem.description)
    selected, _ = select_top_k(patches, rel, k)
    sim = torch.einsum("bckd,cnd->bckn", selected, sem.tokens)
    a = torch.full(sim.shape[:3], 1.0 / k)
    bm = uniform_masses(sem.mask)[None]
    default, _ = ot_score(sim, a, bm, cfg.ot.eps, cfg.ot.iterations)
    exact, _ = ot_score(sim, a, bm, cfg.ot.eps, 1000)
    return {"iterations": cfg.ot.iterations, "eps": cfg.ot.eps, "images": len(samples), "classes": len(specs),
            "max_abs_error": float((default - exact).abs().max()),
            "argmax_agreement": float((default.argmax(-1) == exact.argmax(-1)).float().mean())}


@section("throughput")
def bench_throughput(args: BenchOptions) -> dict:
    from spacil.config import TrainConfig
    from spacil.methods.base import FeatureBatch

    n, dim, p, classes = (256, 64, 64, 10) if args.quick else (2048, 64, 64, 10)
    g = torch.Generator().manual_seed(0)
    batch = FeatureBatch(torch.randn(n, dim, generator=g), torch.randn(n, p, dim, generator=g).half(),
                         torch.arange(n) % classes)
    ctx = _context(classes, dim)
    train_s = timed(lambda: SPALearner(SPAConfig(), TrainConfig(epochs=1, batch_size=64)).learn_task(ctx, batch),
                    repeats=2)
    tiny = load_backbone("tiny-test", device="cpu")
    n_images = 32 if args.quick else 256
    images = torch.rand(n_images, 3, 32, 32, generator=g)
    tiny_s = timed(lambda: tiny.encode_images(images), repeats=3)
    out = {"train_samples_per_s": n / train_s, "train_setting": f"{n} samples, {p} patches, D={dim}, C={classes}, "
           "1 epoch incl. Gaussian statistics", "extract_tiny_images_per_s": n_images / tiny_s}
    if torch.cuda.is_available() and not args.quick:
        vit = load_backbone("ViT-B-16@random", device="cuda", precision="bf16")
        imgs = torch.randn(256, 3, 224, 224, device="cuda")
        s = timed(lambda: vit.encode_images(imgs), repeats=5, warmup=2)
        flops_per_image = 2 * 86e6 * 197  # ~2 * params * tokens for the ViT-B/16 image tower
        name = torch.cuda.get_device_name()
        peak = 989e12 if ("H100" in name or "H200" in name) else None  # dense bf16 tensor-core peak
        out["gpu"] = name
        out["gpu_extract_images_per_s"] = 256 / s
        if peak:
            out["gpu_fraction_of_bf16_peak"] = 256 / s * flops_per_image / peak
    return out


# --------------------------------------------------------------------------------------------------------------
# OT at the protocol's problem sizes: our solver (auto domain, log domain, compiled) vs POT, one run (issue 13)
# --------------------------------------------------------------------------------------------------------------

def _dense_ot_problems(b: int, c: int, m: int, n: int, seed: int = 0):
    """B x C problems of m unit patch vectors vs n unit token vectors (D=64), uniform masses, no padding:
    POT's batched solver is not padding-invariant before convergence, so plans are compared without padding."""
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(b, c, m, 64, generator=g), dim=-1)
    y = F.normalize(torch.randn(c, n, 64, generator=g), dim=-1)
    sim = torch.einsum("bcmd,cnd->bcmn", x, y)
    return sim, torch.full((b, c, m), 1.0 / m), torch.full((1, c, n), 1.0 / n).expand(b, c, n)


@section("ot_protocol")
def bench_ot_protocol_section(args: BenchOptions) -> dict:
    return bench_ot_protocol(args, threads=args.ot_threads or None)


def bench_ot_protocol(args: BenchOptions, sizes: tuple[tuple[int, int], ...] = ((16, 8), (32, 32)), eps: float = 0.1,
                      iters: int = 30, loop_subset: int = 256, threads: int | None = None) -> dict:
    """Batched Sinkhorn plans at the protocol's sizes: B=64 images x C=100 classes = 6,400 problems of
    k x N (k=16 selected patches x N=8 semantic tokens, and 32 x 32), eps 0.1, 30 iterations, CPU float32.

    Timed in this one run (median of repeats): ours with ``domain="auto"`` (exp domain here), ours in the log
    domain, ours through ``torch.compile`` (with ``--compile``; compile time reported apart), POT's batched
    solver ``ot.batch.solve_batch(method="log_sinkhorn", tol=0)`` on the same torch tensors and iterations, and
    a per-pair POT loop (``ot.sinkhorn`` per problem, numpy) timed on ``loop_subset`` problems and
    extrapolated to all of them. Plans are compared by max abs difference against POT's batched plans.
    ``threads`` sets torch's intra-op threads for this section only (e.g. 1 on a shared, oversubscribed
    machine, where spinning OpenMP workers make small batched ops erratic); None keeps the current setting.
    """
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _bench_ot_protocol(args, sizes, eps, iters, loop_subset)
    finally:
        torch.set_num_threads(previous_threads)


def _bench_ot_protocol(args, sizes, eps, iters, loop_subset) -> dict:
    try:
        import ot as pot
        import ot.batch  # noqa: F401
    except ImportError:
        return {"error": "POT (ot) with ot.batch is not installed"}
    import warnings

    from spacil.ot import choose_domain, sinkhorn_plan

    b, c = (4, 10) if args.quick else (64, 100)
    if args.quick:
        loop_subset = 8
    out = {"setting": f"B={b} x C={c} = {b * c} problems, eps={eps}, {iters} iterations, float32, "
                      f"{torch.get_num_threads()} threads, device cpu", "sizes": {}}
    for m, n in sizes:
        sim, a, bm = _dense_ot_problems(b, c, m, n)
        cost = 1 - sim
        domain = choose_domain(eps, 2.0)
        ours = lambda: sinkhorn_plan(cost, a, bm, eps, iters, "auto", cost_range=2.0)  # noqa: E731
        log = lambda: sinkhorn_plan(cost, a, bm, eps, iters, "log")  # noqa: E731
        flat = (cost.reshape(-1, m, n), a.reshape(-1, m), bm.reshape(-1, n))

        def pot_batched():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return pot.batch.solve_batch(flat[0], reg=eps, a=flat[1], b=flat[2], max_iter=iters, tol=0.0,
                                             method="log_sinkhorn", reg_type="entropy", grad="detach").plan

        row = {"problems": b * c, "m": m, "n": n, "auto_domain": domain}
        row["ours_auto_s"] = timed(ours, repeats=5)
        row["ours_log_s"] = timed(log, repeats=2, warmup=0)
        row["pot_batched_s"] = timed(pot_batched, repeats=2, warmup=0)
        plan, plan_log, plan_pot = ours(), log(), torch.as_tensor(pot_batched()).reshape(b, c, m, n)
        row["max_abs_diff_auto_vs_pot"] = float((plan - plan_pot).abs().max())
        row["max_abs_diff_log_vs_pot"] = float((plan_log - plan_pot).abs().max())
        row["max_abs_diff_auto_vs_log"] = float((plan - plan_log).abs().max())

        k = min(loop_subset, b * c)
        idx = torch.randperm(b * c, generator=torch.Generator().manual_seed(0))[:k]
        sub = [(flat[1][i].double().numpy(), flat[2][i].double().numpy(), flat[0][i].double().numpy()) for i in idx]

        def pot_loop():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return [pot.sinkhorn(ai, bi, ci, reg=eps, numItermax=iters, stopThr=0) for ai, bi, ci in sub]

        loop_subset_s = timed(pot_loop, repeats=1, warmup=0)
        loop_plans = torch.as_tensor(np.stack(pot_loop()))
        row.update(pot_loop_subset=k, pot_loop_subset_s=loop_subset_s,
                   pot_loop_extrapolated_s=loop_subset_s * (b * c) / k,
                   max_abs_diff_auto_vs_pot_loop=float((plan.reshape(-1, m, n)[idx].double() - loop_plans).abs().max()))
        if args.compile:
            solver = sys.modules["spacil.ot.sinkhorn"]
            compiled = lambda: sinkhorn_plan(cost, a, bm, eps, iters, "auto", cost_range=2.0, compile=True)  # noqa
            start = time.perf_counter()
            plan_c = compiled()
            row["compile_first_call_s"] = time.perf_counter() - start
            if solver._COMPILE_BROKEN:
                row["compiled_error"] = solver._COMPILE_BROKEN[0]
            else:
                row["ours_compiled_s"] = timed(compiled, repeats=5)
                row["max_abs_diff_compiled_vs_eager"] = float((plan_c - plan).abs().max())
                row["compiled_speedup_vs_eager"] = row["ours_auto_s"] / row["ours_compiled_s"]
        row["speedup_auto_vs_pot_batched"] = row["pot_batched_s"] / row["ours_auto_s"]
        row["speedup_auto_vs_log"] = row["ours_log_s"] / row["ours_auto_s"]
        row["speedup_auto_vs_pot_loop_extrapolated"] = row["pot_loop_extrapolated_s"] / row["ours_auto_s"]
        row["speedup_log_vs_pot_batched"] = row["pot_batched_s"] / row["ours_log_s"]
        out["sizes"][f"{m}x{n}"] = row
    return out


def render_ot_protocol(res: dict) -> str:
    """Markdown table of :func:`bench_ot_protocol` (times in ms, ratios measured in the same run)."""
    if "error" in res:
        return f"OT at protocol sizes: not measured ({res['error']}).\n"
    lines = [f"OT at protocol sizes ({res['setting']}); POT per-pair loop extrapolated from a random subset.", "",
             "| problem | ours auto | ours log | ours compiled | POT batched | POT per-pair loop (extrap.) | "
             "POT batched / ours | max abs diff vs POT batched |", "|---|---|---|---|---|---|---|---|"]
    for key, r in res["sizes"].items():
        comp = (f"{r['ours_compiled_s'] * 1e3:.0f} ms (compile {r['compile_first_call_s']:.0f} s)"
                if "ours_compiled_s" in r else r.get("compiled_error", "not run (--compile)"))
        lines.append(f"| {r['problems']} x {key} | {r['ours_auto_s'] * 1e3:.0f} ms ({r['auto_domain']}) | "
                     f"{r['ours_log_s'] * 1e3:.0f} ms | {comp} | {r['pot_batched_s'] * 1e3:.0f} ms | "
                     f"{r['pot_loop_extrapolated_s'] * 1e3:.0f} ms ({r['pot_loop_subset']} timed) | "
                     f"{r['speedup_auto_vs_pot_batched']:.1f}x | auto {r['max_abs_diff_auto_vs_pot']:.1e}, "
                     f"log {r['max_abs_diff_log_vs_pot']:.1e} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------------------
# SPA's learner at protocol scale (issue 13): old formulation (gather features) vs new (gather similarities)
# --------------------------------------------------------------------------------------------------------------

SCALE_P, SCALE_D, SCALE_N, SCALE_BATCH, SCALE_CHUNK = 196, 512, 8, 64, 256
#: Protocol splits (18): dataset, classes, init_cls, increment, and the train / test images assumed.
#: Counts: split_counts.json / protocol.py where published; otherwise assumptions stated in the label.
PROTOCOL_SPLITS = [
    ("cifar100", 100, (0, 50), 10, 50_000, 10_000, "published"),
    ("cub200", 200, (0, 100), 20, 5_994, 5_794, "published"),
    ("imagenet_r", 200, (0, 100), 20, 24_000, 6_000, "release 30,000, 80/20"),
    ("objectnet", 200, (0, 100), 20, 25_600, 6_400, "assumed: 50,000 x 200/313 images, 80/20"),
    ("aircraft", 100, (0, 50), 10, 6_667, 3_333, "published"),
    ("cars", 100, (0, 50), 10, 4_155, 4_103, "assumed: 8,144 / 8,041 x 100/196"),
    ("food101", 100, (0, 50), 10, 75_000, 25_000, "published (750 / 250 per class)"),
    ("ucf101", 100, (0, 50), 10, 9_443, 3_746, "assumed: 9,537 / 3,783 x 100/101"),
    ("sun397", 300, (0, 150), 30, 16_250, 16_250, "published (50 / 50 per category)"),
]


def old_patch_scores(patches, side: dict, cfg: SPAConfig):
    """The pre-issue-13 formulation: relevance on features, gather ``[B, C, k, D]``, einsum, same OT."""
    from spacil.methods.spa.patch_selection import patch_relevance, select_top_k

    rel = patch_relevance(patches, cfg.selection.rule, side["description"], side["tokens"], side["token_mask"],
                          cfg.selection.context_weight)
    selected, index = select_top_k(patches, rel, cfg.selection.k)
    sim = torch.einsum("bckd,cnd->bckn", selected, side["tokens"])
    a = torch.full(sim.shape[:3], 1.0 / sim.shape[2], device=sim.device)
    b = uniform_masses(side["token_mask"])[None]
    score, plan = ot_score(sim, a, b, cfg.ot.eps, cfg.ot.iterations, detach_plan=cfg.ot.detach_plan,
                           domain=cfg.ot.domain, check_convergence="off")
    return score, plan, index


def _scale_learner(n_classes: int, scope: str, device: torch.device) -> SPALearner:
    """An SPA learner with ``n_classes`` synthetic classes (D=512, ragged 5..8 tokens), projectors, prototypes."""
    from spacil.config import TrainConfig
    from spacil.methods.base import TaskContext

    cfg = SPAConfig(projector={"scope": scope}, ot={"check_convergence": "off"})
    learner = SPALearner(cfg, TrainConfig(epochs=0), chunk_size=SCALE_CHUNK)
    texts = _synthetic_texts(n_classes, SCALE_D, SCALE_N)
    learner._attach(TaskContext(0, range(n_classes), n_classes, texts, device, 0))
    learner._add_projectors(0)
    g = torch.Generator().manual_seed(2)
    protos = F.normalize(torch.randn(n_classes, SCALE_D, generator=g), dim=-1).to(device)
    learner.prototypes = {c: protos[c] for c in range(n_classes)}
    learner.task_starts = [0]
    return learner


def _scale_features(n: int, device: torch.device, seed: int = 3):
    """Synthetic frozen features: ``[n, D]`` [CLS], ``[n, P, D]`` patches, labels (explicit generator)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, SCALE_D, generator=g).to(device), torch.randn(n, SCALE_P, SCALE_D, generator=g).to(device),
            torch.randint(0, 10 ** 6, (n,), generator=g).to(device))


def _train_step(learner: SPALearner, form: str, patches, labels, n_classes: int) -> Callable[[], None]:
    """scope=all training step of the patch branch: adapted patches and tokens, scores, loss, backward."""
    score_fn = old_patch_scores if form == "old" else (lambda p, s, _cfg: learner.patch_scores(p, s))
    params = learner.visual.trainable_parameters() + learner.text.trainable_parameters()

    def step() -> None:
        side = learner.class_side(n_classes)
        score = score_fn(learner._patch_input(patches), side, learner.config)[0]
        loss = F.cross_entropy(learner.config.logit_scale * score, labels % n_classes)
        loss.backward()
        for p in params:
            p.grad = None
    return step


def _score_pass(learner: SPALearner, form: str, patches, n_classes: int) -> Callable[[], None]:
    """Frozen-branch scoring of one eval chunk (no grad), the work of evaluation and of scope=global."""
    side = learner.class_side(n_classes)

    @torch.no_grad()
    def run() -> None:
        x = learner._patch_input(patches)
        (old_patch_scores(x, side, learner.config) if form == "old" else learner.patch_scores(x, side))
    return run


def _global_step(learner: SPALearner, global_, table, labels, n_classes: int) -> Callable[[], None]:
    """scope=global training step: adapted [CLS] / prompts / prototypes + the precomputed patch scores."""
    params = learner.visual.trainable_parameters() + learner.text.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=1e-3)

    def step() -> None:
        side = learner.class_side(n_classes)
        loss = F.cross_entropy(learner._logits(global_, side, table), labels % n_classes)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def _current_rss() -> int:
    """Resident set size of this process now, bytes (Linux /proc)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux VmHWM, ``clear_refs`` 5); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _vm_hwm() -> int:
    """Peak RSS since the last reset, bytes (VmHWM of /proc/self/status)."""
    with open("/proc/self/status") as fh:
        line = next(line for line in fh if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def _peak_rss() -> int:
    """Peak resident set size of this process so far, bytes (ru_maxrss is KiB on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _measure_once(fn: Callable[[], None], device: torch.device) -> dict:
    """Peak memory of one call of ``fn``: CUDA allocator peak on a GPU, else the RSS peak over the RSS before."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return {"first_s": time.perf_counter() - start, "peak_bytes": torch.cuda.max_memory_allocated() - base,
                "memory": "cuda max_memory_allocated - allocated before"}
    start = time.perf_counter()
    fn()  # first call: lazy library loading and one-time allocations, not the step's own memory
    first = time.perf_counter() - start
    gc.collect()
    reset = _reset_peak_rss()
    before = _current_rss()
    fn()
    peak = _vm_hwm() if reset else _peak_rss()
    return {"first_s": first, "peak_bytes": max(0, peak - before), "peak_rss_bytes": _peak_rss(),
            "rss_before_bytes": before, "memory": "peak RSS - RSS before a warm step (fresh process"
            + (", VmHWM reset)" if reset else ", ru_maxrss: includes the first call)")}


def run_probe(spec: dict) -> dict:
    """One measurement in this (fresh) process: memory of the first call, then the median time of repeats."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    c, form, kind = spec["classes"], spec["form"], spec["kind"]
    learner = _scale_learner(c, "global" if kind in {"score", "global"} else "all", device)
    if kind == "train":
        _, patches, labels = _scale_features(SCALE_BATCH, device)
        fn, n = _train_step(learner, form, patches, labels, c), SCALE_BATCH
    elif kind == "score":
        _, patches, _ = _scale_features(SCALE_CHUNK, device)
        fn, n = _score_pass(learner, form, patches, c), SCALE_CHUNK
    else:
        global_, _, labels = _scale_features(SCALE_BATCH, device)
        table = torch.rand(SCALE_BATCH, c, generator=torch.Generator().manual_seed(4)).to(device)
        fn, n = _global_step(learner, global_, table, labels, c), SCALE_BATCH
    out = {**spec, "images": n, "device": str(device)}
    out.update(_measure_once(fn, device))
    out["step_s"] = timed(fn, repeats=spec.get("repeats", 3), warmup=0)  # two calls above were the warm-up
    out["images_per_s"] = n / out["step_s"]
    if device.type == "cuda":
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out["bf16_step_s"] = timed(fn, repeats=spec.get("repeats", 3), warmup=1)
        out["bf16_images_per_s"] = n / out["bf16_step_s"]
    return out


def _probe_subprocess(spec: dict, timeout: float = 900) -> dict:
    """Run :func:`run_probe` in a fresh interpreter, so each peak is measured alone."""
    import subprocess

    cmd = [sys.executable, str(Path(__file__).resolve()), "--probe", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("PROBE ")]
    if proc.returncode != 0 or not lines:
        return {**spec, "error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]}
    return json.loads(lines[-1][len("PROBE "):])


def _interpolate(points: dict[int, float], c: int) -> float:
    """Piecewise-linear value at ``c`` classes from measured ``{classes: value}`` (linear extrapolation)."""
    xs = sorted(points)
    lo, hi = (xs[0], xs[1]) if c <= xs[1] else (xs[-2], xs[-1])
    for a, b in zip(xs, xs[1:]):
        if a <= c <= b:
            lo, hi = a, b
    return max(0.0, points[lo] + (points[hi] - points[lo]) * (c - lo) / (hi - lo))


def protocol_estimate(score_s_per_image: dict[int, float], global_step_s: dict[int, float],
                      encoder_images_per_s: float, epochs: int = 5, replay_per_class: int = 64,
                      calibration_per_class: int = 64, batch: int = SCALE_BATCH) -> dict:
    """Wall time of the 18 protocol splits with the default path (scope=global), from per-image scoring cost
    and per-step global cost measured at a few class counts (linear in C between them).

    Per split: encoder pass over train + test once per dataset (the feature cache serves the second split);
    per task: score the task's images, the replay pool (old classes x ``replay_per_class``) and the calibration
    set (seen classes x ``calibration_per_class``; pseudo images counted at full-image cost: an upper bound),
    ``epochs`` x steps global steps, then score the test images of the seen classes."""
    splits, total = {}, 0.0
    for name, n_cls, bases, inc, n_train, n_test, _source in PROTOCOL_SPLITS:
        per_train, per_test = n_train / n_cls, n_test / n_cls
        for i, base in enumerate(bases):
            first = base or inc
            seen_after = list(range(first, n_cls + 1, inc))
            seconds = (n_train + n_test) / encoder_images_per_s if i == 0 else 0.0
            prev = 0
            for seen in seen_after:
                new_imgs = (seen - prev) * per_train
                scored = new_imgs + prev * replay_per_class + seen * calibration_per_class + seen * per_test
                seconds += scored * _interpolate(score_s_per_image, seen)
                seconds += epochs * math.ceil(new_imgs / batch) * _interpolate(global_step_s, seen)
                prev = seen
            key = f"{name}_b{base}_inc{inc}"
            splits[key] = seconds
            total += seconds
    return {"splits": splits, "total_s": total, "total_h": total / 3600}


@section("protocol_scale")
def bench_protocol_scale_section(args: BenchOptions) -> dict:
    return bench_protocol_scale(args, _encoder_images_per_s(args.results))


def bench_protocol_scale(args: BenchOptions, encoder_images_per_s: float | None = None,
                         classes: tuple[int, ...] = (100, 200, 300), old_classes: tuple[int, ...] = (100,)) -> dict:
    """Training step (scope=all, forward + backward), scoring (no grad, chunk 256) and the default scope=global
    path at P=196, D=512, N=8 (5..8 valid), batch 64, k=16, eps 0.1, 30 iterations; old vs new formulation.

    Every configuration runs in its own subprocess (peak memory measured alone). The old formulation runs
    only at ``old_classes`` (C=100: at 200 / 300 it would not fit this shared 24 GB machine). Quick: C in
    {8, 16}, one repeat, in this process (no fresh interpreter per probe, so its memory figures mix)."""
    if args.quick:
        classes, old_classes = (8, 16), (8,)

    def probe(spec: dict) -> dict:
        return run_probe({**spec, "repeats": 1}) if args.quick else _probe_subprocess(spec)

    out = {"setting": f"P={SCALE_P}, D={SCALE_D}, N={SCALE_N} (5..8 valid), batch {SCALE_BATCH}, k=16, eps 0.1, "
                      f"30 iterations, eval chunk {SCALE_CHUNK}, {torch.get_num_threads()} threads",
           "device": "cuda" if torch.cuda.is_available() else "cpu", "train": {}, "score": {}, "global": {}}
    for c in classes:
        for form in ("old", "new") if c in old_classes else ("new",):
            out["train"][f"{form}_{c}"] = probe({"kind": "train", "form": form, "classes": c,
                                                            "repeats": 2 if form == "old" else 3})
            out["score"][f"{form}_{c}"] = probe({"kind": "score", "form": form, "classes": c})
        out["global"][f"new_{c}"] = probe({"kind": "global", "form": "new", "classes": c, "repeats": 5})
    c0, c_max = classes[0], classes[-1]
    tr, sc = out["train"], out["score"]
    if f"old_{c0}" in tr and "error" not in tr[f"old_{c0}"] and "error" not in tr[f"new_{c0}"]:
        out["train_speedup"] = tr[f"old_{c0}"]["step_s"] / tr[f"new_{c0}"]["step_s"]
        out["train_memory_ratio"] = tr[f"old_{c0}"]["peak_bytes"] / max(1, tr[f"new_{c0}"]["peak_bytes"])
    if f"old_{c0}" in sc and "error" not in sc[f"old_{c0}"] and "error" not in sc[f"new_{c0}"]:
        out["score_speedup"] = sc[f"old_{c0}"]["step_s"] / sc[f"new_{c0}"]["step_s"]
    if "error" not in tr.get(f"new_{c_max}", {"error": 1}):
        out["train_peak_gb_new_max_c"] = tr[f"new_{c_max}"]["peak_bytes"] / 1e9
    out["default_path"] = _default_path(out, classes)
    if f"old_{c0}" in tr and "images_per_s" in tr[f"old_{c0}"] and str(c0) in out["default_path"]:
        out["default_speedup"] = out["default_path"][str(c0)]["images_per_s"] / tr[f"old_{c0}"]["images_per_s"]
    ok = all("error" not in r for sec in ("score", "global") for r in out[sec].values())
    if ok and encoder_images_per_s:
        score_cost = {c: sc[f"new_{c}"]["step_s"] / SCALE_CHUNK for c in classes}
        step_cost = {c: out["global"][f"new_{c}"]["step_s"] for c in classes}
        out["estimate"] = protocol_estimate(score_cost, step_cost, encoder_images_per_s)
        out["estimate"]["basis"] = ("GPU fp32 costs measured here" if out["device"] == "cuda" else
                                    "CPU NOTE: no GPU in this run; these are this CPU's costs, not a GPU estimate")
        out["estimate"]["encoder_images_per_s"] = encoder_images_per_s
    return out


def _default_path(out: dict, classes, n_task: int = 5_000, epochs: int = 5, pseudo_per_class: int = 64) -> dict:
    """images/s (per epoch-image) of the scope=global path for a task of ``n_task`` images, the last task of a
    10-task run: one scoring pass over the task's images, over the pool of pseudo images of the old classes
    (``pseudo_per_class`` x 0.9 C) and over the calibration's pseudo images (``pseudo_per_class`` x C), plus
    ``epochs`` x ceil(n_task / 64) global steps."""
    res = {}
    for c in classes:
        s, g = out["score"].get(f"new_{c}", {}), out["global"].get(f"new_{c}", {})
        if "step_s" in s and "step_s" in g:
            scored = n_task + pseudo_per_class * (round(0.9 * c) + c)
            seconds = scored * s["step_s"] / SCALE_CHUNK + epochs * math.ceil(n_task / SCALE_BATCH) * g["step_s"]
            res[str(c)] = {"task_images": n_task, "epochs": epochs, "scored_images": scored, "seconds": seconds,
                           "images_per_s": epochs * n_task / seconds,
                           "vs_new_train_step": (epochs * n_task / seconds)
                           / out["train"].get(f"new_{c}", {}).get("images_per_s", float("nan"))}
    return res


def _fmt_probe(r: dict | None, gpu: bool) -> str:
    if r is None:
        return "not run"
    if "error" in r:
        return f"error: {r['error']}"
    s = f"{r['images_per_s']:.1f} img/s, peak {r['peak_bytes'] / 1e9:.3f} GB"
    return s + (f", bf16 {r['bf16_images_per_s']:.1f} img/s" if gpu and "bf16_images_per_s" in r else "")


def render_protocol_scale(res: dict) -> str:
    """Markdown tables of :func:`bench_protocol_scale` (same run, ratios old / new)."""
    gpu = res["device"] == "cuda"
    mem = "CUDA max_memory_allocated" if gpu else "peak RSS increase of one step in a fresh process"
    lines = [f"SPA learner at protocol scale ({res['setting']}, device {res['device']}; memory: {mem}). "
             "Old = gather features [B,C,k,D]; new = gather similarities [B,C,k,N]. "
             "Old runs at the smallest C only (larger C would not fit the shared 24 GB machine).", "",
             "| classes | train step (scope=all) old | train step new | scoring old (chunk 256, no grad) | "
             "scoring new | default path (scope=global), img/s |", "|---|---|---|---|---|---|"]
    classes = sorted({int(k.split("_")[1]) for k in res["train"]})
    for c in classes:
        d = res["default_path"].get(str(c))
        default = f"{d['images_per_s']:.0f} ({d['task_images']} images x {d['epochs']} epochs)" if d else "n/a"
        lines.append(f"| {c} | {_fmt_probe(res['train'].get(f'old_{c}'), gpu)} | "
                     f"{_fmt_probe(res['train'].get(f'new_{c}'), gpu)} | "
                     f"{_fmt_probe(res['score'].get(f'old_{c}'), gpu)} | "
                     f"{_fmt_probe(res['score'].get(f'new_{c}'), gpu)} | {default} |")
    for key, label in (("default_speedup", "training throughput, default path (scope=global) / old step"),
                       ("train_speedup", "training step with gradients through the patch branch (scope=all) new / old"),
                       ("train_memory_ratio", "training peak memory old / new"),
                       ("score_speedup", "scoring throughput new / old")):
        if key in res:
            lines.append(f"\n- {label} at C={classes[0]}: {res[key]:.1f}x")
    lines.append("- default path = one scoring pass over the task's images, the replay pool and the calibration's "
                 "pseudo images (64 per class each), + 5 epochs of global steps; img/s per epoch-image")
    est = res.get("estimate")
    if est:
        lines.append(f"- 18-split protocol wall time estimate: {est['total_h']:.2f} h ({est['basis']}; encoder "
                     f"{est['encoder_images_per_s']:.1f} images/s, ViT-B/16 measured in this run; counts from "
                     "split_counts.json / protocol.py, ObjectNet, Cars, UCF-101 assumed: see PROTOCOL_SPLITS)")
    if not gpu:
        lines.append("- CPU NOTE: no GPU in this run: CUDA peak memory, bf16 throughput and a GPU protocol "
                     "estimate are measured only when torch.cuda.is_available().")
    return "\n".join(lines) + "\n"


@section("eval_stages")
def bench_eval_stages(opts: BenchOptions) -> dict:
    """Evaluation throughput per stage, test split on the device vs streamed from the cache (``gpu_paths.py``)."""
    return gpu_paths.bench_eval_stages(opts.quick, threads=opts.ot_threads or None)


@section("warm_start")
def bench_warm_start(opts: BenchOptions) -> dict:
    """A warm command (cache hit) vs a cold one on a folder of small images (``gpu_paths.py``)."""
    return gpu_paths.bench_warm_start(opts.quick)


@section("task_cost")
def bench_task_cost(opts: BenchOptions) -> dict:
    """SPA's learner time per task on the SUN-397 B0 Inc30 shape (``task_cost.py``): linear in the seen classes?"""
    import task_cost

    return task_cost.run(opts.quick)


GOALS = [
    ("Batched Sinkhorn (default auto domain) vs per-pair loop (CPU eager)", lambda r: r["sinkhorn"]["speedup"], ">= 10x", lambda v: v >= 10),
    ("Patch-level OT scoring / encoder forward", lambda r: r["ot_overhead"]["ratio"], "<= 0.10", lambda v: v <= 0.10),
    ("Encoder forwards per run / images", lambda r: r["forwards"]["ratio_first_run"], "<= 1.1", lambda v: v <= 1.1),
    ("OT backward memory, 50 / 10 iterations (detached)", lambda r: r["memory"]["ratio_detached"], "<= 1.2",
     lambda v: v <= 1.2),
    ("Score error, default vs 1000 iterations", lambda r: r["convergence"]["max_abs_error"], "<= 1e-3",
     lambda v: v <= 1e-3),
    ("Argmax agreement, default vs 1000 iterations", lambda r: r["convergence"]["argmax_agreement"], ">= 0.99",
     lambda v: v >= 0.99),
    ("Training step peak memory at the largest C (new), GB", lambda r: r["protocol_scale"]["train_peak_gb_new_max_c"],
     "<= 2", lambda v: v <= 2),
    ("Training throughput at C=100, default path / old formulation (per epoch-image)",
     lambda r: r["protocol_scale"]["default_speedup"], ">= 10x", lambda v: v >= 10),
    ("Training step with gradients through patches (scope=all) new / old, C=100",
     lambda r: r["protocol_scale"]["train_speedup"], ">= 1x", lambda v: v >= 1),
    ("Scoring throughput new / old at C=100", lambda r: r["protocol_scale"]["score_speedup"], ">= 1x",
     lambda v: v >= 1),
    ("OT (auto) vs POT batched, slowest protocol size", lambda r: min(
        row["speedup_auto_vs_pot_batched"] for row in r["ot_protocol"]["sizes"].values()), ">= 3x", lambda v: v >= 3),
    ("SUN-397 B0 Inc30 shape: learner time task 9 / task 1 (seen classes 5x)",
     lambda r: r["task_cost"]["ratio_last_to_task1"], "<= 5", lambda v: v <= 5),
    ("SUN-397 B0 Inc30 shape: learner time of the whole run (s)", lambda r: r["task_cost"]["total_seconds"],
     "<= 300", lambda v: v <= 300),
]


def render(results: dict) -> str:
    lines = [f"Machine: {results['machine']}; torch {results['torch']}; threads {results['threads']}.", "",
             "| measure | value | goal | result |", "|---|---|---|---|"]
    for label, get, goal, ok in GOALS:
        try:
            v = get(results)
        except (KeyError, ValueError):  # section not run (--sections) or not measured
            lines.append(f"| {label} | not measured | {goal} | n/a |")
            continue
        lines.append(f"| {label} | {v:.4g} | {goal} | {'PASS' if ok(v) else 'MISS'} |")
    if not all(k in results for k in ("sinkhorn", "throughput", "forwards")):
        return "\n".join(lines) + "\n"
    s, t, f = results["sinkhorn"], results["throughput"], results["forwards"]
    lines += ["", f"- Sinkhorn: batched {s['batched_s'] * 1e3:.1f} ms (auto domain; log domain "
                  f"{s['batched_log_s'] * 1e3:.1f} ms, {s['speedup_log_domain']:.1f}x the loop) vs loop "
                  f"{s['loop_s'] * 1e3:.0f} ms ({s['problems']})"
              + (f"; torch.compile of the log domain {s['compiled_s'] * 1e3:.1f} ms "
                 f"({s['compiled_speedup_vs_eager']:.2f}x eager log)" if "compiled_s" in s else
                                          f"; torch.compile: {s.get('compiled_error', 'not run (--compile)')}"),
              f"- Peer-style re-encoding would need {f['peer_ratio']:.1f} forwards per image in the same run; "
              f"the second run of the same config encoded {f['forwards_second_run']} images.",
              f"- Training on cached features: {t['train_samples_per_s']:.0f} samples/s ({t['train_setting']}); "
              f"tiny-encoder extraction {t['extract_tiny_images_per_s']:.0f} images/s.",
              f"- GPU extraction (ViT-B/16 bf16): " + (f"{t['gpu_extract_images_per_s']:.0f} images/s on {t['gpu']}"
                                                       + (f", {100 * t['gpu_fraction_of_bf16_peak']:.1f}% of bf16 peak"
                                                          if "gpu_fraction_of_bf16_peak" in t else "")
                                                       if "gpu" in t else "not measured (no GPU in this run)")]
    return "\n".join(lines) + "\n"


def _encoder_images_per_s(results: dict) -> float | None:
    """ViT-B/16 throughput measured earlier in this run: the GPU bf16 pass if any, else the CPU forward."""
    t, o = results.get("throughput", {}), results.get("ot_overhead", {})
    if "gpu_extract_images_per_s" in t and torch.cuda.is_available():
        return t["gpu_extract_images_per_s"]
    return o["images"] / o["encoder_s"] if "encoder_s" in o else None


def run_sections(names: list[str], opts: BenchOptions, header: dict | None = None, out: Path | None = None) -> dict:
    """Run the named sections in order into one results dict (``opts.results``); with ``out``, rewrite
    ``results.json`` after each section, so a run stopped midway keeps the sections it finished."""
    results = opts.results
    results.update(header or {})
    for name in names:
        start = time.perf_counter()
        results[name] = SECTIONS[name](opts)
        results.setdefault("seconds", {})[name] = round(time.perf_counter() - start, 1)
        print(f"{name}: done in {time.perf_counter() - start:.1f} s", flush=True)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def render_all(results: dict) -> str:
    """The Markdown of ``results.md``: the goal table, then the OT and protocol-scale tables when measured."""
    table = render(results)
    if "ot_protocol" in results:
        table += "\n" + render_ot_protocol(results["ot_protocol"])
    if "protocol_scale" in results:
        table += "\n" + render_protocol_scale(results["protocol_scale"])
    table += gpu_paths.render_gpu_paths(results)
    if results.get("quick"):
        table = "QUICK MODE (--quick): small sizes, a smoke test; not figures to report.\n\n" + table
    return table


def default_results_folder(quick: bool, sections: list[str]) -> Path:
    """Where results go without ``--out``: a quick run or a subset never overwrites the full run's files."""
    full = Path("benchmarks/results")
    return full if not quick and set(sections) >= set(SECTIONS) else full / "scratch"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="results folder (default: benchmarks/results for a full run; benchmarks/results/scratch "
                        "for --quick or a subset of --sections)")
    parser.add_argument("--quick", action="store_true", help="every section at small sizes, in seconds (smoke test)")
    parser.add_argument("--compile", action="store_true", help="also time the torch.compile Sinkhorn")
    parser.add_argument("--ot-threads", type=int, default=0,
                        help="torch threads for the OT protocol-size and eval_stages sections (0: leave as is)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated sections to run (default all: {','.join(SECTIONS)})")
    parser.add_argument("--probe", default=None, help=argparse.SUPPRESS)  # internal: one protocol-scale probe
    args = parser.parse_args(argv)
    if args.probe:
        print("PROBE " + json.dumps(run_probe(json.loads(args.probe))), flush=True)
        return
    chosen = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {list(SECTIONS)}")
    args.out = args.out or default_results_folder(args.quick, chosen)
    header = {"machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores".strip(),
              "torch": torch.__version__, "threads": torch.get_num_threads(), "quick": args.quick,
              "sections": chosen}
    with tempfile.TemporaryDirectory() as tmp:
        opts = BenchOptions(quick=args.quick, compile=args.compile, ot_threads=args.ot_threads, workdir=Path(tmp))
        results = run_sections(chosen, opts, header, args.out)
    table = render_all(results)
    (args.out / "results.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
