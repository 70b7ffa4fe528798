"""Read and write Unity ML-Agents `.demo` files (demonstrations for GAIL / behavioural cloning).

Torch-free: numpy + protobuf only. The records are `ludus.mlagents.v1` messages, a wire-compatible
copy of ML-Agents' own (proto/ludus/mlagents/v1/demonstration.proto).

Framing, as Unity's DemonstrationWriter writes it and ML-Agents' demo_loader.py reads it:

* byte 0: varint length + DemonstrationMetaProto. Unity reserves bytes 0..32 for this record: it
  writes a provisional one when recording starts, seeks to byte 33 for the rest, and rewrites the
  final meta at byte 0 when it closes the file. Whatever lies between the end of the meta record and
  byte 33 is padding (zeros); the reader ignores it.
* byte 33: varint length + BrainParametersProto (the action spec). ML-Agents' reader jumps to byte 33
  after the meta record, whatever its length, so a meta record that runs past byte 33 would corrupt
  the file: the writer shortens the demonstration name until it fits (Unity truncates it to 16 chars).
* then one varint length + AgentInfoActionPairProto per recorded step, back to back.
* Unity's Close() also appends the raw (undelimited) meta bytes after the last step. ML-Agents never
  sees them because it stops after `number_steps` records; this reader does the same and reports
  where the ignored trailer starts (`DemoFile.trailer_offset`).

Step count (a decision, stricter than ML-Agents): when the meta says N > 0 steps, exactly N records
are read and a file that ends earlier is a DemoFormatError (ML-Agents would silently use fewer).
When the meta says 0 (a recording that was never closed: Unity's provisional meta), records are read
to the end of the file, as ML-Agents does. A file without any step record is an error (ML-Agents
cannot build a behaviour spec from it either).

Every malformed input raises DemoFormatError (a ValueError) whose message starts with the byte
offset, e.g. "byte 57: step record 0 claims 900 bytes but only 12 remain (file is 69 bytes)".
Nothing is ever unpickled; protobuf decoding is the only parser.
"""
from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from ludus.mlagents.v1 import demonstration_pb2 as dpb

__all__ = [
    "DemoFormatError", "DemoObservation", "DemoStep", "DemoMeta", "DemoFile",
    "read_demo_file", "write_demo_file", "encode_demo_file",
    "META_AREA_BYTES", "SUPPORTED_API_VERSIONS", "COMPRESSION_NONE", "COMPRESSION_PNG",
    "OBSERVATION_TYPE_DEFAULT", "OBSERVATION_TYPE_GOAL_SIGNAL",
]

#: Byte offset of the BrainParameters record: Unity's MetaDataBytes (32) + 1.
META_AREA_BYTES = 33
#: api_version values ML-Agents' demo_loader accepts (Unity writes 1).
SUPPORTED_API_VERSIONS = frozenset({0, 1})
#: What this module writes into DemonstrationMetaProto.api_version (Unity's DemonstrationMetaData.ApiVersion).
API_VERSION = 1
COMPRESSION_NONE = dpb.COMPRESSION_TYPE_NONE
COMPRESSION_PNG = dpb.COMPRESSION_TYPE_PNG
OBSERVATION_TYPE_DEFAULT = dpb.OBSERVATION_TYPE_DEFAULT
OBSERVATION_TYPE_GOAL_SIGNAL = dpb.OBSERVATION_TYPE_GOAL_SIGNAL
_MAX_VARINT_BYTES = 10
_INT32_MAX = (1 << 31) - 1


class DemoFormatError(ValueError):
    """A `.demo` file (or bytes) that cannot be read. `offset` is the byte where the problem is."""

    def __init__(self, offset: int, message: str) -> None:
        super().__init__(f"byte {offset}: {message}")
        self.offset = offset


