"""Goal conditioning (`goal_conditioning_type: hyper`): ML-Agents' HyperNetwork layer.

The body's last layer takes its weights from a small network of the goal (the GOAL_SIGNAL
observations): goal -> 2 x (linear + swish) -> layer norm -> the layer's flat weight matrix, plus a
learned bias. So one body computes a different function per goal instead of just seeing the goal as
more inputs ("none": goals are concatenated like any observation). The numpy twin is in
ludus_client.numpy_entities.
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import torch
from torch import nn

HYPER_LAYERS = 2


class HyperLinear(nn.Module):
    def __init__(self, input_size: int, output_size: int, goal_size: int, layer_size: int) -> None:
        super().__init__()
        self.input_size, self.output_size, self.goal_size, self.layer_size = input_size, output_size, goal_size, layer_size
        layers = []
        size = goal_size
        for _ in range(HYPER_LAYERS):
            linear = nn.Linear(size, layer_size)
            nn.init.kaiming_normal_(linear.weight)
            nn.init.zeros_(linear.bias)
            layers += [linear, nn.SiLU()]
            size = layer_size
        self.hidden = nn.Sequential(*layers)
        self.weights = nn.Linear(layer_size, input_size * output_size)
        nn.init.kaiming_normal_(self.weights.weight)
        self.weights.weight.data.mul_(0.1)  # small generated weights at the start, as ML-Agents
        nn.init.zeros_(self.weights.bias)
        self.bias = nn.Parameter(torch.zeros(output_size))

    def forward(self, x: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        """x [N, input_size], goal [N, goal_size] -> [N, output_size] (no activation)."""
        h = nn.functional.layer_norm(self.hidden(goal), (self.layer_size,))
        w = self.weights(h).reshape(-1, self.input_size, self.output_size)
        return torch.bmm(x.unsqueeze(1), w).squeeze(1) + self.bias

    def export(self, prefix: str) -> Tuple[Dict[str, np.ndarray], dict]:
        tensors = {f"{prefix}.{name}": np.array(value.detach().cpu().numpy(), dtype=np.float32, order="C")
                   for name, value in self.state_dict().items()}
        linears = [f"{prefix}.hidden.{i}" for i, m in enumerate(self.hidden) if isinstance(m, nn.Linear)]
        description = {"format": "ludus.hyper_linear.v1", "prefix": prefix, "input_size": self.input_size,
                       "output_size": self.output_size, "hidden_layers": linears, "layer_size": self.layer_size}
        return tensors, description
