"""AgentBuffer: named, step-aligned numpy fields (ML-Agents' AgentBuffer, minus the pickles).

Trajectories are appended as whole chunks; fields are concatenated lazily, once per update, so the
per-trajectory cost is a list append.
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Mapping, Optional

import numpy as np


# Field names of the update buffer (ML-Agents' BufferKey names, lower-cased).
CONTINUOUS_ACTION = "continuous_action"
DISCRETE_ACTION = "discrete_action"
CONTINUOUS_LOG_PROBS = "continuous_log_probs"
DISCRETE_LOG_PROBS = "discrete_log_probs"
ACTION_MASK = "action_mask"
ADVANTAGES = "advantages"
#: Recurrent networks: the policy memory the client fed into each step, and the critic memory at
#: the start of each step's sequence (from value estimation).
MEMORY = "memory"
CRITIC_MEMORY = "critic_memory"
#: 1.0 on a step that ended its episode (GAIL with use_actions sees it, as in ML-Agents).
DONE = "done"


def obs_key(i: int) -> str:
    return f"obs_{i}"


def next_obs_key(i: int) -> str:
    """The observation after each step (curiosity's s')."""
    return f"next_obs_{i}"


def returns_key(signal: str) -> str:
    return f"{signal}_returns"


def value_estimates_key(signal: str) -> str:
    return f"{signal}_value_estimates"


class AgentBuffer:
    """Column store of per-step fields. All fields have the same number of rows."""

    def __init__(self, fields: Optional[Mapping[str, np.ndarray]] = None) -> None:
        self._chunks: Dict[str, List[np.ndarray]] = {}
        self._rows = 0
        if fields:
            self.append(fields)

    @property
    def num_experiences(self) -> int:
        return self._rows

    def __len__(self) -> int:
        return self._rows

    def __contains__(self, key: str) -> bool:
        return key in self._chunks

    def keys(self) -> List[str]:
        return list(self._chunks)

    def append(self, fields: Mapping[str, np.ndarray]) -> None:
        """Append rows; every field must have the same leading length, and (after the first append)
        the same set of keys, so a partial trajectory can never enter the buffer."""
        lengths = {len(v) for v in fields.values()}
        if len(lengths) != 1:
            raise ValueError(f"fields have different lengths: { {k: len(v) for k, v in fields.items()} }")
        if self._chunks and set(fields) != set(self._chunks):
            raise ValueError(f"fields {sorted(fields)} differ from the buffer's {sorted(self._chunks)}")
        for key, value in fields.items():
            self._chunks.setdefault(key, []).append(np.asarray(value))
        self._rows += lengths.pop()

    def __getitem__(self, key: str) -> np.ndarray:
        chunks = self._chunks[key]
        if len(chunks) > 1:
            chunks[:] = [np.concatenate(chunks, axis=0)]
        return chunks[0]

    def __setitem__(self, key: str, value: np.ndarray) -> None:
        if len(value) != self._rows:
            raise ValueError(f"{key}: {len(value)} rows, buffer has {self._rows}")
        self._chunks[key] = [np.asarray(value)]

    def as_dict(self) -> Dict[str, np.ndarray]:
        return {k: self[k] for k in self._chunks}

    def shuffled(self, rng: np.random.Generator, sequence_length: int = 1) -> "AgentBuffer":
        """A copy with whole sequences of `sequence_length` rows in random order."""
        n_seq = self._rows // sequence_length
        order = rng.permutation(n_seq)
        idx = (order[:, None] * sequence_length + np.arange(sequence_length)).reshape(-1)
        return AgentBuffer({k: v[idx] for k, v in self.as_dict().items()})

    def make_mini_batch(self, start: int, end: int) -> "AgentBuffer":
        return AgentBuffer({k: v[start:end] for k, v in self.as_dict().items()})

    def minibatches(self, batch_size: int) -> Iterator["AgentBuffer"]:
        """Consecutive minibatches of exactly batch_size rows (a shorter remainder is left out, as in ML-Agents)."""
        for start in range(0, (self._rows // batch_size) * batch_size, batch_size):
            yield self.make_mini_batch(start, start + batch_size)

    def clear(self) -> None:
        self._chunks.clear()
        self._rows = 0
