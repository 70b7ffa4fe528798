"""Section `remote_tax`: the same learner and settings with and without the service, equal steps.

Variants (each a fresh process, one torch thread, CartPole-v1 with the SB3-equivalent settings of
the learning section):
- inprocess: bench.inprocess.run_inprocess, no gRPC, no second process (the baseline).
- service: gym_runner.run against a `ludus-server` subprocess over loopback (the real deployment,
  and the number the remote-tax target applies to).
- service_same_process: start_server() inside the client's process, gRPC over loopback: the pure
  gRPC/serialisation cost, without the second process's extra core and with one shared GIL.
The ratio of each variant's wall-clock to inprocess's, paired within a repetition, is the tax.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Any, Dict, List

from bench.common import Recorder, WorkerError, geomean, log, run_worker, set_torch_threads
from bench.learning import ENV_HYPER, PPOHyper, ludus_settings, ludus_worker

ENV = "CartPole-v1"
VARIANTS = ("inprocess", "service", "service_same_process")


def inprocess_worker(env_id: str, steps: int, seed: int, hyper: Dict[str, Any]) -> Dict[str, Any]:
    set_torch_threads(1)
    from bench.inprocess import run_inprocess

    hp = PPOHyper(**hyper)
    result = run_inprocess(env_id, steps, hp.n_envs, ludus_settings(hp, steps), seed=seed)
    return {"seconds": result.seconds, "env_steps": result.env_steps, "updates": result.policy_version - 1,
            "final_mean_return": result.mean_return}


def same_process_worker(env_id: str, steps: int, seed: int, hyper: Dict[str, Any]) -> Dict[str, Any]:
    set_torch_threads(1)
    from ludus_service.registry import BehaviorRegistry
    from ludus_service.server import start_server

    running = start_server(BehaviorRegistry(device="cpu", seed=seed), host="127.0.0.1", port=0)
    try:
        out = ludus_worker(env_id, steps, seed, hyper, server=f"127.0.0.1:{running.port}")
    finally:
        running.stop(grace=1.0)
    out.pop("curve", None)
    return out


def service_worker(env_id: str, steps: int, seed: int, hyper: Dict[str, Any]) -> Dict[str, Any]:
    out = ludus_worker(env_id, steps, seed, hyper)
    out.pop("curve", None)
    return out


TARGETS = {
    "inprocess": "bench.remote_tax:inprocess_worker",
    "service": "bench.remote_tax:service_worker",
    "service_same_process": "bench.remote_tax:same_process_worker",
}


def plan(mode: str) -> Dict[str, Any]:
    if mode == "smoke":
        return {"steps": 512, "reps": 1, "hyper": {"n_steps": 256}, "variants": ["inprocess", "service"]}
    if mode == "short":
        return {"steps": 12288, "reps": 2, "hyper": {}}
    return {"steps": 61440, "reps": 3, "hyper": {}}


def run_section(rec: Recorder, mode: str) -> None:
    p = plan(mode)
    hp = PPOHyper(**{**asdict(ENV_HYPER[ENV]), **p["hyper"]})
    if mode == "smoke":
        hp.batch_size = min(hp.batch_size, hp.n_steps)
    hyper = asdict(hp)
    steps = p["steps"]
    variants = p.get("variants", list(VARIANTS))
    per_variant: Dict[str, List[float]] = {v: [] for v in variants}
    ratios: Dict[str, List[float]] = {v: [] for v in variants if v != "inprocess"}
    for rep in range(p["reps"]):
        order = list(variants) if rep % 2 == 0 else list(reversed(variants))
        seconds: Dict[str, float] = {}
        for variant in order:
            log(f"remote_tax rep {rep}: {variant} ({steps} steps)")
            try:
                out = run_worker(TARGETS[variant], {"env_id": ENV, "steps": steps, "seed": rep, "hyper": hyper}, timeout=3600)
            except WorkerError as err:
                rec.note("remote_tax", f"rep {rep} {variant}: FAILED: {str(err)[:500]}")
                continue
            seconds[variant] = out["seconds"]
            per_variant[variant].append(out["seconds"])
            rec.add("remote_tax", f"{variant}/rep{rep}", {
                "seconds": out["seconds"], "env_steps": out["env_steps"], "updates": out["updates"],
                "steps_per_s": out["env_steps"] / max(out["seconds"], 1e-9),
            }, {"env": ENV, "variant": variant, "rep": rep, "order": order.index(variant), "hyper": hyper})
            log(f"  -> {out['seconds']:.2f}s, {out['updates']} updates")
        if "inprocess" in seconds:
            for variant in ratios:
                if variant in seconds:
                    ratios[variant].append(seconds[variant] / seconds["inprocess"])
    metrics: Dict[str, float] = {}
    for variant, vals in per_variant.items():
        if vals:
            metrics[f"{variant}_seconds_mean"] = sum(vals) / len(vals)
    for variant, vals in ratios.items():
        if vals:
            metrics[f"tax_{variant}"] = geomean(vals)
    if metrics:
        rec.add("remote_tax", "summary", metrics, {"env": ENV, "steps": steps, "reps": p["reps"], "hyper": hyper})
