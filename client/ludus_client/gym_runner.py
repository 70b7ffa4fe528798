"""`ludus-gym`: run vectorised Gymnasium envs as agents of one Ludus behaviour.

Each env index is one agent. The runner acts with the local copy of the policy, cuts trajectories
at `time_horizon` (termination -> done, truncation -> interrupted, with the final observation for
bootstrapping), streams them to the service, and swaps in each new policy version as WatchPolicy
delivers it. Progress (env steps, steps/s, mean return, policy version) is shown with tqdm.

Spaces: vector, image, Discrete, MultiDiscrete and MultiBinary observations, nested in Dict/Tuple
spaces, and Box, Discrete, MultiDiscrete, MultiBinary and hybrid Tuple/Dict actions (the rules are
above `_space_leaves`); envs that put an "action_mask" in their info get masked actions.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import grpc
import gymnasium as gym
import numpy as np
import yaml
from gymnasium.vector import AutoresetMode

from ludus.v1 import trainer_pb2 as pb
from ludus_client.auth import read_token_file
from ludus_client.client import LudusClient, LudusError
from ludus_client.policy import LocalPolicy
from ludus_client.spec import ActionSpec, BehaviorSpec, ObservationSpec
from ludus_client.stream import TrajectoryStream
from ludus_client.trajectory import TrajectoryBuilder


# ---------------------------------------------------------------------------------------------------
# Gymnasium spaces <-> Ludus specs
#
# Observations: one ObservationSpec per leaf of the observation space, in a stable order: Dict
# entries sorted by key (what gymnasium.spaces.flatten does for a Dict built from a plain dict),
# Tuple entries by index, nested Dict/Tuple spaces depth-first. A leaf's name is its path joined with
# "." ("position", "sensors.0"); a space that is a single leaf is named "obs". Leaves:
#   Box of rank 0-2 -> VECTOR, flattened (a rank-2 Box is a matrix of features, not an image: give
#                      grey images a channel axis, e.g. GrayscaleObservation(keep_dim=True));
#   Box of rank 3   -> VISUAL, channels-first (C, H, W). The channel axis is the smaller of the first
#                      and last dimensions, ties going to the last: (84, 84, 3) and (84, 84, 12) are
#                      Gymnasium's usual HWC and are transposed; (3, 84, 84) is already CHW. uint8
#                      pixels are scaled to [0, 1]; float images are passed as they are;
#   Discrete(n)     -> VECTOR of n, one-hot (`start` subtracted);
#   MultiDiscrete   -> VECTOR, one one-hot block per entry, concatenated;
#   MultiBinary     -> VECTOR of floats (0/1), flattened.
# Anything else (Text, Graph, Sequence, OneOf, Box of rank > 3) is a ValueError naming the space.
#
# Actions: every leaf of the action space, same order. Box leaves -> one continuous block (policy
# output in [-1, 1], i.e. PolicyOutput.env_continuous_actions, scaled to each Box's bounds;
# dimensions with an infinite bound get the [-1, 1] value unscaled); Discrete -> one branch;
# MultiDiscrete -> one branch per entry (`start` offsets added back); MultiBinary -> one 2-way branch
# per entry. So Box, Discrete, MultiDiscrete and hybrid Tuple/Dict spaces of Box and discrete parts
# all map to (continuous_size, discrete_branches) and back to the env's own structure.
#
# Action masks (Gymnasium's convention): info["action_mask"], True/nonzero = allowed, for the
# discrete branches in spec order: one flat array of sum(branches) entries, or a tuple/list of
# per-branch arrays (MultiDiscrete). The mask in the info of reset()/step() applies to the
# observation returned with it, i.e. to the next action.
# ---------------------------------------------------------------------------------------------------

_Path = Tuple[Any, ...]


def _space_leaves(space: gym.Space, path: _Path = ()) -> List[Tuple[_Path, gym.Space]]:
    """(path, leaf space) for every non-composite part of `space`: Dict by sorted key, Tuple by index."""
    if isinstance(space, gym.spaces.Dict):
        leaves: List[Tuple[_Path, gym.Space]] = []
        for key in sorted(space.spaces, key=str):
            leaves.extend(_space_leaves(space.spaces[key], path + (key,)))
        return leaves
    if isinstance(space, gym.spaces.Tuple):
        leaves = []
        for index, sub in enumerate(space.spaces):
            leaves.extend(_space_leaves(sub, path + (index,)))
        return leaves
    return [(path, space)]


def _path_name(path: _Path) -> str:
    return ".".join(str(p) for p in path) if path else "obs"


def _get(value: Any, path: _Path) -> Any:
    for part in path:
        value = value[part]
    return value


def image_layout(shape: Sequence[int]) -> str:
    """'hwc' or 'chw' for a rank-3 Box: the channel axis is the smaller of the first and last
    dimensions; a tie goes to channels-last (Gymnasium's convention for images)."""
    if len(shape) != 3:
        raise ValueError(f"an image has rank 3, got shape {tuple(shape)}")
    return "hwc" if shape[-1] <= shape[0] else "chw"


def _one_hot(indices: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((*indices.shape, n), np.float32)
    np.put_along_axis(out, np.asarray(indices, np.int64)[..., None], 1.0, axis=-1)
    return out


@dataclass(frozen=True)
class _ObsLeaf:
    path: _Path
    spec: ObservationSpec
    convert: Callable[[np.ndarray], np.ndarray]  # [B, *leaf shape] -> float32 [B, *spec.shape]


def _observation_leaf(path: _Path, space: gym.Space) -> _ObsLeaf:
    name = _path_name(path)
    where = f"observation {name!r}: " if path else "observation space "
    if isinstance(space, gym.spaces.Box):
        shape = tuple(int(d) for d in space.shape)
        if len(shape) <= 2:
            size = int(np.prod(shape)) if shape else 1
            return _ObsLeaf(path, ObservationSpec(name, (size,)), lambda x: np.asarray(x, np.float32).reshape(len(x), -1))
        if len(shape) == 3:
            if min(shape) < 1:
                raise ValueError(f"{where}image Box {space} has an empty dimension")
            # uint8 frames stay uint8 (pixels): LocalPolicy and the service both scale them by 1/255,
            # and they travel as 4x fewer bytes than floats.
            dtype = np.uint8 if space.dtype == np.uint8 else np.float32
            if image_layout(shape) == "hwc":
                chw = (shape[2], shape[0], shape[1])
                def convert(x: np.ndarray, dtype=dtype) -> np.ndarray:
                    return np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2), dtype=dtype)
            else:
                chw = shape
                def convert(x: np.ndarray, dtype=dtype) -> np.ndarray:
                    return np.asarray(x, dtype=dtype)
            return _ObsLeaf(path, ObservationSpec(name, chw, pb.OBSERVATION_KIND_VISUAL), convert)
        raise ValueError(f"{where}Box {space} of rank {len(shape)} is not supported (rank 0-2: vector, rank 3: image)")
    if isinstance(space, gym.spaces.Discrete):
        n, start = int(space.n), int(space.start)
        return _ObsLeaf(path, ObservationSpec(name, (n,)), lambda x: _one_hot(np.asarray(x).reshape(len(x)) - start, n))
    if isinstance(space, gym.spaces.MultiDiscrete):
        nvec, starts = space.nvec.reshape(-1).astype(np.int64), space.start.reshape(-1).astype(np.int64)

        def convert(x: np.ndarray) -> np.ndarray:
            idx = np.asarray(x, np.int64).reshape(len(x), -1) - starts
            return np.concatenate([_one_hot(idx[:, j], int(n)) for j, n in enumerate(nvec)], axis=1)
        return _ObsLeaf(path, ObservationSpec(name, (int(nvec.sum()),)), convert)
    if isinstance(space, gym.spaces.MultiBinary):
        size = int(np.prod(space.shape))
        return _ObsLeaf(path, ObservationSpec(name, (size,)), lambda x: np.asarray(x, np.float32).reshape(len(x), -1))
    raise ValueError(f"{where}{space} ({type(space).__name__}) is not supported (Box, Discrete, MultiDiscrete, "
                     f"MultiBinary, and Dict/Tuple of them)")