@dataclass
class DemoObservation:
    """One observation of one step, exactly as recorded.

    Uncompressed observations hold `data` (float32, `shape`). PNG-compressed ones keep the bytes as
    they are (`png`: one PNG file or several concatenated, plus `channel_mapping`): decoding them is
    the server's job (ludus_service.images checks every byte before decompressing).
    """

    shape: Tuple[int, ...]
    data: Optional[np.ndarray] = None  # float32 [*shape] when uncompressed
    png: Optional[bytes] = None  # when compression is PNG
    channel_mapping: Tuple[int, ...] = ()
    observation_type: int = OBSERVATION_TYPE_DEFAULT  # 1 = GOAL_SIGNAL
    dimension_properties: Tuple[int, ...] = ()
    name: str = ""

    @property
    def compressed(self) -> bool:
        return self.png is not None


@dataclass
class DemoStep:
    """One AgentInfoActionPair record: what the agent saw at a decision and the action it took.

    `reward` and `done` are Unity's: the reward received since the previous decision of this agent,
    and whether this record ends the episode (its observations are then the terminal ones and its
    action is not a real decision). `action_mask` keeps the wire semantics: True = the option is
    NOT allowed; empty = no masking.
    """

    observations: List[DemoObservation]
    reward: float = 0.0
    done: bool = False
    max_step_reached: bool = False
    agent_id: int = 0
    action_mask: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # bool [sum(branches)] or []
    continuous_actions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # float32 [c]
    discrete_actions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # int32 [b]
    #: Pre-1.3 files store every action as floats here (continuous or discrete per the spec).
    legacy_vector_actions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    #: Byte offset of the record in the file it was read from (-1 when built in memory).
    offset: int = -1


@dataclass(frozen=True)
class DemoMeta:
    api_version: int
    name: str
    number_steps: int
    number_episodes: int
    mean_reward: float


@dataclass
class DemoFile:
    """A parsed `.demo` file: meta, action spec (legacy fields already resolved) and step records."""

    meta: DemoMeta
    brain_name: str
    continuous_size: int
    discrete_branches: Tuple[int, ...]
    steps: List[DemoStep]
    #: Offset of bytes after the last step record that were not read (Unity's meta copy), or None.
    trailer_offset: Optional[int] = None


# ---------------------------------------------------------------------------------------- reading


def _varint(data: bytes, pos: int, what: str) -> Tuple[int, int]:
    """Decode an unsigned varint at `pos`; returns (value, position after it)."""
    value = shift = 0
    n = len(data)
    for i in range(_MAX_VARINT_BYTES):
        if pos + i >= n:
            raise DemoFormatError(pos, f"truncated varint length of {what}: the file ends at byte {n}")
        b = data[pos + i]
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos + i + 1
        shift += 7
    raise DemoFormatError(pos, f"varint length of {what} is longer than {_MAX_VARINT_BYTES} bytes")


def _record(data: bytes, pos: int, what: str) -> Tuple[bytes, int, int]:
    """Read one length-delimited record at `pos`: (payload, payload start, end)."""
    length, start = _varint(data, pos, what)
    left = len(data) - start
    if length > left:
        raise DemoFormatError(pos, f"{what} claims {length} bytes but only {left} remain (file is {len(data)} bytes)")
    return data[start:start + length], start, start + length


def _parse(message_type, payload: bytes, pos: int, what: str):
    msg = message_type()
    try:
        msg.ParseFromString(payload)
    except Exception as err:  # DecodeError, or anything the C parser raises: never let it escape raw
        raise DemoFormatError(pos, f"{what} ({len(payload)} bytes) is not a valid {message_type.DESCRIPTOR.name}: "
                                   f"{type(err).__name__}: {str(err)[:200]}") from None
    return msg


