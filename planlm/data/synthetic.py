"""The synthetic task D_p of Wu, Morris, Levine 2024 ("Do language models plan ahead for future tokens?", section 4.1).

At every position t: x_t ~ N(0, 1), z_t ~ Bernoulli(p), and the target is

    y_t = z_t * sum_{i=1..10} sin(10 x_{t-i}) + (1 - z_t) * x_t

from the inputs [x_t, z_t] of positions <= t. The sum needs sin(10 x_s) for ten earlier positions s, a feature that
never helps the loss at s itself (y_s does not hold x_s's sine): a vanilla transformer can compute it at s for later
use (pre-caching), a myopic one cannot, so the myopia gap on D_p is large. Terms with t - i < 0 are absent (x = 0
before the sequence starts, and sin(0) = 0).

Data are drawn afresh for every batch (the task has no finite corpus); a seeded generator makes any set reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

LENGTH = 64  # the paper's sequence length
LAGS = 10  # earlier positions in the sum
FREQUENCY = 10.0  # sin(10 x)


@dataclass
class DpBatch:
    inputs: torch.Tensor
    """``(B, T, 2)`` float32: [x_t, z_t]."""
    targets: torch.Tensor
    """``(B, T)`` float32: y_t."""
    z: torch.Tensor
    """``(B, T)`` bool: the positions whose target is the sum over earlier positions."""


def dp_batch(batch_size: int, p: float, length: int = LENGTH, lags: int = LAGS, frequency: float = FREQUENCY,
             generator: torch.Generator | None = None) -> DpBatch:
    """Draw ``batch_size`` sequences of D_p (``p`` = probability that a target is the sum of earlier sines).

    ``frequency`` is the paper's 10 by default; a lower one (a departure) makes the sines learnable in fewer steps:
    a network fits sin(10 x) on N(0, 1) inputs only after many thousand steps (low frequencies are learnt first).
    """
    x = torch.randn(batch_size, length, generator=generator)  # (B, T)
    z = torch.rand(batch_size, length, generator=generator) < p  # (B, T)
    sines = torch.sin(frequency * x)  # (B, T)
    # sum_{i=1..lags} sin(10 x_{t-i}): a causal window sum, excluding position t itself
    cumulative = torch.nn.functional.pad(sines.cumsum(1), (1, 0))  # (B, T + 1), cumulative[:, t] = sum_{s<t}
    start = (torch.arange(length) - lags).clamp_min(0)  # (T,)
    window = cumulative[:, :-1] - cumulative[:, start]  # (B, T): sum over s in [t - lags, t)
    targets = torch.where(z, window, x)
    inputs = torch.stack([x, z.float()], dim=-1)  # (B, T, 2)
    return DpBatch(inputs=inputs, targets=targets, z=z)
