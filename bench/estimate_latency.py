"""Section `estimate_latency`: EstimateValues latency for 1,000-step trajectories.

Behaviour: 64-float VECTOR observation, 2 continuous actions, ML-Agents' default network (2 layers of
128 units, swish). Each caller is its own process with its own channel; the request (1,000 x 64
float32 observations plus the next observation, done=false) is built once and sent with the
generated stub, one call at a time, after a few warm-up calls. Latency = client-side wall time of
one call. 1 and 16 concurrent callers against one `ludus-server` subprocess.
A `direct` row times the same work without gRPC (PPOTrainer.estimate_values in-process) to split
the latency into compute and transport/decoding.
"""
from __future__ import annotations

import multiprocessing as mp
import time
from typing import Any, Dict, List

from bench.common import Recorder, ServerProcess, log, percentile, run_worker, set_torch_threads

OBS = 64
STEPS = 1000
BEHAVIOR = "estimate_bench"


def _request(seed: int = 0):
    import numpy as np

    from ludus.v1 import trainer_pb2 as pb
    from ludus_client.tensor_codec import to_tensor

    rng = np.random.default_rng(seed)
    return pb.EstimateValuesRequest(
        behavior_name=BEHAVIOR, agent_id=f"caller{seed}", done=False,
        observations=[to_tensor(rng.standard_normal((STEPS, OBS), dtype=np.float32))],
        next_observations=[to_tensor(rng.standard_normal(OBS, dtype=np.float32))],
    )


def _caller(index: int, address: str, calls: int, warmup: int, start_at: float, queue) -> None:
    try:
        import grpc

        from ludus.v1 import trainer_pb2_grpc as pb_grpc

        channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)])
        grpc.channel_ready_future(channel).result(timeout=60)
        stub = pb_grpc.TrainerStub(channel)
        request = _request(index)
        for _ in range(warmup):
            stub.EstimateValues(request, timeout=60)
        delay = start_at - time.time()
        if delay > 0:
            time.sleep(delay)
        latencies: List[float] = []
        for _ in range(calls):
            t0 = time.perf_counter()
            response = stub.EstimateValues(request, timeout=60)
            latencies.append(time.perf_counter() - t0)
        assert len(response.values["extrinsic"].raw_data) == STEPS * 4
        channel.close()
        queue.put(("ok", latencies))
    except Exception as err:  # noqa: BLE001
        queue.put(("error", f"{type(err).__name__}: {err}"))


def direct_worker(calls: int, warmup: int) -> Dict[str, Any]:
    """The same value estimation without gRPC: decode + PPOTrainer.estimate_values in-process."""
    set_torch_threads(1)
    from ludus_client.spec import BehaviorSpec
    from ludus_service.settings import resolve_settings
    from ludus_service.trainer import PPOTrainer
    from ludus_service.validation import decode_observations

    spec = BehaviorSpec.vector(OBS, continuous_size=2)
    trainer = PPOTrainer(spec, resolve_settings(None), "cpu", 0)
    request = _request(0)
    latencies = []
    for i in range(warmup + calls):
        t0 = time.perf_counter()
        obs = decode_observations(request.observations, spec, "observations", (STEPS,))
        nxt = decode_observations(request.next_observations, spec, "next_observations", ())
        trainer.estimate_values(obs, nxt, False, "a")
        if i >= warmup:
            latencies.append(time.perf_counter() - t0)
    return {"latencies": latencies}


def plan(mode: str) -> Dict[str, Any]:
    if mode == "smoke":
        return {"callers": {1: 20, 2: 5}, "warmup": 2, "direct": False}
    if mode == "short":
        return {"callers": {1: 300, 16: 30}, "warmup": 5}
    return {"callers": {1: 2000, 16: 200}, "warmup": 10}


def _summary(latencies: List[float]) -> Dict[str, float]:
    ms = [x * 1e3 for x in latencies]
    return {"p50_ms": percentile(ms, 50), "p90_ms": percentile(ms, 90), "p99_ms": percentile(ms, 99),
            "mean_ms": sum(ms) / len(ms), "calls": len(ms)}


def run_section(rec: Recorder, mode: str) -> None:
    from ludus_client import BehaviorSpec, LudusClient

    p = plan(mode)
    params = {"obs_floats": OBS, "steps": STEPS, "network": "2x128 swish (ML-Agents default)", "actions": "2 continuous"}
    if p.get("direct", True):
        log("estimate_latency: direct (no gRPC)")
        direct = run_worker("bench.estimate_latency:direct_worker", {"calls": max(p["callers"].values()) * 2, "warmup": p["warmup"]})
        rec.add("estimate_latency", "direct/c1", _summary(direct["latencies"]), {**params, "callers": 1, "path": "in-process, no gRPC"})
    with ServerProcess(seed=0) as server:
        with LudusClient(server.address) as client:
            client.wait_ready(30)
            client.register(BEHAVIOR, BehaviorSpec.vector(OBS, continuous_size=2), None)
        ctx = mp.get_context("spawn")
        for n, calls in p["callers"].items():
            log(f"estimate_latency: {n} caller(s) x {calls} calls")
            queue = ctx.Queue()
            start_at = time.time() + 1.5 + 0.1 * n
            procs = [ctx.Process(target=_caller, args=(i, server.address, calls, p["warmup"], start_at, queue), daemon=True) for i in range(n)]
            wall0 = time.time()
            for proc in procs:
                proc.start()
            latencies: List[float] = []
            errors = []
            for _ in procs:
                status, payload = queue.get(timeout=600)
                if status == "ok":
                    latencies.extend(payload)
                else:
                    errors.append(payload)
            wall = time.time() - max(start_at, wall0)
            for proc in procs:
                proc.join(10)
            if errors:
                rec.note("estimate_latency", f"{n} callers: FAILED: {errors[0][:300]}")
                continue
            metrics = _summary(latencies)
            metrics["calls_per_s"] = len(latencies) / max(wall, 1e-9)
            rec.add("estimate_latency", f"grpc/c{n}", metrics, {**params, "callers": n, "path": "ludus-server subprocess, loopback"})
            log(f"  -> p50 {metrics['p50_ms']:.2f} ms, p99 {metrics['p99_ms']:.2f} ms")