def _observation(obs: dpb.ObservationProto, pos: int, where: str) -> DemoObservation:
    shape = tuple(int(d) for d in obs.shape)
    if any(d < 1 for d in shape):
        raise DemoFormatError(pos, f"{where} has shape {list(shape)}: every dimension must be >= 1")
    kind = obs.WhichOneof("observation_data")
    common = dict(shape=shape, observation_type=int(obs.observation_type),
                  dimension_properties=tuple(int(d) for d in obs.dimension_properties), name=obs.name)
    if obs.compression_type == COMPRESSION_NONE:
        if kind == "compressed_data":
            raise DemoFormatError(pos, f"{where} has compressed_data but compression_type NONE")
        values = obs.float_data.data
        need = math.prod(shape)
        if len(values) != need:
            raise DemoFormatError(pos, f"{where} has {len(values)} floats but shape {list(shape)} needs {need}")
        return DemoObservation(data=np.asarray(values, np.float32).reshape(shape), **common)
    if obs.compression_type == COMPRESSION_PNG:
        if kind != "compressed_data" or not obs.compressed_data:
            raise DemoFormatError(pos, f"{where} has compression_type PNG but no compressed_data")
        return DemoObservation(png=bytes(obs.compressed_data),
                               channel_mapping=tuple(int(m) for m in obs.compressed_channel_mapping), **common)
    raise DemoFormatError(pos, f"{where} has unknown compression_type {int(obs.compression_type)}")


def _step(pair: dpb.AgentInfoActionPairProto, pos: int, index: int) -> DemoStep:
    info, action = pair.agent_info, pair.action_info
    where = f"step record {index}"
    observations = [_observation(o, pos, f"{where} observation {j}") for j, o in enumerate(info.observations)]
    return DemoStep(
        observations=observations, reward=float(info.reward), done=bool(info.done),
        max_step_reached=bool(info.max_step_reached), agent_id=int(info.id),
        action_mask=np.asarray(info.action_mask, bool).reshape(-1),
        continuous_actions=np.asarray(action.continuous_actions, np.float32).reshape(-1),
        discrete_actions=np.asarray(action.discrete_actions, np.int32).reshape(-1),
        legacy_vector_actions=np.asarray(action.vector_actions_deprecated, np.float32).reshape(-1),
        offset=pos,
    )


def _action_spec(brain: dpb.BrainParametersProto, pos: int) -> Tuple[int, Tuple[int, ...]]:
    """ML-Agents' rule: the action_spec unless it is empty, else the pre-1.3 deprecated fields."""
    spec = brain.action_spec
    if spec.num_continuous_actions or spec.num_discrete_actions:
        cont, branches = int(spec.num_continuous_actions), tuple(int(b) for b in spec.discrete_branch_sizes)
        if cont < 0:
            raise DemoFormatError(pos, f"brain parameters: num_continuous_actions is {cont}")
        if spec.num_discrete_actions != len(branches):
            raise DemoFormatError(pos, f"brain parameters: num_discrete_actions is {spec.num_discrete_actions} "
                                       f"but discrete_branch_sizes lists {len(branches)} branches")
    else:
        sizes = tuple(int(s) for s in brain.vector_action_size_deprecated)
        if brain.vector_action_space_type_deprecated == dpb.SPACE_TYPE_CONTINUOUS:
            if len(sizes) != 1:
                raise DemoFormatError(pos, f"brain parameters: a continuous legacy action space needs one "
                                           f"vector_action_size_deprecated entry, got {list(sizes)}")
            cont, branches = sizes[0], ()
        elif brain.vector_action_space_type_deprecated == dpb.SPACE_TYPE_DISCRETE:
            cont, branches = 0, sizes
        else:
            raise DemoFormatError(pos, f"brain parameters: unknown vector_action_space_type_deprecated "
                                       f"{int(brain.vector_action_space_type_deprecated)}")
        if cont < 0:
            raise DemoFormatError(pos, f"brain parameters: continuous action size is {cont}")
    bad = [b for b in branches if b < 1]
    if bad:
        raise DemoFormatError(pos, f"brain parameters: discrete branch sizes {list(branches)} must all be >= 1")
    if not cont and not branches:
        raise DemoFormatError(pos, "brain parameters describe no actions (no continuous actions, no discrete branches)")
    return cont, branches


def _bytes_of(source: Union[str, os.PathLike, bytes, bytearray, memoryview]) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    with open(source, "rb") as f:
        return f.read()


