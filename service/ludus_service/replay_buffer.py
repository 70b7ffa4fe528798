"""ReplayBuffer: SAC's experience store, a ring of preallocated arrays (SB3's ReplayBuffer layout).

Memory is bounded by construction: every field is one array of `capacity` rows, allocated when the
first steps arrive (their dtypes and shapes fix the layout), and new steps overwrite the oldest.
ML-Agents instead grows its buffer and truncates it; a ring keeps the footprint constant, which is
what the `ludus_replay_buffer_bytes` gauge reports. Fields are the AgentBuffer names
(ludus_service.buffer), so a sampled minibatch is an AgentBuffer that the optimizer and the reward
providers read like any other.

Recurrent networks train on whole sequences: with `sequence_length` L > 1 the capacity is a
multiple of L, rows arrive as padded sequences (a multiple of L at a time, ludus_service.sequences),
so every sequence stays in L consecutive rows at an L-aligned offset of the ring, and `sample` draws
whole sequences (ML-Agents' sample_mini_batch with a sequence_length).
"""
from __future__ import annotations

from typing import Dict, Mapping

import numpy as np
import torch

from ludus_service.buffer import AgentBuffer

#: Checkpoint tensor names: replay.<field> (filled rows, oldest first).
PREFIX = "replay."


class ReplayBuffer:
    def __init__(self, capacity: int, sequence_length: int = 1) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if sequence_length < 1:
            raise ValueError(f"sequence_length must be >= 1, got {sequence_length}")
        self.sequence_length = sequence_length
        # Whole sequences only (rounded up). Padding occupies rows too, as in ML-Agents: trajectory
        # pieces much shorter than sequence_length leave less real experience in the ring.
        self.capacity = -(-capacity // sequence_length) * sequence_length
        self._arrays: Dict[str, np.ndarray] = {}
        self._next = 0  # row the next step is written to
        self._size = 0

    def __len__(self) -> int:
        return self._size

    @property
    def num_experiences(self) -> int:
        return self._size

    @property
    def nbytes(self) -> int:
        """Bytes held by the preallocated arrays (0 before the first steps arrive)."""
        return sum(a.nbytes for a in self._arrays.values())

    def keys(self):
        return list(self._arrays)

    def _allocate(self, fields: Mapping[str, np.ndarray]) -> None:
        self._arrays = {k: np.zeros((self.capacity, *np.asarray(v).shape[1:]), dtype=np.asarray(v).dtype)
                        for k, v in fields.items()}

    def add(self, fields: Mapping[str, np.ndarray]) -> None:
        """Append rows (every field the same length and, after the first call, the same keys and
        per-row shapes); the oldest rows are overwritten once the buffer is full."""
        lengths = {len(v) for v in fields.values()}
        if len(lengths) != 1:
            raise ValueError(f"fields have different lengths: { {k: len(v) for k, v in fields.items()} }")
        n = lengths.pop()
        if n % self.sequence_length:
            raise ValueError(f"{n} rows are not whole sequences of {self.sequence_length}")
        if not self._arrays:
            self._allocate(fields)
        if set(fields) != set(self._arrays):
            raise ValueError(f"fields {sorted(fields)} differ from the buffer's {sorted(self._arrays)}")
        if n > self.capacity:  # only the newest `capacity` rows can survive
            fields = {k: np.asarray(v)[n - self.capacity:] for k, v in fields.items()}
            n = self.capacity
        rows = (self._next + np.arange(n)) % self.capacity
        for key, value in fields.items():
            self._arrays[key][rows] = value
        self._next = (self._next + n) % self.capacity
        self._size = min(self._size + n, self.capacity)

    def sample(self, rng: np.random.Generator, batch_size: int) -> AgentBuffer:
        """`batch_size` rows drawn uniformly with replacement (ML-Agents' sample_mini_batch); with
        sequences, batch_size // sequence_length whole sequences (at least one)."""
        if self._size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        seq = self.sequence_length
        if seq == 1:
            idx = rng.integers(0, self._size, size=batch_size)
        else:
            starts = rng.integers(0, self._size // seq, size=max(batch_size // seq, 1)) * seq
            idx = (starts[:, None] + np.arange(seq)).reshape(-1)
        return AgentBuffer({k: a[idx] for k, a in self._arrays.items()})

    def ordered(self) -> Dict[str, np.ndarray]:
        """The stored rows, oldest first (copies)."""
        start = self._next if self._size == self.capacity else 0
        idx = (start + np.arange(self._size)) % self.capacity
        return {k: a[idx] for k, a in self._arrays.items()}

    # -- checkpoints -------------------------------------------------------------------------------
    def state_tensors(self) -> Dict[str, torch.Tensor]:
        """The filled rows as named tensors for a safetensors checkpoint (no pickles)."""
        return {f"{PREFIX}{k}": torch.from_numpy(np.ascontiguousarray(v)) for k, v in self.ordered().items()}

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Refill from state_tensors' output (keeps the newest `capacity` rows if capacity shrank)."""
        fields = {k[len(PREFIX):]: v.numpy() for k, v in tensors.items() if k.startswith(PREFIX)}
        self._arrays, self._next, self._size = {}, 0, 0
        if fields and len(next(iter(fields.values()))):
            n = len(next(iter(fields.values())))
            if n % self.sequence_length:
                raise ValueError(f"the saved replay buffer holds {n} rows, not whole sequences of {self.sequence_length} "
                                 "(was network_settings.memory.sequence_length changed?)")
            self.add(fields)
