"""Property-based tests (hypothesis) of how the Trainer API handles input, against a real server.

test_bad_input.py breaks one thing at a time by hand; here hypothesis generates the breakage:
arbitrary dtypes (including ints outside the enum), shapes (negative, zero, huge, products that
overflow int64, more dimensions than numpy supports), raw bytes of any length and content, in any
tensor field of an otherwise valid trajectory, EstimateValues request or Update batch; arbitrary
specs and settings at RegisterBehavior. Properties:

1. A trajectory or EstimateValues request with a generated tensor is either accepted (the tensor
   happened to be valid) or rejected with a client-error status (never INTERNAL or UNKNOWN) whose
   message names the field; a rejected request changes no state (DescribeBehavior counters).
2. Arbitrary specs: accepted, or rejected with a message naming the spec field; a rejected
   registration creates no behaviour.
3. Arbitrary JSON-like settings (valid keys with values of any type included, NaN and Infinity,
   init_path pointing anywhere): accepted, or INVALID_ARGUMENT / UNIMPLEMENTED /
   FAILED_PRECONDITION naming a key.
4. Arbitrary Update batches and num_sequences: never INTERNAL; a rejected update changes neither
   the version nor the weights; no update (finite but extreme values included) makes the weights
   non-finite; a published version's weights never change afterwards.
5. After all of it the server is SERVING and accepts a valid trajectory.
6. Valid random trajectories (T in 1..50) are always accepted and add exactly T steps.

An accepted request is checked too: every tensor it held must be well-formed by the wire contract
(computed here independently of the codec) and finite as float32.

One module-scoped server is shared by every example (hypothesis forbids function-scoped fixtures
inside @given). Its behaviours have a 100000-step buffer, so no PPO update runs while the
properties are checked (except through Update itself, on a behaviour of its own). Examples are
derandomized, so CI sees the same cases on every run.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import os
import re
import typing
from dataclasses import dataclass
from typing import Dict, Iterator, List, Sequence, Tuple

import grpc
import numpy as np
import pytest
from google.protobuf import json_format, struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from safetensors.numpy import load as load_safetensors

from ludus.v1 import trainer_pb2 as pb
from ludus_client import ActionSpec, BehaviorSpec, LudusClient, LudusError, ObservationSpec
from ludus_client.tensor_codec import to_tensor
from ludus_service.registry import BehaviorRegistry
from ludus_service.server import RunningServer, start_server
from ludus_service.settings import TrainerSettings, resolve_settings

TEST_DEVICE = os.environ.get("LUDUS_TEST_DEVICE", "cpu")

PROPERTIES = settings(
    derandomize=True, deadline=None, database=None, print_blob=False,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.large_base_example],
)

#: Every status a bad request may get. Never INTERNAL, UNKNOWN, ...
CLIENT_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.RESOURCE_EXHAUSTED,
}

#: A big buffer: accepted steps stay buffered, no update changes the policy during the properties.
SETTINGS = {
    "hyperparameters": {"batch_size": 64, "buffer_size": 100000, "num_epoch": 1},
    "network_settings": {"hidden_units": 16, "num_layers": 1},
}
DISCRETE = BehaviorSpec.vector(4, discrete_branches=[3, 2])
CONTINUOUS = BehaviorSpec.vector(3, continuous_size=2)
HYBRID = BehaviorSpec((ObservationSpec("a", (3,)), ObservationSpec("b", (2,))), ActionSpec(2, (3,)))
BEHAVIORS = {"PropDiscrete": DISCRETE, "PropContinuous": CONTINUOUS, "PropHybrid": HYBRID}
#: Update changes the policy, so it gets a behaviour of its own.
UPDATE_NAME, UPDATE_SPEC = "PropUpdate", HYBRID

_NP_DTYPES = {
    pb.DATA_TYPE_FLOAT32: np.dtype("float32"), pb.DATA_TYPE_FLOAT64: np.dtype("float64"),
    pb.DATA_TYPE_FLOAT16: np.dtype("float16"), pb.DATA_TYPE_UINT8: np.dtype("uint8"),
    pb.DATA_TYPE_INT32: np.dtype("int32"), pb.DATA_TYPE_INT64: np.dtype("int64"), pb.DATA_TYPE_BOOL: np.dtype("bool"),
}
_fresh_names = (f"PropNew{i}" for i in itertools.count())


# ---------------------------------------------------------------------------------------------------
# The server


@dataclass
class Live:
    server: RunningServer
    client: LudusClient
    health: health_pb2_grpc.HealthStub


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    running = start_server(BehaviorRegistry(device=TEST_DEVICE, seed=0), host="127.0.0.1", port=0)
    client = LudusClient(f"127.0.0.1:{running.port}", timeout=30.0)
    try:
        client.wait_ready(10)
        for name, spec in {**BEHAVIORS, UPDATE_NAME: UPDATE_SPEC}.items():
            assert client.register(name, spec, SETTINGS).created
        yield Live(running, client, health_pb2_grpc.HealthStub(client.channel))
    finally:
        client.close()
        running.stop(grace=1.0)


def state(live: Live, name: str, weights: bool = False) -> dict:
    """What a rejected request must leave untouched, read once the learner is idle."""
    assert live.server.registry.get(name).wait_idle(timeout=30)
    d = live.client.describe(name)
    snapshot = {
        "total_steps": d.total_steps, "buffered_steps": d.buffered_steps, "queued_steps": d.queued_steps,
        "policy_version": d.policy_version, "dropped_stale_steps": d.dropped_stale_steps,
    }
    if weights:
        snapshot["policy_sha256"] = live.client.get_policy(name).sha256
    return snapshot


def check_rejection(err: LudusError, field_pattern: str) -> str:
    """A client-error status and a message that starts with the offending field; returns the field."""
    assert err.code in CLIENT_ERRORS, f"{err.code.name}: {err.details}"
    assert err.details.strip(), f"{err.code.name} with an empty message"
    match = re.match(rf"({field_pattern}): \S", err.details)
    assert match, f"message does not start with a field matching {field_pattern!r}: {err.details!r}"
    return match.group(1)


def call(method, request):
    """A unary RPC through the raw stub (for requests the SDK would not build), errors as LudusError."""
    try:
        return method(request, timeout=30)
    except grpc.RpcError as err:
        raise LudusError.from_rpc(err) from None


# ---------------------------------------------------------------------------------------------------
# Tensors


_BIG = [2**31, 2**32, 2**62, 2**63 - 1, -(2**63), -(2**31), 3 * 2**61]
DTYPES = st.one_of(st.sampled_from(range(8)), st.integers(-(2**31), 2**31 - 1))
DIMS = st.one_of(st.integers(-3, 12), st.sampled_from(_BIG), st.integers(-(2**63), 2**63 - 1))
SHAPES = st.one_of(
    st.lists(DIMS, max_size=5),
    st.lists(st.sampled_from(_BIG), min_size=2, max_size=3),  # products that overflow int64
    st.tuples(st.lists(st.integers(0, 3), max_size=2), st.sampled_from(_BIG)).map(lambda t: [*t[0], 0, t[1]]),  # 0 x huge
    st.lists(st.integers(0, 2), min_size=30, max_size=70),  # more dimensions than numpy supports
)
#: Anything a Tensor message can hold.
ARBITRARY_TENSORS = st.builds(lambda d, s, r: pb.Tensor(dtype=d, shape=s, raw_data=r),
                              DTYPES, SHAPES, st.one_of(st.just(b""), st.binary(max_size=160)))


def well_formed(tensor: pb.Tensor) -> bool:
    """The wire contract, computed independently of the codec: a known dtype, no negative dimension,
    and exactly product(shape) * itemsize bytes (an all-default Tensor is an absent field)."""
    if tensor == pb.Tensor():
        return True
    if tensor.dtype not in _NP_DTYPES or any(d < 0 for d in tensor.shape):
        return False
    return len(tensor.raw_data) == math.prod(tensor.shape) * _NP_DTYPES[tensor.dtype].itemsize


@st.composite
def near_valid_tensors(draw, shape: Sequence[int]) -> pb.Tensor:
    """Well-formed tensors close to `shape`: any supported dtype, the right shape or one a little off,
    values from the dtype's whole range (NaN, Inf, huge, negative, out of any action range), and
    sometimes a few bytes too many or too few."""
    shape = list(shape)
    how = draw(st.sampled_from(["same", "same", "same", "resize", "add", "drop"]))
    if how == "resize" and shape:
        i = draw(st.integers(0, len(shape) - 1))
        shape[i] = draw(st.integers(0, shape[i] + 2).filter(lambda d: d != shape[i]))
    elif how == "add":
        shape.insert(draw(st.integers(0, len(shape))), draw(st.integers(0, 3)))
    elif how == "drop" and shape:
        shape.pop(draw(st.integers(0, len(shape) - 1)))
    wire = draw(st.sampled_from(sorted(_NP_DTYPES)))
    tensor = to_tensor(draw(hnp.arrays(_NP_DTYPES[wire], tuple(shape))))
    slack = draw(st.sampled_from([0, 0, 0, 0, -1, 1, 3]))
    if slack < 0:
        tensor.raw_data = tensor.raw_data[:slack]
    elif slack:
        tensor.raw_data += bytes(slack)
    return tensor


def tensors_in(message) -> Iterator[Tuple[str, pb.Tensor]]:
    """Every Tensor of a Trajectory, EstimateValuesRequest or TrainingBatch, with its field name."""
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.message_type is not pb.Tensor.DESCRIPTOR and not (
                field.message_type is not None and field.message_type.GetOptions().map_entry):
            continue
        if field.message_type.GetOptions().map_entry:
            yield from ((f"{field.name}[{k}]", v) for k, v in value.items())
        elif field.is_repeated:
            yield from ((f"{field.name}[{i}]", v) for i, v in enumerate(value))
        else:
            yield field.name, value


def finite_as_float32(tensor: pb.Tensor) -> bool:
    """Float tensors must be finite after the service converts them to float32 (FLOAT64 1e300 is not)."""
    if tensor.dtype not in (pb.DATA_TYPE_FLOAT32, pb.DATA_TYPE_FLOAT64, pb.DATA_TYPE_FLOAT16):
        return True
    with np.errstate(over="ignore"):
        values = np.frombuffer(tensor.raw_data, _NP_DTYPES[tensor.dtype].newbyteorder("<")).astype(np.float32)
    return bool(np.isfinite(values).all())


def assert_accepted_tensors_well_formed(message) -> None:
    """An accepted request holds no malformed tensor (not even in a field that must be omitted) and
    no value that is not finite in float32."""
    for name, tensor in tensors_in(message):
        assert well_formed(tensor), f"accepted a malformed tensor in {name}: {tensor!r}"[:500]
        assert finite_as_float32(tensor), f"accepted non-finite float32 values in {name}: {tensor!r}"[:500]


def extreme_tensors(shape: Sequence[int]) -> st.SearchStrategy[pb.Tensor]:
    """Valid FLOAT32 tensors of the right shape with finite but extreme values (up to +-3.4e38)."""
    huge = st.sampled_from([3.0e38, -3.0e38, 1.0e38, -1.0e30, 1.0e20])
    finite = st.one_of(huge, st.floats(width=32, allow_nan=False, allow_infinity=False))
    return hnp.arrays(np.float32, tuple(shape), elements=finite).map(to_tensor)


def tensors_for(shape: Sequence[int]) -> st.SearchStrategy[pb.Tensor]:
    return st.one_of(ARBITRARY_TENSORS, near_valid_tensors(shape), extreme_tensors(shape))


def put(message, field: str, tensor: pb.Tensor) -> None:
    """Set `field` ("rewards", "observations[1]", "returns[extrinsic]") of `message` to `tensor`."""
    m = re.fullmatch(r"(\w+)\[(.+)\]", field)
    if m is None:
        getattr(message, field).CopyFrom(tensor)
    elif m.group(2).isdigit():
        repeated, i = getattr(message, m.group(1)), int(m.group(2))
        if i < len(repeated):
            repeated[i].CopyFrom(tensor)
        else:  # an earlier mutation shortened the list
            repeated.append(tensor)
    else:
        getattr(message, m.group(1))[m.group(2)].CopyFrom(tensor)


def step_shapes(spec: BehaviorSpec, steps: int) -> Dict[str, Tuple[int, ...]]:
    """Expected shape of every per-step tensor field (Trajectory and TrainingBatch share them)."""
    a = spec.actions
    shapes = {f"observations[{i}]": (steps, *o.shape) for i, o in enumerate(spec.observations)}
    shapes.update({
        "continuous_actions": (steps, a.continuous_size), "continuous_log_probs": (steps, a.continuous_size),
        "discrete_actions": (steps, a.num_branches), "discrete_log_probs": (steps, a.num_branches),
        "action_masks": (steps, a.mask_size),
    })
    return shapes


def fill_steps(message, spec: BehaviorSpec, steps: int, rng: np.random.Generator, masked: bool) -> None:
    """Valid per-step fields (observations, actions, log-probs, masks) of a Trajectory or TrainingBatch."""
    a = spec.actions
    message.observations.extend(to_tensor(rng.standard_normal((steps, *o.shape)).astype(np.float32)) for o in spec.observations)
    if a.continuous_size:
        message.continuous_actions.CopyFrom(to_tensor(rng.standard_normal((steps, a.continuous_size)).astype(np.float32)))
        message.continuous_log_probs.CopyFrom(to_tensor(rng.standard_normal((steps, a.continuous_size)).astype(np.float32)))
    if a.discrete_branches:
        actions = np.stack([rng.integers(0, size, steps) for size in a.discrete_branches], axis=1)
        message.discrete_actions.CopyFrom(to_tensor(actions.astype(np.int32)))
        message.discrete_log_probs.CopyFrom(to_tensor(-rng.exponential(1.0, (steps, a.num_branches)).astype(np.float32)))
        if masked:
            masks = rng.random((steps, a.mask_size)) < 0.5
            offsets = np.cumsum([0, *a.discrete_branches[:-1]])
            for j in range(a.num_branches):
                masks[np.arange(steps), offsets[j] + actions[:, j]] = True
            message.action_masks.CopyFrom(to_tensor(masks))


def valid_trajectory(spec: BehaviorSpec, steps: int, rng: np.random.Generator, version: int, done: bool = False,
                     masked: bool = False) -> pb.Trajectory:
    traj = pb.Trajectory(agent_id="agent-0", policy_version=version, done=done,
                         rewards=to_tensor(rng.standard_normal(steps).astype(np.float32)))
    fill_steps(traj, spec, steps, rng, masked)
    # Always sent (allowed with done too), so that a mutation of next_observations[i] has a list to go in.
    traj.next_observations.extend(to_tensor(rng.standard_normal(o.shape).astype(np.float32)) for o in spec.observations)
    return traj


@st.composite
def tensor_mutations(draw, shapes: Dict[str, Tuple[int, ...]], lists: Sequence[str], maps: Sequence[str] = ()):
    """("set", field, tensor) | ("clear", field) | ("append", list, tensor) | ("pop", list) |
    ("delete", map, key) | ("set", "map[random key]", tensor)."""
    plain = sorted(f for f in shapes if "[" not in f)
    kind = draw(st.sampled_from(["set"] * 8 + ["append", "pop"] + (["clear"] if plain else []) + (["delete", "new-key"] if maps else [])))
    if kind == "set":
        # Fields that must be omitted (expected shape [T, 0]) twice as often: "empty" must mean empty.
        field = draw(st.sampled_from(sorted(shapes) + sorted(f for f, shape in shapes.items() if 0 in shape)))
        return ("set", field, draw(tensors_for(shapes[field])))
    if kind == "clear":
        return ("clear", draw(st.sampled_from(plain)))
    if kind == "append":
        field = draw(st.sampled_from(list(lists)))
        return ("append", field, draw(tensors_for(shapes.get(f"{field}[0]", ()))))
    if kind == "pop":
        return ("pop", draw(st.sampled_from(list(lists))))
    field = draw(st.sampled_from(list(maps)))
    if kind == "delete":
        return ("delete", field, "extrinsic")
    key = draw(st.text(max_size=12))
    return ("set", f"{field}[{key}]", draw(tensors_for(shapes.get(f"{field}[extrinsic]", ()))))


def apply(message, mutation: tuple) -> str:
    """Apply a mutation; returns the name of the field it touched (without an index)."""
    kind, field = mutation[0], mutation[1]
    if kind == "set":
        m = re.fullmatch(r"(\w+)\[(.*)\]", field)
        if m and not m.group(2).isdigit():  # a map entry, maybe a new key
            getattr(message, m.group(1))[m.group(2)].CopyFrom(mutation[2])
        else:
            put(message, field, mutation[2])
    elif kind == "clear":
        message.ClearField(field)
    elif kind == "append":
        getattr(message, field).append(mutation[2])
    elif kind == "pop":
        repeated = getattr(message, field)
        if len(repeated):
            del repeated[-1]
    elif kind == "delete":
        getattr(message, field).pop(mutation[2], None)
    return field.split("[")[0]


# ---------------------------------------------------------------------------------------------------
# 6. Valid trajectories are always accepted (first, while the counters are small)


def _floats(width: int) -> st.SearchStrategy[float]:
    bound = 6e4 if width == 16 else 1e6
    return st.floats(-bound, bound, width=width, allow_nan=False, allow_infinity=False)


@st.composite
def valid_trajectories(draw, spec: BehaviorSpec, version: int) -> pb.Trajectory:
    """Any valid trajectory: T in 1..50, finite values, every accepted dtype, actions inside their
    branches, masks that allow the chosen action, any agent id, done / interrupted / neither."""
    steps = draw(st.integers(1, 50))
    a = spec.actions
    float_dtype = draw(st.sampled_from([np.float32, np.float64, np.float16]))
    width = np.dtype(float_dtype).itemsize * 8
    done = draw(st.booleans())
    traj = pb.Trajectory(
        agent_id=draw(st.text(min_size=1, max_size=64)), policy_version=version, done=done,
        interrupted=not done and draw(st.booleans()),
        rewards=to_tensor(draw(hnp.arrays(np.float32, steps, elements=_floats(32)))),
    )
    for o in spec.observations:
        traj.observations.append(to_tensor(draw(hnp.arrays(float_dtype, (steps, *o.shape), elements=_floats(width)))))
    if not done or draw(st.booleans()):
        for o in spec.observations:
            traj.next_observations.append(to_tensor(draw(hnp.arrays(float_dtype, o.shape, elements=_floats(width)))))
    if a.continuous_size:
        shape = (steps, a.continuous_size)
        traj.continuous_actions.CopyFrom(to_tensor(draw(hnp.arrays(float_dtype, shape, elements=_floats(width)))))
        traj.continuous_log_probs.CopyFrom(to_tensor(draw(hnp.arrays(float_dtype, shape, elements=_floats(width)))))
    if a.discrete_branches:
        columns = [draw(hnp.arrays(np.int64, steps, elements=st.integers(0, size - 1))) for size in a.discrete_branches]
        actions = np.stack(columns, axis=1).astype(draw(st.sampled_from([np.int32, np.int64])))
        traj.discrete_actions.CopyFrom(to_tensor(actions))
        log_probs = hnp.arrays(float_dtype, (steps, a.num_branches), elements=st.floats(-60, 0, width=width))
        traj.discrete_log_probs.CopyFrom(to_tensor(draw(log_probs)))
        if draw(st.booleans()):
            masks = draw(hnp.arrays(np.uint8, (steps, a.mask_size), elements=st.integers(0, 1)))
            offsets = np.cumsum([0, *a.discrete_branches[:-1]])
            for j in range(a.num_branches):
                masks[np.arange(steps), offsets[j] + actions[:, j]] = 1
            traj.action_masks.CopyFrom(to_tensor(masks.astype(bool) if draw(st.booleans()) else masks))
    return traj


@pytest.mark.parametrize("name", sorted(BEHAVIORS))
@settings(PROPERTIES, max_examples=40)
@given(data=st.data())
def test_valid_trajectories_are_accepted_and_counted(live: Live, name: str, data):
    spec = BEHAVIORS[name]
    before = state(live, name)
    traj = data.draw(valid_trajectories(spec, before["policy_version"]), label="trajectory")
    steps = traj.rewards.shape[0]
    (ack,) = live.client.submit(name, [traj])
    assert (ack.accepted_steps, ack.dropped_steps, ack.drop_reason) == (steps, 0, pb.DROP_REASON_NONE)
    assert ack.total_steps == before["total_steps"] + steps
    after = state(live, name)
    assert after == {**before, "total_steps": before["total_steps"] + steps, "buffered_steps": before["buffered_steps"] + steps}


# ---------------------------------------------------------------------------------------------------
# 1. Generated tensors in trajectories and EstimateValues requests


SCALAR_MUTATIONS = st.fixed_dictionaries({}, optional={
    "agent_id": st.text(max_size=300),
    "policy_version": st.one_of(st.integers(-2, 3), st.integers(-(2**63), 2**63 - 1)),
    "done": st.booleans(),
    "interrupted": st.booleans(),
})


@settings(PROPERTIES, max_examples=150)
@given(data=st.data())
def test_generated_tensors_in_trajectories(live: Live, data):
    name = data.draw(st.sampled_from(sorted(BEHAVIORS)), label="behaviour")
    spec = BEHAVIORS[name]
    steps = data.draw(st.integers(1, 6), label="T")
    before = state(live, name)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    traj = valid_trajectory(spec, steps, rng, before["policy_version"], done=data.draw(st.booleans(), label="done"),
                            masked=data.draw(st.booleans(), label="masked"))
    shapes = step_shapes(spec, steps)
    shapes["rewards"] = (steps,)
    shapes.update({f"next_observations[{i}]": tuple(o.shape) for i, o in enumerate(spec.observations)})
    mutations = data.draw(st.lists(tensor_mutations(shapes, ["observations", "next_observations"]), min_size=1, max_size=2),
                          label="mutations")
    touched = {apply(traj, m) for m in mutations}
    scalars = data.draw(st.one_of(st.just({}), st.just({}), SCALAR_MUTATIONS), label="scalars")
    for key, value in scalars.items():
        setattr(traj, key, value)

    try:
        (ack,) = live.client.submit(name, [traj])
    except LudusError as err:
        field = check_rejection(err, r"requests\[0\]\.trajectory\.\w+(\[\d+\])?")
        note(f"rejected: {err.code.name}: {err.details}")
        base = field[len("requests[0].trajectory."):].split("[")[0]
        event(f"rejected: {err.code.name} {base}")
        if not scalars and "rewards" not in touched:  # T is unchanged: the error is in a touched field
            named = touched | ({"discrete_actions"} if "action_masks" in touched else set())
            assert base in named, f"{err.details!r} names none of the changed fields {sorted(touched)}"
        assert state(live, name) == before, f"state changed by a rejected trajectory ({err.details})"
    else:
        # The generated tensors happened to be valid (e.g. absent fields, or random but finite values).
        event("accepted")
        assert_accepted_tensors_well_formed(traj)
        sent = traj.rewards.shape[0]
        assert ack.accepted_steps + ack.dropped_steps == sent
        after = state(live, name)
        expected = dict(before)
        expected["total_steps"] += ack.accepted_steps
        expected["buffered_steps"] += ack.accepted_steps
        expected["dropped_stale_steps"] += ack.dropped_steps
        assert after == expected


@settings(PROPERTIES, max_examples=100)
@given(data=st.data())
def test_generated_tensors_in_estimate_values(live: Live, data):
    name = data.draw(st.sampled_from(sorted(BEHAVIORS)), label="behaviour")
    spec = BEHAVIORS[name]
    steps = data.draw(st.integers(1, 6), label="T")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    request = pb.EstimateValuesRequest(
        behavior_name=name, agent_id=data.draw(st.text(max_size=20), label="agent_id"), done=data.draw(st.booleans(), label="done"),
        observations=[to_tensor(rng.standard_normal((steps, *o.shape)).astype(np.float32)) for o in spec.observations],
        next_observations=[to_tensor(rng.standard_normal(o.shape).astype(np.float32)) for o in spec.observations],
    )
    shapes = {f"observations[{i}]": (steps, *o.shape) for i, o in enumerate(spec.observations)}
    shapes.update({f"next_observations[{i}]": tuple(o.shape) for i, o in enumerate(spec.observations)})
    mutations = data.draw(st.lists(tensor_mutations(shapes, ["observations", "next_observations"]), max_size=2), label="mutations")
    for m in mutations:
        apply(request, m)
    unknown = data.draw(st.one_of(st.none(), st.text(max_size=20)), label="behavior_name")
    if unknown is not None and unknown not in live.client.list_behaviors():
        request.behavior_name = unknown
    before = {n: state(live, n) for n in BEHAVIORS}

    try:
        response = call(live.client.stub.EstimateValues, request)
    except LudusError as err:
        field = check_rejection(err, r"(next_)?observations(\[\d+\])?|behavior_name")
        event(f"rejected: {err.code.name} {field}")
        note(f"rejected: {err.code.name}: {err.details}")
        if unknown is not None and request.behavior_name == unknown:
            assert err.code == grpc.StatusCode.NOT_FOUND
    else:
        event("accepted")
        assert_accepted_tensors_well_formed(request)
        registered = live.server.registry.get(request.behavior_name).signal_names
        assert sorted(response.values) == sorted(registered) == sorted(response.bootstrap_values)
        for tensor in response.values.values():
            assert tensor.dtype == pb.DATA_TYPE_FLOAT32 and tensor.shape[0] >= 1
    assert {n: state(live, n) for n in BEHAVIORS} == before  # read-only, whatever the outcome


# ---------------------------------------------------------------------------------------------------
# 4. Generated Update batches and num_sequences


def valid_batch(spec: BehaviorSpec, n: int, rng: np.random.Generator, masked: bool = False) -> pb.TrainingBatch:
    batch = pb.TrainingBatch(advantages=to_tensor(rng.standard_normal(n).astype(np.float32)))
    fill_steps(batch, spec, n, rng, masked)
    batch.returns["extrinsic"].CopyFrom(to_tensor(rng.standard_normal(n).astype(np.float32)))
    batch.value_estimates["extrinsic"].CopyFrom(to_tensor(rng.standard_normal(n).astype(np.float32)))
    return batch


def policy_tensors(live: Live, name: str, version: int = 0) -> Dict[str, np.ndarray]:
    return load_safetensors(live.client.get_policy(name, version).data)


@settings(PROPERTIES, max_examples=100)
@given(data=st.data())
def test_generated_update_batches(live: Live, data):
    spec = UPDATE_SPEC
    n = data.draw(st.integers(1, 6), label="N")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    batch = valid_batch(spec, n, rng, masked=data.draw(st.booleans(), label="masked"))
    shapes = step_shapes(spec, n)
    shapes.update({"advantages": (n,), "returns[extrinsic]": (n,), "value_estimates[extrinsic]": (n,)})
    mutations = data.draw(st.lists(tensor_mutations(shapes, ["observations"], ["returns", "value_estimates"]), max_size=2),
                          label="mutations")
    for m in mutations:
        apply(batch, m)
    num_sequences = data.draw(st.one_of(st.just(n), st.integers(-3, 8), st.integers(-(2**31), 2**31 - 1)), label="num_sequences")
    before = state(live, UPDATE_NAME, weights=True)

    try:
        stats, version = live.client.update(UPDATE_NAME, batch, num_sequences)
    except LudusError as err:
        field = check_rejection(err, r"batch(\.\w+(\[[^\]]*\])?)?|num_sequences")
        event(f"rejected: {err.code.name} {field}")
        note(f"rejected: {err.code.name}: {err.details}")
        assert state(live, UPDATE_NAME, weights=True) == before, f"state changed by a rejected update ({err.details})"
    else:
        event("accepted (a new policy version)")
        assert_accepted_tensors_well_formed(batch)
        assert num_sequences == batch.advantages.shape[0]
        assert version == before["policy_version"] + 1 and "Losses/Policy Loss" in stats
        after = state(live, UPDATE_NAME)
        assert after["policy_version"] == version
        assert after["total_steps"] == before["total_steps"]
    # No request, accepted or not, can make the weights non-finite (and every later Update INTERNAL).
    weights = policy_tensors(live, UPDATE_NAME)
    assert all(np.isfinite(w).all() for w in weights.values()), "the policy weights are no longer finite"


@settings(PROPERTIES, max_examples=8)
@given(seeds=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=4), n=st.integers(1, 16))
def test_published_versions_never_change(live: Live, seeds: List[int], n: int):
    """A version's weights are those it was published with, whether it is fetched at once or only
    after later updates. Two behaviours start from the same weights (the registry seeds each one
    alike) and get the same Updates; one is read after every update, the other only at the end."""
    early, late = next(_fresh_names), next(_fresh_names)
    for name in (early, late):
        live.client.register(name, UPDATE_SPEC, SETTINGS)
    read_at_once = {1: policy_tensors(live, early, 1)}
    for seed in seeds:
        batch = valid_batch(UPDATE_SPEC, n, np.random.default_rng(seed))
        _, version = live.client.update(early, batch, n)
        assert live.client.update(late, batch, n)[1] == version
        read_at_once[version] = policy_tensors(live, early, version)
    for version, expected in read_at_once.items():
        read_late = policy_tensors(live, late, version)
        assert read_late.keys() == expected.keys()
        for key in expected:
            np.testing.assert_array_equal(read_late[key], expected[key], err_msg=f"version {version}: {key}")


# ---------------------------------------------------------------------------------------------------
# 2. Generated specs at RegisterBehavior


ENUMS = st.one_of(st.sampled_from([0, 1, 2, 3]), st.integers(-(2**31), 2**31 - 1))
OBS_NAMES = st.one_of(st.sampled_from(["", "obs", "obs", "a b", "é", "\U0001F4F7", "x" * 300, "\0"]), st.text(max_size=12))
# Valid vector sizes stay small (the networks of created behaviours are real); the big ones are all invalid.
OBS_DIMS = st.one_of(st.integers(-2, 40), st.sampled_from([2**24 + 1, 2**31, 2**32 + 1, 2**62, 2**63 - 1, -(2**63)]))
INT32S = st.sampled_from([4096, 4097, 2**31 - 1, -(2**31), -1])


@st.composite
def specs(draw) -> pb.BehaviorSpec:
    """Specs that are often valid (so that registrations also succeed), with any part replaced by
    anything: names empty, duplicate or unicode, shapes of any rank and size, enum values outside
    their enums, negative or huge action sizes."""
    observations = []
    for i in range(draw(st.integers(0, 3))):
        if draw(st.integers(0, 3)):
            observations.append(pb.ObservationSpec(name=f"o{i}", shape=[draw(st.integers(1, 8))], kind=draw(st.sampled_from([0, 1]))))
        else:
            observations.append(pb.ObservationSpec(name=draw(OBS_NAMES), shape=draw(st.lists(OBS_DIMS, max_size=4)),
                                                   kind=draw(ENUMS), observation_type=draw(ENUMS)))
    continuous = draw(st.one_of(st.integers(0, 3), st.integers(-3, 8), INT32S))
    branches = draw(st.one_of(st.lists(st.integers(1, 4), max_size=3), st.lists(st.one_of(st.integers(-2, 6), INT32S), max_size=4)))
    return pb.BehaviorSpec(observations=observations, actions=pb.ActionSpec(continuous_size=continuous, discrete_branches=branches))


@settings(PROPERTIES, max_examples=120)
@given(spec=specs(), name_kind=st.sampled_from(["fresh", "fresh", "fresh", "existing", "arbitrary"]),
       arbitrary_name=st.text(max_size=140))
def test_generated_specs_at_register(live: Live, spec: pb.BehaviorSpec, name_kind: str, arbitrary_name: str):
    name = {"fresh": next(_fresh_names), "existing": "PropDiscrete", "arbitrary": arbitrary_name}[name_kind]
    request = pb.RegisterBehaviorRequest(behavior_name=name, spec=spec)
    request.settings.update(SETTINGS)
    listed = live.client.list_behaviors()
    try:
        response = call(live.client.stub.RegisterBehavior, request)
    except LudusError as err:
        field = check_rejection(err, r"spec(\.\w+(\[\d+\])?)*|behavior_name|settings")
        event(f"rejected: {err.code.name} " + re.sub(r"\[\d+\]", "[i]", field))
        note(f"rejected: {err.code.name}: {err.details}")
        assert live.client.list_behaviors() == listed, "a rejected registration changed the behaviours"
    else:
        event("created" if response.created else "existing")
        assert response.created == (name not in listed)
        assert name in live.client.list_behaviors()
        described = live.client.describe(name).spec
        assert BehaviorSpec.from_proto(described) == BehaviorSpec.from_proto(spec)


# ---------------------------------------------------------------------------------------------------
# 3. Generated settings at RegisterBehavior


def _schema_paths(cls: type, prefix: str = "") -> List[str]:
    """Every key path of the settings schema (hyperparameters.batch_size, network_settings.memory, ...)."""
    paths = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        paths.append(path)
        tp = hints[f.name]
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)] if typing.get_origin(tp) is typing.Union else [tp]
        for sub in inner:
            if dataclasses.is_dataclass(sub):
                paths += _schema_paths(sub, f"{path}.")
    return paths


SCHEMA_PATHS = _schema_paths(TrainerSettings) + [
    f"reward_signals.{s}.{k}" for s in ("extrinsic", "curiosity", "bonus") for k in ("gamma", "strength", "network_settings")
] + ["self_play", "behavioral_cloning", "reward_signals.extrinsic"]
JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**64), 2**64), st.floats(), st.text(max_size=12),
    st.sampled_from([0, 1, -1, 0.5, 2**53 + 1, 1e308, "ppo", "sac", "linear", "swish", "",
                     ".", "/", "/etc/hostname", "/nonexistent/checkpoint.safetensors", "x" * 300, "\0"]),
)
#: init_path values: no checkpoint there, a file that is not a checkpoint, a name too long for the OS.
INIT_PATHS = ["", ".", "/nonexistent/checkpoint.safetensors", os.path.abspath(__file__), os.path.dirname(os.path.abspath(__file__)),
              "x" * 300, "\0"]


def _typed(tp) -> st.SearchStrategy:
    """Values of the annotated type, mostly in range, so that many generated settings are valid."""
    if typing.get_origin(tp) is typing.Union:
        inner = [a for a in typing.get_args(tp) if a is not type(None)][0]
        return st.one_of(st.none(), _typed(inner))
    if typing.get_origin(tp) is typing.Literal:
        return st.sampled_from(typing.get_args(tp))
    if dataclasses.is_dataclass(tp):
        return st.just({})
    odd_numbers = st.sampled_from([math.nan, math.inf, -math.inf, 0.5, 1e300, -1])
    return {bool: st.booleans(), int: st.one_of(st.integers(1, 64), st.integers(1, 64), odd_numbers),
            float: st.one_of(st.floats(0.01, 1.0), st.floats(0.01, 1.0), odd_numbers),
            str: st.sampled_from(["ppo", *INIT_PATHS])}.get(tp, st.none())


def _typed_paths(cls: type, prefix: str = "") -> Dict[str, st.SearchStrategy]:
    found = {}
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        found[f"{prefix}{f.name}"] = _typed(tp)
        if dataclasses.is_dataclass(tp):
            found.update(_typed_paths(tp, f"{prefix}{f.name}."))
    return found


TYPED_PATHS = _typed_paths(TrainerSettings)
TYPED_EDITS = st.sampled_from(sorted(TYPED_PATHS)).flatmap(lambda path: st.tuples(st.just(path), TYPED_PATHS[path]))
JSON = st.recursive(
    JSON_SCALARS,
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(st.text(max_size=10), children, max_size=3)),
    max_leaves=8,
)
#: Edge values for any key: non-finite, huge, fractional, negative, zero, of another JSON type.
ODD_VALUES = st.sampled_from([math.nan, math.inf, -math.inf, 1e300, -1e300, 0.5, -1, 0, 2**53 + 1, True, "", "1", [], {}, None])
SETTING_EDITS = st.lists(
    st.one_of(
        TYPED_EDITS,
        st.tuples(st.sampled_from(SCHEMA_PATHS), ODD_VALUES),
        st.tuples(st.sampled_from(SCHEMA_PATHS), JSON),
        st.tuples(st.just("init_path"), st.sampled_from(INIT_PATHS)),
        st.tuples(st.lists(st.text(max_size=8), min_size=1, max_size=3).map(".".join), JSON),
    ),
    min_size=1, max_size=3,
)


def _edit(settings_dict: dict, path: str, value) -> None:
    node = settings_dict
    keys = path.split(".")
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value


def _key_paths(value, prefix: str = "") -> Iterator[str]:
    """Dotted paths of every key, spelled as settings errors spell them (an empty top-level key is '""')."""
    if isinstance(value, dict):
        for key, child in value.items():
            path = f"{prefix}.{key}" if prefix else (key or '""')
            yield path
            yield from _key_paths(child, path)


def _plain(value: struct_pb2.Value):
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return {key: _plain(v) for key, v in value.struct_value.fields.items()}
    if kind == "list_value":
        return [_plain(v) for v in value.list_value.values]
    return None if kind in (None, "null_value") else getattr(value, kind)


def _creates_small_networks(struct: struct_pb2.Struct) -> bool:
    """Whether registering these settings under a new name is safe for the test host: they are
    rejected (nothing is created), or the networks they ask for are small."""
    try:
        resolved = resolve_settings({key: _plain(v) for key, v in struct.fields.items()})
    except Exception:  # noqa: BLE001 - rejected (the server must say so with a client error)
        return True
    return resolved.network_settings.hidden_units <= 256 and resolved.network_settings.num_layers <= 4


@settings(PROPERTIES, max_examples=150)
@given(edits=SETTING_EDITS, replace_all=st.booleans(), fresh=st.booleans())
def test_generated_settings_at_register(live: Live, edits, replace_all: bool, fresh: bool):
    overrides = {} if replace_all else copy.deepcopy(SETTINGS)
    for path, value in edits:
        _edit(overrides, path, value)
    request = pb.RegisterBehaviorRequest(behavior_name="PropDiscrete", spec=DISCRETE.to_proto())
    request.settings.update(overrides)
    if fresh and _creates_small_networks(request.settings):
        request.behavior_name = next(_fresh_names)
    note(f"{request.behavior_name}: {overrides!r}")
    listed = live.client.list_behaviors()
    try:
        response = call(live.client.stub.RegisterBehavior, request)
    except LudusError as err:
        assert err.code in {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.FAILED_PRECONDITION}, \
            f"{err.code.name}: {err.details}"
        assert err.details.strip()
        # Cross-key rules may name a key that kept its default (batch_size > buffer_size).
        named = {"settings", "settings.init_path", *SCHEMA_PATHS, *_key_paths(overrides)}
        assert any(err.details.startswith(f"{path}: ") for path in named), f"{err.details!r} names no key of the settings"
        event(f"rejected: {err.code.name}")
        assert live.client.list_behaviors() == listed, "a rejected registration changed the behaviours"
    else:
        event("created" if response.created else "existing")
        assert response.created == (request.behavior_name not in listed)
        assert request.behavior_name in live.client.list_behaviors()
        assert json_format.MessageToDict(response.effective_settings)["hyperparameters"]["batch_size"] >= 1


@settings(PROPERTIES, max_examples=30)
@given(init_path=st.one_of(st.sampled_from(INIT_PATHS), st.text(max_size=20)))
def test_init_path_without_a_checkpoint_at_register(live: Live, init_path: str):
    """init_path is read when a behaviour is created: a path with no checkpoint (missing, a folder
    without one, a file that is not one, a name the OS refuses) is INVALID_ARGUMENT, nothing created."""
    name = next(_fresh_names)
    listed = live.client.list_behaviors()
    try:
        response = live.client.register(name, DISCRETE, {**SETTINGS, "init_path": init_path})
    except LudusError as err:
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT, f"{err.code.name}: {err.details}"
        assert err.details.startswith(("init_path: ", "settings.init_path: ")), err.details
        assert live.client.list_behaviors() == listed
    else:
        assert init_path == "" and response.created  # "" means: no initial weights


# ---------------------------------------------------------------------------------------------------
# 5. The server survived all of it


def test_server_is_healthy_and_serving_after_the_properties(live: Live):
    for service in ("", "ludus.v1.Trainer"):
        reply = live.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    for name in (*BEHAVIORS, UPDATE_NAME):
        behavior = live.server.registry.get(name)
        assert behavior._worker.is_alive(), f"{name}: the learner thread died"
    for name, spec in BEHAVIORS.items():
        before = state(live, name)
        traj = valid_trajectory(spec, 5, np.random.default_rng(0), before["policy_version"])
        (ack,) = live.client.submit(name, [traj])
        assert (ack.accepted_steps, ack.total_steps) == (5, before["total_steps"] + 5)
        assert state(live, name)["buffered_steps"] == before["buffered_steps"] + 5
