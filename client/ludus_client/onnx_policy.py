"""OnnxPolicy: act with a policy version exported as ONNX (GetPolicy with format "onnx"), no torch.

The model follows ML-Agents' contract (see ludus_service.onnx_export): a game engine feeds `obs_i`,
`action_masks` and `recurrent_in` and reads `continuous_actions` / `discrete_actions` (sampled in the
graph) or their `deterministic_*` twins. This class is the Python side of the same file, with
LocalPolicy's interface: it reads the graph's distribution outputs (`ludus_continuous_mean`,
`ludus_continuous_log_std`, `ludus_discrete_log_probs`) and samples in numpy, so actions carry exact
log-probabilities for training and a seeded `rng` reproduces LocalPolicy's choices.

onnxruntime is an optional dependency (`pip install 'ludus[onnx]'`), imported on first use.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ludus_client.policy import LOG_2PI, PolicyOutput

CONTINUOUS_MEAN = "ludus_continuous_mean"
CONTINUOUS_LOG_STD = "ludus_continuous_log_std"
DISCRETE_LOG_PROBS = "ludus_discrete_log_probs"
#: Masked options get this logit, as in LocalPolicy and the exported graph.
MASKED_LOGIT = -1e8


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError("OnnxPolicy needs onnxruntime: pip install 'ludus[onnx]'") from err
    return onnxruntime


def _log_one_minus_tanh_squared(u: np.ndarray) -> np.ndarray:
    """log(1 - tanh(u)^2), stable for large |u| (the tanh change of variables)."""
    return 2.0 * (np.log(2.0) - u - np.logaddexp(0.0, -2.0 * u))


class OnnxPolicy:
    """A policy version run by onnxruntime; `act` matches LocalPolicy.act."""

    def __init__(self, model: bytes, providers: Optional[List[str]] = None) -> None:
        ort = _onnxruntime()
        options = ort.SessionOptions()
        options.log_severity_level = 3  # our extra outputs are not warnings worth printing
        self.session = ort.InferenceSession(model, options, providers=providers or ["CPUExecutionProvider"])
        meta: Dict[str, str] = self.session.get_modelmeta().custom_metadata_map
        if "ludus.policy" not in meta:
            raise ValueError("not a Ludus ONNX policy: its metadata lacks 'ludus.policy'")
        self.description = json.loads(meta["ludus.policy"])
        self.version = int(meta.get("ludus.policy_version", 0))
        self.behavior_name = meta.get("ludus.behavior", "")
        self.continuous_size = int(self.description["continuous_size"])
        self.branches = [int(b) for b in self.description["discrete_branches"]]
        #: Recurrent policies: size of the memory each step takes and returns (0: not recurrent).
        self.memory_size = int(self.description["memory_size"])
        self._visual = set(self.description.get("visual_observations", []))
        self._inputs = [i.name for i in self.session.get_inputs()]
        self._outputs = [name for name, wanted in ((CONTINUOUS_MEAN, self.continuous_size), (CONTINUOUS_LOG_STD, self.continuous_size),
                                                   (DISCRETE_LOG_PROBS, self.branches), ("recurrent_out", self.memory_size)) if wanted]

    @classmethod
    def from_bytes(cls, data: bytes, providers: Optional[List[str]] = None) -> "OnnxPolicy":
        return cls(data, providers)

    @property
    def recurrent(self) -> bool:
        return self.memory_size > 0

    def initial_memories(self, batch: int) -> np.ndarray:
        """The memory of an episode's first step (zeros, as ML-Agents starts every episode)."""
        return np.zeros((batch, self.memory_size), dtype=np.float32)

    def feeds(self, observations: Sequence[np.ndarray], action_masks: Optional[np.ndarray] = None,
              memories: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
        """The model's inputs for a batch: float32 observations (uint8 images scaled by 1/255, as
        LocalPolicy and the service do), float 0/1 masks (all allowed when None), [B, 1, m] memories."""
        count = len(self.description["observation_shapes"])
        if len(observations) != count:
            raise ValueError(f"this policy takes {count} observations, got {len(observations)}")
        feeds: Dict[str, np.ndarray] = {}
        for i, obs in enumerate(observations):
            array = np.asarray(obs)
            scale = i in self._visual and array.dtype == np.uint8
            array = array.astype(np.float32) / 255.0 if scale else array.astype(np.float32, copy=False)
            feeds[f"obs_{i}"] = np.ascontiguousarray(array)
        batch = len(feeds["obs_0"])
        if self.branches:
            if action_masks is None:
                feeds["action_masks"] = np.ones((batch, sum(self.branches)), np.float32)
            else:
                feeds["action_masks"] = np.asarray(action_masks, dtype=bool).astype(np.float32)
        if self.recurrent:
            if memories is None:
                raise ValueError(f"this policy is recurrent: pass memories [batch, {self.memory_size}] (initial_memories at an episode's start)")
            memories = np.asarray(memories, dtype=np.float32)
            if memories.shape != (batch, self.memory_size):
                raise ValueError(f"memories must have shape [{batch}, {self.memory_size}], got {list(memories.shape)}")
            feeds["recurrent_in"] = memories.reshape(batch, 1, self.memory_size)
        return {k: v for k, v in feeds.items() if k in self._inputs}

    def run(self, observations: Sequence[np.ndarray], action_masks: Optional[np.ndarray] = None,
            memories: Optional[np.ndarray] = None, outputs: Optional[List[str]] = None) -> Dict[str, np.ndarray]:
        """Raw model outputs by name (all of them when `outputs` is None), as an engine sees them."""
        names = outputs or [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, self.feeds(observations, action_masks, memories))))

    def act(
        self,
        observations: Sequence[np.ndarray],
        action_masks: Optional[np.ndarray] = None,
        deterministic: Optional[bool] = None,
        rng: Optional[np.random.Generator] = None,
        memories: Optional[np.ndarray] = None,
    ) -> PolicyOutput:
        """Sample (or, deterministic, take the mode of) actions for a batch; see LocalPolicy.act."""
        rng = rng or np.random.default_rng()
        deterministic = bool(self.description.get("deterministic", False)) if deterministic is None else deterministic
        out = self.run(observations, action_masks, memories, self._outputs)
        batch = len(np.asarray(observations[0]))
        squashed = bool(self.description.get("tanh_squash", False))
        cont = np.zeros((batch, 0), np.float32)
        cont_lp = np.zeros((batch, 0), np.float32)
        if self.continuous_size:
            mu, log_std = out[CONTINUOUS_MEAN], out[CONTINUOUS_LOG_STD]
            std = np.exp(log_std)
            cont = mu if deterministic else mu + std * rng.standard_normal(mu.shape)
            cont_lp = -0.5 * ((cont - mu) / std) ** 2 - log_std - 0.5 * LOG_2PI
            if squashed:
                cont_lp = cont_lp - _log_one_minus_tanh_squared(cont)
                cont = np.tanh(cont)
        disc = np.zeros((batch, len(self.branches)), np.int64)
        disc_lp = np.zeros((batch, len(self.branches)), np.float32)
        offset = 0
        for i, size in enumerate(self.branches):
            log_p = out[DISCRETE_LOG_PROBS][:, offset:offset + size]
            offset += size
            # Gumbel-max as LocalPolicy: exact categorical sampling; masked options can never win.
            choice = log_p.argmax(axis=1) if deterministic else (log_p + rng.gumbel(size=log_p.shape)).argmax(axis=1)
            disc[:, i] = choice
            disc_lp[:, i] = log_p[np.arange(batch), choice]
        new_memories = out["recurrent_out"].reshape(batch, self.memory_size) if self.recurrent else None
        fields = dict(continuous_actions=cont.astype(np.float32), discrete_actions=disc,
                      continuous_log_probs=cont_lp.astype(np.float32), discrete_log_probs=disc_lp.astype(np.float32),
                      memories=new_memories)
        if "squashed" in {f.name for f in dataclasses.fields(PolicyOutput)}:
            fields["squashed"] = squashed
        return PolicyOutput(**fields)
