"""Exp- vs log-domain Sinkhorn, the automatic domain rule, the convergence report and torch.compile.

Both domains are checked against POT on ragged (zero-mass padded) batches: POT's ``ot.sinkhorn`` per
unpadded problem (``method="sinkhorn"`` is its exp-domain scaling, ``"sinkhorn_log"`` its log domain) and
``ot.batch.solve_batch`` on full batches. Our ``eps`` is POT's ``reg``.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sys
from spacil.methods.spa.config import OTConfig
from spacil.ot import (
    SinkhornConvergenceError,
    choose_domain,
    marginal_error,
    ot_score,
    reset_convergence_warnings,
    sinkhorn_plan,
    sinkhorn_exp,
    sinkhorn_log,
    uniform_masses,
)

LOGGER = "spacil.ot.sinkhorn"
sk = sys.modules[LOGGER]  # the solver module (``spacil.ot`` re-exports its functions)


@pytest.fixture(autouse=True)
def _fresh_warnings():
    reset_convergence_warnings()
    yield
    reset_convergence_warnings()


def _ragged(seed: int, b_: int = 3, c_: int = 4, m_: int = 6, n_: int = 5, d: int = 4,
            dtype: torch.dtype = torch.float32):
    """[B, C, M, N] cosine similarities, M padded per image, N ragged per class (one class has 1 token)."""
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(b_, c_, m_, d, generator=g, dtype=torch.float64), dim=-1)
    y = F.normalize(torch.randn(c_, n_, d, generator=g, dtype=torch.float64), dim=-1)
    sim = torch.einsum("bcmd,cnd->bcmn", x, y)
    mask_a = torch.arange(m_)[None] < torch.tensor([m_, 2, 4])[:b_, None]  # [B, M]
    mask_b = torch.arange(n_)[None] < torch.tensor([n_, 1, 3, 4])[:c_, None]  # [C, N]
    wa = (torch.rand(b_, m_, generator=g, dtype=torch.float64) + 0.2) * mask_a
    wb = (torch.rand(c_, n_, generator=g, dtype=torch.float64) + 0.2) * mask_b
    a = (wa / wa.sum(-1, keepdim=True))[:, None, :]  # [B, 1, M]
    b = wb / wb.sum(-1, keepdim=True)  # [C, N]
    return sim.to(dtype), a.to(dtype), b.to(dtype), mask_a, mask_b


def _pot_single(ot, a, b, cost, eps, n_iters, method):
    with warnings.catch_warnings():  # stopThr=0: never stop early (POT warns about non-convergence)
        warnings.simplefilter("ignore", UserWarning)
        return ot.sinkhorn(a, b, cost, reg=eps, method=method, numItermax=n_iters, stopThr=0)


@pytest.mark.parametrize("domain", ["exp", "log"])
def test_both_domains_match_pot_per_problem_on_ragged_batch(domain: str) -> None:
    """Converged plans (400 iterations) of each unpadded problem, POT's exp and log solvers: 1e-5."""
    ot = pytest.importorskip("ot")
    sim, a, b, mask_a, mask_b = _ragged(seed=1)
    eps, n_iters = 0.1, 400
    score, plan = ot_score(sim, a, b, eps, n_iters, domain=domain, check_convergence="error")
    assert plan.dtype == torch.float32 and plan.shape == (3, 4, 6, 5)
    sim64, a64, b64 = sim.double(), a.double(), b.double()
    for i in range(3):
        for c in range(4):
            rows, cols = mask_a[i].nonzero().squeeze(1), mask_b[c].nonzero().squeeze(1)
            cost = (1 - sim64[i, c][rows][:, cols]).numpy()
            for method in ("sinkhorn", "sinkhorn_log"):
                ref = _pot_single(ot, a64[i, 0, rows].numpy(), b64[c, cols].numpy(), cost, eps, n_iters, method)
                full = np.zeros((6, 5))
                full[np.ix_(rows.numpy(), cols.numpy())] = ref
                np.testing.assert_allclose(plan[i, c].double().numpy(), full, atol=1e-5, rtol=0)
                assert score[i, c].item() == pytest.approx(float((full * sim64[i, c].numpy()).sum()), abs=1e-5)


