"""Section `update_throughput`: samples/s of PPO updates (PPOTrainer.update_policy on a full buffer).

The buffer is filled through process_trajectory with trajectories acted by the current actor (so
log-probabilities are real), then update_policy runs num_epoch shuffled passes of minibatches.
samples/s = buffer_size * num_epoch / seconds of update_policy. Fresh process per case, one torch
thread (the server's default on this 2-core machine). For reference, the same CartPole network and
settings through SB3's PPO.train() (which also clips gradients).
The visual case is one 84x84x3 camera (uint8 frames, as a game sends them) through nature_cnn for
actor and critic, batch 1024.
"""
from __future__ import annotations

import time
from typing import Any, Dict, List

import numpy as np

from bench.common import Recorder, WorkerError, log, run_worker, set_torch_threads

CASES: Dict[str, Dict[str, Any]] = {
    "cartpole_64x64_b64": {"obs": 4, "continuous": 0, "branches": [2], "hidden": 64, "layers": 2, "activation": "tanh",
                           "batch": 64, "buffer": 2048, "epochs": 10},
    "mlp_2x256_obs64_b64": {"obs": 64, "continuous": 4, "branches": [], "hidden": 256, "layers": 2, "activation": "swish",
                            "batch": 64, "buffer": 2048, "epochs": 10},
    "mlp_2x256_obs64_b1024": {"obs": 64, "continuous": 4, "branches": [], "hidden": 256, "layers": 2, "activation": "swish",
                              "batch": 1024, "buffer": 10240, "epochs": 3},
    "nature_cnn_84x84x3_b1024": {"image": [3, 84, 84], "encoder": "nature_cnn", "continuous": 0, "branches": [5], "hidden": 256,
                                 "layers": 1, "activation": "swish", "batch": 1024, "buffer": 2048, "epochs": 3},
}


def _spec(case: Dict[str, Any]):
    from ludus.v1 import trainer_pb2 as pb
    from ludus_client.spec import ActionSpec, BehaviorSpec, ObservationSpec

    if "image" in case:
        return BehaviorSpec((ObservationSpec("camera", tuple(case["image"]), pb.OBSERVATION_KIND_VISUAL),),
                            ActionSpec(case["continuous"], tuple(case["branches"])))
    return BehaviorSpec.vector(case["obs"], case["continuous"], case["branches"])


def _observations(case: Dict[str, Any], rng: np.random.Generator, leading: tuple) -> np.ndarray:
    if "image" in case:
        return rng.integers(0, 256, size=(*leading, *case["image"]), dtype=np.uint8)
    return rng.standard_normal((*leading, case["obs"]), dtype=np.float32)


def _settings(case: Dict[str, Any]) -> Dict[str, Any]:
    return {
        "hyperparameters": {"batch_size": case["batch"], "buffer_size": case["buffer"], "num_epoch": case["epochs"],
                            "learning_rate_schedule": "constant", "beta": 0.0},
        "network_settings": {"hidden_units": case["hidden"], "num_layers": case["layers"], "activation": case["activation"],
                             "vis_encode_type": case.get("encoder", "simple")},
        "time_horizon": 64,
    }


