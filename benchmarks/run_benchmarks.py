"""Performance benchmark of spacil: every figure is a ratio measured in this one run.

    python benchmarks/run_benchmarks.py [--out benchmarks/results] [--quick] [--compile]

Writes ``results.json`` and ``results.md`` (a table with each goal and PASS/MISS). Measures:
1. batched masked Sinkhorn vs a per-pair Python loop over the same B x C problems;
2. patch-level OT scoring time relative to the encoder forward of the same images (ViT-B/16, random init);
3. encoder forwards per full run / (train + test images), counted by the backbone;
4. memory saved for backward by the OT score at 50 vs 10 iterations (plan detached);
5. convergence of the default iteration count against a 1000-iteration solve;
6. training throughput on cached features, extraction throughput, and GPU extraction when a GPU is present.
7. OT at the protocol's problem sizes: our Sinkhorn (auto/log domain, compiled) vs POT's batched solver and a
   per-pair POT loop.
Timings use the median of repeats after a warm-up. No assertion here: the table reports MISS honestly.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from spacil.backbone import load_backbone  # noqa: E402
from spacil.config import load_config  # noqa: E402
from spacil.methods.spa import SPAConfig  # noqa: E402
from spacil.ot import ot_score, sinkhorn_log, sinkhorn_loop_reference, uniform_masses  # noqa: E402
from spacil.methods.spa.learner import SPALearner  # noqa: E402


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


def bench_sinkhorn(args) -> dict:
    b, c = (16, 25) if args.quick else (64, 100)
    sim, a, bm = ot_problem(b, c, 32, 32)
    cost = 1 - sim
    eps, iters = 0.1, 30
    batched = timed(lambda: sinkhorn_log(cost, a, bm, eps, iters))
    loop = timed(lambda: sinkhorn_loop_reference(cost, a, bm, eps, iters), repeats=1, warmup=0)
    out = {"problems": f"B={b} x C={c}, M=N=32, {iters} iterations", "batched_s": batched, "loop_s": loop,
           "speedup": loop / batched}
    if args.compile:
        try:
            compiled = torch.compile(sinkhorn_log, dynamic=False)
            compiled_s = timed(lambda: compiled(cost, a, bm, eps, iters), warmup=2)
            out.update(compiled_s=compiled_s, compiled_speedup_vs_eager=batched / compiled_s)
        except Exception as exc:  # noqa: BLE001 - report, don't crash the benchmark
            out["compiled_error"] = f"{exc.__class__.__name__}: {exc}"[:200]
    return out


def bench_ot_overhead(args) -> dict:
    """Patch-level scoring (selection + OT) vs the ViT-B/16 forward of the same images."""
    bsz, n_classes = (8, 100) if args.quick else (32, 100)
    backbone = load_backbone("ViT-B-16@random", device="cpu")
    images = torch.randn(bsz, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    encode = timed(lambda: backbone.encode_images(images), repeats=2)
    feats = backbone.encode_images(images)
    learner, side = _learner_with_classes(n_classes, feats.global_.shape[1],
                                          SPAConfig(replay={"enabled": False}), _repeat(feats, n_classes))
    patches = learner.visual(feats.patches)
    with torch.no_grad():
        score = timed(lambda: learner.patch_scores(patches, side), repeats=3)
    return {"images": bsz, "classes": n_classes, "encoder_s": encode, "patch_scoring_s": score,
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
    """An untrained SPA learner that has seen ``n_classes`` classes (prototypes from ``features``)."""
    from spacil.config import TrainConfig
    from spacil.methods.base import FeatureBatch

    learner = SPALearner(cfg, TrainConfig(epochs=0))
    labels = torch.arange(features.global_.shape[0]) % n_classes
    learner.learn_task(_context(n_classes, dim), FeatureBatch(features.global_, features.patches, labels))
    with torch.no_grad():
        side = learner.class_side(n_classes)
    return learner, side


def _repeat(feats, n: int):
    """At least ``n`` rows of features (tiled), so every synthetic class has a prototype."""
    from spacil.methods.base import FeatureBatch

    reps = -(-n // feats.global_.shape[0])
    return FeatureBatch(feats.global_.repeat(reps, 1), feats.patches.repeat(reps, 1, 1), torch.zeros(0))


def bench_forwards_per_run(args, workdir: Path) -> dict:
    """A real 3-task run (10 epochs) through the harness and the cache: count encoder forwards."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import write_image_folder

    from spacil.training.harness import prepare_data, run_experiment

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


def bench_backward_memory(args) -> dict:
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


def bench_convergence(args) -> dict:
    """Default iterations vs 1000 on real-like features: the shipped parts-world CLIP on rendered images,
    patches selected by each class's descriptions and transported onto its phrase tokens, as SPA does."""
    from spacil.partsworld import class_descriptions, generate_split, make_class_specs
    from spacil.methods.spa.patch_selection import patch_relevance, select_top_k
    from spacil.text.semantic_tokens import build_semantic_tokens

    cfg = SPAConfig()
    k = 16
    backbone = load_backbone("partsworld-tiny", device="cpu")
    specs = make_class_specs(20, seed=0)
    samples = generate_split(specs, 3, seed=5, split="test")
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