@pytest.mark.parametrize("domain", ["exp", "log"])
@pytest.mark.parametrize("n_iters", [30, 300])
def test_both_domains_match_pot_solve_batch_on_ragged_batch(domain: str, n_iters: int) -> None:
    """Same iterations as POT's batched log-Sinkhorn (30: the default, before convergence).

    Each padded problem must equal POT's solve of its unpadded block. (POT's own batched solver is not
    padding-invariant before convergence: with zero masses in its batch it drifts ~2e-3 at 30 iterations,
    so the padded POT batch is only compared once converged.)
    """
    ot = pytest.importorskip("ot")
    if not hasattr(ot, "batch") or not hasattr(ot.batch, "solve_batch"):
        pytest.skip(f"POT {ot.__version__} has no ot.batch.solve_batch")
    import ot.batch

    def pot(cost, a_, b_):
        return torch.as_tensor(ot.batch.solve_batch(cost, reg=eps, a=a_, b=b_, max_iter=n_iters, tol=0.0,
                                                    method="log_sinkhorn", reg_type="entropy", grad="detach").plan)

    sim, a, b, mask_a, mask_b = _ragged(seed=2)
    eps = 0.1
    score, plan = ot_score(sim, a, b, eps, n_iters, domain=domain, check_convergence="off")
    sim64, a64, b64 = sim.double(), a.double(), b.double()
    for i in range(3):
        for c in range(4):
            rows, cols = mask_a[i].nonzero().squeeze(1), mask_b[c].nonzero().squeeze(1)
            ref = pot((1 - sim64[i, c][rows][:, cols])[None], a64[i, 0, rows][None], b64[c, cols][None])[0]
            full = torch.zeros(6, 5, dtype=torch.float64).index_put((rows[:, None], cols[None, :]), ref)
            torch.testing.assert_close(plan[i, c].double(), full, atol=1e-5, rtol=0)
            assert score[i, c].item() == pytest.approx(float((full * sim64[i, c]).sum()), abs=1e-5)
    if n_iters >= 300:  # converged: the padded batch in one POT call agrees too
        ref = pot((1 - sim64).reshape(12, 6, 5), a64.expand(3, 4, 6).reshape(12, 6), b64.expand(3, 4, 5).reshape(12, 5))
        torch.testing.assert_close(plan.double().reshape(12, 6, 5), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("domain", ["exp", "log"])
def test_both_domains_match_pot_solve_batch_at_protocol_shape(domain: str) -> None:
    """k=16 patches x N=8 tokens, 30 iterations, eps 0.1, non-uniform token masses, one batched POT call."""
    ot = pytest.importorskip("ot")
    if not hasattr(ot, "batch") or not hasattr(ot.batch, "solve_batch"):
        pytest.skip(f"POT {ot.__version__} has no ot.batch.solve_batch")
    import ot.batch

    g = torch.Generator().manual_seed(12)
    sim = torch.einsum("pmd,pnd->pmn", F.normalize(torch.randn(40, 16, 8, generator=g), dim=-1),
                       F.normalize(torch.randn(40, 8, 8, generator=g), dim=-1))
    a = uniform_masses(torch.ones(40, 16, dtype=torch.bool))
    b = F.softmax(torch.randn(40, 8, generator=g), dim=-1)
    score, plan = ot_score(sim, a, b, 0.1, 30, domain=domain, check_convergence="off")
    res = ot.batch.solve_batch((1 - sim).double(), reg=0.1, a=a.double(), b=b.double(), max_iter=30, tol=0.0,
                               method="log_sinkhorn", reg_type="entropy", grad="detach")
    ref = torch.as_tensor(res.plan)
    torch.testing.assert_close(plan.double(), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(score.double(), (ref * sim.double()).sum((-2, -1)), atol=1e-5, rtol=0)


def test_auto_picks_log_for_small_eps_and_exp_for_default(monkeypatch) -> None:
    assert choose_domain(0.01, 2.0) == "log"  # exponent 200 > 50
    assert choose_domain(0.1, 2.0) == "exp"  # exponent 20
    assert choose_domain(0.05, 2.0) == "exp" and choose_domain(0.039, 2.0) == "log"  # bound at 2 / 50 = 0.04
    assert choose_domain(0.01, 2.0, torch.float64) == "exp"  # float64 has room for exponent 200
    with pytest.raises(ValueError):
        choose_domain(0.0, 2.0)

    calls: list[str] = []
    for name, core in list(sk._CORES.items()):
        monkeypatch.setitem(sk._CORES, name, lambda *args, _n=name, _c=core: calls.append(_n) or _c(*args))
    sim, a, b, _, _ = _ragged(seed=3)
    ot_score(sim, a, b, 0.01, 10, check_convergence="off")
    ot_score(sim, a, b, 0.1, 10, check_convergence="off")
    ot_score(sim, a, b, 0.1, 10, domain="log", check_convergence="off")
    sinkhorn_plan(1 - sim, a, b, 0.01, 10)  # cost range measured from the data (< 2): still log at eps 0.01
    sinkhorn_plan(1 - sim, a, b, 0.1, 10)
    assert calls == ["log", "exp", "log", "log", "exp"]
    with pytest.raises(ValueError):
        sinkhorn_plan(1 - sim, a, b, 0.1, 10, domain="fast")


def test_auto_default_gives_todays_scores() -> None:
    """Default settings (eps 0.1, 30 iterations, float32): auto -> exp equals the log-domain solver to 1e-5."""
    g = torch.Generator().manual_seed(4)
    x = F.normalize(torch.randn(8, 10, 16, 64, generator=g), dim=-1)
    y = F.normalize(torch.randn(10, 8, 64, generator=g), dim=-1)
    sim = torch.einsum("bckd,cnd->bckn", x, y)
    mask = torch.arange(8)[None] < torch.randint(3, 9, (10,), generator=g)[:, None]
    a = torch.full((8, 10, 16), 1 / 16)
    b = uniform_masses(mask)[None]
    score, plan = ot_score(sim, a, b, 0.1, 30)
    score_log, plan_log = ot_score(sim, a, b, 0.1, 30, domain="log")
    torch.testing.assert_close(score, score_log, atol=1e-5, rtol=0)
    torch.testing.assert_close(plan, plan_log, atol=1e-6, rtol=0)
    torch.testing.assert_close(sinkhorn_exp(1 - sim, a, b, 0.1, 30), sinkhorn_log(1 - sim, a, b, 0.1, 30),
                               atol=1e-6, rtol=0)


def test_exp_domain_padding_zero_iterations_and_empty_problems() -> None:
    g = torch.Generator().manual_seed(5)
    cost = 2 * torch.rand(3, 4, 5, generator=g, dtype=torch.float64)
    cost[..., -1] = 1e6  # huge cost in a padded column: no overflow, no NaN
    a = torch.tensor([[0.25] * 4, [0.5, 0.5, 0, 0], [0.0] * 4], dtype=torch.float64)  # last: all padding
    b = torch.tensor([0.2, 0.3, 0.1, 0.4, 0.0], dtype=torch.float64)
    for n_iters in (0, 1, 7, 200):
        torch.testing.assert_close(sinkhorn_exp(cost, a, b, 0.1, n_iters), sinkhorn_log(cost, a, b, 0.1, n_iters),
                                   atol=1e-12, rtol=1e-10)
    plan = sinkhorn_exp(cost, a, b, 0.1, 200)
    assert torch.count_nonzero(plan[2]) == 0 and torch.count_nonzero(plan[..., -1]) == 0
    torch.testing.assert_close(plan[:2].sum(-1), a[:2], atol=1e-6, rtol=0)
    # a valid row whose columns are all padding: zero plan, finite values
    plan = sinkhorn_exp(cost, a[:1], torch.zeros(5, dtype=torch.float64), 0.1, 10)
    assert torch.isfinite(plan).all() and torch.count_nonzero(plan) == 0


def test_exp_domain_gradients() -> None:
    sim, a, b, _, _ = _ragged(seed=6, dtype=torch.float64)
    sim = sim.clone().requires_grad_(True)
    score, plan = ot_score(sim, a, b, 0.1, 30, domain="exp")  # detached plan: gradient = plan
    assert not plan.requires_grad
    (grad,) = torch.autograd.grad(score.sum(), sim)
    torch.testing.assert_close(grad, plan, atol=1e-14, rtol=0)
    # unrolled: finite everywhere (padding included) and equal to the log domain's
    s_exp = sim.detach().clone().requires_grad_(True)
    s_log = sim.detach().clone().requires_grad_(True)
    (g_exp,) = torch.autograd.grad(ot_score(s_exp, a, b, 0.1, 30, False, domain="exp")[0].sum(), s_exp)
    (g_log,) = torch.autograd.grad(ot_score(s_log, a, b, 0.1, 30, False, domain="log")[0].sum(), s_log)
    assert torch.isfinite(g_exp).all()
    torch.testing.assert_close(g_exp, g_log, atol=1e-9, rtol=1e-7)
    small = sim.detach()[:2, :2, :3, :3].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda s: ot_score(s, a[:2, :, :3] / a[:2, :, :3].sum(-1, keepdim=True).clamp_min(1e-12),
                           b[:2, :3] / b[:2, :3].sum(-1, keepdim=True), 0.2, 12, False, domain="exp",
                           check_convergence="off")[0],
        (small,), eps=1e-6, atol=1e-6)


def test_exp_domain_computes_in_float32_under_autocast() -> None:
    sim, a, b, _, _ = _ragged(seed=7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sim_bf16 = sim.to(torch.bfloat16)
        score, plan = ot_score(sim_bf16, a, b, 0.1, 30)
        direct = sinkhorn_plan(1 - sim_bf16, a, b, 0.1, 30, cost_range=2.0)
    assert score.dtype == plan.dtype == direct.dtype == torch.float32
    score_ref, plan_ref = ot_score(sim_bf16.float(), a, b, 0.1, 30, domain="log")
    torch.testing.assert_close(plan, plan_ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(score, score_ref, atol=1e-6, rtol=1e-5)


def test_marginal_error_hand_values() -> None:
    plan = torch.tensor([[0.5, 0.0], [0.25, 0.25]])
    a = torch.tensor([0.5, 0.5])
    b = torch.tensor([0.5, 0.5])  # column sums 0.75, 0.25: error 0.25 + 0.25
    assert marginal_error(plan, a, b).item() == pytest.approx(0.5)
    assert marginal_error(plan[None].expand(3, 2, 2), a, b).shape == (3,)


def test_non_converged_plan_warns_once_and_raises_when_strict(caplog) -> None:
    sim, a, b, _, _ = _ragged(seed=8, d=3)  # low dimension: cosines spread over [-1, 1]
    caplog.set_level(logging.WARNING, logger=LOGGER)
    ot_score(sim, a, b, 0.01, 30)  # default check_convergence="warn"
    ot_score(sim, a, b, 0.01, 30)  # same setting again: no second warning
    warned = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert len(warned) == 1 and "not converged" in warned[0].getMessage()
    assert "eps=0.01" in warned[0].getMessage() and "log domain" in warned[0].getMessage()
    with pytest.raises(SinkhornConvergenceError, match="marginal error"):
        ot_score(sim, a, b, 0.01, 30, check_convergence="error")
    caplog.clear()
    ot_score(sim, a, b, 0.01, 30, check_convergence="off")
    score, _ = ot_score(sim, a, b, 0.1, 300, check_convergence="error")  # converged: no error, no warning
    ot_score(sim, a, b, 0.1, 300)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert torch.isfinite(score).all()


def test_default_settings_do_not_warn_on_cosine_features(caplog) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    g = torch.Generator().manual_seed(9)
    sim = torch.einsum("bckd,cnd->bckn", F.normalize(torch.randn(16, 10, 16, 32, generator=g), dim=-1),
                       F.normalize(torch.randn(10, 8, 32, generator=g), dim=-1))
    cfg = OTConfig()
    ot_score(sim, torch.full((16, 10, 16), 1 / 16), torch.full((1, 10, 8), 1 / 8), cfg.eps, cfg.iterations,
             domain=cfg.domain, check_convergence=cfg.check_convergence, tol=cfg.convergence_tol)
    assert not caplog.records


def test_config_fields() -> None:
    cfg = OTConfig()
    assert (cfg.domain, cfg.check_convergence, cfg.compile) == ("auto", "warn", False)
    assert cfg.convergence_tol > 0
    assert OTConfig(domain="exp", check_convergence="error", compile=True).domain == "exp"
    with pytest.raises(ValueError):
        OTConfig(domain="fast")
    with pytest.raises(ValueError):
        OTConfig(check_convergence="strict")


def test_compile_failure_falls_back_to_eager_with_a_warning(monkeypatch, caplog) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(sk, "_COMPILED", {})
    monkeypatch.setattr(sk, "_COMPILE_BROKEN", [])
    monkeypatch.setattr(torch, "compile", broken)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    sim, a, b, _, _ = _ragged(seed=10)
    plan = sinkhorn_plan(1 - sim, a, b, 0.1, 20, compile=True)
    plan2 = sinkhorn_plan(1 - sim, a, b, 0.1, 20, compile=True)
    torch.testing.assert_close(plan, sinkhorn_plan(1 - sim, a, b, 0.1, 20), atol=0, rtol=0)
    torch.testing.assert_close(plan2, plan, atol=0, rtol=0)
    warned = [r for r in caplog.records if "torch.compile" in r.getMessage()]
    assert len(warned) == 1 and "no compiler here" in warned[0].getMessage()


@pytest.mark.slow
def test_compiled_solver_gives_the_eager_plans(monkeypatch) -> None:
    """torch.compile on CPU (inductor, C++ codegen): about 30-50 s per domain on 2 cores."""
    monkeypatch.setattr(sk, "_COMPILED", {})
    monkeypatch.setattr(sk, "_COMPILE_BROKEN", [])
    sim, a, b, _, _ = _ragged(seed=11)
    for domain in ("exp", "log"):
        score_c, plan_c = ot_score(sim, a, b, 0.1, 30, domain=domain, compile=True, check_convergence="off")
        assert not sk._COMPILE_BROKEN, sk._COMPILE_BROKEN
        score_e, plan_e = ot_score(sim, a, b, 0.1, 30, domain=domain, check_convergence="off")
        torch.testing.assert_close(plan_c, plan_e, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(score_c, score_e, atol=1e-6, rtol=1e-5)


def test_learner_passes_the_ot_options_through(monkeypatch) -> None:
    from spacil.config import TrainConfig
    from spacil.methods.spa import SPAConfig
    from spacil.methods.spa import learner as learner_module

    g = torch.Generator().manual_seed(13)
    patches = F.normalize(torch.randn(2, 6, 8, generator=g), dim=-1)
    tokens = F.normalize(torch.randn(3, 4, 8, generator=g), dim=-1)
    side = {"description": F.normalize(tokens.mean(1), dim=-1), "tokens": tokens,
            "token_mask": torch.tensor([[True] * 4, [True, True, False, False], [True, False, True, True]])}
    ot_cfg = {"eps": 0.01, "iterations": 2, "domain": "exp", "check_convergence": "error", "convergence_tol": 0.5}
    learner = learner_module.SPALearner(SPAConfig.model_validate({"selection": {"k": 3, "context_weight": 0}, "ot": ot_cfg}),
                                        TrainConfig(epochs=0))
    seen = {}
    real = learner_module.ot_score
    monkeypatch.setattr(learner_module, "ot_score", lambda *args, **kw: seen.update(kw) or real(*args, **kw))
    with pytest.raises(SinkhornConvergenceError):
        learner.patch_scores(patches, side)
    assert seen == {"detach_plan": True, "domain": "exp", "check_convergence": "error", "tol": 0.5, "compile": False}
