"""gRPC servicer: converts messages and calls the registry/behaviour objects that hold the logic.

The only place where domain errors become gRPC statuses (`_map_errors`); anything unexpected is
logged and reported as INTERNAL without taking the server down.
"""
from __future__ import annotations

import functools
import logging
import threading
import time
from typing import Callable, Iterator

import grpc
import numpy as np
from google.protobuf import struct_pb2

from ludus.v1 import trainer_pb2 as pb
from ludus.v1 import trainer_pb2_grpc as pb_grpc
from ludus_client.tensor_codec import to_tensor
from ludus_service.behavior import STALE, UNKNOWN_VERSION
from ludus_service.demo_recorder import DemonstrationRecorder
from ludus_service.demonstrations import load_demonstration
from ludus_service.errors import Internal, InvalidArgument, LudusError, ResourceExhausted, Unavailable
from ludus_service.policy_store import ONNX, SAFETENSORS, PolicySnapshot
from ludus_service.registry import BehaviorRegistry
from ludus_service.settings import settings_to_dict
from ludus_service.validation import (
    decode_observations, parse_batch, parse_trajectory, parse_transition_batch, parse_value_query_inputs,
)

log = logging.getLogger(__name__)
WATCH_POLL_SECONDS = 1.0
#: A recording is held in memory until its stream ends (so nothing is written unless all of it is
#: valid): bounded, so clients cannot exhaust the server's memory. The peak is a few times this
#: (the recorder's copy, the encoded file, the check that reads it back).
MAX_RECORDING_BYTES = 256 << 20
MAX_CONCURRENT_RECORDINGS = 4


def _internal(err: Exception) -> LudusError:
    log.exception("unexpected error")
    return Internal("", f"internal error: {type(err).__name__}")


def _observe(self, method_name: str, code: grpc.StatusCode, started: float) -> None:
    metrics = self.metrics
    if metrics is not None:
        metrics.rpc_handled.labels(method_name, code.name).inc()
        metrics.rpc_duration.labels(method_name).observe(time.perf_counter() - started)


def _started(self, method_name: str) -> float:
    if self.metrics is not None:
        self.metrics.rpc_started.labels(method_name).inc()
    return time.perf_counter()


def _refuse_if_shutting_down(self) -> None:
    if self.registry.shutting_down:
        raise Unavailable("", "server is shutting down; retry against the restarted server")


def _map_errors(method: Callable) -> Callable:
    """Unary handlers: LudusError -> its status; anything else -> INTERNAL (logged). Counts and
    times every call by method and status code."""

    @functools.wraps(method)
    def wrapper(self, request, context: grpc.ServicerContext):
        started = _started(self, method.__name__)
        try:
            _refuse_if_shutting_down(self)
            response = method(self, request, context)
            _observe(self, method.__name__, grpc.StatusCode.OK, started)
            return response
        except LudusError as err:
            failure = err
        except Exception as err:  # noqa: BLE001 - the server must keep serving
            failure = _internal(err)
        _observe(self, method.__name__, failure.code, started)
        context.abort(failure.code, str(failure))

    return wrapper


def _map_stream_errors(method: Callable) -> Callable:
    """Streaming handlers: the same mapping, applied while the response stream is produced."""

    @functools.wraps(method)
    def wrapper(self, request, context: grpc.ServicerContext):
        started = _started(self, method.__name__)
        try:
            _refuse_if_shutting_down(self)
            yield from method(self, request, context)
            code = grpc.StatusCode.OK if context.is_active() else grpc.StatusCode.CANCELLED
            _observe(self, method.__name__, code, started)
            return
        except LudusError as err:
            failure = err
        except GeneratorExit:  # the client went away mid-stream
            _observe(self, method.__name__, grpc.StatusCode.CANCELLED, started)
            raise
        except Exception as err:  # noqa: BLE001
            failure = _internal(err)
        _observe(self, method.__name__, failure.code, started)
        context.abort(failure.code, str(failure))

    return wrapper


def _to_struct(data: dict) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(data)
    return struct


