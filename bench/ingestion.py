"""Section `ingestion`: env steps/s that SubmitTrajectories accepts, next to a bare gRPC bytes sink.

Payload: one SubmitTrajectoriesRequest of T=64 steps (ML-Agents' default time_horizon), serialised
once per client and sent again and again as raw bytes (no client-side serialisation cost), with at
most `window` unacknowledged messages per stream (like TrajectoryStream's max_in_flight, capped at
32 MiB in flight per client). Observations: 8 floats, 64 floats, and an 84x84x3 uint8 camera frame
(a VISUAL observation, channels-first, as a game sends it uncompressed).

Clients are separate processes (no client-side GIL), 1, 4 or 16 of them, each with its own channel
and stream, started together. Each (observation size, clients) pair runs against a fresh behaviour
of one `ludus-server` per observation size and against the bare sink (bench.sink), same client
processes, same payload bytes, alternating which goes first.

The Ludus behaviour is registered with `inference: true` (value estimation and updates switched
off, as the issue asks): every trajectory is still decoded, validated in full (dtypes, shapes, byte
lengths, NaN/Inf), checked for policy lag, counted and acknowledged. A second, training behaviour
(`inference: false`, buffer_size 10**9 so no update runs, value estimation on) is measured in the
full run to show what the critic costs on top.

Metrics: accepted steps/s (acknowledged inside the measuring window), and for Ludus also processed
steps/s (accepted steps / time until the learner's queue is empty: what is sustainable).
"""
from __future__ import annotations

import multiprocessing as mp
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from bench.common import Recorder, ServerProcess, WorkerError, log

STEPS_PER_TRAJECTORY = 64
CONTINUOUS_ACTIONS = 2
#: Observation shapes per step: rank 1 = VECTOR float32, rank 3 = a VISUAL uint8 camera frame (CHW).
OBS_SHAPES = {"vec8": (8,), "vec64": (64,), "img84x84x3_uint8": (3, 84, 84)}
LUDUS_METHOD = "/ludus.v1.Trainer/SubmitTrajectories"
MAX_IN_FLIGHT = 16
MAX_IN_FLIGHT_BYTES = 32 * 1024 * 1024
GRPC_OPTIONS = [("grpc.max_receive_message_length", 256 * 1024 * 1024), ("grpc.max_send_message_length", 256 * 1024 * 1024)]


def behavior_name(size_name: str, clients: int, training: bool = False) -> str:
    return f"ingest_{size_name}_c{clients}" + ("_training" if training else "")


def _frames(rng, shape, leading):
    """Random observations of one kind: float32 vectors or uint8 frames."""
    import numpy as np

    if len(shape) == 3:
        return rng.integers(0, 256, size=(*leading, *shape), dtype=np.uint8)
    return rng.standard_normal((*leading, *shape), dtype=np.float32)


def spec_for(shape):
    from ludus.v1 import trainer_pb2 as pb
    from ludus_client.spec import ActionSpec, BehaviorSpec, ObservationSpec

    kind = pb.OBSERVATION_KIND_VISUAL if len(shape) == 3 else pb.OBSERVATION_KIND_VECTOR
    return BehaviorSpec((ObservationSpec("obs", tuple(shape), kind),), ActionSpec(CONTINUOUS_ACTIONS, ()))


def build_payload(shape, behavior: str, agent_id: str, seed: int = 0) -> bytes:
    """A serialised SubmitTrajectoriesRequest: T steps, random float32 observations, 2 continuous actions."""
    import numpy as np

    from ludus.v1 import trainer_pb2 as pb
    from ludus_client.tensor_codec import to_tensor

    rng = np.random.default_rng(seed)
    t = STEPS_PER_TRAJECTORY
    traj = pb.Trajectory(
        agent_id=agent_id, policy_version=1,
        observations=[to_tensor(_frames(rng, shape, (t,)))],
        continuous_actions=to_tensor(rng.standard_normal((t, CONTINUOUS_ACTIONS), dtype=np.float32)),
        continuous_log_probs=to_tensor(-np.abs(rng.standard_normal((t, CONTINUOUS_ACTIONS), dtype=np.float32)) - 1.0),
        rewards=to_tensor(rng.standard_normal(t, dtype=np.float32)),
        next_observations=[to_tensor(_frames(rng, shape, ()))],
    )
    return pb.SubmitTrajectoriesRequest(behavior_name=behavior, trajectory=traj).SerializeToString()


