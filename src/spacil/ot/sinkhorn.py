"""Batched, masked, log-domain entropic optimal transport (Sinkhorn) in torch.

SPA scores every (image, class) pair by transporting the image's selected patch tokens onto the
class's semantic tokens. That is B x C small OT problems at once, with ragged sizes (classes have
different numbers of description tokens, images may contribute a padded number of patches), so the
solver works on padded tensors and treats zero-mass entries as absent.

Convention (same as POT's ``ot.sinkhorn(a, b, M, reg)``): the plan solves

    min_P <P, C> + eps * sum_ij P_ij log P_ij   s.t.  P 1 = a,  P^T 1 = b,

so ``P = diag(e^f) exp(-C / eps) diag(e^g)`` with dual log-scalings ``f`` and ``g``.

Two equivalent iterations compute it (same updates, same plan in exact arithmetic):

* log domain (:func:`sinkhorn_log`): ``f <- log a - LSE_j(-C_ij / eps + g_j)``, then
  ``g <- log b - LSE_i(-C_ij / eps + f_i)``; safe for any eps, but logsumexp is expensive;
* exp domain (:func:`sinkhorn_exp`, matrix scaling): with ``K = exp(-(C - c_0) / eps)``,
  ``u <- a / (K v)`` then ``v <- b / (K^T u)`` and ``P = diag(u) K diag(v)``, two batched matrix-vector
  products per step. Exact as long as ``K`` does not underflow, i.e. ``(max C - min C) / eps`` is small
  enough for the float type; :func:`choose_domain` states the rule and :func:`sinkhorn_plan` applies it.

:func:`marginal_error` measures how far a plan is from its marginals (one reduction), and
:func:`ot_score` reports non-converged plans (warning or error) with one host synchronisation per call,
or, inside :func:`deferred_convergence_checks`, one for the whole block (a scoring pass of many batches).
"""

from __future__ import annotations

import itertools
import logging
import math
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator, Literal

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

__all__ = [
    "EXP_DOMAIN_MAX_EXPONENT",
    "SinkhornConvergenceError",
    "choose_domain",
    "deferred_convergence_checks",
    "marginal_error",
    "ot_score",
    "reset_convergence_warnings",
    "sinkhorn_plan",
    "sinkhorn_exp",
    "sinkhorn_log",
    "sinkhorn_loop_reference",
    "uniform_masses",
]

Domain = Literal["auto", "log", "exp"]
CheckMode = Literal["off", "warn", "error"]

#: Largest kernel exponent ``(max C - min C) / eps`` for which the exp domain is used, per dtype.
#: float32: exp(-50) ~ 1.9e-22, eight orders of magnitude above 1e-30 and sixteen above the smallest
#: normal float32 (1.2e-38); the scalings u, v then stay within ~e^{+-50} ~ 5e21, far from overflow
#: (3.4e38). float64: exp(-500) ~ 7e-218 against a smallest normal of 2.2e-308.
EXP_DOMAIN_MAX_EXPONENT: dict[torch.dtype, float] = {torch.float32: 50.0, torch.float64: 500.0}