def read_demo_file(source: Union[str, os.PathLike, bytes, bytearray, memoryview]) -> DemoFile:
    """Parse a `.demo` file (a path, or its bytes). Raises DemoFormatError naming the byte offset;
    OSError when a path cannot be read."""
    data = _bytes_of(source)
    n = len(data)
    if not n:
        raise DemoFormatError(0, "the file is empty")
    payload, start, end = _record(data, 0, "the DemonstrationMeta record")
    if end > META_AREA_BYTES:
        raise DemoFormatError(0, f"the DemonstrationMeta record ends at byte {end}, past byte {META_AREA_BYTES} "
                                 f"where the BrainParameters record must start")
    meta_msg = _parse(dpb.DemonstrationMetaProto, payload, 0, "the DemonstrationMeta record")
    if meta_msg.api_version not in SUPPORTED_API_VERSIONS:
        raise DemoFormatError(0, f"unsupported demonstration api_version {meta_msg.api_version} "
                                 f"(supported: {sorted(SUPPORTED_API_VERSIONS)})")
    if meta_msg.number_steps < 0 or meta_msg.number_episodes < 0:
        raise DemoFormatError(0, f"the DemonstrationMeta record has negative counts (number_steps "
                                 f"{meta_msg.number_steps}, number_episodes {meta_msg.number_episodes})")
    meta = DemoMeta(int(meta_msg.api_version), meta_msg.demonstration_name, int(meta_msg.number_steps),
                    int(meta_msg.number_episodes), float(meta_msg.mean_reward))
    if n <= META_AREA_BYTES:
        raise DemoFormatError(n, f"the file is {n} bytes and ends before the BrainParameters record at byte {META_AREA_BYTES}")
    payload, start, pos = _record(data, META_AREA_BYTES, "the BrainParameters record")
    brain = _parse(dpb.BrainParametersProto, payload, META_AREA_BYTES, "the BrainParameters record")
    cont, branches = _action_spec(brain, META_AREA_BYTES)

    steps: List[DemoStep] = []
    expected = meta.number_steps
    while pos < n and (not expected or len(steps) < expected):
        what = f"step record {len(steps)}"
        payload, start, end = _record(data, pos, what)
        pair = _parse(dpb.AgentInfoActionPairProto, payload, pos, what)
        steps.append(_step(pair, pos, len(steps)))
        pos = end
    if expected and len(steps) < expected:
        raise DemoFormatError(n, f"the metadata says {expected} steps but the file ends after {len(steps)} step records")
    if not steps:
        raise DemoFormatError(pos, "the file holds no step records")
    return DemoFile(meta=meta, brain_name=brain.brain_name, continuous_size=cont, discrete_branches=branches,
                    steps=steps, trailer_offset=pos if pos < n else None)


# ---------------------------------------------------------------------------------------- writing


def _delimited(msg) -> bytes:
    payload = msg.SerializeToString()
    length, head = len(payload), bytearray()
    while True:
        byte = length & 0x7F
        length >>= 7
        if length:
            head.append(byte | 0x80)
        else:
            head.append(byte)
            return bytes(head) + payload


def _meta_record(name: str, steps: int, episodes: int, mean_reward: float) -> Tuple[bytes, str]:
    """The delimited meta record, its name shortened (whole characters) until it fits bytes 0..32."""
    while True:
        msg = dpb.DemonstrationMetaProto(api_version=API_VERSION, demonstration_name=name, number_steps=steps,
                                         number_episodes=episodes, mean_reward=mean_reward)
        record = _delimited(msg)
        if len(record) <= META_AREA_BYTES:
            return record, name
        name = name[:-1]  # the worst case with an empty name is 2 + 6 + 6 + 5 + 1 = 20 bytes: always ends


