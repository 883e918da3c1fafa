"""Test-only guards for bugs that CPU runs hide and CUDA runs show.

- :class:`RandomDrawGuard`: every random draw that takes a ``generator`` must fill a tensor on the
  generator's own device. On CUDA a CPU generator filling a CUDA tensor (or the reverse) raises; on the
  CPU, or on ``meta``, torch lets it pass, so this guard checks it for us.
- :class:`HostSyncCounter`: counts the calls *made from spacil's own code* that make the host wait for the
  device (``.item()``, ``.tolist()``, ``.cpu()``, ``.numpy()``, ``bool``/``float``/``int`` of a tensor, a
  copy ``.to("cpu")``). Host-to-device copies (``.to(device)``) are not counted. On a GPU each is a pipeline stall; counting them on the CPU tells whether their
  number grows with the number of training steps or scored batches.
"""

from __future__ import annotations

import functools
import sys
from collections import Counter
from pathlib import Path

import torch

SPACIL_SRC = str(Path(__file__).resolve().parents[1] / "src" / "spacil")


def _same_device(generator: torch.Generator, device: torch.device) -> bool:
    g = generator.device
    if g.type != device.type:
        return False
    return g.index is None or device.index is None or g.index == device.index


class RandomDrawGuard:
    """Patches torch's sampling functions; a draw whose generator sits on another device raises."""

    FACTORIES = ("randn", "rand", "randint", "randperm", "normal", "multinomial", "bernoulli", "poisson")
    INPLACE = ("normal_", "uniform_", "random_", "bernoulli_", "exponential_", "cauchy_", "log_normal_",
               "geometric_")

    def __init__(self) -> None:
        self.draws: list[tuple[str, str, str]] = []  # (function, generator device, tensor device)
        self._saved: list[tuple[object, str, object]] = []

    def _check(self, name: str, generator: torch.Generator | None, out: torch.Tensor) -> None:
        if generator is None or not isinstance(out, torch.Tensor):
            return
        self.draws.append((name, str(generator.device), str(out.device)))
        if not _same_device(generator, out.device):
            raise AssertionError(f"{name}: a generator on {generator.device} fills a tensor on {out.device} "
                                 "(CUDA raises here)")

    def _wrap_factory(self, name: str, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            out = fn(*args, **kwargs)
            self._check(f"torch.{name}", kwargs.get("generator"), out)
            return out
        return wrapper

    def _wrap_inplace(self, name: str, fn):
        @functools.wraps(fn)
        def wrapper(tensor, *args, **kwargs):
            self._check(f"Tensor.{name}", kwargs.get("generator"), tensor)
            return fn(tensor, *args, **kwargs)
        return wrapper

    def __enter__(self) -> "RandomDrawGuard":
        for name in self.FACTORIES:
            fn = getattr(torch, name)
            self._saved.append((torch, name, fn))
            setattr(torch, name, self._wrap_factory(name, fn))
        for name in self.INPLACE:
            fn = getattr(torch.Tensor, name)
            self._saved.append((torch.Tensor, name, fn))
            setattr(torch.Tensor, name, self._wrap_inplace(name, fn))
        return self

    def __exit__(self, *exc) -> None:
        for owner, name, fn in reversed(self._saved):
            setattr(owner, name, fn)
        self._saved.clear()


class HostSyncCounter:
    """Counts host syncs issued by spacil's code (calls whose direct caller is a file under ``roots``)."""

    METHODS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")

    def __init__(self, roots: tuple[str, ...] = (SPACIL_SRC,)) -> None:
        self.roots = tuple(roots)
        self.calls: Counter[str] = Counter()
        self._saved: list[tuple[str, object]] = []

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def _from_spacil(self) -> str | None:
        frame = sys._getframe(2)
        name = frame.f_code.co_filename
        return f"{Path(name).name}:{frame.f_lineno}" if name.startswith(self.roots) else None

    def _wrap(self, name: str, fn):
        counter = self

        @functools.wraps(fn)
        def wrapper(tensor, *args, **kwargs):
            where = counter._from_spacil()
            if where is not None:
                counter.calls[f"{name} at {where}"] += 1
            return fn(tensor, *args, **kwargs)
        return wrapper

    def _wrap_to(self, fn):
        counter = self

        @functools.wraps(fn)
        def wrapper(tensor, *args, **kwargs):
            # only an explicit "cpu" string: on a CPU-only machine ``.to(ctx.device)`` (a host-to-device move
            # on a GPU, not a sync) would look the same
            target = kwargs.get("device", args[0] if args else None)
            if target == "cpu":
                where = counter._from_spacil()
                if where is not None:
                    counter.calls[f"to(cpu) at {where}"] += 1
            return fn(tensor, *args, **kwargs)
        return wrapper

    def __enter__(self) -> "HostSyncCounter":
        for name in self.METHODS:
            fn = getattr(torch.Tensor, name)
            self._saved.append((name, fn))
            setattr(torch.Tensor, name, self._wrap(name, fn))
        self._saved.append(("to", torch.Tensor.to))
        torch.Tensor.to = self._wrap_to(torch.Tensor.to)
        return self

    def __exit__(self, *exc) -> None:
        for name, fn in reversed(self._saved):
            setattr(torch.Tensor, name, fn)
        self._saved.clear()