#: Gymnasium-Robotics' GoalEnv convention: Dict observations {"observation", "achieved_goal",
#: "desired_goal"}. The desired goal becomes a GOAL_SIGNAL observation (goal_conditioning_type).
GOAL_KEY = "desired_goal"


def _goal_leaf(leaf: _ObsLeaf) -> _ObsLeaf:
    if leaf.path and leaf.path[-1] == GOAL_KEY and leaf.spec.kind == pb.OBSERVATION_KIND_VECTOR:
        spec = leaf.spec
        return _ObsLeaf(leaf.path, ObservationSpec(spec.name, spec.shape, spec.kind, pb.OBSERVATION_TYPE_GOAL_SIGNAL), leaf.convert)
    return leaf


class ObservationAdapter:
    """A Gymnasium observation (batched from a vector env, or one env's) -> the policy's inputs:
    float32 arrays in spec order (see the rules above `_space_leaves`)."""

    def __init__(self, space: gym.Space) -> None:
        self.space = space
        self.leaves = [_goal_leaf(_observation_leaf(path, leaf)) for path, leaf in _space_leaves(space)]
        if not self.leaves:
            raise ValueError(f"observation space {space} has no observations")
        self.specs: Tuple[ObservationSpec, ...] = tuple(leaf.spec for leaf in self.leaves)

    def __call__(self, obs: Any) -> List[np.ndarray]:
        """Batched observations (what a vector env returns) -> [B, *spec.shape] float32 per spec."""
        return [leaf.convert(_get(obs, leaf.path)) for leaf in self.leaves]

    def at(self, obs: Any, index: int) -> List[np.ndarray]:
        """Agent `index` of batched observations -> [*spec.shape] float32 per spec."""
        return [leaf.convert(np.asarray(_get(obs, leaf.path))[index:index + 1])[0] for leaf in self.leaves]

    def single(self, obs: Any) -> List[np.ndarray]:
        """One env's observation (e.g. info["final_obs"][i]) -> [*spec.shape] float32 per spec."""
        return [leaf.convert(np.asarray(_get(obs, leaf.path))[None])[0] for leaf in self.leaves]


