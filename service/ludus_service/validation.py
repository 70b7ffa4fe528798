"""Decode and validate trajectories and minibatches against a behaviour's spec.

Everything a client sends is checked here before any state changes, so a rejected request leaves
the behaviour untouched. Errors are InvalidArgument with the dotted field path, e.g.
"trajectory.discrete_actions: value 3 at step 5 branch 0 is outside [0, 2)".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from ludus.v1 import trainer_pb2 as pb
from ludus_client.spec import BehaviorSpec
from ludus_client.tensor_codec import TensorFormatError, dtype_name, from_tensor, is_set
from ludus_service.errors import InvalidArgument
from ludus_service.images import decode_png_observation

_FLOAT_TYPES = (pb.DATA_TYPE_FLOAT32, pb.DATA_TYPE_FLOAT64, pb.DATA_TYPE_FLOAT16)
_INT_TYPES = (pb.DATA_TYPE_INT32, pb.DATA_TYPE_INT64)
_MASK_TYPES = (pb.DATA_TYPE_BOOL, pb.DATA_TYPE_UINT8)
_VISUAL_TYPES = _FLOAT_TYPES + (pb.DATA_TYPE_UINT8,)
MAX_AGENT_ID = 256
#: Discrete log-probabilities are <= 0; allow float rounding.
LOG_PROB_TOLERANCE = 1e-4


@dataclass
class StepData:
    """Per-step fields shared by trajectories and minibatches (N rows)."""

    observations: List[np.ndarray]  # each float32 [N, *shape]
    continuous_actions: np.ndarray  # float32 [N, c]
    discrete_actions: np.ndarray  # int64 [N, b]
    continuous_log_probs: np.ndarray  # float32 [N, c]
    discrete_log_probs: np.ndarray  # float32 [N, b]
    action_masks: Optional[np.ndarray]  # bool [N, sum(branches)] or None
    memories: Optional[np.ndarray] = None  # float32 [N, memory_size] (recurrent policies) or None

    @property
    def length(self) -> int:
        return self.observations[0].shape[0]


@dataclass
class TrajectoryData(StepData):
    rewards: np.ndarray = None  # float32 [T]
    next_observations: Optional[List[np.ndarray]] = None  # each float32 [*shape]; None when done
    done: bool = False
    interrupted: bool = False
    agent_id: str = ""
    policy_version: int = 0


@dataclass
class TransitionBatch(StepData):
    """An off-policy (SAC) minibatch: N transitions."""

    rewards: np.ndarray = None  # float32 [N], the environment's
    next_observations: List[np.ndarray] = None  # each float32 [N, *shape]
    dones: np.ndarray = None  # bool [N]: terminal state reached
    critic_memories: Optional[np.ndarray] = None  # float32 [N, memory_size] (recurrent) or None
    loss_masks: Optional[np.ndarray] = None  # bool [N] or None (every row counts)


@dataclass
class BatchData(StepData):
    advantages: np.ndarray = None  # float32 [N]
    returns: Dict[str, np.ndarray] = None  # per signal float32 [N]
    value_estimates: Dict[str, np.ndarray] = None
    critic_memories: Optional[np.ndarray] = None  # float32 [N, memory_size] (recurrent) or None
    loss_masks: Optional[np.ndarray] = None  # bool [N] or None (every row counts)


def _decode(tensor: pb.Tensor, field: str, allowed: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    try:
        arr = from_tensor(tensor, field)
    except TensorFormatError as err:
        raise InvalidArgument(err.field, str(err).split(": ", 1)[1]) from None
    if tensor.dtype not in allowed:
        names = ", ".join(dtype_name(d) for d in allowed)
        raise InvalidArgument(field, f"dtype {dtype_name(tensor.dtype)} not allowed here (expected {names})")
    if tuple(arr.shape) != tuple(shape):
        raise InvalidArgument(field, f"shape {list(arr.shape)} does not match the expected {list(shape)}")
    return arr


def _finite(arr: np.ndarray, field: str) -> None:
    # One reduction on the hot path: the sum is NaN/Inf iff some element is (or the sum overflowed),
    # and only then are the elements searched. A reduction over more than ~500 elements releases the
    # GIL, and every release costs a thread hand-off when many streams decode at once, so one is
    # measurably cheaper than isfinite + all (two).
    if not arr.size or np.isfinite(np.add.reduce(arr, axis=None)):
        return
    finite = np.isfinite(arr)
    if finite.all():
        return
    bad = np.argwhere(~finite)[0]
    value = arr[tuple(bad)]
    kind = "NaN" if np.isnan(value) else "Inf"
    raise InvalidArgument(field, f"contains {kind} at index {list(int(i) for i in bad)}")


def _float(tensor: pb.Tensor, field: str, shape: Sequence[int]) -> np.ndarray:
    """A writable float32 copy, independent of the request's buffer. float32 input is copied through
    a bytearray (a memcpy that keeps the GIL, unlike numpy's copy loops; see _finite)."""
    arr = _decode(tensor, field, _FLOAT_TYPES, shape)
    _finite(arr, field)
    if arr.dtype == np.float32:
        return np.frombuffer(bytearray(arr), dtype=np.float32).reshape(arr.shape)
    with np.errstate(over="ignore"):
        out = arr.astype(np.float32)
    if arr.dtype == np.float64 and out.size and not np.isfinite(out).all():  # e.g. 1e300 became Inf
        bad = np.argwhere(~np.isfinite(out))[0]
        raise InvalidArgument(field, f"value {float(arr[tuple(bad)])!r} at index {list(int(i) for i in bad)} is outside the float32 range")
    return out


def _visual(tensor: pb.Tensor, field: str, leading: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """A VISUAL observation: COMPRESSION_PNG or raw UINT8 (both scaled by 1/255), or raw floats."""
    if tensor.compression or tensor.compressed_data or tensor.compressed_channel_mapping:
        return decode_png_observation(tensor, field, leading, shape)
    if tensor.dtype in _FLOAT_TYPES:
        return _float(tensor, field, (*leading, *shape))
    arr = _decode(tensor, field, _VISUAL_TYPES, (*leading, *shape))  # rejects any other dtype
    return np.divide(arr, np.float32(255), dtype=np.float32)


def decode_observations(tensors: Sequence[pb.Tensor], spec: BehaviorSpec, field: str, leading: Sequence[int]) -> List[np.ndarray]:
    """One float32 array per observation spec, of shape [*leading, *spec.shape]. VISUAL observations may
    also be PNG-compressed or raw UINT8 (pixels / 255); the others are float tensors."""
    if len(tensors) != len(spec.observations):
        raise InvalidArgument(field, f"expected {len(spec.observations)} observation tensors (one per spec), got {len(tensors)}")
    return [
        _visual(t, f"{field}[{i}]", leading, o.shape) if o.kind == pb.OBSERVATION_KIND_VISUAL
        else _float(t, f"{field}[{i}]", (*leading, *o.shape))
        for i, (t, o) in enumerate(zip(tensors, spec.observations))
    ]


def _length(tensor: pb.Tensor, field: str) -> int:
    if not is_set(tensor):
        raise InvalidArgument(field, "is required")
    if len(tensor.shape) != 1:
        raise InvalidArgument(field, f"must be rank 1 [T], got shape {list(tensor.shape)}")
    n = int(tensor.shape[0])
    if n < 1:
        raise InvalidArgument(field, "is empty (0 steps): a trajectory needs at least one step")
    return n


def _steps(msg, spec: BehaviorSpec, prefix: str, n: int, log_probs: bool = True) -> StepData:
    """Observations, actions and (when `log_probs`) the acting policy's log-probabilities of `msg`'s
    n steps. Without `log_probs` (demonstrations, value queries) those are zeros and not read.
    `prefix` is the message's dotted path ("" for a request's own fields)."""
    prefix = f"{prefix}." if prefix else ""
    obs = decode_observations(msg.observations, spec, f"{prefix}observations", (n,))
    a = spec.actions
    c, b = a.continuous_size, a.num_branches

    def optional_absent(tensor: pb.Tensor, name: str, why: str) -> None:
        # Decoded like any tensor, so a malformed one is rejected (np.prod of the raw shape wrapped
        # around int64 and let e.g. [2**32, 2**32] pass as empty); an empty one ([T, 0]) is omitted.
        if not is_set(tensor):
            return
        try:
            size = from_tensor(tensor, f"{prefix}{name}").size
        except TensorFormatError as err:
            raise InvalidArgument(err.field, str(err).split(": ", 1)[1]) from None
        if size > 0:
            raise InvalidArgument(f"{prefix}{name}", f"must be omitted: {why}")

    if c:
        for name in ("continuous_actions", "continuous_log_probs")[:2 if log_probs else 1]:
            if not is_set(getattr(msg, name)):
                raise InvalidArgument(f"{prefix}{name}", f"is required (continuous_size is {c})")
        cont = _float(msg.continuous_actions, f"{prefix}continuous_actions", (n, c))
        cont_lp = _float(msg.continuous_log_probs, f"{prefix}continuous_log_probs", (n, c)) if log_probs else np.zeros((n, c), np.float32)
    else:
        optional_absent(msg.continuous_actions, "continuous_actions", "the behaviour has no continuous actions")
        if log_probs:
            optional_absent(msg.continuous_log_probs, "continuous_log_probs", "the behaviour has no continuous actions")
        cont = np.zeros((n, 0), np.float32)
        cont_lp = np.zeros((n, 0), np.float32)
    masks = None
    if b:
        for name in ("discrete_actions", "discrete_log_probs")[:2 if log_probs else 1]:
            if not is_set(getattr(msg, name)):
                raise InvalidArgument(f"{prefix}{name}", f"is required (the behaviour has {b} discrete branches)")
        disc = _decode(msg.discrete_actions, f"{prefix}discrete_actions", _INT_TYPES, (n, b)).astype(np.int64)
        for j, size in enumerate(a.discrete_branches):
            col = disc[:, j]
            bad = np.flatnonzero((col < 0) | (col >= size))
            if bad.size:
                t = int(bad[0])
                raise InvalidArgument(f"{prefix}discrete_actions", f"value {int(col[t])} at step {t} branch {j} is outside [0, {size})")
        disc_lp = _float(msg.discrete_log_probs, f"{prefix}discrete_log_probs", (n, b)) if log_probs else np.zeros((n, b), np.float32)
        if (disc_lp > LOG_PROB_TOLERANCE).any():
            t = int(np.argwhere(disc_lp > LOG_PROB_TOLERANCE)[0][0])
            raise InvalidArgument(f"{prefix}discrete_log_probs", f"log-probability {float(disc_lp.max()):.4g} > 0 at step {t}")
        if hasattr(msg, "action_masks") and is_set(msg.action_masks):
            masks = _decode(msg.action_masks, f"{prefix}action_masks", _MASK_TYPES, (n, a.mask_size)).astype(bool)
            offset = 0
            for j, size in enumerate(a.discrete_branches):
                block = masks[:, offset:offset + size]
                empty = np.flatnonzero(~block.any(axis=1))
                if empty.size:
                    raise InvalidArgument(f"{prefix}action_masks", f"branch {j} has every option masked at step {int(empty[0])}")
                chosen = block[np.arange(n), disc[:, j]]
                masked = np.flatnonzero(~chosen)
                if masked.size:
                    t = int(masked[0])
                    raise InvalidArgument(f"{prefix}discrete_actions", f"step {t} branch {j} chose option {int(disc[t, j])}, which action_masks forbids")
                offset += size
    else:
        optional_absent(msg.discrete_actions, "discrete_actions", "the behaviour has no discrete branches")
        if log_probs:
            optional_absent(msg.discrete_log_probs, "discrete_log_probs", "the behaviour has no discrete branches")
        if hasattr(msg, "action_masks"):
            optional_absent(msg.action_masks, "action_masks", "the behaviour has no discrete branches")
        disc = np.zeros((n, 0), np.int64)
        disc_lp = np.zeros((n, 0), np.float32)
    return StepData(obs, cont, disc, cont_lp, disc_lp, masks)


def _memories(tensor: pb.Tensor, field: str, n: int, memory_size: int) -> Optional[np.ndarray]:
    """Required [n, memory_size] for recurrent networks (memory_size > 0), absent otherwise."""
    if memory_size:
        if not is_set(tensor):
            raise InvalidArgument(field, f"is required: the behaviour's networks are recurrent (memory_size {memory_size})")
        return _float(tensor, field, (n, memory_size))
    if is_set(tensor):
        raise InvalidArgument(field, "must be omitted: the behaviour's networks are not recurrent (no network_settings.memory)")
    return None


def parse_trajectory(msg: pb.Trajectory, spec: BehaviorSpec, prefix: str = "trajectory", memory_size: int = 0,
                     demonstration: bool = False) -> TrajectoryData:
    """A trajectory to train on, or with `demonstration` an expert's (RecordDemonstration): then
    log-probabilities, policy_version and memories are not needed and not read."""
    if not msg.agent_id:
        raise InvalidArgument(f"{prefix}.agent_id", "must be non-empty")
    if len(msg.agent_id) > MAX_AGENT_ID:
        raise InvalidArgument(f"{prefix}.agent_id", f"longer than {MAX_AGENT_ID} characters")
    if msg.policy_version < 1 and not demonstration:
        raise InvalidArgument(f"{prefix}.policy_version", f"must be >= 1 (the version that acted), got {msg.policy_version}")
    if msg.done and msg.interrupted:
        raise InvalidArgument(f"{prefix}.interrupted", "cannot be set together with done (a step limit is not a terminal state)")
    n = _length(msg.rewards, f"{prefix}.rewards")
    rewards = _float(msg.rewards, f"{prefix}.rewards", (n,))
    steps = _steps(msg, spec, prefix, n, log_probs=not demonstration)
    if not demonstration:
        steps.memories = _memories(msg.memories, f"{prefix}.memories", n, memory_size)
    next_obs = None
    if msg.next_observations or not msg.done:
        if not msg.next_observations:
            raise InvalidArgument(f"{prefix}.next_observations", "are required unless done is true (needed to bootstrap)")
        next_obs = decode_observations(msg.next_observations, spec, f"{prefix}.next_observations", ())
    return TrajectoryData(
        **vars(steps), rewards=rewards, next_observations=next_obs, done=msg.done,
        interrupted=msg.interrupted, agent_id=msg.agent_id, policy_version=msg.policy_version,
    )


def parse_batch(msg: pb.TrainingBatch, spec: BehaviorSpec, signals: Sequence[str], prefix: str = "batch",
                memory_size: int = 0) -> BatchData:
    for name in ("rewards", "dones"):  # SAC's transition fields would be silently ignored
        if is_set(getattr(msg, name)):
            raise InvalidArgument(f"{prefix}.{name}", "must be omitted for trainer_type ppo (it is an SAC transition field)")
    if msg.next_observations:
        raise InvalidArgument(f"{prefix}.next_observations", "must be omitted for trainer_type ppo (it is an SAC transition field)")
    n = _length(msg.advantages, f"{prefix}.advantages")
    advantages = _float(msg.advantages, f"{prefix}.advantages", (n,))
    steps = _steps(msg, spec, prefix, n)
    steps.memories = _memories(msg.memories, f"{prefix}.memories", n, memory_size)
    critic_memories = _memories(msg.critic_memories, f"{prefix}.critic_memories", n, memory_size)
    loss_masks = _loss_masks(msg, f"{prefix}.loss_masks", n)
    per_signal = {}
    for key in ("returns", "value_estimates"):
        given = dict(msg.returns if key == "returns" else msg.value_estimates)
        if set(given) != set(signals):
            raise InvalidArgument(f"{prefix}.{key}", f"must have exactly the behaviour's reward signals {sorted(signals)}, got {sorted(given)}")
        per_signal[key] = {s: _float(given[s], f"{prefix}.{key}[{s}]", (n,)) for s in signals}
    return BatchData(**vars(steps), advantages=advantages, returns=per_signal["returns"], value_estimates=per_signal["value_estimates"],
                     critic_memories=critic_memories, loss_masks=loss_masks)


def check_sequence_layout(batch: Union[BatchData, TransitionBatch], sequence_length: int, prefix: str = "batch") -> None:
    """A recurrent Update's rows are whole sequences that each replay one episode piece from its
    first memory: padding (loss_masks false) only at a sequence's end, and (SAC) a terminal step
    only as a sequence's last real row, since nothing may follow an episode's end in one sequence."""
    if sequence_length <= 1:
        return
    masks = batch.loss_masks
    if masks is not None:
        grid = masks.reshape(-1, sequence_length)
        late = np.argwhere(grid[:, 1:] & ~grid[:, :-1])
        if late.size:
            s, t = (int(v) for v in late[0])
            raise InvalidArgument(f"{prefix}.loss_masks", f"sequence {s} has a real row (row {s * sequence_length + t + 1}) "
                                  "after padding; padding goes at the end of a sequence")
    dones = getattr(batch, "dones", None)
    if dones is not None and dones.any():
        real = masks if masks is not None else np.ones_like(dones)
        grid_done, grid_real = dones.reshape(-1, sequence_length), real.reshape(-1, sequence_length)
        # a real row after a real terminal step of the same sequence
        after_done = np.logical_or.accumulate(grid_done & grid_real, axis=1)[:, :-1] & grid_real[:, 1:]
        bad = np.argwhere(after_done)
        if bad.size:
            s, t = (int(v) for v in bad[0])
            raise InvalidArgument(f"{prefix}.dones", f"sequence {s} continues after the terminal step at or before row "
                                  f"{s * sequence_length + t}; an episode's end must be its sequence's last real row (pad the rest)")


def parse_value_query_inputs(msg: pb.EstimateValuesRequest, spec: BehaviorSpec, n: int):
    """EstimateValues' optional actions and extrinsic rewards, for per-signal rewards: (continuous
    [n, c], discrete [n, b], rewards [n]), each None when the request left it out (actions are
    all or nothing: both kinds the spec has)."""
    rewards = _float(msg.rewards, "rewards", (n,)) if is_set(msg.rewards) else None
    given = [name for name in ("continuous_actions", "discrete_actions") if is_set(getattr(msg, name))]
    if not given:
        return None, None, rewards
    steps = _steps(msg, spec, "", n, log_probs=False)
    return steps.continuous_actions, steps.discrete_actions, rewards


def _loss_masks(msg: pb.TrainingBatch, field: str, n: int) -> Optional[np.ndarray]:
    if not is_set(msg.loss_masks):
        return None
    loss_masks = _decode(msg.loss_masks, field, _MASK_TYPES, (n,)).astype(bool)
    if not loss_masks.any():
        raise InvalidArgument(field, "masks every row: nothing to train on")
    return loss_masks


def parse_transition_batch(msg: pb.TrainingBatch, spec: BehaviorSpec, prefix: str = "batch", memory_size: int = 0) -> TransitionBatch:
    """An SAC Update's minibatch: observations, actions (and masks), rewards, next observations and
    dones of N transitions, and for recurrent networks the policy and critic memories (rows sequence
    after sequence) with optional loss masks; PPO's fields must be absent (they would be silently
    ignored)."""
    n = _length(msg.rewards, f"{prefix}.rewards")
    rewards = _float(msg.rewards, f"{prefix}.rewards", (n,))
    for name in ("advantages", "continuous_log_probs", "discrete_log_probs"):
        if is_set(getattr(msg, name)):
            raise InvalidArgument(f"{prefix}.{name}", "must be omitted for trainer_type sac (an off-policy update does not use it)")
    for name in ("returns", "value_estimates"):
        if len(getattr(msg, name)):
            raise InvalidArgument(f"{prefix}.{name}", "must be omitted for trainer_type sac (an off-policy update does not use it)")
    steps = _steps(msg, spec, prefix, n, log_probs=False)
    if not msg.next_observations:
        raise InvalidArgument(f"{prefix}.next_observations", "are required for trainer_type sac (one tensor per observation, [N, *shape])")
    next_obs = decode_observations(msg.next_observations, spec, f"{prefix}.next_observations", (n,))
    if not is_set(msg.dones):
        raise InvalidArgument(f"{prefix}.dones", "is required for trainer_type sac (BOOL [N], true where the episode terminated)")
    dones = _decode(msg.dones, f"{prefix}.dones", _MASK_TYPES, (n,)).astype(bool)
    steps.memories = _memories(msg.memories, f"{prefix}.memories", n, memory_size)
    critic_memories = _memories(msg.critic_memories, f"{prefix}.critic_memories", n, memory_size)
    return TransitionBatch(**vars(steps), rewards=rewards, next_observations=next_obs, dones=dones,
                           critic_memories=critic_memories, loss_masks=_loss_masks(msg, f"{prefix}.loss_masks", n))