def _observation_proto(obs: DemoObservation, where: str) -> dpb.ObservationProto:
    shape = tuple(int(d) for d in obs.shape)
    if not shape or any(d < 1 for d in shape):
        raise ValueError(f"{where}: shape {list(shape)} must have every dimension >= 1")
    msg = dpb.ObservationProto(shape=shape, observation_type=int(obs.observation_type),
                               dimension_properties=[int(d) for d in obs.dimension_properties], name=obs.name)
    if obs.png is not None:
        if obs.data is not None:
            raise ValueError(f"{where}: set either data or png, not both")
        if not obs.png:
            raise ValueError(f"{where}: png is empty")
        msg.compression_type = COMPRESSION_PNG
        msg.compressed_data = bytes(obs.png)
        msg.compressed_channel_mapping.extend(int(m) for m in obs.channel_mapping)
        return msg
    if obs.data is None:
        raise ValueError(f"{where}: has neither data nor png")
    arr = np.asarray(obs.data, np.float32)
    if arr.shape != shape:
        raise ValueError(f"{where}: data has shape {list(arr.shape)} but the observation's shape is {list(shape)}")
    msg.compression_type = COMPRESSION_NONE
    msg.float_data.data.extend(arr.reshape(-1).tolist())
    return msg


def _step_proto(step: DemoStep, index: int, cont: int, branches: Tuple[int, ...]) -> dpb.AgentInfoActionPairProto:
    where = f"steps[{index}]"
    c = np.asarray(step.continuous_actions, np.float32).reshape(-1)
    d = np.asarray(step.discrete_actions).reshape(-1)
    if c.size != cont:
        raise ValueError(f"{where}.continuous_actions: {c.size} values but the action spec has {cont}")
    if d.size != len(branches):
        raise ValueError(f"{where}.discrete_actions: {d.size} values but the action spec has {len(branches)} branches")
    if d.size and not np.issubdtype(d.dtype, np.integer):
        raise ValueError(f"{where}.discrete_actions: dtype {d.dtype} is not an integer type")
    for j, (a, size) in enumerate(zip(d.tolist(), branches)):
        if not 0 <= a < size:
            raise ValueError(f"{where}.discrete_actions: branch {j} chose {a}, outside [0, {size})")
    mask = np.asarray(step.action_mask, bool).reshape(-1)
    if mask.size and mask.size != sum(branches):
        raise ValueError(f"{where}.action_mask: {mask.size} entries but the branches have {sum(branches)} options")
    if not math.isfinite(np.float32(step.reward)):
        raise ValueError(f"{where}.reward: {step.reward} is not a finite float32")
    if not -(1 << 31) <= int(step.agent_id) <= _INT32_MAX:
        raise ValueError(f"{where}.agent_id: {step.agent_id} does not fit an int32")
    info = dpb.AgentInfoProto(reward=float(step.reward), done=bool(step.done), max_step_reached=bool(step.max_step_reached),
                              id=int(step.agent_id), action_mask=mask.tolist(),
                              observations=[_observation_proto(o, f"{where}.observations[{k}]")
                                            for k, o in enumerate(step.observations)])
    action = dpb.AgentActionProto(continuous_actions=c.tolist(), discrete_actions=[int(a) for a in d.tolist()],
                                  vector_actions_deprecated=np.asarray(step.legacy_vector_actions, np.float32).reshape(-1).tolist())
    return dpb.AgentInfoActionPairProto(agent_info=info, action_info=action)


def _brain_proto(brain_name: str, cont: int, branches: Tuple[int, ...]) -> dpb.BrainParametersProto:
    msg = dpb.BrainParametersProto(brain_name=brain_name, is_training=False,
                                   action_spec=dpb.ActionSpecProto(num_continuous_actions=cont,
                                                                   num_discrete_actions=len(branches),
                                                                   discrete_branch_sizes=list(branches)))
    # As Unity does, single-type action spaces also fill the pre-1.3 fields for older readers.
    if cont and not branches:
        msg.vector_action_size_deprecated.append(cont)
        msg.vector_action_space_type_deprecated = dpb.SPACE_TYPE_CONTINUOUS
    elif branches and not cont:
        msg.vector_action_size_deprecated.extend(branches)
        msg.vector_action_space_type_deprecated = dpb.SPACE_TYPE_DISCRETE
    return msg