def _from_value(value: struct_pb2.Value):
    """Struct Value -> plain Python. Not json_format.MessageToDict: it raises ValueError on NaN and
    Infinity numbers (INTERNAL), which settings validation rejects naming the key."""
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return {key: _from_value(v) for key, v in value.struct_value.fields.items()}
    if kind == "list_value":
        return [_from_value(v) for v in value.list_value.values]
    return None if kind in (None, "null_value") else getattr(value, kind)


def _policy_chunks(snapshot: PolicySnapshot, versions_only: bool = False,
                   fmt: int = pb.POLICY_FORMAT_SAFETENSORS) -> Iterator[pb.PolicyChunk]:
    """A version's bytes in `fmt` (a resolved format from _check_format), chunked. An announcement
    (versions_only) carries the size and sha256 of that format's bytes too, so ONNX is exported
    (once per version, cached) before it is announced."""
    kind = ONNX if fmt == pb.POLICY_FORMAT_ONNX else SAFETENSORS
    data, digest = snapshot.serialized(kind)
    common = dict(behavior_name=snapshot.behavior_name, version=snapshot.version, format=fmt,
                  total_size=len(data), sha256=digest, trained_steps=snapshot.trained_steps)
    if versions_only:
        yield pb.PolicyChunk(offset=0, data=b"", last=True, **common)
        return
    for offset, piece, last in snapshot.chunks(fmt=kind):
        yield pb.PolicyChunk(offset=offset, data=piece, last=last, **common)


def _check_format(fmt: int) -> int:
    """The format to serve: UNSPECIFIED means SAFETENSORS; anything unknown is INVALID_ARGUMENT."""
    if fmt in (pb.POLICY_FORMAT_UNSPECIFIED, pb.POLICY_FORMAT_SAFETENSORS):
        return pb.POLICY_FORMAT_SAFETENSORS
    if fmt == pb.POLICY_FORMAT_ONNX:
        return pb.POLICY_FORMAT_ONNX
    raise InvalidArgument("format", f"unsupported policy format {fmt} (supported: POLICY_FORMAT_SAFETENSORS, POLICY_FORMAT_ONNX)")


_DROP_REASONS = {None: pb.DROP_REASON_NONE, STALE: pb.DROP_REASON_STALE_POLICY_VERSION, UNKNOWN_VERSION: pb.DROP_REASON_UNKNOWN_POLICY_VERSION}


