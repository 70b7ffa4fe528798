"""Running observation normaliser (ML-Agents' `normalize: true`).

Mean and variance are merged batch by batch (Chan et al.'s parallel Welford update), and the
normalised output is clamped to [-5, 5] as ML-Agents does. State lives in buffers so it travels with
state_dict() into checkpoints and policy snapshots.
"""
from __future__ import annotations

import torch
from torch import nn

CLAMP = 5.0
EPS = 1e-8


class RunningNormalizer(nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(size, dtype=torch.float32))
        self.register_buffer("var", torch.ones(size, dtype=torch.float32))

    @torch.no_grad()
    def update(self, batch: torch.Tensor) -> None:
        """Fold a [N, size] batch into the running statistics."""
        batch = batch.reshape(-1, self.mean.shape[0]).to(torch.float64)
        n = batch.shape[0]
        if n == 0:
            return
        batch_mean = batch.mean(0)
        batch_var = batch.var(0, unbiased=False)
        total = self.count + n
        delta = batch_mean - self.mean.double()
        new_mean = self.mean.double() + delta * (n / total)
        m2 = self.var.double() * self.count + batch_var * n + delta.pow(2) * self.count * n / total
        self.mean.copy_(new_mean.float())
        self.var.copy_((m2 / total).float())
        self.count.fill_(float(total))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp((x - self.mean) / torch.sqrt(self.var + EPS), -CLAMP, CLAMP)
