"""LudusClient: a thin, typed wrapper over the generated stubs.

- Every call has a deadline (`timeout`, default 30 s); streams that run indefinitely (WatchPolicy)
  are cancelled by the caller instead.
- Retries: only idempotent calls (RegisterBehavior, EstimateValues, GetPolicy, DescribeBehavior,
  ListBehaviors) are retried, by gRPC's own retry policy on UNAVAILABLE, with exponential backoff.
  Update is not idempotent and is never retried; trajectories are retried by TrajectoryStream, which
  resends only what the server has not acknowledged.
- Message limits are raised to the server's (256 MiB) so large observations pass.
- Security (see ludus_client.auth): `token=` (default: env LUDUS_AUTH_TOKEN) is sent as
  `authorization: Bearer <token>` on every call; `root_certificates=` / `tls=True` connect with TLS,
  `client_cert_chain=` + `client_private_key=` with mutual TLS.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import grpc
import numpy as np
from google.protobuf import json_format, struct_pb2

from ludus.v1 import trainer_pb2 as pb
from ludus.v1 import trainer_pb2_grpc as pb_grpc
from ludus_client.auth import BearerTokenInterceptor, make_channel, resolve_token
from ludus_client.policy import LocalPolicy
from ludus_client.spec import BehaviorSpec
from ludus_client.tensor_codec import from_tensor, observation_array, to_tensor

if TYPE_CHECKING:
    from ludus_client.onnx_policy import OnnxPolicy

DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
IDEMPOTENT_METHODS = ("RegisterBehavior", "EstimateValues", "GetPolicy", "DescribeBehavior", "ListBehaviors")
KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


def _service_config() -> str:
    return json.dumps({
        "methodConfig": [{
            "name": [{"service": "ludus.v1.Trainer", "method": m} for m in IDEMPOTENT_METHODS],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.2s",
                "maxBackoff": "5s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }]
    })


class LudusError(Exception):
    """A failed call: `code` is the gRPC status code, `details` the server's message (naming the field)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details

    @classmethod
    def from_rpc(cls, err: grpc.RpcError) -> "LudusError":
        return cls(err.code(), err.details() or "")


@dataclass
class Registration:
    policy_version: int
    created: bool
    settings: Dict[str, Any]
    reward_signals: List[str]


#: Policy formats by name (get_policy / watch_policy `format`): safetensors for LocalPolicy,
#: ONNX (ML-Agents' model contract) for OnnxPolicy, Unity and other engines.
POLICY_FORMATS = {"safetensors": pb.POLICY_FORMAT_SAFETENSORS, "onnx": pb.POLICY_FORMAT_ONNX}


def _policy_format(name: str) -> int:
    if name not in POLICY_FORMATS:
        raise ValueError(f"unknown policy format {name!r} (one of {', '.join(POLICY_FORMATS)})")
    return POLICY_FORMATS[name]


@dataclass
class PolicyBlob:
    """A complete serialised policy version: safetensors bytes, or an ONNX model (format "onnx")."""

    behavior_name: str
    version: int
    data: bytes
    sha256: str
    trained_steps: int
    format: str = "safetensors"

    def load(self) -> "LocalPolicy | OnnxPolicy":
        """LocalPolicy for safetensors; OnnxPolicy (needs onnxruntime: ludus[onnx]) for ONNX."""
        if self.format == "onnx":
            from ludus_client.onnx_policy import OnnxPolicy
            return OnnxPolicy.from_bytes(self.data)
        return LocalPolicy.from_bytes(self.data)


def _assemble(chunks: Iterator[pb.PolicyChunk]) -> Iterator[PolicyBlob]:
    """Reassemble chunk streams into whole policies, verifying offsets, sizes and checksums."""
    parts: List[bytes] = []
    for chunk in chunks:
        expected_offset = sum(len(p) for p in parts)
        if chunk.offset != expected_offset:
            raise LudusError(grpc.StatusCode.DATA_LOSS, f"policy {chunk.version}: chunk at offset {chunk.offset}, expected {expected_offset}")
        parts.append(chunk.data)
        if chunk.last:
            data = b"".join(parts)
            parts = []
            announcement = not data and chunk.total_size > 0  # WatchPolicy(versions_only=True)
            if not announcement and (len(data) != chunk.total_size or hashlib.sha256(data).hexdigest() != chunk.sha256):
                raise LudusError(grpc.StatusCode.DATA_LOSS, f"policy {chunk.version}: size or sha256 mismatch")
            fmt = "onnx" if chunk.format == pb.POLICY_FORMAT_ONNX else "safetensors"
            yield PolicyBlob(chunk.behavior_name, chunk.version, data, chunk.sha256, chunk.trained_steps, fmt)


