"""Bugs only a CUDA run would show, caught on the CPU (issue 23).

``meta`` tensors stand in for a second device: a restored learner must hold every tensor there; torchrun's
environment is simulated with CUDA reported available; the cache key is compared across precisions.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from device_guards import RandomDrawGuard
from spacil.config import TrainConfig
from spacil.methods.base import FeatureBatch, TaskContext
from spacil.methods.spa import SPAConfig
from spacil.methods.spa.gaussian_replay import GaussianBank
from spacil.methods.spa.learner import SPALearner
from spacil.text.class_texts import ClassTexts
from spacil.text.semantic_tokens import SemanticTokens

DIM, PATCHES = 16, 6


def _texts(n_classes: int) -> ClassTexts:
    g = torch.Generator().manual_seed(0)
    tokens = F.normalize(torch.randn(n_classes, 2, DIM, generator=g), dim=-1)
    sem = SemanticTokens(tokens=tokens, mask=torch.ones(n_classes, 2, dtype=torch.bool),
                         description=F.normalize(tokens.mean(1), dim=-1), phrases=[["p", "q"]] * n_classes,
                         token_phrase=torch.tensor([[0, 1]] * n_classes))
    prompts = F.normalize(torch.randn(n_classes, DIM, generator=g), dim=-1)
    return ClassTexts([f"c{i}" for i in range(n_classes)], prompts, semantic=sem)


def _batch(classes: list[int], seed: int, per_class: int = 8) -> FeatureBatch:
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor(classes).repeat_interleave(per_class)
    return FeatureBatch(torch.randn(len(labels), DIM, generator=g),
                        torch.randn(len(labels), PATCHES, DIM, generator=g).half(), labels)


def _ctx(task: int, classes: range, texts: ClassTexts, device: str = "cpu") -> TaskContext:
    return TaskContext(task, classes, classes.stop, texts, torch.device(device), seed=10 + task)


def _tensors(learner: SPALearner) -> dict[str, torch.Tensor]:
    """Every tensor a learner holds, by name."""
    out = {f"prototype {c}": v for c, v in learner.prototypes.items()}
    out["prompts"] = learner.prompts
    out["task_bias"] = learner.task_bias
    for name, stack in (("visual", learner.visual), ("text", learner.text)):
        if stack is not None:
            out.update({f"{name}.{k}": v for k, v in stack.state_dict().items()})
    sem = learner.semantic
    out.update({"semantic.tokens": sem.tokens, "semantic.mask": sem.mask, "semantic.description": sem.description})
    for bank_name in ("global_bank", "patch_bank", "context_bank"):
        bank = getattr(learner, bank_name)
        assert len(bank), f"{bank_name} is empty: the test would not look at it"
        out.update({f"{bank_name} mean {c}": v for c, v in bank.means.items()})
        out.update({f"{bank_name} factor {c}": v for c, v in bank.factors.items()})
    return out


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter")
@pytest.mark.parametrize("calibration", ["task_bias", "none"])
def test_restored_learner_holds_every_tensor_on_the_run_device(calibration):
    """Bug 1: a resumed CUDA run kept the Gaussian banks on the CPU and crashed on the next task."""
    texts = _texts(4)
    cfg = SPAConfig.model_validate({"selection": {"k": 2}, "replay": {"calibration": calibration}})
    learner = SPALearner(cfg, TrainConfig(epochs=1, batch_size=8))
    learner.learn_task(_ctx(0, range(0, 2), texts), _batch([0, 1], 1))
    learner.learn_task(_ctx(1, range(2, 4), texts), _batch([2, 3], 2))
    restored = SPALearner(cfg, TrainConfig(epochs=1, batch_size=8))
    restored.load_trainable_state(learner.trainable_state(), _ctx(1, range(2, 4), texts, "meta"))
    held = _tensors(restored)
    if calibration == "none":
        held.pop("task_bias")
    elsewhere = {name: str(t.device) for name, t in held.items() if t.device.type != "meta"}
    assert not elsewhere, elsewhere


def test_random_draw_guard_catches_a_generator_on_another_device():
    """The guard itself can fail: our Gaussian sampler handed a CPU generator for a meta tensor."""
    bank = GaussianBank(0.1)
    bank.add_class(0, torch.randn(5, DIM, generator=torch.Generator().manual_seed(0)))
    on_meta = GaussianBank(0.1)
    on_meta.load_state(bank.state("b"), "b", "meta")
    with RandomDrawGuard() as guard:
        bank.sample([0], 2, torch.Generator().manual_seed(0), torch.device("cpu"))
        assert guard.draws == [("torch.randn", "cpu", "cpu")]
        with pytest.raises(AssertionError, match="generator on cpu fills a tensor on meta"):
            on_meta.sample([0], 2, torch.Generator().manual_seed(0), torch.device("meta"))


def _torchrun_env(monkeypatch, rank: int, world: int = 2) -> None:
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("LOCAL_RANK", str(rank))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


@pytest.mark.parametrize("asked", ["auto", "cuda", "cuda:0"])
def test_torchrun_rank_gets_its_own_gpu(monkeypatch, asked):
    """Bug 2: only ``auto`` meant this rank's GPU; ``cuda`` and ``cuda:0`` put every rank on GPU 0."""
    from spacil.features.distributed import rank_device

    _torchrun_env(monkeypatch, rank=1)
    assert rank_device(asked) == "cuda:1"
    assert rank_device("cpu") == "cpu"
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert rank_device(asked) == asked  # a single process keeps what it asked for