def ludus_worker(case: Dict[str, Any], repeats: int, device: str = "cpu", threads: int = 1) -> Dict[str, Any]:
    set_torch_threads(threads)
    import torch

    from ludus_client.policy import LocalPolicy
    from ludus_client.trajectory import TrajectoryBuilder
    from ludus_service.settings import resolve_settings
    from ludus_service.trainer import PPOTrainer
    from ludus_service.validation import parse_trajectory

    spec = _spec(case)
    trainer = PPOTrainer(spec, resolve_settings(_settings(case)), device, 0)
    rng = np.random.default_rng(0)
    horizon = 64

    def fill() -> None:
        tensors, arch = trainer.optimizer.actor.export()
        policy = LocalPolicy(tensors, arch, trainer.policy_version)
        agent = 0
        while not trainer.ready_to_update():
            builder = TrajectoryBuilder(spec, f"a{agent}")
            agent += 1
            obs = _observations(case, rng, (horizon,))
            out = policy.act([obs], rng=rng)
            for t in range(horizon):
                builder.add_step([obs[t]], out.continuous_actions[t], out.discrete_actions[t], out.continuous_log_probs[t],
                                 out.discrete_log_probs[t], float(rng.standard_normal()), policy.version)
            msg = builder.build([_observations(case, rng, ())])
            trainer.process_trajectory(parse_trajectory(msg, spec))

    seconds: List[float] = []
    for i in range(repeats + 1):  # the first update is a warm-up
        fill()
        rows = trainer.buffered_steps
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        trainer.update_policy()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i:
            seconds.append(time.perf_counter() - t0)
    minibatches = (rows // case["batch"]) * case["epochs"]
    best = float(np.median(seconds))
    return {"seconds": best, "samples": (rows // case["batch"]) * case["batch"] * case["epochs"], "minibatches": minibatches,
            "device_name": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu"}


def ludus_cases_worker(cases: Dict[str, Dict[str, Any]], repeats: int, device: str = "cpu", threads: int = 1) -> Dict[str, Any]:
    """Every case in one process (one start-up instead of one per case), one after the other."""
    return {name: ludus_worker(case, repeats, device, threads) for name, case in cases.items()}


def sb3_worker(case: Dict[str, Any], repeats: int) -> Dict[str, Any]:
    """SB3's PPO.train() on a full rollout buffer of the same size and network (reference)."""
    set_torch_threads(1)
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    env = make_vec_env("CartPole-v1", n_envs=1, seed=0)
    model = PPO("MlpPolicy", env, n_steps=case["buffer"], batch_size=case["batch"], n_epochs=case["epochs"],
                policy_kwargs=dict(net_arch=dict(pi=[case["hidden"]] * case["layers"], vf=[case["hidden"]] * case["layers"]),
                                   activation_fn=torch.nn.Tanh), seed=0, device="cpu", verbose=0)
    model.learn(total_timesteps=case["buffer"])  # collect one rollout (and train once: warm-up)
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.train()
        seconds.append(time.perf_counter() - t0)
    return {"seconds": float(np.median(seconds)), "samples": case["buffer"] * case["epochs"],
            "minibatches": (case["buffer"] // case["batch"]) * case["epochs"]}


#: Notes printed under the section in the report.
NOTES = [
    "nature_cnn_84x84x3_b1024: one uint8 84x84x3 camera, nature_cnn encoders for actor and "
     "critic (hidden_units 256, one layer after the encoder), 5-way discrete action.",
]


def plan(mode: str) -> Dict[str, Any]:
    if mode == "smoke":
        return {"cases": ["cartpole_64x64_b64"], "repeats": 1, "sb3": False}
    if mode == "short":
        return {"cases": list(CASES), "repeats": 2, "sb3": True}
    return {"cases": list(CASES), "repeats": 5, "sb3": True}


def run_section(rec: Recorder, mode: str, devices: List[str] | None = None) -> None:
    from bench.common import cpu_model

    p = plan(mode)
    if devices is None:
        devices = ["cpu"]
        import torch

        if torch.cuda.is_available():
            devices.append("cuda")
    cases = {}
    for name in p["cases"]:
        case = dict(CASES[name])
        if mode == "smoke":
            case.update(buffer=256, epochs=2)
        cases[name] = case
    for device in devices:
        log(f"update_throughput: {', '.join(cases)} on {device}")
        try:
            outs = run_worker("bench.update_throughput:ludus_cases_worker", {"cases": cases, "repeats": p["repeats"], "device": device})
        except WorkerError as err:
            rec.note("update_throughput", f"{device}: FAILED: {str(err)[:500]}")
            continue
        for name, out in outs.items():
            device_name = cpu_model() if device == "cpu" else out["device_name"]
            rec.add("update_throughput", f"{name}/ludus/{device}", {
                "samples_per_s": out["samples"] / out["seconds"], "minibatches_per_s": out["minibatches"] / out["seconds"],
                "update_seconds": out["seconds"],
            }, {**cases[name], "impl": "ludus", "device": device, "device_name": device_name, "torch_threads": 1})
            log(f"  -> {name}: {out['samples'] / out['seconds']:,.0f} samples/s")
    if p["sb3"] and "cartpole_64x64_b64" in cases:
        name = "cartpole_64x64_b64"
        log(f"update_throughput {name}: SB3 PPO.train() reference")
        try:
            out = run_worker("bench.update_throughput:sb3_worker", {"case": cases[name], "repeats": p["repeats"]})
            rec.add("update_throughput", f"{name}/sb3/cpu", {
                "samples_per_s": out["samples"] / out["seconds"], "minibatches_per_s": out["minibatches"] / out["seconds"],
                "update_seconds": out["seconds"],
            }, {**cases[name], "impl": "sb3", "device": "cpu", "device_name": cpu_model(), "torch_threads": 1})
            log(f"  -> {out['samples'] / out['seconds']:,.0f} samples/s")
        except WorkerError as err:
            rec.note("update_throughput", f"{name} sb3: FAILED: {str(err)[:500]}")
    for text in NOTES:
        rec.note("update_throughput", text)
