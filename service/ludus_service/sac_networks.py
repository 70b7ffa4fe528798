"""SAC's Q networks (ML-Agents' twin Q "value networks" with the action as an input).

A Q network sees the observations (through its own ObservationFeatures: the shared, normalised vector
part plus its own visual and entity encoders) concatenated with the continuous actions, and has one
head per reward signal. With discrete branches the head outputs one value per option of every branch
(sum(branches) values), so Q(s, a_cont, .) of every discrete option comes out of one pass; with
continuous actions only it outputs one value.

Recurrent behaviours give the Q networks an LSTM of their own after the body. Nothing records a Q
memory while acting, so each sampled sequence starts from a zero memory (as in ML-Agents).
"""
from __future__ import annotations

from typing import Dict, Sequence

import torch
from torch import nn

from ludus_service.networks import ObservationEncoder, ObservationFeatures, _init_linear, mlp, recurrent_layer
from ludus_service.settings import NetworkSettings
from ludus_service.spec import BehaviorSpec


class QNetwork(nn.Module):
    def __init__(self, spec: BehaviorSpec, settings: NetworkSettings, encoder: ObservationEncoder, signals: Sequence[str]) -> None:
        super().__init__()
        # Held outside the module tree: the normaliser belongs to the optimizer's shared encoder.
        self._encoder = [encoder]
        self.features = ObservationFeatures(spec, settings, encoder)
        self.continuous_size = spec.actions.continuous_size
        self.branches = list(spec.actions.discrete_branches)
        self.body, hidden = mlp(self.features.output_size + self.continuous_size, settings)
        self.memory, hidden = recurrent_layer(hidden, settings)
        out = sum(self.branches) if self.branches else 1
        self.heads = nn.ModuleDict({name: _init_linear(nn.Linear(hidden, out), 1.0) for name in signals})

    def forward(self, observations: Sequence[torch.Tensor], continuous_actions: torch.Tensor,
                sequence_length: int = 1) -> Dict[str, torch.Tensor]:
        """Per signal: [N, sum(branches)] option values (discrete and hybrid) or [N, 1] (continuous).
        Recurrent Q networks take rows sequence after sequence, each from a zero memory."""
        encoder = self._encoder[0]
        x = self.features(observations, encoder(observations))
        if self.continuous_size:
            x = torch.cat([x, continuous_actions], dim=1)
        hidden = self.body(x)
        if self.memory is not None:
            zeros = hidden.new_zeros((hidden.shape[0] // sequence_length, self.memory.memory_size))
            hidden, _ = self.memory(hidden, zeros, sequence_length)
        return {name: head(hidden) for name, head in self.heads.items()}

    def condense(self, values: torch.Tensor, discrete_actions: torch.Tensor) -> torch.Tensor:
        """[N] value of the taken actions: the chosen option's value per branch, averaged over the
        branches (ML-Agents' rule); the single value with continuous actions only."""
        if not self.branches:
            return values[:, 0]
        chosen, offset = [], 0
        for i, size in enumerate(self.branches):
            chosen.append(values[:, offset:offset + size].gather(1, discrete_actions[:, i:i + 1].long()))
            offset += size
        return torch.cat(chosen, dim=1).mean(dim=1)
