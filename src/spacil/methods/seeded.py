"""Seeded building blocks for the baselines' training loops: no draw ever touches torch's global RNG.

The harness hands every task a seed; the baselines draw their initial weights, dropout masks,
mini-batch orders and pseudo-features from one :class:`torch.Generator` built from it, so a run is
reproducible whatever else ran in the process.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
from torch import Tensor, nn


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on ``device`` (CUDA draws need a CUDA generator)."""
    return torch.Generator(device=device).manual_seed(seed)


def linear(in_dim: int, out_dim: int, generator: torch.Generator, bias: bool = True) -> nn.Linear:
    """``nn.Linear`` with PyTorch's default initialisation, ``U(-1/sqrt(in), 1/sqrt(in))`` for weight and
    bias, drawn from ``generator`` (the layer is built without its own init, which would draw globally)."""
    layer = nn.utils.skip_init(nn.Linear, in_dim, out_dim, bias=bias, device=generator.device)
    bound = 1.0 / math.sqrt(in_dim)
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=generator)
        if bias:
            layer.bias.uniform_(-bound, bound, generator=generator)
    return layer


def dropout(x: Tensor, p: float, training: bool, generator: torch.Generator | None) -> Tensor:
    """Inverted dropout with a seeded mask (``nn.Dropout`` draws from the global RNG)."""
    if not training or p == 0.0 or generator is None:
        return x
    keep = torch.rand(x.shape, generator=generator, device=generator.device).to(x.device) >= p
    return x * keep / (1.0 - p)


def minibatches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Shuffled index batches over ``n`` samples (the last one may be smaller), as a shuffling loader."""
    order = torch.randperm(n, generator=generator, device=generator.device)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def set_cosine_lr(optimizer: "torch.optim.Optimizer", epoch: int, epochs: int, lr: float, min_lr: float) -> None:
    """Epoch-wise cosine schedule of the reference code (PROOF, ENGINE): ``min_lr + (lr - min_lr)(1 + cos(pi e/E))/2``."""
    import math

    value = min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * epoch / epochs))
    for group in optimizer.param_groups:
        group["lr"] = value