class LudusClient:
    def __init__(
        self,
        target: str = "localhost:50051",
        timeout: float = 30.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        channel: Optional[grpc.Channel] = None,
        token: Optional[str] = None,
        root_certificates: Optional[bytes] = None,
        client_cert_chain: Optional[bytes] = None,
        client_private_key: Optional[bytes] = None,
        tls_server_name: Optional[str] = None,
        tls: bool = False,
    ) -> None:
        """`token`: bearer token sent on every call (default: env LUDUS_AUTH_TOKEN; '' = none).
        TLS is used when `tls` is true or any TLS argument is given: `root_certificates` (PEM CA;
        None = system roots), `client_cert_chain` + `client_private_key` (PEM, mutual TLS),
        `tls_server_name` (name to verify in the server's certificate instead of the target host)."""
        self.target = target
        self.timeout = timeout
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.enable_retries", 1),
            ("grpc.service_config", _service_config()),
            *KEEPALIVE_OPTIONS,
        ]
        self.channel = channel or make_channel(target, options, tls, root_certificates, client_cert_chain,
                                               client_private_key, tls_server_name)
        self.token = resolve_token(token)
        if self.token:  # every stub call on self.channel carries `authorization: Bearer <token>`
            self.channel = grpc.intercept_channel(self.channel, BearerTokenInterceptor(self.token))
        self.stub = pb_grpc.TrainerStub(self.channel)

    # -- lifecycle ---------------------------------------------------------------------------------
    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the channel connects (the server is up)."""
        try:
            grpc.channel_ready_future(self.channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise LudusError(grpc.StatusCode.UNAVAILABLE, f"no Ludus server at {self.target} after {timeout:.0f}s") from None

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "LudusClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method, request, timeout: Optional[float] = None):
        try:
            return method(request, timeout=timeout or self.timeout, wait_for_ready=True)
        except grpc.RpcError as err:
            raise LudusError.from_rpc(err) from None

    # -- RPCs --------------------------------------------------------------------------------------
    def register(self, behavior_name: str, spec: BehaviorSpec, settings: Optional[Mapping[str, Any]] = None) -> Registration:
        request = pb.RegisterBehaviorRequest(behavior_name=behavior_name, spec=spec.to_proto())
        if settings is not None:
            request.settings.update(dict(settings))
        response = self._call(self.stub.RegisterBehavior, request)
        return Registration(
            response.policy_version, response.created,
            json_format.MessageToDict(response.effective_settings), list(response.reward_signals),
        )

    def estimate_values(
        self, behavior_name: str, observations: Sequence[np.ndarray], next_observations: Optional[Sequence[np.ndarray]],
        done: bool, agent_id: str = "", interrupted: bool = False,
    ) -> Tuple[Dict[str, np.ndarray], Dict[str, float]]:
        """Per-signal values of every step and bootstrap values. Recurrent critics continue the
        agent's memory between calls (agent_id required); the per-step critic memories are in
        `estimate_values_full`."""
        values, bootstrap, _ = self.estimate_values_full(behavior_name, observations, next_observations, done, agent_id, interrupted)
        return values, bootstrap

    def estimate_values_full(
        self, behavior_name: str, observations: Sequence[np.ndarray], next_observations: Optional[Sequence[np.ndarray]],
        done: bool, agent_id: str = "", interrupted: bool = False,
    ) -> Tuple[Dict[str, np.ndarray], Dict[str, float], Optional[np.ndarray]]:
        """As estimate_values, plus the critic memories [T, memory_size] (None if not recurrent)."""
        request = pb.EstimateValuesRequest(
            behavior_name=behavior_name, agent_id=agent_id, done=done, interrupted=interrupted,
            observations=[to_tensor(observation_array(o)) for o in observations],
            next_observations=[to_tensor(observation_array(o)) for o in (next_observations or [])],
        )
        response = self._call(self.stub.EstimateValues, request)
        values = {k: from_tensor(v, f"values[{k}]") for k, v in response.values.items()}
        memories = from_tensor(response.critic_memories, "critic_memories") if response.HasField("critic_memories") else None
        return values, dict(response.bootstrap_values), memories

    def update(self, behavior_name: str, batch: pb.TrainingBatch, num_sequences: int) -> Tuple[Dict[str, float], int]:
        request = pb.UpdateRequest(behavior_name=behavior_name, batch=batch, num_sequences=num_sequences)
        response = self._call(self.stub.Update, request)
        return dict(response.stats), response.policy_version

    def estimate_signals(
        self, behavior_name: str, observations: Sequence[np.ndarray], next_observations: Optional[Sequence[np.ndarray]],
        done: bool, continuous_actions: Optional[np.ndarray] = None, discrete_actions: Optional[np.ndarray] = None,
        rewards: Optional[np.ndarray] = None, agent_id: str = "",
    ) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
        """Per reward signal: the critic's value of every step and the signal's reward of every step
        (for the signals whose inputs are given: extrinsic needs `rewards`, curiosity and GAIL with
        use_actions need the actions)."""
        request = pb.EstimateValuesRequest(
            behavior_name=behavior_name, agent_id=agent_id, done=done,
            observations=[to_tensor(observation_array(o)) for o in observations],
            next_observations=[to_tensor(observation_array(o)) for o in (next_observations or [])],
        )
        for name, array, dtype in (("continuous_actions", continuous_actions, np.float32),
                                   ("discrete_actions", discrete_actions, np.int32), ("rewards", rewards, np.float32)):
            if array is not None:
                getattr(request, name).CopyFrom(to_tensor(np.asarray(array, dtype=dtype)))
        response = self._call(self.stub.EstimateValues, request)
        values = {k: from_tensor(v, f"values[{k}]") for k, v in response.values.items()}
        rewards_out = {k: from_tensor(v, f"signal_rewards[{k}]") for k, v in response.signal_rewards.items()}
        return values, rewards_out

    def record_demonstration(self, behavior_name: str, demonstration_name: str, trajectories: Iterable[pb.Trajectory],
                             overwrite: bool = False, timeout: Optional[float] = None) -> pb.RecordDemonstrationResponse:
        """Store expert trajectories (log-probabilities not needed) as `<demonstration_name>.demo`
        in the server's demo directory; use the answer's `demo_path` in GAIL / behavioral_cloning
        settings. Not retried: a failed recording writes nothing, so simply record again."""
        def requests():
            first = True
            for trajectory in trajectories:
                yield pb.RecordDemonstrationRequest(behavior_name=behavior_name, demonstration_name=demonstration_name,
                                                    trajectory=trajectory, overwrite=overwrite if first else False)
                first = False
        try:
            return self.stub.RecordDemonstration(requests(), timeout=timeout or self.timeout, wait_for_ready=True)
        except grpc.RpcError as err:
            raise LudusError.from_rpc(err) from None

    def submit(self, behavior_name: str, trajectories: Iterable[pb.Trajectory], timeout: Optional[float] = None,
               evaluate_signals: bool = False) -> List[pb.SubmitTrajectoriesResponse]:
        """Send trajectories on one stream and wait for every acknowledgement. With
        `evaluate_signals` each answer also carries per-signal rewards and values (slower).

        For continuous, pipelined submission with automatic resending, use TrajectoryStream.
        """
        requests = [pb.SubmitTrajectoriesRequest(behavior_name=behavior_name, trajectory=t, evaluate_signals=evaluate_signals)
                    for t in trajectories]
        try:
            return list(self.stub.SubmitTrajectories(iter(requests), timeout=timeout or self.timeout, wait_for_ready=True))
        except grpc.RpcError as err:
            raise LudusError.from_rpc(err) from None

    def get_policy(self, behavior_name: str, version: int = 0, format: str = "safetensors") -> PolicyBlob:
        """A policy version (0 = latest); `format` "onnx" gives an ML-Agents-contract ONNX model."""
        request = pb.GetPolicyRequest(behavior_name=behavior_name, version=version, format=_policy_format(format))
        try:
            blobs = list(_assemble(self.stub.GetPolicy(request, timeout=self.timeout, wait_for_ready=True)))
        except grpc.RpcError as err:
            raise LudusError.from_rpc(err) from None
        if len(blobs) != 1:
            raise LudusError(grpc.StatusCode.DATA_LOSS, f"expected one policy, received {len(blobs)}")
        return blobs[0]

    def get_local_policy(self, behavior_name: str, version: int = 0) -> LocalPolicy:
        return self.get_policy(behavior_name, version).load()

    def get_onnx_policy(self, behavior_name: str, version: int = 0) -> "OnnxPolicy":
        """The version as an ONNX model run by onnxruntime (pip install 'ludus[onnx]')."""
        return self.get_policy(behavior_name, version, format="onnx").load()

    def watch_policy(self, behavior_name: str, after_version: int = 0, versions_only: bool = False,
                     format: str = "safetensors") -> "PolicyWatch":
        """Iterate over every new policy version as it appears; `.cancel()` to stop."""
        request = pb.WatchPolicyRequest(behavior_name=behavior_name, after_version=after_version,
                                        format=_policy_format(format), versions_only=versions_only)
        return PolicyWatch(self.stub.WatchPolicy(request, wait_for_ready=True))

    def describe(self, behavior_name: str) -> pb.DescribeBehaviorResponse:
        return self._call(self.stub.DescribeBehavior, pb.DescribeBehaviorRequest(behavior_name=behavior_name))

    def list_behaviors(self) -> List[str]:
        return list(self._call(self.stub.ListBehaviors, pb.ListBehaviorsRequest()).behavior_names)


class PolicyWatch:
    """Iterator of PolicyBlob from a WatchPolicy stream."""

    def __init__(self, call) -> None:
        self._call = call
        self._blobs = _assemble(call)

    def __iter__(self) -> "PolicyWatch":
        return self

    def __next__(self) -> PolicyBlob:
        try:
            return next(self._blobs)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.CANCELLED:
                raise StopIteration from None
            raise LudusError.from_rpc(err) from None

    def cancel(self) -> None:
        self._call.cancel()