@dataclass(frozen=True)
class _ActionLeaf:
    path: _Path
    space: gym.Space
    continuous: slice  # this leaf's columns of the continuous block
    discrete: slice  # this leaf's discrete branches


class ActionAdapter:
    """PolicyOutput -> what the env's (vectorised) action space expects; `spec` is the ActionSpec."""

    def __init__(self, space: gym.Space) -> None:
        self.space = space
        self.leaves: List[_ActionLeaf] = []
        continuous, branches = 0, []
        for path, leaf in _space_leaves(space):
            c0, b0 = continuous, len(branches)
            if isinstance(leaf, gym.spaces.Box):
                continuous += int(np.prod(leaf.shape))
            elif isinstance(leaf, gym.spaces.Discrete):
                branches.append(int(leaf.n))
            elif isinstance(leaf, gym.spaces.MultiDiscrete):
                branches.extend(int(n) for n in leaf.nvec.reshape(-1))
            elif isinstance(leaf, gym.spaces.MultiBinary):
                branches.extend([2] * int(np.prod(leaf.shape)))
            else:
                where = f"action {_path_name(path)!r}: " if path else "action space "
                raise ValueError(f"{where}{leaf} ({type(leaf).__name__}) is not supported (Box, Discrete, MultiDiscrete, "
                                 f"MultiBinary, and Dict/Tuple of them)")
            self.leaves.append(_ActionLeaf(path, leaf, slice(c0, continuous), slice(b0, len(branches))))
        self.spec = ActionSpec(continuous, tuple(branches))
        if continuous == 0 and not branches:
            raise ValueError(f"action space {space} has no actions")

    def __call__(self, output) -> Any:
        return self.to_env(output.env_continuous_actions, output.discrete_actions)

    def to_env(self, continuous: np.ndarray, discrete: np.ndarray) -> Any:
        """Continuous actions in [-1, 1] [B, continuous_size] and discrete choices [B, branches] ->
        a batch of the env's actions (Tuple -> tuple of arrays, Dict -> dict of arrays)."""
        continuous = np.asarray(continuous, np.float64)
        discrete = np.asarray(discrete, np.int64)
        batch = len(continuous) if continuous.ndim == 2 and continuous.shape[1] else len(discrete)
        values = {leaf.path: self._leaf_action(leaf, continuous, discrete, batch) for leaf in self.leaves}
        return self._assemble(self.space, (), values)

    @staticmethod
    def _leaf_action(leaf: _ActionLeaf, continuous: np.ndarray, discrete: np.ndarray, batch: int) -> np.ndarray:
        s = leaf.space
        if isinstance(s, gym.spaces.Box):
            unit = continuous[:, leaf.continuous]
            low, high = s.low.reshape(-1).astype(np.float64), s.high.reshape(-1).astype(np.float64)
            finite = np.isfinite(low) & np.isfinite(high)
            lo, hi = np.where(finite, low, -1.0), np.where(finite, high, 1.0)
            scaled = lo + (unit + 1.0) * 0.5 * (hi - lo)  # [-1, 1] -> [low, high]
            if np.issubdtype(s.dtype, np.integer):
                scaled = np.clip(np.rint(scaled), lo, hi)
            return scaled.reshape((batch, *s.shape)).astype(s.dtype)
        choice = discrete[:, leaf.discrete]
        if isinstance(s, gym.spaces.Discrete):
            return (choice[:, 0] + int(s.start)).astype(s.dtype)
        if isinstance(s, gym.spaces.MultiDiscrete):
            return (choice.reshape((batch, *s.nvec.shape)) + s.start).astype(s.dtype)
        return choice.reshape((batch, *s.shape)).astype(s.dtype)  # MultiBinary

    def _assemble(self, space: gym.Space, path: _Path, values: Dict[_Path, np.ndarray]) -> Any:
        if isinstance(space, gym.spaces.Dict):
            return {key: self._assemble(sub, path + (key,), values) for key, sub in space.spaces.items()}
        if isinstance(space, gym.spaces.Tuple):
            return tuple(self._assemble(sub, path + (i,), values) for i, sub in enumerate(space.spaces))
        return values[path]