def test_torchrun_extract_sets_the_device_before_loading_the_backbone(monkeypatch, image_folder):
    """Bug 2: the backbone was loaded before ``init_distributed`` called ``set_device``."""
    from typer.testing import CliRunner

    import spacil.backbone
    from spacil.cli import app
    from spacil.errors import UsageError
    from spacil.features import distributed

    _torchrun_env(monkeypatch, rank=1)
    events: list[str] = []
    monkeypatch.setattr(distributed, "init_distributed", lambda *a, **k: events.append("process group + set_device"))
    monkeypatch.setattr(distributed, "shutdown_distributed", lambda: None)

    def fake_load(name, checkpoint, device, *args, **kwargs):
        events.append(f"backbone on {device}")
        raise UsageError("stop here")  # the rest of extraction is not what this test is about

    monkeypatch.setattr(spacil.backbone, "load_backbone", fake_load)
    result = CliRunner().invoke(app, ["extract", "--set", "backbone.device=cuda", "--set", "backbone.name=tiny-test",
                                      "--set", f"data.root={image_folder}"])
    assert "stop here" in result.output
    assert events == ["process group + set_device", "backbone on cuda:1"]


def test_cache_key_depends_on_the_encoder_precision(image_folder):
    """Bug 3: bf16-autocast and fp32 features shared one cache key."""
    from spacil.backbone import load_backbone
    from spacil.data.datasets import ImageFolderSource
    from spacil.features.cache import feature_key
    from spacil.features.extract import feature_key_parts

    source = ImageFolderSource(image_folder, "test")
    keys = {precision: feature_key(feature_key_parts(source, load_backbone("tiny-test", device="cpu",
                                                                           precision=precision)))
            for precision in ("fp32", "bf16", "fp16", "auto")}
    assert len({keys["fp32"], keys["bf16"], keys["fp16"]}) == 3
    assert keys["auto"] == keys["fp32"]  # auto is fp32 on the CPU


def test_loader_workers_default_feeds_a_gpu_and_splits_over_local_ranks():
    from spacil.features.workers import loader_workers

    assert loader_workers("auto", cpus=2, ranks=1) == 2
    assert loader_workers("auto", cpus=64, ranks=1) == 8
    assert loader_workers("auto", cpus=64, ranks=8) == 1  # 8 decoders per machine, not 64
    assert loader_workers(8, cpus=64, ranks=8) == 1
    assert loader_workers(16, cpus=64, ranks=8) == 2
    assert loader_workers(4, cpus=64, ranks=8) == 1  # asked for some: at least one each
    assert loader_workers(0, cpus=64, ranks=8) == 0
    with pytest.raises(ValueError):
        loader_workers("many")