def in_flight_window(payload_bytes: int) -> int:
    return max(1, min(MAX_IN_FLIGHT, MAX_IN_FLIGHT_BYTES // max(payload_bytes, 1)))


def _stream(address: str, method: str, payload: bytes, duration: float, window: int, start_at: float) -> Dict[str, float]:
    import grpc

    channel = grpc.insecure_channel(address, options=GRPC_OPTIONS)
    grpc.channel_ready_future(channel).result(timeout=60)
    call = channel.stream_stream(method)  # no serialisers: bytes in, bytes out
    credits = threading.Semaphore(window)
    stop = threading.Event()

    def requests():
        while True:
            credits.acquire()
            if stop.is_set():
                return
            yield payload

    delay = start_at - time.time()
    if delay > 0:
        time.sleep(delay)
    started = time.perf_counter()
    end = started + duration
    in_window = total = 0
    for _ in call(requests(), wait_for_ready=True, timeout=duration + 600):
        total += 1
        if time.perf_counter() <= end:
            in_window += 1
        elif not stop.is_set():
            stop.set()
        credits.release()
    finished = time.time()
    channel.close()
    return {"messages_in_window": in_window, "messages_total": total, "finished_at": finished}


def _client_main(index: int, shape, behaviors: List[str], conn) -> None:
    # One payload per target behaviour (the name is inside the message); identical sizes.
    payloads = {b: build_payload(shape, b, f"client{index}", seed=index) for b in behaviors}
    conn.send(("ready", len(payloads[behaviors[0]])))
    while True:
        command = conn.recv()
        if command[0] == "stop":
            return
        _, address, method, duration, window, start_at, behavior = command
        payload = payloads[behavior]
        try:
            conn.send(("ok", _stream(address, method, payload, duration, window, start_at)))
        except Exception as err:  # noqa: BLE001 - report, the parent decides
            conn.send(("error", f"{type(err).__name__}: {err}"))


class ClientPool:
    """N client processes (spawned: no forked gRPC state), each holding its payload."""

    def __init__(self, n: int, shape, behaviors: List[str]) -> None:
        ctx = mp.get_context("spawn")
        self.behaviors = behaviors
        self.conns = []
        self.procs = []
        for i in range(n):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_client_main, args=(i, shape, behaviors, child), daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)
        sizes = []
        for conn in self.conns:
            if not conn.poll(120):
                raise WorkerError("ingestion client did not start")
            sizes.append(conn.recv()[1])
        self.payload_bytes = sizes[0]

    def run(self, address: str, method: str, duration: float, window: int, behavior: str) -> Tuple[List[Dict[str, float]], float]:
        start_at = time.time() + 1.0 + 0.05 * len(self.conns)  # time for every client to connect first
        for conn in self.conns:
            conn.send(("run", address, method, duration, window, start_at, behavior))
        results = []
        for conn in self.conns:
            if not conn.poll(duration + 900):
                raise WorkerError("ingestion client timed out")
            status, payload = conn.recv()
            if status != "ok":
                raise WorkerError(f"ingestion client failed: {payload}")
            results.append(payload)
        return results, start_at

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(("stop",))
            except (OSError, BrokenPipeError):
                pass
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()


def _register(address: str, shape, behavior: str, training: bool) -> None:
    from ludus_client import BehaviorSpec, LudusClient

    with LudusClient(address) as client:
        client.wait_ready(30)
        # Updates never run: inference mode, or (training) buffer_size beyond what any run sends.
        client.register(behavior, spec_for(shape),
                        {"hyperparameters": {"buffer_size": 10**9, "batch_size": 32}, "inference": not training})


def _drain(address: str, behavior: str, timeout: float = 300.0) -> Tuple[float, int, int]:
    """Wait until the learner has processed every accepted step: (time.time() then, total, buffered)."""
    from ludus_client import LudusClient

    with LudusClient(address) as client:
        deadline = time.monotonic() + timeout
        while True:
            d = client.describe(behavior)
            if d.queued_steps == 0 or time.monotonic() > deadline:
                return time.time(), int(d.total_steps), int(d.buffered_steps)
            time.sleep(0.02)


#: Notes printed under the section in the report.
NOTES = [
    "Messages of 64 steps, pre-serialised by the clients; client processes started together. "
     "'ludus': the behaviour runs with inference: true (value estimation and updates off; every "
     "message still decoded, validated in full, counted, acknowledged). 'ludus_training': a "
     "training behaviour (value estimation on, buffer_size 10**9 so no update runs).",
    "img84x84x3_uint8: one VISUAL observation of uint8 frames (3x84x84, channels-first), the "
     "same payload bytes on every side; the training behaviour runs the 'simple' CNN critic.",
]


def plan(mode: str) -> Dict[str, Any]:
    if mode == "smoke":
        return {"sizes": ["vec8"], "clients": [2], "duration": 0.5, "targets": ["sink", "ludus"]}
    targets = ["sink", "ludus", "ludus_training"]
    if mode == "short":
        return {"sizes": list(OBS_SHAPES), "clients": [1, 4, 16], "duration": 1.5, "targets": targets}
    return {"sizes": list(OBS_SHAPES), "clients": [1, 4, 16], "duration": 5.0, "duration_img": 3.0, "targets": targets}


def run_section(rec: Recorder, mode: str) -> None:
    p = plan(mode)
    for text in NOTES:
        rec.note("ingestion", text)
    sink = ServerProcess(cmd=[sys.executable, "-m", "bench.sink", "--port", "0"]).start()
    try:
        k = 0
        for size_name in p["sizes"]:
            shape = OBS_SHAPES[size_name]
            duration = p.get("duration_img", p["duration"]) if len(shape) == 3 else p["duration"]
            # One ludus-server per observation size (a fresh behaviour per client count): start-up
            # cost stays out of the measurement, memory of the big buffers is freed between sizes.
            ludus: Optional[ServerProcess] = None
            try:
                for n in p["clients"]:
                    names = {"ludus": behavior_name(size_name, n), "ludus_training": behavior_name(size_name, n, training=True)}
                    pool = ClientPool(n, shape, list(names.values()))
                    try:
                        window = in_flight_window(pool.payload_bytes)
                        order = p["targets"][k % len(p["targets"]):] + p["targets"][:k % len(p["targets"])]
                        k += 1
                        rates: Dict[str, float] = {}
                        for target in order:
                            log(f"ingestion {size_name} x{n} clients: {target} ({duration}s, window {window})")
                            try:
                                if target != "sink" and ludus is None:
                                    ludus = ServerProcess(seed=0).start()
                                server = sink if target == "sink" else ludus
                                rates[target] = _measure(rec, target, server, pool, size_name, shape,
                                                         names.get(target, ""), n, duration, window)
                            except WorkerError as err:
                                rec.note("ingestion", f"{size_name} x{n} {target}: FAILED: {str(err)[:500]}")
                        if "sink" in rates and "ludus" in rates:
                            ratios = {"ratio_ludus_over_sink": rates["ludus"] / rates["sink"]}
                            if "ludus_training" in rates:
                                ratios["ratio_training_over_sink"] = rates["ludus_training"] / rates["sink"]
                            rec.add("ingestion", f"{size_name}/c{n}/ratio", ratios, {"obs": size_name, "clients": n, "first": order[0]})
                    finally:
                        pool.close()
            finally:
                if ludus is not None:
                    ludus.stop()
    finally:
        sink.stop()


def _measure(rec: Recorder, target: str, server: ServerProcess, pool: ClientPool, size_name: str, shape,
             behavior: str, n: int, duration: float, window: int) -> float:
    if target == "sink":
        method, behavior = "/bench.Sink/Submit", pool.behaviors[0]  # the sink ignores the name inside
    else:
        _register(server.address, shape, behavior, training=target == "ludus_training")
        method = LUDUS_METHOD
    results, start_at = pool.run(server.address, method, duration, window, behavior)
    steps_in_window = sum(r["messages_in_window"] for r in results) * STEPS_PER_TRAJECTORY
    steps_total = sum(r["messages_total"] for r in results) * STEPS_PER_TRAJECTORY
    rate = steps_in_window / duration
    metrics = {
        "accepted_steps_per_s": rate,
        "accepted_mb_per_s": rate / STEPS_PER_TRAJECTORY * pool.payload_bytes / 1e6,
        "messages_per_s": rate / STEPS_PER_TRAJECTORY,
        "steps_total": steps_total,
    }
    if target != "sink":
        drained_at, total, buffered = _drain(server.address, behavior)
        metrics["processed_steps_per_s"] = total / max(drained_at - start_at, 1e-9)
        metrics["drain_seconds_after_window"] = max(0.0, drained_at - max(r["finished_at"] for r in results))
        metrics["server_total_steps"] = total
    rec.add("ingestion", f"{size_name}/c{n}/{target}", metrics, {
        "obs": size_name, "obs_shape": list(shape), "clients": n, "target": target, "duration_s": duration,
        "steps_per_message": STEPS_PER_TRAJECTORY, "payload_bytes": pool.payload_bytes, "in_flight_per_client": window,
    })
    log(f"  -> {rate:,.0f} steps/s accepted" + (f", {metrics['processed_steps_per_s']:,.0f} processed" if target != "sink" else ""))
    return rate
