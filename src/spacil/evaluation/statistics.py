"""Statistics for results tables: mean ± sample std, and paired differences with a 95% t-interval.

Results tables compare methods run on the same (world, seed) pairs, so the honest comparison is the
mean of the per-pair differences with a Student-t interval, not two overlapping mean ± std cells.
The Student-t quantile is computed here (scipy is not a dependency): the CDF through the regularized
incomplete beta function (Lentz's continued fraction), inverted by bisection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Hashable, Iterable, Mapping


@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation (ddof=1; ``None`` with fewer than two values)."""

    mean: float
    std: float | None
    n: int

    def format(self, digits: int = 2) -> str:
        if self.n == 0:
            return "-"
        std = "n/a" if self.std is None else f"{self.std:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {std}"


@dataclass(frozen=True)
class PairedDifference:
    """Mean of per-pair differences A - B, its 95% t-interval (``None`` with one pair) and the number of pairs."""

    mean: float
    low: float | None
    high: float | None
    n: int

    def format(self, digits: int = 2) -> str:
        if self.n == 0:
            return "-"
        if self.low is None:
            return f"{self.mean:+.{digits}f} (95% CI n/a)"
        return f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


def mean_std(values: Iterable[float | None]) -> Spread:
    """Mean ± sample std of the values that are not ``None`` or NaN."""
    kept = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(kept)
    if n == 0:
        return Spread(float("nan"), None, 0)
    mean = sum(kept) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in kept) / (n - 1)) if n > 1 else None
    return Spread(mean, std, n)


def paired_difference(a: Mapping[Hashable, float], b: Mapping[Hashable, float],
                      confidence: float = 0.95) -> PairedDifference:
    """Mean of ``a[k] - b[k]`` over the keys both hold (e.g. (world, seed)) and its two-sided t-interval."""
    keys = [k for k in a if k in b and a[k] is not None and b[k] is not None]
    diffs = [float(a[k]) - float(b[k]) for k in keys]
    spread = mean_std(diffs)
    if spread.n < 2:
        return PairedDifference(spread.mean, None, None, spread.n)
    half = student_t_quantile(0.5 + confidence / 2, spread.n - 1) * spread.std / math.sqrt(spread.n)
    return PairedDifference(spread.mean, spread.mean - half, spread.mean + half, spread.n)


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError("degrees of freedom must be positive")
    tail = 0.5 * regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def student_t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t (e.g. ``p=0.975`` for a two-sided 95% interval), by bisection."""
    if not 0.0 < p < 1.0:
        raise ValueError("p must lie strictly between 0 and 1")
    if p < 0.5:
        return -student_t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while student_t_cdf(high, df) < p:
        high *= 2.0
    for _ in range(200):
        mid = 0.5 * (low + high)
        if student_t_cdf(mid, df) < p:
            low = mid
        else:
            high = mid
        if high - low < 1e-12 * max(1.0, high):
            break
    return 0.5 * (low + high)