class TrainerServicer(pb_grpc.TrainerServicer):
    def __init__(self, registry: BehaviorRegistry) -> None:
        self.registry = registry
        self.metrics = registry.metrics
        self._recording_slots = threading.BoundedSemaphore(MAX_CONCURRENT_RECORDINGS)

    @_map_errors
    def RegisterBehavior(self, request: pb.RegisterBehaviorRequest, context) -> pb.RegisterBehaviorResponse:
        overrides = {key: _from_value(v) for key, v in request.settings.fields.items()} if request.HasField("settings") else None
        behavior, created = self.registry.register(request.behavior_name, request.spec, overrides)
        return pb.RegisterBehaviorResponse(
            policy_version=behavior.policy_version, created=created,
            effective_settings=_to_struct(settings_to_dict(behavior.settings)), reward_signals=behavior.signal_names,
        )

    @_map_errors
    def EstimateValues(self, request: pb.EstimateValuesRequest, context) -> pb.EstimateValuesResponse:
        behavior = self.registry.get(request.behavior_name)
        if not request.observations:
            raise InvalidArgument("observations", "at least one step is required")
        if request.done and request.interrupted:
            raise InvalidArgument("interrupted", "cannot be set together with done (a step limit is not a terminal state)")
        if behavior.memory_size and not request.agent_id:
            raise InvalidArgument("agent_id", "is required: the critic is recurrent and keeps a memory per agent")
        shape = request.observations[0].shape
        steps = int(shape[0]) if len(shape) else 0
        if steps < 1:
            raise InvalidArgument("observations[0]", f"needs a leading time dimension >= 1, got shape {list(shape)}")
        observations = decode_observations(request.observations, behavior.spec, "observations", (steps,))
        next_obs = None
        if request.next_observations or not request.done:
            if not request.next_observations:
                raise InvalidArgument("next_observations", "are required unless done is true (needed to bootstrap)")
            next_obs = decode_observations(request.next_observations, behavior.spec, "next_observations", ())
        continuous, discrete, rewards = parse_value_query_inputs(request, behavior.spec, steps)
        values, bootstrap, memories, version = behavior.estimate_values(observations, next_obs, request.done, request.agent_id,
                                                                        request.interrupted)
        response = pb.EstimateValuesResponse(policy_version=version)
        for name, array in behavior.signal_rewards(observations, next_obs, request.done, continuous, discrete, rewards).items():
            response.signal_rewards[name].CopyFrom(to_tensor(array.astype("float32")))
        for name, array in values.items():
            response.values[name].CopyFrom(to_tensor(array.astype("float32")))
            response.bootstrap_values[name] = bootstrap[name]
        if memories is not None:
            response.critic_memories.CopyFrom(to_tensor(memories))
        return response

    @_map_errors
    def Update(self, request: pb.UpdateRequest, context) -> pb.UpdateResponse:
        behavior = self.registry.get(request.behavior_name)
        if request.num_sequences < 1:
            raise InvalidArgument("num_sequences", f"must be >= 1, got {request.num_sequences}")
        if behavior.settings.trainer_type == "sac":  # transitions (s, a, r, s', done), not PPO's fields
            batch = parse_transition_batch(request.batch, behavior.spec, memory_size=behavior.memory_size)
        else:
            batch = parse_batch(request.batch, behavior.spec, behavior.signal_names, memory_size=behavior.memory_size)
        stats, version = behavior.update(batch, request.num_sequences)
        return pb.UpdateResponse(stats=stats, policy_version=version)

    @_map_stream_errors
    def SubmitTrajectories(self, request_iterator, context) -> Iterator[pb.SubmitTrajectoriesResponse]:
        for index, request in enumerate(request_iterator):
            _refuse_if_shutting_down(self)  # unacknowledged trajectories are resent after the restart
            behavior = self.registry.get(request.behavior_name)
            prefix = f"requests[{index}].trajectory"
            try:
                trajectory = parse_trajectory(request.trajectory, behavior.spec, prefix, behavior.memory_size)
            except InvalidArgument:
                shape = request.trajectory.rewards.shape
                behavior.metrics.rejected("invalid", max(int(shape[0]), 0) if len(shape) == 1 else 0)
                raise
            evaluated = behavior.evaluate_signals(trajectory) if request.evaluate_signals else None
            result = behavior.submit(trajectory, prefix)
            response = pb.SubmitTrajectoriesResponse(
                accepted_steps=result.accepted_steps, dropped_steps=result.dropped_steps,
                drop_reason=_DROP_REASONS[result.drop_reason],
                policy_version=result.policy_version, latest_update_stats=result.latest_stats, total_steps=result.total_steps,
            )
            if evaluated is not None:
                for target, arrays in zip((response.signal_rewards, response.signal_values), evaluated):
                    for name, array in arrays.items():
                        target[name].CopyFrom(to_tensor(array.astype("float32")))
            yield response

    @_map_stream_errors
    def GetPolicy(self, request: pb.GetPolicyRequest, context) -> Iterator[pb.PolicyChunk]:
        fmt = _check_format(request.format)
        behavior = self.registry.get(request.behavior_name)
        if request.version < 0:
            raise InvalidArgument("version", f"must be >= 0 (0 = latest), got {request.version}")
        yield from _policy_chunks(behavior.store.get(request.version), fmt=fmt)

    @_map_stream_errors
    def WatchPolicy(self, request: pb.WatchPolicyRequest, context) -> Iterator[pb.PolicyChunk]:
        fmt = _check_format(request.format)
        behavior = self.registry.get(request.behavior_name)
        store = behavior.store
        after = request.after_version if request.after_version > 0 else store.latest_version - 1
        while context.is_active() and not store.closed:
            _refuse_if_shutting_down(self)  # ends the stream with UNAVAILABLE: watchers reconnect
            snapshot = store.wait_newer(after, WATCH_POLL_SECONDS)
            if snapshot is None:
                continue
            yield from _policy_chunks(snapshot, request.versions_only, fmt)
            after = snapshot.version

    @_map_errors
    def DescribeBehavior(self, request: pb.DescribeBehaviorRequest, context) -> pb.DescribeBehaviorResponse:
        b = self.registry.get(request.behavior_name)
        return pb.DescribeBehaviorResponse(
            behavior_name=b.name, spec=b.spec.to_proto(), effective_settings=_to_struct(settings_to_dict(b.settings)),
            reward_signals=b.signal_names, policy_version=b.policy_version, total_steps=b.accepted_steps,
            buffered_steps=b.trainer.buffered_steps, queued_steps=b.queued_steps,
            dropped_stale_steps=b.dropped_stale_steps, latest_update_stats=b.trainer.latest_stats,
        )

    @_map_errors
    def RecordDemonstration(self, request_iterator, context) -> pb.RecordDemonstrationResponse:
        """Validate every expert trajectory, then write one `.demo` file atomically (nothing on error)."""
        if not self._recording_slots.acquire(blocking=False):
            raise ResourceExhausted("requests", f"{MAX_CONCURRENT_RECORDINGS} recordings are in progress; retry when one ends")
        try:
            return self._record_demonstration(request_iterator)
        finally:
            self._recording_slots.release()

    def _record_demonstration(self, request_iterator) -> pb.RecordDemonstrationResponse:
        recorder = behavior = None
        name, overwrite, held_bytes, total_reward = "", False, 0, 0.0
        for index, request in enumerate(request_iterator):
            _refuse_if_shutting_down(self)
            if behavior is None:
                behavior = self.registry.get(request.behavior_name)
                name, overwrite = request.demonstration_name, request.overwrite
                target = self.registry.demo_recording_path(name, overwrite)
                recorder = DemonstrationRecorder(behavior.spec, target.parent, brain_name=behavior.name)
            elif request.behavior_name and request.behavior_name != behavior.name:
                raise InvalidArgument(f"requests[{index}].behavior_name",
                                      f"{request.behavior_name!r} differs from the recording's behaviour {behavior.name!r}")
            if not request.HasField("trajectory"):
                continue
            prefix = f"requests[{index}].trajectory"
            traj = parse_trajectory(request.trajectory, behavior.spec, prefix, demonstration=True)
            held_bytes += sum(o.nbytes for o in traj.observations) + sum(o.nbytes for o in traj.next_observations or [])
            if held_bytes > MAX_RECORDING_BYTES:
                raise ResourceExhausted(prefix, f"the recording exceeds {MAX_RECORDING_BYTES >> 20} MiB of observations; "
                                                "split it into several demonstrations (demo_path may name a folder of them)")
            total_reward += float(np.sum(traj.rewards, dtype=np.float64))
            if not np.isfinite(np.float32(total_reward)):
                raise InvalidArgument(f"{prefix}.rewards", "the recording's total reward overflows float32 (the .demo mean reward)")
            recorder.add(observations=traj.observations, rewards=traj.rewards, agent_id=traj.agent_id,
                         continuous_actions=traj.continuous_actions, discrete_actions=traj.discrete_actions,
                         done=traj.done, interrupted=traj.interrupted, action_masks=traj.action_masks,
                         next_observations=traj.next_observations)
        if recorder is None:
            raise InvalidArgument("requests", "the stream was empty: the first message names the behaviour and the demonstration")
        if recorder.num_records == 0:
            raise InvalidArgument("requests[0].trajectory", "no trajectory was sent: nothing to record")
        path = recorder.finish(name, overwrite=overwrite)
        demo = load_demonstration(path, behavior.spec, "demonstration")  # what GAIL/BC will read, checked now
        meta = demo.metas[0]
        return pb.RecordDemonstrationResponse(demo_path=path.name, steps=demo.num_steps, episodes=meta.number_episodes,
                                              mean_reward=meta.mean_reward)

    @_map_errors
    def ListBehaviors(self, request: pb.ListBehaviorsRequest, context) -> pb.ListBehaviorsResponse:
        return pb.ListBehaviorsResponse(behavior_names=self.registry.names())