def spec_from_spaces(observation_space: gym.Space, action_space: gym.Space) -> BehaviorSpec:
    """Gymnasium spaces -> BehaviorSpec: one observation per leaf of the observation space (vectors,
    images, one-hot Discrete, MultiBinary; Dict/Tuple flattened), and the continuous block plus
    discrete branches of the action space (Box, Discrete, MultiDiscrete, MultiBinary, hybrid
    Tuple/Dict). ValueError naming the space for anything else."""
    return BehaviorSpec(ObservationAdapter(observation_space).specs, ActionAdapter(action_space).spec)


def flat_action_mask(value: Any, branches: Sequence[int]) -> np.ndarray:
    """One agent's action mask -> bool [sum(branches)], True = allowed. `value`: one flat array
    (any shape of sum(branches) entries, bool or 0/1 ints) or a tuple/list of per-branch arrays."""
    total = int(sum(branches))
    if isinstance(value, np.ndarray) and value.dtype == object:
        value = list(value.reshape(-1))
    if isinstance(value, (tuple, list)) and len(value) == len(branches) and len(branches) > 0 and all(
            np.ndim(part) == 1 and np.size(part) == b for part, b in zip(value, branches)):
        flat = np.concatenate([np.asarray(part).reshape(-1) for part in value])
    else:
        flat = np.asarray(value).reshape(-1)
    if flat.size != total:
        raise ValueError(f"action_mask has {flat.size} entries; the discrete branches {list(branches)} need {total} "
                         f"(one flat mask, or one mask per branch)")
    mask = flat.astype(bool)
    offset = 0
    for j, b in enumerate(branches):
        if not mask[offset:offset + b].any():
            raise ValueError(f"action_mask forbids every option of discrete branch {j}")
        offset += b
    return mask


def action_masks_from_info(info: Dict[str, Any], num_envs: int, branches: Sequence[int]) -> Optional[np.ndarray]:
    """A vector env's info -> bool [num_envs, sum(branches)] masks, or None when no env reported
    "action_mask". Gymnasium's vector envs batch info entries into arrays with a "_action_mask"
    presence flag per env; envs without a mask this step get all options allowed."""
    if not branches or "action_mask" not in info:
        return None
    values = info["action_mask"]
    present = np.asarray(info.get("_action_mask", np.ones(num_envs, bool)), dtype=bool).reshape(-1)
    masks = np.ones((num_envs, int(sum(branches))), bool)
    for i in range(num_envs):
        if present[i]:
            try:
                masks[i] = flat_action_mask(values[i], branches)
            except ValueError as err:
                raise ValueError(f"env {i}: {err}") from None
    return masks


class PolicyHolder:
    """The policy the runner acts with, replaced atomically by the watcher thread."""

    def __init__(self, policy: LocalPolicy) -> None:
        self.policy = policy
        self._changed = threading.Condition()

    def offer(self, policy: LocalPolicy) -> None:
        with self._changed:
            if policy.version > self.policy.version:
                self.policy = policy
                self._changed.notify_all()

    def replace(self, policy: LocalPolicy) -> None:
        """Unconditional swap: the server restarted from an older checkpoint (versions went back)."""
        with self._changed:
            self.policy = policy
            self._changed.notify_all()

    def wait_changed(self, version: int, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.policy.version != version, timeout)


@dataclass
class RunResult:
    env_steps: int
    episodes: int
    mean_return: float  # over the last `window` episodes
    solved: bool
    seconds: float
    policy_version: int
    returns: List[float] = field(default_factory=list)
    curve: List[tuple] = field(default_factory=list)  # (env_steps, mean_return) at each episode end


