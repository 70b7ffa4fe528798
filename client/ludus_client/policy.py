"""LocalPolicy: act with a published policy version, in numpy, without torch.

Reads the safetensors file the service publishes (GetPolicy / WatchPolicy) and evaluates the actor
the way the service's torch networks do: normalised vectors and visual encoders (ludus_client.
numpy_encoders) -> MLP body -> LSTM step for recurrent policies -> Gaussian head (continuous) and
categorical heads (discrete, with action masks). Formats: "ludus.mlp_actor.v1" (vector
observations) and "ludus.actor.v2" (adds visual encoders and memory). The same file format is
readable from C++, C# or JavaScript; an ONNX export for engines is planned on top of the same
snapshots.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from safetensors.numpy import load as safetensors_load

from ludus_client.numpy_encoders import swish, visual_encoder_forward
from ludus_client.numpy_entities import entity_encoder_forward, hyper_linear_forward

LOG_2PI = float(np.log(2.0 * np.pi))


@dataclass
class PolicyOutput:
    """Actions for a batch of B agents."""

    continuous_actions: np.ndarray  # float32 [B, c]: raw samples, what trajectories carry
    discrete_actions: np.ndarray  # int64 [B, branches]
    continuous_log_probs: np.ndarray  # float32 [B, c]
    discrete_log_probs: np.ndarray  # float32 [B, branches]
    #: Recurrent policies: the memory after this step [B, memory_size], to feed into the next step
    #: (None for non-recurrent policies).
    memories: Optional[np.ndarray] = None
    #: tanh-squashed policies (SAC): continuous_actions are already in (-1, 1).
    squashed: bool = False

    @property
    def env_continuous_actions(self) -> np.ndarray:
        """What the simulator should apply: clamp(a, -3, 3) / 3, in [-1, 1] (ML-Agents' convention);
        a tanh-squashed policy's actions as they are."""
        if self.squashed:
            return self.continuous_actions
        return np.clip(self.continuous_actions, -3.0, 3.0) / 3.0


def _activation(name: str):
    if name == "swish":
        return swish
    if name == "tanh":
        return np.tanh
    if name == "relu":
        return lambda x: np.maximum(x, 0.0)
    raise ValueError(f"unknown activation {name!r}")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (np.tanh(0.5 * x) + 1.0)  # no overflow warnings for large |x|


def _log_one_minus_tanh_squared(u: np.ndarray) -> np.ndarray:
    """log(1 - tanh(u)^2) = 2 * (log 2 - u - softplus(-2u)), stable for large |u|."""
    return 2.0 * (np.log(2.0) - u - np.logaddexp(0.0, -2.0 * u))


def read_safetensors_metadata(data: bytes) -> Dict[str, str]:
    """The string metadata of a safetensors file (its JSON header's "__metadata__")."""
    if len(data) < 8:
        raise ValueError("not a safetensors file: shorter than its 8-byte header length")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > len(data) - 8:
        raise ValueError("not a safetensors file: header length exceeds the data")
    return json.loads(data[8:8 + header_len]).get("__metadata__", {})


#: Architectures this SDK evaluates: v1 = vector observations, v2 = v1 + visual encoders.
SUPPORTED_FORMATS = ("ludus.mlp_actor.v1", "ludus.actor.v2")


class LocalPolicy:
    def __init__(self, tensors: Dict[str, np.ndarray], architecture: dict, version: int, behavior_name: str = "") -> None:
        if architecture.get("format") not in SUPPORTED_FORMATS:
            raise ValueError(f"unsupported policy architecture {architecture.get('format')!r} (this SDK reads "
                             f"{', '.join(SUPPORTED_FORMATS)}; upgrade ludus-client)")
        self.tensors = {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()}
        self.architecture = architecture
        self.version = version
        self.behavior_name = behavior_name
        self.continuous_size = int(architecture["continuous_size"])
        self.branches = [int(b) for b in architecture["discrete_branches"]]
        self._act = _activation(architecture["activation"])
        self._layers = [(self.tensors[f"{n}.weight"].T.copy(), self.tensors[f"{n}.bias"]) for n in architecture["body_layers"]]
        #: Recurrent policies: size of the memory each step takes and returns (0: not recurrent).
        self.memory_size = int(architecture.get("memory_size", 0))

    @property
    def recurrent(self) -> bool:
        return self.memory_size > 0

    def initial_memories(self, batch: int) -> np.ndarray:
        """The memory of an episode's first step (zeros, as ML-Agents starts every episode)."""
        return np.zeros((batch, self.memory_size), dtype=np.float32)

    def _lstm_step(self, x: np.ndarray, memories: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """One step of the service's LSTM (torch gate order i, f, g, o); memory = concat(h, c)."""
        t = self.tensors
        half = self.memory_size // 2
        h, c = memories[:, :half], memories[:, half:]
        gates = x @ t["memory.weight_ih_l0"].T + t["memory.bias_ih_l0"] + h @ t["memory.weight_hh_l0"].T + t["memory.bias_hh_l0"]
        i, f, g, o = np.split(gates, 4, axis=1)
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        h = _sigmoid(o) * np.tanh(c)
        return h, np.concatenate([h, c], axis=1).astype(np.float32)

    @classmethod
    def from_bytes(cls, data: bytes) -> "LocalPolicy":
        meta = read_safetensors_metadata(data)
        return cls(safetensors_load(data), json.loads(meta["ludus.architecture"]), int(meta["ludus.version"]), meta.get("ludus.behavior", ""))

    def _features(self, observations: Sequence[np.ndarray]) -> np.ndarray:
        """What the service's ObservationFeatures computes: [normalised vectors, visual encodings...,
        entity encodings...]."""
        arch = self.architecture
        vector_indices = arch.get("vector_observations", list(range(len(observations))))
        batch = len(observations[0])
        x = np.zeros((batch, 0), np.float32)
        if vector_indices:
            flat = [np.asarray(observations[i], dtype=np.float32).reshape(len(observations[i]), -1) for i in vector_indices]
            x = flat[0] if len(flat) == 1 else np.concatenate(flat, axis=1)
            if arch["normalize"]:
                x = (x - self.tensors["normalizer.mean"]) / np.sqrt(self.tensors["normalizer.var"] + arch["normalize_epsilon"])
                x = np.clip(x, -arch["normalize_clamp"], arch["normalize_clamp"])
        parts = [x] if vector_indices else []
        for description in arch.get("visual_encoders", []):
            image = np.asarray(observations[description["observation"]])
            # uint8 frames are pixels: scaled like the service scales uint8 visual observations.
            image = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32, copy=False)
            parts.append(visual_encoder_forward(description, self.tensors, image))
        for description in arch.get("entity_encoders", []):
            parts.append(entity_encoder_forward(description, self.tensors, observations[description["observation"]], x))
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    def _hidden(self, observations: Sequence[np.ndarray]) -> np.ndarray:
        x = self._features(observations)
        for weight, bias in self._layers:
            x = self._act(x @ weight + bias)
        goal_layer = self.architecture.get("goal_layer")
        if goal_layer is not None:
            goals = [np.asarray(observations[i], dtype=np.float32).reshape(len(x), -1) for i in self.architecture["goal_observations"]]
            x = self._act(hyper_linear_forward(goal_layer, self.tensors, x, np.concatenate(goals, axis=1)))
        return x

    def act(
        self,
        observations: Sequence[np.ndarray],
        action_masks: Optional[np.ndarray] = None,
        deterministic: Optional[bool] = None,
        rng: Optional[np.random.Generator] = None,
        memories: Optional[np.ndarray] = None,
    ) -> PolicyOutput:
        """Sample (or, deterministic, take the mode of) actions for a batch.

        `observations`: one array per observation spec, each [B, *shape]. `action_masks`: bool
        [B, sum(branches)], True = allowed. Recurrent policies: `memories` [B, memory_size] is each
        agent's memory going into this step (`initial_memories` at an episode's first step; then the
        previous output's `memories`); record it with the step (TrajectoryBuilder.add_step).
        """
        rng = rng or np.random.default_rng()
        deterministic = self.architecture.get("deterministic", False) if deterministic is None else deterministic
        h = self._hidden(observations)
        new_memories = None
        if self.recurrent:
            if memories is None:
                raise ValueError(f"this policy is recurrent: pass memories [batch, {self.memory_size}] (initial_memories at an episode's start)")
            memories = np.asarray(memories, dtype=np.float32)
            if memories.shape != (h.shape[0], self.memory_size):
                raise ValueError(f"memories must have shape [{h.shape[0]}, {self.memory_size}], got {list(memories.shape)}")
            h, new_memories = self._lstm_step(h, memories)
        batch = h.shape[0]
        squashed = bool(self.architecture.get("tanh_squash", False))
        cont = np.zeros((batch, 0), np.float32)
        cont_lp = np.zeros((batch, 0), np.float32)
        if self.continuous_size:
            mu = h @ self.tensors["continuous.mu.weight"].T + self.tensors["continuous.mu.bias"]
            if self.architecture.get("conditional_sigma", False):  # state-dependent log-std head
                log_std = h @ self.tensors["continuous.log_std.weight"].T + self.tensors["continuous.log_std.bias"]
                log_std = np.clip(log_std, self.architecture["log_std_min"], self.architecture["log_std_max"])
            else:
                log_std = self.tensors["continuous.log_std"]
            std = np.exp(log_std)
            cont = mu if deterministic else mu + std * rng.standard_normal(mu.shape)
            cont_lp = -0.5 * ((cont - mu) / std) ** 2 - log_std - 0.5 * LOG_2PI
            if squashed:  # a = tanh(u): the density picks up the Jacobian of tanh
                cont_lp = cont_lp - _log_one_minus_tanh_squared(cont)
                cont = np.tanh(cont)
        disc = np.zeros((batch, len(self.branches)), np.int64)
        disc_lp = np.zeros((batch, len(self.branches)), np.float32)
        offset = 0
        for i, size in enumerate(self.branches):
            logits = h @ self.tensors[f"discrete.{i}.weight"].T + self.tensors[f"discrete.{i}.bias"]
            if action_masks is not None:
                logits = np.where(np.asarray(action_masks[:, offset:offset + size], dtype=bool), logits, -1e8)
            offset += size
            logits = logits - logits.max(axis=1, keepdims=True)
            log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
            if deterministic:
                choice = log_p.argmax(axis=1)
            else:
                # Gumbel-max: exact categorical sampling; masked options (-1e8) can never win.
                choice = (log_p + rng.gumbel(size=log_p.shape)).argmax(axis=1)
            disc[:, i] = choice
            disc_lp[:, i] = log_p[np.arange(batch), choice]
        return PolicyOutput(cont.astype(np.float32), disc, cont_lp.astype(np.float32), disc_lp, new_memories, squashed)