def bench_throughput(args, workdir: Path) -> dict:
    from spacil.config import TrainConfig
    from spacil.methods.base import FeatureBatch

    n, dim, p, classes = (512, 64, 64, 10) if args.quick else (2048, 64, 64, 10)
    g = torch.Generator().manual_seed(0)
    batch = FeatureBatch(torch.randn(n, dim, generator=g), torch.randn(n, p, dim, generator=g).half(),
                         torch.arange(n) % classes)
    ctx = _context(classes, dim)
    train_s = timed(lambda: SPALearner(SPAConfig(), TrainConfig(epochs=1, batch_size=64)).learn_task(ctx, batch),
                    repeats=2)
    tiny = load_backbone("tiny-test", device="cpu")
    images = torch.rand(256, 3, 32, 32, generator=g)
    tiny_s = timed(lambda: tiny.encode_images(images), repeats=3)
    out = {"train_samples_per_s": n / train_s, "train_setting": f"{n} samples, {p} patches, D={dim}, C={classes}, "
           "1 epoch incl. Gaussian statistics", "extract_tiny_images_per_s": 256 / tiny_s}
    if torch.cuda.is_available():
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


def bench_ot_protocol(args, sizes: tuple[tuple[int, int], ...] = ((16, 8), (32, 32)), eps: float = 0.1,
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

    b, c = (16, 25) if args.quick else (64, 100)
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


GOALS = [
    ("Batched Sinkhorn vs per-pair loop (CPU eager)", lambda r: r["sinkhorn"]["speedup"], ">= 10x", lambda v: v >= 10),
    ("Patch-level OT scoring / encoder forward", lambda r: r["ot_overhead"]["ratio"], "<= 0.10", lambda v: v <= 0.10),
    ("Encoder forwards per run / images", lambda r: r["forwards"]["ratio_first_run"], "<= 1.1", lambda v: v <= 1.1),
    ("OT backward memory, 50 / 10 iterations (detached)", lambda r: r["memory"]["ratio_detached"], "<= 1.2",
     lambda v: v <= 1.2),
    ("Score error, default vs 1000 iterations", lambda r: r["convergence"]["max_abs_error"], "<= 1e-3",
     lambda v: v <= 1e-3),
    ("Argmax agreement, default vs 1000 iterations", lambda r: r["convergence"]["argmax_agreement"], ">= 0.99",
     lambda v: v >= 0.99),
]


def render(results: dict) -> str:
    lines = [f"Machine: {results['machine']}; torch {results['torch']}; threads {results['threads']}.", "",
             "| measure | value | goal | result |", "|---|---|---|---|"]
    for label, get, goal, ok in GOALS:
        v = get(results)
        lines.append(f"| {label} | {v:.4g} | {goal} | {'PASS' if ok(v) else 'MISS'} |")
    s, t, f = results["sinkhorn"], results["throughput"], results["forwards"]
    lines += ["", f"- Sinkhorn: batched {s['batched_s'] * 1e3:.1f} ms vs loop {s['loop_s'] * 1e3:.0f} ms "
                  f"({s['problems']})" + (f"; torch.compile {s['compiled_s'] * 1e3:.1f} ms "
                                          f"({s['compiled_speedup_vs_eager']:.2f}x eager)" if "compiled_s" in s else
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--quick", action="store_true", help="smaller problems (smoke test)")
    parser.add_argument("--compile", action="store_true", help="also time the torch.compile Sinkhorn")
    parser.add_argument("--ot-threads", type=int, default=0,
                        help="torch threads for the OT protocol-size section (0: leave as is)")
    args = parser.parse_args()
    results = {"machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores".strip(),
               "torch": torch.__version__, "threads": torch.get_num_threads(), "quick": args.quick}
    with tempfile.TemporaryDirectory() as tmp:
        steps = [("sinkhorn", lambda: bench_sinkhorn(args)), ("ot_overhead", lambda: bench_ot_overhead(args)),
                 ("forwards", lambda: bench_forwards_per_run(args, Path(tmp))),
                 ("memory", lambda: bench_backward_memory(args)), ("convergence", lambda: bench_convergence(args)),
                 ("throughput", lambda: bench_throughput(args, Path(tmp))),
                 ("ot_protocol", lambda: bench_ot_protocol(args, threads=args.ot_threads or None))]
        for name, step in steps:
            start = time.perf_counter()
            results[name] = step()
            print(f"{name}: done in {time.perf_counter() - start:.1f} s", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = render(results) + "\n" + render_ot_protocol(results["ot_protocol"])
    (args.out / "results.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
