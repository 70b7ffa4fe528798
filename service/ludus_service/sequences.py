"""Recurrent training helpers: splitting trajectories into padded sequences, and per-agent memories.

Recurrent networks train on whole sequences of `sequence_length` steps, each replayed from the
memory recorded at its first step. A trajectory is split from its first step; the last, shorter
piece is padded at its end with zeros and a loss mask of False, so padding never counts in a loss.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Mapping, Optional

import numpy as np
import torch

#: Buffer field: True for real steps, False for padding.
LOSS_MASK = "loss_mask"
#: Agents whose critic memory is kept between calls; least recently used first out, so agent ids
#: that vanish mid-episode cannot grow memory without bound.
MAX_REMEMBERED_AGENTS = 100_000


def padded_length(length: int, sequence_length: int) -> int:
    return -(-length // sequence_length) * sequence_length


def pad_to_sequences(fields: Mapping[str, np.ndarray], sequence_length: int,
                     fill: Optional[Mapping[str, object]] = None) -> Dict[str, np.ndarray]:
    """Every field padded at its end to a multiple of sequence_length rows, plus LOSS_MASK.

    `fill` gives the padding value of particular fields (default 0): action masks pad with True so a
    padded row never has every option masked.
    """
    fill = fill or {}
    length = len(next(iter(fields.values())))
    total = padded_length(length, sequence_length)
    out: Dict[str, np.ndarray] = {}
    for key, value in fields.items():
        if total == length:
            out[key] = value
            continue
        padded = np.full((total, *value.shape[1:]), fill.get(key, 0), dtype=value.dtype)
        padded[:length] = value
        out[key] = padded
    mask = np.zeros(total, dtype=bool)
    mask[:length] = True
    out[LOSS_MASK] = mask
    return out


def sequence_starts(length: int, sequence_length: int) -> np.ndarray:
    """Index of the first step of every sequence of a `length`-step trajectory."""
    return np.arange(0, length, sequence_length)


class AgentMemories:
    """The last critic memory of each agent, continued by its next trajectory piece."""

    def __init__(self, memory_size: int, capacity: int = MAX_REMEMBERED_AGENTS) -> None:
        self.memory_size = memory_size
        self.capacity = capacity
        self._memories: "OrderedDict[str, np.ndarray]" = OrderedDict()

    def get(self, agent_id: str) -> np.ndarray:
        memory = self._memories.get(agent_id)
        return memory if memory is not None else np.zeros(self.memory_size, dtype=np.float32)

    def set(self, agent_id: str, memory: np.ndarray) -> None:
        self._memories.pop(agent_id, None)
        self._memories[agent_id] = np.asarray(memory, dtype=np.float32)
        while len(self._memories) > self.capacity:
            self._memories.popitem(last=False)

    def drop(self, agent_id: str) -> None:
        self._memories.pop(agent_id, None)

    def __len__(self) -> int:
        return len(self._memories)


def masked_mean(x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean over real steps only (ML-Agents' ModelUtils.masked_mean); plain mean without a mask."""
    if mask is None:
        return x.mean()
    if x.dim() > 1:
        mask = mask.unsqueeze(-1).expand_as(x)
    return (x * mask).sum() / mask.sum().clamp(min=1)