def _watch(client: LudusClient, name: str, holder: PolicyHolder, stop: threading.Event, policy_format: str = "safetensors") -> None:
    backoff = 0.2
    while not stop.is_set():
        watch = client.watch_policy(name, after_version=holder.policy.version, format=policy_format)
        stopper = threading.Thread(target=lambda: (stop.wait(), watch.cancel()), daemon=True)
        stopper.start()
        try:
            for blob in watch:
                holder.offer(blob.load())
                backoff = 0.2
        except LudusError:
            if stop.wait(backoff):
                return
            backoff = min(backoff * 2, 5.0)


class AgentRecorder:
    """Per-env trajectory pieces and episode returns: what every Gymnasium loop (the runner, and the
    in-process benchmark loop) does with one vectorised step.

    `observations` converts the env's observations to the policy's inputs; when omitted, `step`
    builds one from the env's observation space. Action masks found in a step's info (see
    `action_masks_from_info`) are used for the next act and recorded with it; call `start(info)`
    with the reset's info so the first step is masked too."""

    def __init__(self, spec: BehaviorSpec, name: str, num_envs: int, time_horizon: int, submit: Callable[[Any], None], window: int,
                 observations: Optional[ObservationAdapter] = None) -> None:
        self.spec = spec
        self.builders = [TrajectoryBuilder(spec, f"{name}-{i}") for i in range(num_envs)]
        self.time_horizon = time_horizon
        self.submit = submit
        self.observations = observations
        self.episode_returns = np.zeros(num_envs)
        self.recent: deque = deque(maxlen=window)
        self.returns: List[float] = []
        self.curve: List[tuple] = []  # (env_steps, mean return over the window) at each episode end
        self.masks: Optional[np.ndarray] = None  # bool [num_envs, sum(branches)] for the next act, or None
        #: Recurrent policies: each env's policy memory going into its next step (zeros at an episode start).
        self.memories: Optional[np.ndarray] = None
        self._masked = False  # an env has reported action masks: from then on every step carries one

    def start(self, info: Dict[str, Any]) -> None:
        """Take the action masks (if any) from the info that reset() returned."""
        self.masks = action_masks_from_info(info, len(self.builders), self.spec.actions.discrete_branches)
        self._masked = self._masked or self.masks is not None

    def _obs_at(self, obs: Any, i: int) -> List[np.ndarray]:
        if self.observations is None:  # record() called directly with flat Box observations
            return [np.asarray(obs[i], dtype=np.float32).reshape(-1)]
        return self.observations.at(obs, i)

    def _final_obs(self, obs: Any) -> List[np.ndarray]:
        if self.observations is None:
            return [np.asarray(obs, dtype=np.float32).reshape(-1)]
        return self.observations.single(obs)

    def record(self, observations: Sequence[np.ndarray], out, rewards, terminated, truncated, info, next_obs, env_steps: int,
               version: int, masks: Optional[np.ndarray] = None, memories: Optional[np.ndarray] = None) -> None:
        """Add one step of every env (`observations`: the policy's inputs, one [B, ...] array per
        spec; `masks`: the action masks it acted under; `memories`: the recurrent policy memories
        that went into the step); send pieces that ended an episode or reached time_horizon."""
        self.episode_returns += rewards
        for i, builder in enumerate(self.builders):
            builder.add_step([o[i] for o in observations], out.continuous_actions[i], out.discrete_actions[i],
                             out.continuous_log_probs[i], out.discrete_log_probs[i], rewards[i], version,
                             action_mask=None if masks is None else masks[i],
                             memory=None if memories is None else memories[i])
            if terminated[i] or truncated[i]:
                final = self._final_obs(info["final_obs"][i])
                self.submit(builder.build(final, done=bool(terminated[i]), interrupted=bool(truncated[i])))
                self.recent.append(float(self.episode_returns[i]))
                self.returns.append(float(self.episode_returns[i]))
                self.curve.append((env_steps + i + 1, float(np.mean(self.recent))))
                self.episode_returns[i] = 0.0
            elif len(builder) >= self.time_horizon:
                self.submit(builder.build(self._obs_at(next_obs, i)))

    def step(self, envs, adapter: "ActionAdapter", policy: LocalPolicy, obs: Any, rng: np.random.Generator, env_steps: int) -> Any:
        """Act with `policy` in every env, step them, record the step; returns the next observations."""
        if self.observations is None:
            self.observations = ObservationAdapter(envs.single_observation_space)
        inputs = self.observations(obs)
        masks = self.masks
        memories = None
        if policy.recurrent:
            if self.memories is None or self.memories.shape[1] != policy.memory_size:
                self.memories = policy.initial_memories(len(self.builders))
            memories = self.memories
        out = policy.act(inputs, action_masks=masks, rng=rng, memories=memories)
        next_obs, rewards, terminated, truncated, info = envs.step(adapter(out))
        self.record(inputs, out, rewards, terminated, truncated, info, next_obs, env_steps, policy.version, masks, memories)
        if out.memories is not None:  # carried into the next step; a new episode starts from zeros
            self.memories = np.where((np.asarray(terminated) | np.asarray(truncated))[:, None], 0.0, out.memories).astype(np.float32)
        next_masks = action_masks_from_info(info, len(self.builders), self.spec.actions.discrete_branches)
        if next_masks is not None and not self._masked:
            # The first masks: send the pieces recorded without any, so that no trajectory mixes steps with and without masks.
            self._masked = True
            self.flush(next_obs)
        elif next_masks is None and self._masked:
            next_masks = np.ones((len(self.builders), self.spec.actions.mask_size), bool)
        self.masks = next_masks
        return next_obs

    def flush(self, obs: Any) -> None:
        """Send every open piece, bootstrapped from the current observations (end of a rollout or run)."""
        for i, builder in enumerate(self.builders):
            if len(builder):
                self.submit(builder.build(self._obs_at(obs, i)))

    @property
    def mean_return(self) -> float:
        return float(np.mean(self.recent)) if self.recent else float("nan")


