"""Demonstrations (ML-Agents `.demo` files) as training arrays (recording them: demo_recorder.py).

`load_demonstration` turns a file (or a directory of them, as ML-Agents' `demo_path` allows) into
per-agent trajectories shaped like the ones simulators stream (ludus_service.validation's
TrajectoryData field names), plus per-step next observations and dones for GAIL / curiosity.

How records become transitions (ML-Agents' make_demo_buffer convention): record i gives the
observations, action and action mask of step i; record i+1 gives its reward, done and next
observations. A record with `done` ends the episode: its observations are the terminal ones and its
action is not used; `max_step_reached` on it makes the episode *interrupted* (a step limit, not a
terminal state), exactly like a trajectory's `interrupted`. Records are cut into trajectories at every
done record and wherever the agent id changes; a trajectory's last non-done record only supplies the
next observations of the step before it. (ML-Agents also adds a transition from a terminal record to
the next episode's first record; that one is not a real transition and is left out here.)

Unity's own recorder writes, in each record, the action of the *previous* decision (Agent.cs records
the AgentInfo before the new action is copied into it). ML-Agents trains on the records as they are;
`unity_action_lag=True` pairs step i with the action stored in record i+1 instead.

Every problem is InvalidArgument(field, message) with the file, record index and byte offset.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from ludus.v1 import trainer_pb2 as pb
from ludus_client.demo_file import (
    OBSERVATION_TYPE_DEFAULT, OBSERVATION_TYPE_GOAL_SIGNAL, DemoFile, DemoFormatError, DemoMeta, DemoObservation,
    DemoStep, read_demo_file,
)
from ludus_client.spec import ActionSpec, BehaviorSpec, ObservationSpec
from ludus_service.errors import InvalidArgument, LudusError
from ludus_service.images import PNG_SIGNATURE, decode_png_observation

__all__ = ["DemoTrajectory", "Demonstration", "load_demonstration", "spec_from_demo", "check_demo_matches_spec"]

_KIND_BY_RANK = {1: pb.OBSERVATION_KIND_VECTOR, 2: pb.OBSERVATION_KIND_ENTITIES, 3: pb.OBSERVATION_KIND_VISUAL}
_KIND_NAMES = {pb.OBSERVATION_KIND_VECTOR: "VECTOR", pb.OBSERVATION_KIND_ENTITIES: "ENTITIES", pb.OBSERVATION_KIND_VISUAL: "VISUAL"}
_TYPE_NAMES = {pb.OBSERVATION_TYPE_DEFAULT: "DEFAULT", pb.OBSERVATION_TYPE_GOAL_SIGNAL: "GOAL_SIGNAL"}
_DEMO_TYPES = {OBSERVATION_TYPE_DEFAULT: pb.OBSERVATION_TYPE_DEFAULT, OBSERVATION_TYPE_GOAL_SIGNAL: pb.OBSERVATION_TYPE_GOAL_SIGNAL}
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}  # PNG colour type -> decoded channels


@dataclass
class DemoTrajectory:
    """T consecutive transitions of one agent. Field names follow validation.TrajectoryData."""

    agent_id: str
    observations: List[np.ndarray]  # each float32 [T, *shape]
    next_observations: List[np.ndarray]  # each float32 [T, *shape]: the observations after step t
    continuous_actions: np.ndarray  # float32 [T, c]
    discrete_actions: np.ndarray  # int64 [T, b]
    rewards: np.ndarray  # float32 [T]: the reward that followed step t
    dones: np.ndarray  # bool [T]: True only at the last step of an episode that reached a terminal state
    action_masks: Optional[np.ndarray]  # bool [T, sum(branches)], True = allowed; None when unmasked
    done: bool = False
    interrupted: bool = False

    @property
    def length(self) -> int:
        return int(self.rewards.shape[0])


@dataclass
class Demonstration:
    spec: BehaviorSpec  # the demonstration's own spec (from its first record)
    trajectories: List[DemoTrajectory]
    metas: List[DemoMeta] = field(default_factory=list)  # one per file read

    @property
    def num_steps(self) -> int:
        return sum(t.length for t in self.trajectories)

    @property
    def num_episodes(self) -> int:
        return sum(1 for t in self.trajectories if t.done or t.interrupted)


# ------------------------------------------------------------------------------------------ specs


def spec_from_demo(demo: DemoFile, field: str = "demo_path") -> BehaviorSpec:
    """The behaviour spec a demonstration implies: observations from its first step record (rank 1 =
    VECTOR, 2 = ENTITIES, 3 = VISUAL channels-first), actions from its BrainParameters."""
    first = demo.steps[0]
    if not first.observations:
        raise InvalidArgument(field, f"step record 0 (byte {first.offset}) has no observations")
    observations, names = [], set()
    for j, obs in enumerate(first.observations):
        kind = _KIND_BY_RANK.get(len(obs.shape))
        if kind is None:
            raise InvalidArgument(field, f"observation {j} has shape {list(obs.shape)}: only rank 1 (vector), "
                                         f"2 (entities) and 3 (visual) observations are supported")
        if obs.observation_type not in _DEMO_TYPES:
            raise InvalidArgument(field, f"observation {j} has unsupported observation_type {obs.observation_type}")
        name = obs.name or f"obs_{j}"
        while name in names:  # sensor names are unique in Unity; a spec needs unique names anyway
            name = f"{name}_{j}"
        names.add(name)
        observations.append(ObservationSpec(name, tuple(obs.shape), kind, _DEMO_TYPES[obs.observation_type]))
    return BehaviorSpec(tuple(observations), ActionSpec(demo.continuous_size, tuple(demo.discrete_branches)))


def check_demo_matches_spec(demo_spec: BehaviorSpec, behavior_spec: BehaviorSpec, field_name: str) -> None:
    """InvalidArgument(field_name, what differs) unless the demonstration fits the behaviour: same
    observation count, shapes, kinds and types (names may differ), same actions."""
    d_obs, b_obs = demo_spec.observations, behavior_spec.observations
    if len(d_obs) != len(b_obs):
        raise InvalidArgument(field_name, f"the demonstration has {len(d_obs)} observations but the behaviour spec has {len(b_obs)}")
    for j, (d, b) in enumerate(zip(d_obs, b_obs)):
        if tuple(d.shape) != tuple(b.shape):
            raise InvalidArgument(field_name, f"observation {j} has shape {list(d.shape)} in the demonstration "
                                              f"but {list(b.shape)} in the behaviour spec")
        if d.kind != b.kind:
            raise InvalidArgument(field_name, f"observation {j} is {_KIND_NAMES.get(d.kind, d.kind)} in the demonstration "
                                              f"but {_KIND_NAMES.get(b.kind, b.kind)} in the behaviour spec")
        if d.observation_type != b.observation_type:
            raise InvalidArgument(field_name, f"observation {j} is a {_TYPE_NAMES.get(d.observation_type, d.observation_type)} "
                                              f"observation in the demonstration but "
                                              f"{_TYPE_NAMES.get(b.observation_type, b.observation_type)} in the behaviour spec")
    da, ba = demo_spec.actions, behavior_spec.actions
    if da.continuous_size != ba.continuous_size:
        raise InvalidArgument(field_name, f"continuous actions: {da.continuous_size} in the demonstration, "
                                          f"{ba.continuous_size} in the behaviour")
    if tuple(da.discrete_branches) != tuple(ba.discrete_branches):
        raise InvalidArgument(field_name, f"discrete branches: {list(da.discrete_branches)} in the demonstration, "
                                          f"{list(ba.discrete_branches)} in the behaviour")


# ---------------------------------------------------------------------------------------- loading


def _png_channels(data: bytes) -> Optional[List[int]]:
    """Channels of each concatenated PNG file (from IHDR colour types), or None when the bytes are not
    well-formed enough to tell (the checked decoder then reports exactly what is wrong)."""
    out, pos, n = [], 0, len(data)
    while pos < n:
        if data[pos:pos + 8] != PNG_SIGNATURE or pos + 8 + 25 > n:
            return None
        pos += 8
        length, ctype = struct.unpack_from(">I4s", data, pos)
        if ctype != b"IHDR" or length != 13 or data[pos + 17] not in _PNG_CHANNELS:
            return None
        out.append(_PNG_CHANNELS[data[pos + 17]])
        while True:  # skip chunks up to IEND
            if pos + 12 > n:
                return None
            length, ctype = struct.unpack_from(">I4s", data, pos)
            pos += 12 + length
            if ctype == b"IEND":
                break
    return out


def _legacy_mapping(channels: int, png: bytes) -> List[int]:
    """ML-Agents' rule for PNG data without a channel mapping: a 1-channel observation is the mean of
    the first PNG's channels (Unity's grey cameras write RGB); otherwise the first `channels` decoded
    channels, extra padding channels dropped. Returned as an explicit mapping for the checked decoder."""
    counts = _png_channels(png)
    if not counts or sum(counts) == channels:
        return []
    if channels == 1:
        return [0] * counts[0] + [-1] * sum(counts[1:])
    if sum(counts) > channels:
        return list(range(channels)) + [-1] * (sum(counts) - channels)
    return []


def _obs_array(obs: DemoObservation, shape: Tuple[int, ...], field: str, where: str) -> np.ndarray:
    if not obs.compressed:
        arr = obs.data
        if not np.isfinite(arr).all():
            raise InvalidArgument(field, f"{where} contains NaN or infinite values")
        return arr
    if len(shape) != 3:
        raise InvalidArgument(field, f"{where} is PNG-compressed but has shape {list(shape)} (PNG needs [channels, height, width])")
    mapping = list(obs.channel_mapping) or _legacy_mapping(shape[0], obs.png)
    tensor = pb.Tensor(dtype=pb.DATA_TYPE_UINT8, shape=list(shape), compression=pb.COMPRESSION_PNG,
                       compressed_data=[obs.png], compressed_channel_mapping=mapping)
    try:
        return decode_png_observation(tensor, "", (), shape)
    except LudusError as err:
        message = str(err)
        if message.startswith("step 0: "):
            message = message[len("step 0: "):]
        raise type(err)(field, f"{where}: {message}") from None


def _actions(step: DemoStep, spec: ActionSpec, field: str, where: str) -> Tuple[np.ndarray, np.ndarray]:
    c, branches = spec.continuous_size, spec.discrete_branches
    cont, disc = step.continuous_actions, step.discrete_actions.astype(np.int64)
    if not cont.size and not disc.size and step.legacy_vector_actions.size:  # pre-1.3 files
        legacy = step.legacy_vector_actions
        if c:
            cont = legacy
        else:
            if not np.array_equal(legacy, np.round(legacy)):
                raise InvalidArgument(field, f"{where}: legacy discrete actions {legacy.tolist()} are not whole numbers")
            disc = legacy.astype(np.int64)
    if cont.size != c:
        raise InvalidArgument(field, f"{where} has {cont.size} continuous actions but the action spec has {c}")
    if disc.size != len(branches):
        raise InvalidArgument(field, f"{where} has {disc.size} discrete actions but the action spec has {len(branches)} branches")
    if not np.isfinite(cont).all():
        raise InvalidArgument(field, f"{where}: continuous actions contain NaN or infinite values")
    for j, (a, size) in enumerate(zip(disc.tolist(), branches)):
        if not 0 <= a < size:
            raise InvalidArgument(field, f"{where}: discrete action {a} on branch {j} is outside [0, {size})")
    return cont.astype(np.float32), disc


def _allowed(step: DemoStep, spec: ActionSpec, field: str, where: str) -> Optional[np.ndarray]:
    """The record's mask in Ludus' semantics (True = allowed), or None when it has none."""
    if not step.action_mask.size or not spec.discrete_branches:
        return None
    if step.action_mask.size != spec.mask_size:
        raise InvalidArgument(field, f"{where} has an action_mask of {step.action_mask.size} entries but the "
                                     f"discrete branches {list(spec.discrete_branches)} have {spec.mask_size} options")
    allowed = ~step.action_mask
    offset = 0
    for j, size in enumerate(spec.discrete_branches):
        if not allowed[offset:offset + size].any():
            raise InvalidArgument(field, f"{where}: action_mask forbids every option of branch {j}")
        offset += size
    return allowed


def _segments(steps: Sequence[DemoStep]) -> List[List[int]]:
    """Record indices cut at done records (inclusive) and agent-id changes."""
    out: List[List[int]] = []
    current: List[int] = []
    for i, step in enumerate(steps):
        if current and step.agent_id != steps[current[-1]].agent_id:
            out.append(current)
            current = []
        current.append(i)
        if step.done:
            out.append(current)
            current = []
    if current:
        out.append(current)
    return out


def _trajectories(demo: DemoFile, spec: BehaviorSpec, field: str, source: str, action_lag: bool) -> List[DemoTrajectory]:
    shapes = [tuple(o.shape) for o in spec.observations]
    steps = demo.steps

    def where(i: int) -> str:
        return f"{source}step record {i} (byte {steps[i].offset})"

    def observations(i: int) -> List[np.ndarray]:
        got = [tuple(o.shape) for o in steps[i].observations]
        if got != shapes:
            raise InvalidArgument(field, f"{where(i)} has observation shapes {[list(s) for s in got]}, "
                                         f"expected {[list(s) for s in shapes]}")
        return [_obs_array(o, s, field, f"{where(i)} observation {j}")
                for j, (o, s) in enumerate(zip(steps[i].observations, shapes))]

    out = []
    for seg in _segments(steps):
        if len(seg) < 2:
            continue
        decisions, follow = seg[:-1], seg[1:]
        arrays = [observations(i) for i in seg]  # each record decoded once
        obs, nxt = arrays[:-1], arrays[1:]
        acts = [_actions(steps[i + 1 if action_lag else i], spec.actions, field, where(i + 1 if action_lag else i))
                for i in decisions]
        masks = [_allowed(steps[i], spec.actions, field, where(i)) for i in decisions]
        rewards = np.array([steps[i].reward for i in follow], np.float32)
        if not np.isfinite(rewards).all():
            bad = follow[int(np.flatnonzero(~np.isfinite(rewards))[0])]
            raise InvalidArgument(field, f"{where(bad)}: reward {steps[bad].reward} is not finite")
        last = steps[seg[-1]]
        terminal = last.done and not last.max_step_reached
        dones = np.zeros(len(decisions), bool)
        dones[-1] = terminal
        if any(m is not None for m in masks):
            full = np.ones((len(decisions), spec.actions.mask_size), bool)
            for t, m in enumerate(masks):
                if m is not None:
                    full[t] = m
            mask_array: Optional[np.ndarray] = full
        else:
            mask_array = None
        out.append(DemoTrajectory(
            agent_id=str(last.agent_id),
            observations=[np.stack([o[k] for o in obs]).astype(np.float32, copy=False) for k in range(len(shapes))],
            next_observations=[np.stack([o[k] for o in nxt]).astype(np.float32, copy=False) for k in range(len(shapes))],
            continuous_actions=np.stack([a[0] for a in acts]).reshape(len(decisions), spec.actions.continuous_size),
            discrete_actions=np.stack([a[1] for a in acts]).reshape(len(decisions), spec.actions.num_branches),
            rewards=rewards, dones=dones, action_masks=mask_array,
            done=terminal, interrupted=bool(last.done and last.max_step_reached),
        ))
    return out


def _demo_files(path: Path, field: str) -> List[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == ".demo" and p.is_file())
        if not files:
            raise InvalidArgument(field, f"the directory {str(path)!r} holds no .demo files")
        return files
    if not path.is_file():
        raise InvalidArgument(field, f"no demonstration file or directory at {str(path)!r}")
    return [path]


def load_demonstration(path: Union[str, os.PathLike], spec: Optional[BehaviorSpec] = None, field: str = "demo_path",
                       unity_action_lag: bool = False) -> Demonstration:
    """Read a `.demo` file, or every `.demo` file of a directory (sorted by name), into trajectories.

    With `spec`, the demonstration must match it (check_demo_matches_spec); without, the first file's
    own spec is used. Every file must have the same spec. Raises InvalidArgument(field, ...) for any
    problem: unreadable or malformed file (with the byte offset), spec mismatch, bad values.
    """
    files = _demo_files(Path(path), field)
    trajectories: List[DemoTrajectory] = []
    metas: List[DemoMeta] = []
    demo_spec: Optional[BehaviorSpec] = None
    for file in files:
        source = f"{file.name}: " if len(files) > 1 else ""
        try:
            demo = read_demo_file(file)
        except DemoFormatError as err:
            raise InvalidArgument(field, f"{file.name}: {err}") from None
        except OSError as err:
            raise InvalidArgument(field, f"{file.name}: cannot be read: {err.strerror or err}") from None
        this_spec = spec_from_demo(demo, field)
        if demo_spec is None:
            demo_spec = this_spec
            if spec is not None:
                check_demo_matches_spec(demo_spec, spec, field)
        else:
            try:
                check_demo_matches_spec(this_spec, demo_spec, field)
            except InvalidArgument as err:
                raise InvalidArgument(field, f"{file.name} differs from {files[0].name}: "
                                             f"{str(err).split(': ', 1)[1]}") from None
        trajectories += _trajectories(demo, spec or demo_spec, field, source, unity_action_lag)
        metas.append(demo.meta)
    if not trajectories:
        raise InvalidArgument(field, "the demonstration holds no transitions (every trajectory has a single record)")
    return Demonstration(spec=demo_spec, trajectories=trajectories, metas=metas)