def _check_spec(cont: int, branches: Sequence[int]) -> Tuple[int, Tuple[int, ...]]:
    cont, branches = int(cont), tuple(int(b) for b in branches)
    if cont < 0 or any(b < 1 for b in branches):
        raise ValueError(f"action spec: continuous_size {cont} must be >= 0 and branch sizes {list(branches)} >= 1")
    if not cont and not branches:
        raise ValueError("action spec: needs continuous actions or at least one discrete branch")
    return cont, branches


def _episodes_and_mean(steps: Sequence[DemoStep]) -> Tuple[int, float]:
    """Episodes = records with done, plus one for an unfinished last episode; mean = total reward / episodes."""
    episodes = sum(1 for s in steps if s.done) + (0 if steps[-1].done else 1)
    return episodes, float(sum(float(s.reward) for s in steps) / episodes)


def encode_demo_file(steps: Sequence[DemoStep], *, continuous_size: int = 0, discrete_branches: Sequence[int] = (),
                     name: str = "", brain_name: str = "", number_episodes: Optional[int] = None,
                     mean_reward: Optional[float] = None) -> Tuple[bytes, DemoMeta]:
    """The bytes of a `.demo` file and the meta written into it (see write_demo_file)."""
    cont, branches = _check_spec(continuous_size, discrete_branches)
    if not steps:
        raise ValueError("steps: a demonstration needs at least one step (ML-Agents cannot load an empty one)")
    if len(steps) > _INT32_MAX:
        raise ValueError(f"steps: {len(steps)} records do not fit number_steps (int32)")
    episodes, mean = _episodes_and_mean(steps)
    episodes = episodes if number_episodes is None else int(number_episodes)
    mean = mean if mean_reward is None else float(mean_reward)
    if not 0 <= episodes <= _INT32_MAX:
        raise ValueError(f"number_episodes: {episodes} is outside [0, {_INT32_MAX}]")
    if not math.isfinite(np.float32(mean)):
        raise ValueError(f"mean_reward: {mean} is not a finite float32")
    first = [(tuple(int(d) for d in o.shape)) for o in steps[0].observations]
    body = [_delimited(_brain_proto(brain_name, cont, branches))]
    for i, step in enumerate(steps):
        shapes = [tuple(int(d) for d in o.shape) for o in step.observations]
        if shapes != first:
            raise ValueError(f"steps[{i}].observations: shapes {[list(s) for s in shapes]} differ from "
                             f"steps[0]'s {[list(s) for s in first]}")
        body.append(_delimited(_step_proto(step, i, cont, branches)))
    meta_record, used_name = _meta_record(name, len(steps), episodes, mean)
    head = meta_record + bytes(META_AREA_BYTES - len(meta_record))
    meta = DemoMeta(API_VERSION, used_name, len(steps), episodes,
                    float(np.float32(mean)))
    return head + b"".join(body), meta


def write_demo_file(path: Union[str, os.PathLike], steps: Sequence[DemoStep], *, continuous_size: int = 0,
                    discrete_branches: Sequence[int] = (), name: str = "", brain_name: str = "",
                    number_episodes: Optional[int] = None, mean_reward: Optional[float] = None) -> DemoMeta:
    """Write `steps` as a `.demo` file that ML-Agents' demo_loader (and read_demo_file) reads.

    The meta record sits at byte 0, zero-padded to byte 33 where the BrainParameters record starts,
    as Unity lays it out; `name` is shortened if the record would not fit (Unity truncates to 16
    characters). number_episodes defaults to the done records plus one for an unfinished last
    episode; mean_reward to the sum of all step rewards / number_episodes. Unity's trailing copy of
    the meta is not written (nothing reads it). Atomic: a temp file in the same directory, fsynced,
    then os.replace, so a reader never sees half a file. Returns the meta as written.
    """
    data, meta = encode_demo_file(steps, continuous_size=continuous_size, discrete_branches=discrete_branches,
                                  name=name, brain_name=brain_name, number_episodes=number_episodes,
                                  mean_reward=mean_reward)
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a demo file is ordinary data
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return meta
