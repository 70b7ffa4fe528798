"""Variable-length (entity) observations: ML-Agents' entity embedding and residual self-attention.

An ENTITIES observation is a padded tensor [max_entities, entity_size] per step; an entity whose
features are all zero is padding (ML-Agents' convention, so no separate mask travels). Each entity,
concatenated with the agent's own vector observations ("self"), is embedded (linear + swish), then
one residual multi-head self-attention block lets entities attend to the present ones only, and a
masked mean over present entities gives a fixed-size encoding. A step with no entity encodes to zeros.
The twin numpy evaluation is ludus_client.numpy_entities.
"""
from __future__ import annotations

import math
from typing import Dict, Tuple

import numpy as np
import torch
from torch import nn

#: ML-Agents' attention embedding size.
EMBEDDING_SIZE = 128
NUM_HEADS = 4
#: Added to the pooling denominator so that zero present entities give zeros, not NaN.
POOL_EPSILON = 1e-7
#: Score of a padded key: softmax gives it (effectively) zero weight.
MASKED_SCORE = -1e6


def entity_mask(entities: torch.Tensor) -> torch.Tensor:
    """True where an entity is present (not all-zero), [N, max_entities]."""
    return entities.abs().sum(dim=-1) > 0


def _linear(in_size: int, out_size: int, gain: float) -> nn.Linear:
    layer = nn.Linear(in_size, out_size)
    nn.init.kaiming_normal_(layer.weight)
    layer.weight.data.mul_(gain)
    nn.init.zeros_(layer.bias)
    return layer


class EntityEncoder(nn.Module):
    def __init__(self, entity_size: int, max_entities: int, self_size: int,
                 embedding_size: int = EMBEDDING_SIZE, num_heads: int = NUM_HEADS) -> None:
        super().__init__()
        if embedding_size % num_heads:
            raise ValueError(f"embedding_size {embedding_size} is not a multiple of num_heads {num_heads}")
        self.entity_size, self.max_entities, self.self_size = entity_size, max_entities, self_size
        self.embedding_size, self.num_heads = embedding_size, num_heads
        self.output_size = embedding_size
        # Small initial embeddings, as ML-Agents (gain sqrt(0.125 / embedding_size)).
        self.embed = _linear(self_size + entity_size, embedding_size, math.sqrt(0.125 / embedding_size))
        self.query = _linear(embedding_size, embedding_size, math.sqrt(0.125 / embedding_size))
        self.key = _linear(embedding_size, embedding_size, math.sqrt(0.125 / embedding_size))
        self.value = _linear(embedding_size, embedding_size, math.sqrt(0.125 / embedding_size))
        self.out = _linear(embedding_size, embedding_size, math.sqrt(0.125 / embedding_size))

    def forward(self, entities: torch.Tensor, x_self: torch.Tensor) -> torch.Tensor:
        """entities [N, E, entity_size], x_self [N, self_size] -> [N, embedding_size]."""
        present = entity_mask(entities)
        n, count, _ = entities.shape
        if self.self_size:
            entities = torch.cat([x_self.unsqueeze(1).expand(n, count, self.self_size), entities], dim=-1)
        embedded = nn.functional.silu(self.embed(entities))
        x = nn.functional.layer_norm(embedded, (self.embedding_size,))
        heads, size = self.num_heads, self.embedding_size // self.num_heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(n, count, heads, size).transpose(1, 2)  # [N, heads, E, size]

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(size)
        scores = scores.masked_fill(~present[:, None, None, :], MASKED_SCORE)
        attended = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(n, count, self.embedding_size)
        y = nn.functional.layer_norm(self.out(attended) + x, (self.embedding_size,))
        weights = present.unsqueeze(-1).to(y.dtype)
        return (y * weights).sum(dim=1) / (weights.sum(dim=1) + POOL_EPSILON)

    def export(self, prefix: str) -> Tuple[Dict[str, np.ndarray], dict]:
        tensors = {f"{prefix}.{name}": np.array(value.detach().cpu().numpy(), dtype=np.float32, order="C")
                   for name, value in self.state_dict().items()}
        description = {"format": "ludus.entity_encoder.v1", "prefix": prefix, "entity_size": self.entity_size,
                       "max_entities": self.max_entities, "self_size": self.self_size,
                       "embedding_size": self.embedding_size, "num_heads": self.num_heads}
        return tensors, description