EnvSource = Union[str, Callable[..., gym.Env]]


def make_envs(env: EnvSource, num_envs: int, env_kwargs: Optional[Dict[str, Any]] = None) -> gym.vector.VectorEnv:
    """`num_envs` synchronous copies of `env` (a registered Gymnasium id, or a callable returning an
    Env, called with `env_kwargs`) that reset themselves in the step that ends an episode
    (AutoresetMode.SAME_STEP: the episode's last observation is in info["final_obs"])."""
    kwargs = dict(env_kwargs or {})
    if isinstance(env, str):
        return gym.make_vec(env, num_envs=num_envs, vectorization_mode="sync",
                            vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP}, **kwargs)
    if callable(env):
        return gym.vector.SyncVectorEnv([lambda: env(**kwargs) for _ in range(num_envs)], autoreset_mode=AutoresetMode.SAME_STEP)
    raise TypeError(f"env must be a Gymnasium id or a callable returning an Env, got {type(env).__name__}")


def _env_name(env: EnvSource) -> str:
    label = env if isinstance(env, str) else getattr(env, "__name__", type(env).__name__)
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", label)


def _await_next_version(client: LudusClient, name: str, holder: PolicyHolder, stream: TrajectoryStream, acted_version: int,
                        rollout_steps: int, timeout: float, rolled_back: threading.Event, fetch: Callable[[], Any]) -> bool:
    """Wait for the update our rollout completes. False if the server cannot update without more
    data: everything we sent is acknowledged and its buffer plus queue is still short of buffer_size
    (after a restart from a checkpoint, steps acknowledged by the old process are gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if holder.wait_changed(acted_version, 1.0) or rolled_back.is_set():
            return True
        state = client.describe(name)
        if state.policy_version != acted_version:
            # A version exists that the watch did not deliver: after a resume, version numbers issued
            # by the crashed process can be issued again, and a watch asking for newer ones waits.
            holder.replace(fetch())
            return True
        if stream.unacknowledged == 0 and state.buffered_steps + state.queued_steps < rollout_steps:
            return False
    raise LudusError(grpc.StatusCode.DEADLINE_EXCEEDED, f"no policy newer than version {acted_version} within {timeout:.0f}s")


def _await_processed(client: LudusClient, name: str, holder: PolicyHolder, stream: TrajectoryStream, timeout: float,
                     fetch: Callable[[], Any], poll: float = 0.01) -> None:
    """Off-policy lockstep (ML-Agents' SAC loop): wait until the server has processed everything we
    sent, including the gradient steps it owes for those steps, then act with its newest policy."""
    deadline = time.monotonic() + timeout
    version, wait = holder.policy.version, poll
    while time.monotonic() < deadline:
        if stream.unacknowledged == 0:
            state = client.describe(name)
            if state.queued_steps == 0:
                if state.policy_version > holder.policy.version:
                    holder.offer(fetch())
                return
        # A burst of updates ends with a new version, which the watch delivers: sleep on that rather
        # than asking the server every `poll` seconds (each Describe takes the learner's GIL), backing
        # off to 0.2 s while nothing changes (no update owed yet, or a long burst).
        if holder.wait_changed(version, wait):
            version, wait = holder.policy.version, poll
        else:
            wait = min(wait * 2, 0.2)
    raise LudusError(grpc.StatusCode.DEADLINE_EXCEEDED, f"the server did not process our steps within {timeout:.0f}s")


def run(
    env_id: EnvSource,
    server: str,
    steps: int,
    num_envs: int = 8,
    behavior_name: Optional[str] = None,
    settings: Optional[Dict[str, Any]] = None,
    seed: Optional[int] = 0,
    target_return: Optional[float] = None,
    window: int = 20,
    progress: bool = True,
    env_kwargs: Optional[Dict[str, Any]] = None,
    sync: bool = True,
    version_timeout: float = 120.0,
    token: Optional[str] = None,
    root_certificates: Optional[bytes] = None,
    policy_format: str = "safetensors",
) -> RunResult:
    """Train `env_id` through the server for `steps` env steps (or until `target_return`).

    `env_id`: a registered Gymnasium id (made with gymnasium.make_vec(env_id, **env_kwargs)), or a
    callable returning one Env (called as env_id(**env_kwargs) for each of the `num_envs` copies).
    The behaviour's spec comes from the spaces (`spec_from_spaces`); action masks in the envs' info
    ("action_mask") constrain the policy and travel with the trajectories.

    sync=True (on-policy, like SB3's rollouts): after `buffer_size` steps acted by one policy
    version, cut every open trajectory (bootstrapped) and wait for the next version. For off-policy
    trainers (trainer_type sac) sync is lockstep instead: after `time_horizon` steps of every env,
    wait until the server has processed them (and run the updates they owe). sync=False lets
    the envs run freely, as a real-time game would; data that lags too far is dropped by the server.

    policy_format "onnx" acts with the ONNX model engines load (ludus_client.OnnxPolicy, needs
    onnxruntime) instead of the numpy evaluation of the safetensors weights: one artefact for both.
    """
    name = behavior_name or _env_name(env_id)
    envs = make_envs(env_id, num_envs, env_kwargs)
    observations = ObservationAdapter(envs.single_observation_space)
    adapter = ActionAdapter(envs.single_action_space)
    spec = BehaviorSpec(observations.specs, adapter.spec)
    rng = np.random.default_rng(seed)
    client = LudusClient(server, token=token, root_certificates=root_certificates)  # token None: env LUDUS_AUTH_TOKEN
    client.wait_ready()
    registration = client.register(name, spec, settings)
    time_horizon = int(registration.settings["time_horizon"])
    rollout_steps = int(registration.settings["hyperparameters"]["buffer_size"])
    off_policy = registration.settings.get("trainer_type") == "sac"
    if off_policy:
        rollout_steps = time_horizon * num_envs
    fetch = lambda: client.get_policy(name, format=policy_format).load()  # noqa: E731
    holder = PolicyHolder(fetch())
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(client, name, holder, stop, policy_format), daemon=True, name="policy-watch")
    watcher.start()
    rolled_back = threading.Event()

    def on_ack(ack) -> None:
        if ack.drop_reason == pb.DROP_REASON_UNKNOWN_POLICY_VERSION:
            rolled_back.set()

    stream = TrajectoryStream(client, name, on_ack=on_ack)
    recorder = AgentRecorder(spec, name, num_envs, time_horizon, stream.submit, window, observations)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=steps, unit="step", desc=f"{name} via {server}", mininterval=1.0, smoothing=0.1, file=sys.stdout)
    obs, info = envs.reset(seed=seed)
    recorder.start(info)
    env_steps, solved, started = 0, False, time.perf_counter()
    acted_version, acted_steps = holder.policy.version, 0
    try:
        while env_steps < steps:
            if rolled_back.is_set():  # the server resumed from an older checkpoint: act with its policy
                rolled_back.clear()
                holder.replace(fetch())
            policy = holder.policy
            if policy.version != acted_version:
                acted_version, acted_steps = policy.version, 0
            if sync and acted_steps >= rollout_steps:
                recorder.flush(obs)  # end the rollout: bootstrap every open piece
                if off_policy:
                    _await_processed(client, name, holder, stream, version_timeout, fetch)
                    acted_steps = 0
                    continue
                if not _await_next_version(client, name, holder, stream, acted_version, rollout_steps, version_timeout, rolled_back, fetch):
                    acted_steps = 0  # the learner needs more data (e.g. steps lost in a server crash): collect again
                continue
            obs = recorder.step(envs, adapter, policy, obs, rng, env_steps)
            env_steps += num_envs
            acted_steps += num_envs
            if bar is not None:
                bar.update(num_envs)
                bar.set_postfix(mean_return=f"{recorder.mean_return:.1f}", version=holder.policy.version,
                                episodes=len(recorder.returns), refresh=False)
            if target_return is not None and len(recorder.recent) == window and recorder.mean_return >= target_return:
                solved = True
                break
        recorder.flush(obs)  # send the unfinished pieces too: no acted step is wasted
        stream.close()
    finally:
        stop.set()
        if bar is not None:
            bar.close()
        envs.close()
    watcher.join(timeout=5)
    client.close()
    return RunResult(env_steps, len(recorder.returns), recorder.mean_return, solved,
                     time.perf_counter() - started, holder.policy.version, recorder.returns, recorder.curve)


def load_behavior_settings(path: str, behavior_name: str) -> Dict[str, Any]:
    """Settings for one behaviour from an ML-Agents YAML (behaviors.<name>, else default_settings)."""
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    behaviors = data.get("behaviors") or {}
    return behaviors.get(behavior_name) or data.get("default_settings") or {}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="ludus-gym", description="Train a Gymnasium env through a Ludus server.")
    p.add_argument("--env", required=True, help="Gymnasium env id, e.g. CartPole-v1 (module:id imports the module first)")
    p.add_argument("--env-kwargs", default=None, help='JSON object of keyword arguments for gymnasium.make, e.g. \'{"render_mode": null}\'')
    p.add_argument("--server", default="localhost:50051", help="Ludus server HOST:PORT")
    p.add_argument("--steps", type=int, default=100_000, help="env steps to run (all envs together)")
    p.add_argument("--num-envs", type=int, default=8)
    p.add_argument("--behavior-name", default=None, help="default: the env id")
    p.add_argument("--trainer-config", default=None, help="ML-Agents YAML; behaviors.<name> is sent with RegisterBehavior")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target-return", type=float, default=None, help="stop once the mean return over --window episodes reaches this")
    p.add_argument("--window", type=int, default=20)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-sync", action="store_true", help="free-running envs (do not wait for a new policy after each buffer_size rollout)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    p.add_argument("--policy-format", choices=("safetensors", "onnx"), default="safetensors",
                   help="act with the numpy policy (safetensors, default) or the ONNX model engines load (needs onnxruntime)")
    p.add_argument("--token-file", default=None, help="bearer token for a server started with --auth-token-file (default: env LUDUS_AUTH_TOKEN)")
    p.add_argument("--tls-ca", default=None, help="connect with TLS, trusting this PEM CA bundle")
    args = p.parse_args(argv)
    name = args.behavior_name or re.sub(r"[^A-Za-z0-9_.\-]", "_", args.env)
    settings = load_behavior_settings(args.trainer_config, name) if args.trainer_config else None
    try:
        env_kwargs = json.loads(args.env_kwargs) if args.env_kwargs else None
        if env_kwargs is not None and not isinstance(env_kwargs, dict):
            raise ValueError(f"--env-kwargs must be a JSON object, got {args.env_kwargs!r}")
        token = read_token_file(args.token_file) if args.token_file else None
        root_certificates = pathlib.Path(args.tls_ca).read_bytes() if args.tls_ca else None
    except (OSError, ValueError) as err:
        print(f"ludus-gym: {err}", file=sys.stderr)
        return 2
    try:
        result = run(args.env, args.server, args.steps, args.num_envs, name, settings, args.seed,
                     args.target_return, args.window, progress=not args.no_progress, env_kwargs=env_kwargs,
                     sync=not args.no_sync, token=token, root_certificates=root_certificates, policy_format=args.policy_format)
    except (LudusError, ValueError) as err:
        print(f"ludus-gym: {err}", file=sys.stderr)
        return 1
    summary = {k: v for k, v in vars(result).items() if k not in ("returns", "curve")}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{'solved' if result.solved else 'finished'}: {result.env_steps} env steps, {result.episodes} episodes, "
              f"mean return {result.mean_return:.1f} over the last {args.window}, policy version {result.policy_version}, "
              f"{result.seconds:.1f}s ({result.env_steps / max(result.seconds, 1e-9):.0f} steps/s)")
    if args.target_return is not None and not result.solved:
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