def test_num_workers_setting_accepts_auto_and_counts_only():
    from spacil.config import load_config
    from spacil.schema import ConfigError

    assert load_config(None, []).backbone.num_workers == "auto"
    assert load_config(None, ["backbone.num_workers=3"]).backbone.num_workers == 3
    assert load_config("cifar100_b0_inc10", []).backbone.num_workers == "auto"
    for bad in ("many", "-1"):
        with pytest.raises(ConfigError, match="num_workers"):
            load_config(None, [f"backbone.num_workers={bad}"])


def _compiled_raising(monkeypatch, error: BaseException):
    from spacil.ot import sinkhorn as sk

    def compiled(fn, **kwargs):
        def run(*args):
            raise error
        return run

    monkeypatch.setattr(sk, "_COMPILED", {})
    monkeypatch.setattr(sk, "_COMPILE_BROKEN", [])
    monkeypatch.setattr(torch, "compile", compiled)
    return sk


def _problem():
    g = torch.Generator().manual_seed(0)
    cost = torch.rand(2, 3, 4, generator=g)
    return cost, torch.full((2, 3), 1 / 3), torch.full((2, 4), 1 / 4)


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   RuntimeError("CUDA error: out of memory"),
                                   ValueError("a bug in the solver")])
def test_compiled_sinkhorn_does_not_swallow_out_of_memory_or_bugs(monkeypatch, error):
    sk = _compiled_raising(monkeypatch, error)
    with pytest.raises(type(error), match=str(error)[:10]):
        sk.sinkhorn_plan(*_problem(), 0.1, 5, compile=True)
    assert sk._COMPILE_BROKEN == []  # compile stays on: it was not a compile failure


def test_compiled_sinkhorn_out_of_memory_inside_compilation_is_raised(monkeypatch):
    from torch._dynamo.exc import BackendCompilerFailed

    try:
        raise torch.OutOfMemoryError("CUDA out of memory")
    except torch.OutOfMemoryError as oom:
        try:
            raise BackendCompilerFailed(lambda *a: None, oom, None) from oom
        except BackendCompilerFailed as wrapped:
            error = wrapped
    sk = _compiled_raising(monkeypatch, error)
    with pytest.raises(BackendCompilerFailed):
        sk.sinkhorn_plan(*_problem(), 0.1, 5, compile=True)
    assert sk._COMPILE_BROKEN == []


def test_compiled_sinkhorn_falls_back_on_a_compile_error(monkeypatch, caplog):
    from torch._dynamo.exc import BackendCompilerFailed

    sk = _compiled_raising(monkeypatch, BackendCompilerFailed(lambda *a: None, RuntimeError("no C++ compiler"), None))
    cost, a, b = _problem()
    plan = sk.sinkhorn_plan(cost, a, b, 0.1, 5, compile=True)
    torch.testing.assert_close(plan, sk.sinkhorn_plan(cost, a, b, 0.1, 5), atol=0, rtol=0)
    assert len(sk._COMPILE_BROKEN) == 1


def test_gaussian_sampler_with_repeated_labels_uses_one_factor_per_class(monkeypatch):
    g = torch.Generator().manual_seed(1)
    bank = GaussianBank(0.1)
    for c in range(3):
        bank.add_class(c, torch.randn(20, DIM, generator=g) + c)
    labels = [2, 0, 2, 2, 1, 0]
    stacked = []
    original_stack = torch.stack
    monkeypatch.setattr(torch, "stack", lambda tensors, *a, **k: (stacked.append(len(tensors)),
                                                                  original_stack(tensors, *a, **k))[1])
    x, y = bank.sample(labels, 2, torch.Generator().manual_seed(5), torch.device("cpu"), tokens_per_sample=3)
    monkeypatch.undo()
    assert stacked == [3, 3]  # means and factors of the 3 classes, not of the 6 entries
    z = torch.randn(len(labels), 2 * 3, DIM, generator=torch.Generator().manual_seed(5))  # the same stream
    expected = torch.stack([bank.means[c] + z[i] @ bank.factors[c].T for i, c in enumerate(labels)])
    torch.testing.assert_close(x, expected.reshape(len(labels) * 2, 3, DIM))
    assert y.tolist() == [2, 2, 0, 0, 2, 2, 2, 2, 1, 1, 0, 0]