class SinkhornConvergenceError(RuntimeError):
    """Raised by :func:`ot_score` with ``check_convergence="error"`` when plans miss their marginals."""


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float32, or float64 when an input already is: half precision never reaches the iterations."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _check_args(cost: Tensor, a: Tensor, b: Tensor, eps: float, n_iters: int) -> torch.Size:
    """Validate shapes and scalars (never tensor values: no host sync); return the broadcast batch shape."""
    if cost.dim() < 2:
        raise ValueError(f"cost must be [..., M, N], got shape {tuple(cost.shape)}")
    if a.dim() < 1 or a.shape[-1] != cost.shape[-2]:
        raise ValueError(f"a must be [..., M={cost.shape[-2]}], got shape {tuple(a.shape)}")
    if b.dim() < 1 or b.shape[-1] != cost.shape[-1]:
        raise ValueError(f"b must be [..., N={cost.shape[-1]}], got shape {tuple(b.shape)}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if n_iters < 0:
        raise ValueError(f"n_iters must be >= 0, got {n_iters}")
    try:
        return torch.broadcast_shapes(cost.shape[:-2], a.shape[:-1], b.shape[:-1])
    except RuntimeError as err:
        raise ValueError(
            f"leading dims do not broadcast: cost {tuple(cost.shape)}, a {tuple(a.shape)}, b {tuple(b.shape)}"
        ) from err


def _broadcast_problems(cost: Tensor, a: Tensor, b: Tensor, eps: float, n_iters: int
                        ) -> tuple[Tensor, Tensor, Tensor, torch.Size]:
    """Validated inputs in the compute dtype, expanded to the common batch shape (call with autocast off)."""
    batch = _check_args(cost, a, b, eps, n_iters)
    m, n = cost.shape[-2:]
    dtype = _compute_dtype(cost, a, b)
    return cost.to(dtype).expand(*batch, m, n), a.to(dtype).expand(*batch, m), b.to(dtype).expand(*batch, n), batch


def _safe_log(masses: Tensor, valid: Tensor) -> Tensor:
    """log of the valid masses, 0 elsewhere; log is never evaluated at 0 so backward stays finite."""
    return torch.log(torch.where(valid, masses, torch.ones_like(masses)))


def choose_domain(eps: float, cost_range: float, dtype: torch.dtype = torch.float32) -> Literal["log", "exp"]:
    r"""Pick the Sinkhorn domain for costs whose spread (max - min over valid entries) is ``cost_range``.

    The exp domain iterates on the kernel :math:`K = \exp(-(C - \min C) / \varepsilon)`, whose entries lie in
    :math:`[\exp(-\rho), 1]` with :math:`\rho = \mathrm{cost\_range} / \varepsilon`. Rule:

    .. math::
        \text{exp domain} \iff \rho = \frac{\mathrm{cost\_range}}{\varepsilon} \le \rho_{\max}(\text{dtype}),

    with :math:`\rho_{\max}` = 50 for float32 (kernel >= exp(-50) ~ 1.9e-22 >= 1e-30 with eight orders of
    margin) and 500 for float64 (:data:`EXP_DOMAIN_MAX_EXPONENT`); log domain otherwise. For cosine costs
    ``1 - cos`` (range <= 2) that is exp for eps >= 0.04 in float32, e.g. eps = 0.1 -> exp (rho = 20),
    eps = 0.01 -> log (rho = 200). Half precision never reaches the iterations (they run in float32).
    """
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if not cost_range >= 0:
        raise ValueError(f"cost_range must be >= 0, got {cost_range}")
    bound = EXP_DOMAIN_MAX_EXPONENT.get(dtype, EXP_DOMAIN_MAX_EXPONENT[torch.float32])
    return "exp" if cost_range / eps <= bound else "log"


def _valid_masks(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    valid_a = a > 0
    valid_b = b > 0
    return valid_a, valid_b, valid_a.unsqueeze(-1) & valid_b.unsqueeze(-2)


def _sinkhorn_log_core(cost: Tensor, a: Tensor, b: Tensor, eps: float, n_iters: int) -> Tensor:
    """Log-domain iterations on broadcast, compute-dtype problems (see :func:`sinkhorn_log`)."""
    dtype = cost.dtype
    valid_a, valid_b, valid = _valid_masks(a, b)
    # A finite sentinel (not -inf): far below any reachable log-kernel value, yet with room for
    # additions without overflow, and logsumexp over an all-sentinel row stays finite.
    sentinel = torch.finfo(dtype).min / 4
    log_k = torch.where(valid, -cost / eps, torch.full_like(cost, sentinel))
    log_a = _safe_log(a, valid_a)
    log_b = _safe_log(b, valid_b)
    zeros_a = torch.zeros_like(log_a)
    zeros_b = torch.zeros_like(log_b)
    f = zeros_a
    g = zeros_b
    for _ in range(n_iters):
        f = torch.where(valid_a, log_a - torch.logsumexp(log_k + g.unsqueeze(-2), dim=-1), zeros_a)
        g = torch.where(valid_b, log_b - torch.logsumexp(log_k + f.unsqueeze(-1), dim=-2), zeros_b)
    log_plan = log_k + f.unsqueeze(-1) + g.unsqueeze(-2)
    return torch.where(valid, torch.exp(log_plan), torch.zeros_like(log_plan))


def _sinkhorn_exp_core(cost: Tensor, a: Tensor, b: Tensor, eps: float, n_iters: int) -> Tensor:
    """Exp-domain (matrix scaling) iterations on broadcast, compute-dtype problems (see :func:`sinkhorn_exp`)."""
    valid_a, valid_b, valid = _valid_masks(a, b)
    # Per-problem shift c_0 = min of the valid costs: K = exp(-(C - c_0) / eps) has max entry 1. The plan
    # is exactly invariant to it (the constant exp(c_0 / eps) is absorbed by u at the first update), so
    # it is detached; all-padding problems (no valid entry) get c_0 = 0.
    with torch.no_grad():
        shift = torch.where(valid, cost, torch.full_like(cost, math.inf)).amin(dim=(-2, -1), keepdim=True)
        shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    # exp(-inf) = 0 on padding, with a zero (not NaN) gradient whatever the padded costs are
    exponent = torch.where(valid, (shift - cost) / eps, torch.full_like(cost, -math.inf))
    kernel = torch.exp(exponent)
    ones_a = torch.ones_like(a)
    ones_b = torch.ones_like(b)
    # Initial u reproduces the log domain's f = 0 for n_iters = 0 (plan = exp(-C / eps) on valid entries).
    u = torch.where(valid_a, torch.exp(-shift.squeeze(-1) / eps).expand_as(a), torch.zeros_like(a))
    v = valid_b.to(cost.dtype)
    for _ in range(n_iters):
        kv = torch.matmul(kernel, v.unsqueeze(-1)).squeeze(-1)  # [..., M]
        # rows with no valid column (kv = 0) keep a finite u; padded rows have a = 0, hence u = 0
        u = a / torch.where(kv > 0, kv, ones_a)
        ktu = torch.matmul(u.unsqueeze(-2), kernel).squeeze(-2)  # [..., N]
        v = b / torch.where(ktu > 0, ktu, ones_b)
    return u.unsqueeze(-1) * kernel * v.unsqueeze(-2)


_CORES: dict[str, Callable[[Tensor, Tensor, Tensor, float, int], Tensor]] = {
    "log": _sinkhorn_log_core,
    "exp": _sinkhorn_exp_core,
}
_COMPILED: dict[str, Callable[..., Tensor]] = {}
_COMPILE_BROKEN: list[str] = []  # a message once torch.compile has failed: eager from then on


def _out_of_memory(exc: BaseException) -> bool:
    """A device out-of-memory error, raised directly or wrapped by the compiler (its cause chain)."""
    while exc is not None:
        if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower():
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _compile_errors() -> tuple[type[BaseException], ...]:
    """What a failing compilation raises when the compiled function first runs (dynamo wraps the backend's
    errors, e.g. no C++ compiler, in its own exception types)."""
    from torch._dynamo.exc import TorchDynamoException
    from torch._inductor.exc import CppCompileError

    return (TorchDynamoException, CppCompileError)


def _fall_back(exc: BaseException) -> None:
    _COMPILE_BROKEN.append(f"{exc.__class__.__name__}: {exc}"[:300])
    logger.warning("torch.compile of the Sinkhorn solver failed, falling back to eager mode "
                   "for the rest of this process (%s)", _COMPILE_BROKEN[0])


def _run_core(domain: str, cost: Tensor, a: Tensor, b: Tensor, eps: float, n_iters: int, compile: bool) -> Tensor:
    """Run one domain's iterations, through ``torch.compile`` when asked and available (eager otherwise).

    Only a failure to compile switches to eager mode (for the rest of the process); an out-of-memory error
    or any other error while the compiled solver runs is raised as it is, not reported as a compile failure.
    """
    core = _CORES[domain]
    if not compile or _COMPILE_BROKEN:
        return core(cost, a, b, eps, n_iters)
    fn = _COMPILED.get(domain)
    if fn is None:
        try:
            fn = _COMPILED[domain] = torch.compile(core, dynamic=None)
        except Exception as exc:  # noqa: BLE001 - torch.compile itself refused (unsupported platform ...)
            _fall_back(exc)
            return core(cost, a, b, eps, n_iters)
    try:
        return fn(cost, a, b, eps, n_iters)
    except Exception as exc:
        if _out_of_memory(exc) or not isinstance(exc, _compile_errors()):
            raise
        _fall_back(exc)
        return core(cost, a, b, eps, n_iters)


def sinkhorn_exp(cost: Tensor, a: Tensor, b: Tensor, eps: float, n_iters: int, compile: bool = False) -> Tensor:
    r"""Entropic OT plans for a batch of padded problems, by exp-domain Sinkhorn (matrix scaling).

    Same problem, arguments, masking and return value as :func:`sinkhorn_log`. With
    :math:`c_0 = \min_{ij\,\text{valid}} C_{ij}` per problem and :math:`K_{ij} = \exp(-(C_{ij} - c_0)/\varepsilon)`
    on valid entries (0 on padding), each of the ``n_iters`` steps is

    .. math::
        u \leftarrow a \oslash (K v), \qquad v \leftarrow b \oslash (K^\top u),

    two batched matrix-vector products, and the plan is :math:`P = \mathrm{diag}(u)\, K\, \mathrm{diag}(v)`.
    It equals the log-domain plan (``u = e^{f} e^{c_0/\varepsilon}``, ``v = e^{g}``) as long as ``K`` does not
    underflow: only use it when :func:`choose_domain` says so (:func:`sinkhorn_plan` does that for you).
    ``compile=True`` runs the iterations through ``torch.compile`` (eager fallback with a warning).
    """
    with torch.autocast(device_type=cost.device.type, enabled=False):
        cost, a, b, _ = _broadcast_problems(cost, a, b, eps, n_iters)
        return _run_core("exp", cost, a, b, eps, n_iters, compile)


def _valid_cost_range(cost: Tensor, a: Tensor, b: Tensor) -> float:
    """max - min of the costs over valid entries, over the whole batch (one host synchronisation)."""
    _, _, valid = _valid_masks(a, b)
    if not bool(valid.any()):
        return 0.0
    hi = torch.where(valid, cost, torch.full_like(cost, -math.inf)).amax(dim=(-2, -1))
    lo = torch.where(valid, cost, torch.full_like(cost, math.inf)).amin(dim=(-2, -1))
    spread = torch.where(torch.isfinite(hi - lo), hi - lo, torch.zeros_like(hi))
    return float(spread.max())


def _resolve_domain(domain: str, eps: float, cost_range: float | None, cost: Tensor, a: Tensor, b: Tensor) -> str:
    if domain not in ("auto", "log", "exp"):
        raise ValueError(f"domain must be 'auto', 'log' or 'exp', got {domain!r}")
    if domain != "auto":
        return domain
    if cost_range is None:
        cost_range = _valid_cost_range(cost, a, b)
    return choose_domain(eps, cost_range, cost.dtype)


def sinkhorn_plan(cost: Tensor, a: Tensor, b: Tensor, eps: float, n_iters: int, domain: Domain = "auto",
             cost_range: float | None = None, compile: bool = False) -> Tensor:
    """Entropic OT plans for a batch of padded problems, in the log or the exp domain.

    Args:
        cost, a, b, eps, n_iters: as in :func:`sinkhorn_log`.
        domain: ``"log"`` (:func:`sinkhorn_log`), ``"exp"`` (:func:`sinkhorn_exp`) or ``"auto"``:
            :func:`choose_domain` from ``eps``, ``cost_range`` and the compute dtype.
        cost_range: a known bound on (max - min) of the valid costs per problem, e.g. 2 for ``1 - cosine``.
            ``None`` with ``domain="auto"`` measures it over the batch (one host synchronisation).
        compile: run the iterations through ``torch.compile`` (eager fallback with a logged warning).

    Returns:
        [..., M, N] plans, as :func:`sinkhorn_log`.
    """
    with torch.autocast(device_type=cost.device.type, enabled=False):
        cost, a, b, _ = _broadcast_problems(cost, a, b, eps, n_iters)
        chosen = _resolve_domain(domain, eps, cost_range, cost, a, b)
        return _run_core(chosen, cost, a, b, eps, n_iters, compile)


def marginal_error(plan: Tensor, a: Tensor, b: Tensor) -> Tensor:
    r"""Per-problem L1 marginal violation :math:`\|P 1 - a\|_1 + \|P^\top 1 - b\|_1`, shape ``[...]``.

    ``a`` and ``b`` broadcast as in :func:`sinkhorn_log`; padded entries have zero mass on both sides, so
    they contribute nothing. Two sums and one reduction on the device, no synchronisation.
    """
    with torch.autocast(device_type=plan.device.type, enabled=False):
        a = a.to(plan.dtype)
        b = b.to(plan.dtype)
        return (plan.sum(-1) - a).abs().sum(-1) + (plan.sum(-2) - b).abs().sum(-1)


_WARNED: dict[tuple, int] = {}


def reset_convergence_warnings() -> None:
    """Forget which settings already warned about non-converged plans (each warns once per process)."""
    _WARNED.clear()


#: Inside :func:`deferred_convergence_checks`: the checks collected so far, each a device scalar (the largest
#: marginal error of one call) with what its report needs; ``None`` outside.
_DEFERRED: ContextVar[list | None] = ContextVar("spacil_deferred_ot_checks", default=None)


@contextmanager
def deferred_convergence_checks() -> Iterator[None]:
    """Collect the convergence checks of every :func:`ot_score` call in the block on the device and report
    them once at its end: one host synchronisation for a whole scoring or training pass instead of one per
    batch (on a GPU each is a pipeline stall). Same warnings and errors as immediate checks, raised at the
    end of the block; nested blocks join the outermost one.
    """
    if _DEFERRED.get() is not None:
        yield
        return
    pending: list = []
    token = _DEFERRED.set(pending)
    try:
        yield
    finally:
        _DEFERRED.reset(token)
    if pending:
        errors = torch.stack([err.to(pending[0][0].device) for err, _ in pending]).tolist()  # the one sync
        for value, (_, report) in zip(errors, pending):
            _judge(value, *report)


def _report_convergence(plan: Tensor, a: Tensor, b: Tensor, mode: str, tol: float, eps: float, n_iters: int,
                        domain: str) -> None:
    """One reduction and one host synchronisation (or none, deferred): warn (once per setting) or raise if
    the plans missed."""
    if mode == "off":
        return
    if mode not in ("warn", "error"):
        raise ValueError(f"check_convergence must be 'off', 'warn' or 'error', got {mode!r}")
    if plan.numel() == 0:
        return
    err = marginal_error(plan.detach(), a.detach(), b.detach()).max()
    report = (mode, tol, eps, n_iters, domain, plan[..., 0, 0].numel())
    pending = _DEFERRED.get()
    if pending is not None:
        pending.append((err, report))
        return
    _judge(float(err), *report)  # the one sync


def _judge(err: float, mode: str, tol: float, eps: float, n_iters: int, domain: str, n_problems: int) -> None:
    if err <= tol:  # False for NaN too
        return
    msg = (f"Sinkhorn plans not converged: marginal error {err:.3g} > tolerance {tol:g} (max over "
           f"{n_problems} problems; eps={eps:g}, {n_iters} iterations, {domain} domain). "
           "Raise the iterations or eps (method.spa.ot.iterations / eps), or set method.spa.ot.check_convergence.")
    if mode == "error":
        raise SinkhornConvergenceError(msg)
    key = (eps, n_iters, domain)
    _WARNED[key] = _WARNED.get(key, 0) + 1
    if _WARNED[key] == 1:
        logger.warning("%s Warned once for these settings; further misses are logged at debug level.", msg)
    else:
        logger.debug("%s (miss %d for these settings)", msg, _WARNED[key])


def sinkhorn_log(cost: Tensor, a: Tensor, b: Tensor, eps: float, n_iters: int) -> Tensor:
    """Entropic OT plans for a batch of padded problems, by a fixed number of log-domain Sinkhorn steps.

    Args:
        cost: [..., M, N] cost matrices.
        a: [..., M] source masses; entries with mass 0 are padding (absent rows).
        b: [..., N] target masses; entries with mass 0 are padding (absent columns).
            Leading dims of ``a`` and ``b`` broadcast against those of ``cost``
            (e.g. cost [B, C, M, N], a [B, C, M], b [C, N] or [1, C, N]).
        eps: entropic regularisation, plan ∝ exp(-cost / eps) (POT's ``reg``).
        n_iters: number of (row, column) scaling steps; fixed, with no convergence check, so the
            loop never synchronises with the device.

    Returns:
        [..., M, N] plans (float32, or float64 for float64 inputs). Padded rows/columns are exactly
        zero, and the valid block equals the plan of the unpadded problem. Each step updates the row
        potential then the column potential, so the column marginals are exact and the row marginals
        converge with ``n_iters``.

    Zero masses are excluded by masking rather than log(0) = -inf, which keeps all-padding problems
    (plan = 0) and every gradient finite. Autocast is disabled inside: small eps makes exp/logsumexp
    unusable in bf16/fp16.
    """
    with torch.autocast(device_type=cost.device.type, enabled=False):
        cost, a, b, _ = _broadcast_problems(cost, a, b, eps, n_iters)
        return _sinkhorn_log_core(cost, a, b, eps, n_iters)


def ot_score(
    sim: Tensor, a: Tensor, b: Tensor, eps: float, n_iters: int, detach_plan: bool = True, *,
    domain: Domain = "auto", cost_range: float | None = 2.0, check_convergence: CheckMode = "warn",
    tol: float = 1e-2, compile: bool = False,
) -> tuple[Tensor, Tensor]:
    r"""Transport-weighted similarity :math:`\sum_{mn} P_{mn} \mathrm{sim}_{mn}`, P the OT plan for cost = 1 - sim.

    Args:
        sim: [..., M, N] similarities (e.g. cosine of patch tokens and semantic tokens).
        a, b, eps, n_iters: as in :func:`sinkhorn_log`.
        detach_plan: True computes the plan without autograd, so backward memory does not grow with
            ``n_iters`` and the gradient reaches ``sim`` only through the final weighted sum
            (d score / d sim = plan). False backpropagates through the unrolled iterations.
        domain: ``"auto"`` (:func:`choose_domain`), ``"log"`` or ``"exp"``; see :func:`sinkhorn_plan`.
        cost_range: bound on the spread of the costs ``1 - sim`` used by ``domain="auto"``; the default 2
            holds for cosine similarities. ``None`` measures it (one host synchronisation).
        check_convergence: ``"warn"`` logs a warning (once per (eps, n_iters, domain)) when the largest
            :func:`marginal_error` of the batch exceeds ``tol``; ``"error"`` raises
            :class:`SinkhornConvergenceError`; ``"off"`` skips the check. The check is one reduction and one
            host synchronisation after the iterations, never inside them.
        tol: tolerance on the L1 marginal error of each plan (the masses sum to 1).
        compile: run the iterations through ``torch.compile`` (eager fallback with a logged warning).

    Returns:
        (score [...], plan [..., M, N]), both float32 (float64 for float64 inputs).
    """
    with torch.autocast(device_type=sim.device.type, enabled=False):
        # upcast before 1 - sim: in bf16 that subtraction alone would round the costs
        sim = sim.to(_compute_dtype(sim, a, b))
        cost = 1.0 - sim
        with torch.no_grad():
            chosen = _resolve_domain(domain, eps, cost_range, *_broadcast_problems(cost, a, b, eps, n_iters)[:3])
        if detach_plan:
            with torch.no_grad():
                plan = sinkhorn_plan(cost.detach(), a.detach(), b.detach(), eps, n_iters, chosen, compile=compile)
        else:
            plan = sinkhorn_plan(cost, a, b, eps, n_iters, chosen, compile=compile)
        _report_convergence(plan, a, b, check_convergence, tol, eps, n_iters, chosen)
        score = (plan * sim).sum(dim=(-2, -1))
    return score, plan


def uniform_masses(mask: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Uniform masses over the True entries of a [..., K] validity mask, 0 elsewhere (all-False rows -> 0)."""
    weights = mask.to(dtype)
    count = weights.sum(dim=-1, keepdim=True)
    return weights / count.clamp_min(1.0)


def _sinkhorn_single(cost: Tensor, a: Tensor, b: Tensor, eps: float, n_iters: int) -> Tensor:
    """One unpadded [M, N] problem with strictly positive masses; same updates as :func:`sinkhorn_log`."""
    log_k = -cost / eps
    log_a = torch.log(a)
    log_b = torch.log(b)
    f = torch.zeros_like(a)
    g = torch.zeros_like(b)
    for _ in range(n_iters):
        f = log_a - torch.logsumexp(log_k + g[None, :], dim=1)
        g = log_b - torch.logsumexp(log_k + f[:, None], dim=0)
    return torch.exp(log_k + f[:, None] + g[None, :])


def sinkhorn_loop_reference(cost: Tensor, a: Tensor, b: Tensor, eps: float, n_iters: int) -> Tensor:
    """Slow reference for :func:`sinkhorn_log`: a Python loop over the leading dims.

    Each problem is cut down to its valid rows/columns (mass > 0) and solved unpadded by a plain
    single-problem log-domain Sinkhorn, then scattered back into a zero plan. It synchronises with the
    device on every problem and exists only to check the batched solver and to benchmark it against.
    Same arguments, dtype rules and return value as :func:`sinkhorn_log`.
    """
    m, n = cost.shape[-2:]
    with torch.autocast(device_type=cost.device.type, enabled=False):
        cost, a, b, batch = _broadcast_problems(cost, a, b, eps, n_iters)
        plans = []
        for idx in itertools.product(*(range(size) for size in batch)):
            rows = torch.nonzero(a[idx] > 0).squeeze(1)
            cols = torch.nonzero(b[idx] > 0).squeeze(1)
            plan = cost.new_zeros(m, n)
            if rows.numel() and cols.numel():
                sub = _sinkhorn_single(cost[idx][rows][:, cols], a[idx][rows], b[idx][cols], eps, n_iters)
                plan = plan.index_put((rows[:, None], cols[None, :]), sub)
            plans.append(plan)
        return torch.stack(plans).reshape(*batch, m, n)
