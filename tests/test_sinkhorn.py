"""Batched masked log-domain Sinkhorn, checked against POT and against the per-problem loop reference.

POT's convention: ``ot.sinkhorn(a, b, M, reg)`` minimises <P, M> + reg * sum P log P, whose solution is
P = diag(u) exp(-M / reg) diag(v); ``ot.batch.solve_batch(M, reg, method="log_sinkhorn")`` uses the
same kernel exp(-M / reg). Our ``eps`` is exactly POT's ``reg`` (plan ∝ exp(-cost / eps)), no mapping.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spacil.ot import ot_score, sinkhorn_log, sinkhorn_loop_reference, uniform_masses


def _unit(generator: torch.Generator, *shape: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=generator, dtype=dtype), dim=-1)


def _random_masses(generator: torch.Generator, *shape: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    w = torch.rand(*shape, generator=generator, dtype=dtype) + 0.2
    return w / w.sum(-1, keepdim=True)


def _masked_masses(generator: torch.Generator, mask: torch.Tensor) -> torch.Tensor:
    """Random non-uniform masses over the valid entries, exactly 0 on padding."""
    w = (torch.rand(mask.shape, generator=generator, dtype=torch.float64) + 0.2) * mask
    return w / w.sum(-1, keepdim=True).clamp_min(1e-300)


def _ragged_problem(seed: int, b_: int = 3, c_: int = 4, m_: int = 5, n_: int = 6, d: int = 8):
    """[B, C, M, N] similarities of unit vectors, padded M per image and ragged N per class."""
    g = torch.Generator().manual_seed(seed)
    patches = _unit(g, b_, c_, m_, d)
    tokens = _unit(g, c_, n_, d)
    sim = torch.einsum("bcmd,cnd->bcmn", patches, tokens)
    n_valid = torch.tensor([n_, 1, 3, 4])[:c_]
    m_valid = torch.tensor([m_, 2, 4])[:b_]
    mask_b = torch.arange(n_)[None, :] < n_valid[:, None]  # [C, N]
    mask_a = torch.arange(m_)[None, :] < m_valid[:, None]  # [B, M]
    a = _masked_masses(g, mask_a)[:, None, :]  # [B, 1, M]: broadcasts over classes
    b = _masked_masses(g, mask_b)  # [C, N]: broadcasts over images
    return sim, a, b, mask_a, mask_b


def _pot_sinkhorn(ot, a, b, cost, eps, n_iters):
    with warnings.catch_warnings():  # stopThr=0 means "never stop early", POT warns about it
        warnings.simplefilter("ignore", UserWarning)
        return ot.sinkhorn(a, b, cost, reg=eps, method="sinkhorn_log", numItermax=n_iters, stopThr=0)


def test_matches_pot_per_instance() -> None:
    ot = pytest.importorskip("ot")
    g = torch.Generator().manual_seed(1)
    eps, n_iters = 0.1, 500
    sim = torch.einsum("pmd,pnd->pmn", _unit(g, 4, 7, 16), _unit(g, 4, 5, 16))
    a = _random_masses(g, 4, 7)
    b = _random_masses(g, 4, 5)
    score, plan = ot_score(sim, a, b, eps, n_iters)
    assert plan.dtype == torch.float64 and score.shape == (4,)
    for p in range(4):
        ref = _pot_sinkhorn(ot, a[p].numpy(), b[p].numpy(), (1 - sim[p]).numpy(), eps, n_iters)
        np.testing.assert_allclose(plan[p].numpy(), ref, atol=1e-5, rtol=0)
        assert score[p].item() == pytest.approx(float(np.sum(ref * sim[p].numpy())), abs=1e-5)


def test_matches_pot_solve_batch() -> None:
    ot = pytest.importorskip("ot")
    if not hasattr(ot, "batch") or not hasattr(ot.batch, "solve_batch"):
        pytest.skip(f"POT {ot.__version__} has no ot.batch.solve_batch (added in POT 0.9.6)")
    import ot.batch

    g = torch.Generator().manual_seed(2)
    eps, n_iters = 0.1, 500
    cost = 1 - torch.einsum("bcmd,bcnd->bcmn", _unit(g, 2, 3, 6, 12), _unit(g, 2, 3, 5, 12))
    a = _random_masses(g, 2, 3, 6)
    b = _random_masses(g, 2, 3, 5)
    plan = sinkhorn_log(cost, a, b, eps, n_iters)
    res = ot.batch.solve_batch(
        cost.reshape(6, 6, 5).numpy(), reg=eps, a=a.reshape(6, 6).numpy(), b=b.reshape(6, 5).numpy(),
        max_iter=n_iters, tol=0.0, method="log_sinkhorn", reg_type="entropy", grad="detach",
    )
    np.testing.assert_allclose(plan.reshape(6, 6, 5).numpy(), np.asarray(res.plan), atol=1e-5, rtol=0)


def test_marginals_hold_on_ragged_batch() -> None:
    sim, a, b, mask_a, mask_b = _ragged_problem(seed=3)
    plan = sinkhorn_log(1 - sim.float(), a.float(), b.float(), eps=0.1, n_iters=300)
    assert plan.dtype == torch.float32 and plan.shape == (3, 4, 5, 6)
    a_full, b_full = a.float().expand(3, 4, 5), b.float().expand(3, 4, 6)
    torch.testing.assert_close(plan.sum(-1), a_full, atol=1e-5, rtol=0)
    torch.testing.assert_close(plan.sum(-2), b_full, atol=1e-5, rtol=0)


def test_padded_columns_and_rows_do_not_change_valid_block() -> None:
    g = torch.Generator().manual_seed(4)
    eps, n_iters = 0.1, 40  # few iterations: equality must hold before convergence too
    m_, n_ = 5, 4
    cost = 1 - _unit(g, m_, 8) @ _unit(g, n_, 8).T
    a = _random_masses(g, m_)
    b = _random_masses(g, n_)
    ref = sinkhorn_log(cost, a, b, eps, n_iters)

    # pad N with 3 columns of arbitrary (even huge) cost and zero mass, inserted at scattered positions
    col_pos = torch.tensor([0, 2, 3, 5, 6, 1, 4])  # valid columns land at 0, 2, 3, 5
    cost_n = torch.cat([cost, 10 * torch.rand(m_, 3, generator=g, dtype=torch.float64) - 5], 1)
    cost_n = torch.empty_like(cost_n).index_copy_(1, col_pos, cost_n)
    b_n = torch.zeros(7, dtype=torch.float64).index_copy_(0, col_pos[:4], b)
    plan_n = sinkhorn_log(cost_n, a, b_n, eps, n_iters)
    valid_cols = col_pos[:4]
    torch.testing.assert_close(plan_n[:, valid_cols], ref, atol=1e-14, rtol=1e-12)
    assert torch.count_nonzero(plan_n[:, col_pos[4:]]) == 0

    # pad M with 2 trailing rows of zero mass
    cost_m = torch.cat([cost, torch.full((2, n_), 3.0, dtype=torch.float64)], 0)
    a_m = torch.cat([a, torch.zeros(2, dtype=torch.float64)])
    plan_m = sinkhorn_log(cost_m, a_m, b, eps, n_iters)
    torch.testing.assert_close(plan_m[:m_], ref, atol=1e-14, rtol=1e-12)
    assert torch.count_nonzero(plan_m[m_:]) == 0


@pytest.mark.parametrize("eps", [0.01, 0.005])
def test_small_eps_stays_finite_and_accurate(eps: float) -> None:
    sim, a, b, _, _ = _ragged_problem(seed=5, d=3)  # low dim: cosines spread over [-1, 1], costs in [0, 2]
    assert (1 - sim).max() > 1.5 and (1 - sim).min() < 0.5
    b = torch.cat([b, torch.zeros(1, 6, dtype=torch.float64)])  # plus a class with no tokens at all
    sim = torch.cat([sim, sim[:, :1]], 1)
    sim32 = sim.float().requires_grad_(True)
    n_iters = 100
    score, plan = ot_score(sim32, a.float(), b.float(), eps, n_iters, detach_plan=False)
    assert torch.isfinite(plan).all() and torch.isfinite(score).all()
    score.sum().backward()
    assert torch.isfinite(sim32.grad).all()
    assert torch.count_nonzero(plan[:, -1]) == 0 and torch.count_nonzero(score[:, -1]) == 0
    # float32 log-domain agrees with the float64 reference solver at this small eps
    ref = sinkhorn_loop_reference(1 - sim, a, b, eps, n_iters)
    torch.testing.assert_close(plan.double(), ref, atol=2e-4, rtol=0)
    torch.testing.assert_close(plan.sum(-2), b.float().expand(3, 5, 6), atol=1e-5, rtol=0)


def test_autocast_bf16_computes_in_float32() -> None:
    g = torch.Generator().manual_seed(6)
    patches = _unit(g, 2, 3, 5, 16, dtype=torch.float32)
    tokens = _unit(g, 3, 4, 16, dtype=torch.float32)
    a = torch.full((2, 3, 5), 0.2)
    b = uniform_masses(torch.tensor([[True] * 4, [True, True, False, False], [True, False, True, True]]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sim = torch.matmul(patches, tokens.transpose(-1, -2).unsqueeze(0))
        assert sim.dtype == torch.bfloat16  # autocast is really active
        score, plan = ot_score(sim, a, b, 0.05, 50)
        plan_direct = sinkhorn_log(1 - sim, a, b, 0.05, 50)
    assert score.dtype == torch.float32 and plan.dtype == torch.float32 and plan_direct.dtype == torch.float32
    score_ref, plan_ref = ot_score(sim.float(), a, b, 0.05, 50)
    torch.testing.assert_close(plan, plan_ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(score, score_ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(plan_direct, sinkhorn_log((1 - sim).float(), a, b, 0.05, 50), atol=1e-6, rtol=1e-5)


def test_detached_plan_gradient_is_the_plan() -> None:
    sim, a, b, _, _ = _ragged_problem(seed=7)
    sim = sim.clone().requires_grad_(True)
    score, plan = ot_score(sim, a, b, 0.1, 30, detach_plan=True)
    assert not plan.requires_grad  # no graph through the iterations
    weights = torch.rand(score.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    (grad,) = torch.autograd.grad((weights * score).sum(), sim)
    torch.testing.assert_close(grad, weights[..., None, None] * plan, atol=1e-14, rtol=0)
    # the unrolled gradient is a different quantity (it also moves the plan)
    sim_u = sim.detach().clone().requires_grad_(True)
    (grad_u,) = torch.autograd.grad((weights * ot_score(sim_u, a, b, 0.1, 30, detach_plan=False)[0]).sum(), sim_u)
    assert (grad_u - grad).abs().max() > 1e-3


def test_unrolled_gradient_passes_gradcheck() -> None:
    g = torch.Generator().manual_seed(8)
    sim = (_unit(g, 2, 3, 4) @ _unit(g, 4, 4).T).requires_grad_(True)  # [2, 3, 4]
    a = uniform_masses(torch.tensor([[True, True, True], [True, True, False]]), dtype=torch.float64)
    b = _masked_masses(g, torch.tensor([True, False, True, True]))  # one padded column

    def score_fn(s: torch.Tensor) -> torch.Tensor:
        return ot_score(s, a, b, 0.3, 15, detach_plan=False)[0]

    assert torch.autograd.gradcheck(score_fn, (sim,), eps=1e-6, atol=1e-6)


def test_batched_matches_loop_reference() -> None:
    sim, a, b, mask_a, mask_b = _ragged_problem(seed=9)  # [B=3, C=4, M=5, N=6]
    cost = 1 - sim
    plan = sinkhorn_log(cost, a, b, 0.1, 25)
    ref = sinkhorn_loop_reference(cost, a, b, 0.1, 25)
    assert plan.shape == ref.shape == (3, 4, 5, 6)
    torch.testing.assert_close(plan, ref, atol=1e-13, rtol=1e-10)
    valid = mask_a[:, None, :, None] & mask_b[None, :, None, :]
    assert torch.count_nonzero(plan[~valid]) == 0
    assert (plan[valid] > 0).all()


def test_uniform_masses_hand_values() -> None:
    mask = torch.tensor([[True, True, False, False], [False, False, False, False], [True, False, True, True]])
    expected = torch.tensor([[0.5, 0.5, 0, 0], [0, 0, 0, 0], [1 / 3, 0, 1 / 3, 1 / 3]])
    out = uniform_masses(mask)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected)


def test_all_padding_problem_gives_zero_plan() -> None:
    cost = torch.rand(2, 3, 4, generator=torch.Generator().manual_seed(10))
    a = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 0.0]])
    b = torch.full((2, 4), 0.25)
    plan = sinkhorn_log(cost, a, b, 0.1, 300)
    assert torch.isfinite(plan).all() and torch.count_nonzero(plan[1]) == 0
    torch.testing.assert_close(plan[0].sum(-1), a[0], atol=1e-5, rtol=0)


def test_shape_errors() -> None:
    cost = torch.zeros(2, 3, 4)
    with pytest.raises(ValueError):
        sinkhorn_log(cost, torch.full((2, 4), 0.25), torch.full((2, 4), 0.25), 0.1, 5)
    with pytest.raises(ValueError):
        sinkhorn_log(cost, torch.full((5, 3), 1 / 3), torch.full((2, 4), 0.25), 0.1, 5)
    with pytest.raises(ValueError):
        sinkhorn_log(cost, torch.full((2, 3), 1 / 3), torch.full((2, 4), 0.25), 0.0, 5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_no_host_sync_on_cuda() -> None:
    sim, a, b, _, _ = _ragged_problem(seed=11)
    sim, a, b = sim.float().cuda(), a.float().cuda(), b.float().cuda()
    torch.cuda.set_sync_debug_mode("error")
    try:
        score, plan = ot_score(sim, a, b, 0.05, 20, check_convergence="off")  # the check syncs once
    finally:
        torch.cuda.set_sync_debug_mode("default")
    ref = sinkhorn_loop_reference((1 - sim).cpu(), a.cpu(), b.cpu(), 0.05, 20)
    torch.testing.assert_close(plan.cpu(), ref, atol=1e-5, rtol=1e-4)
