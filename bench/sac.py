"""Section `sac`: Ludus SAC (through gRPC) vs Stable-Baselines3 SAC on Pendulum-v1, same hyperparameters.

Each side runs in a fresh process with one torch thread; the Ludus side starts a `ludus-server`
subprocess and trains with ludus_client.gym_runner.run in its off-policy lockstep (after every
`time_horizon` env steps the runner waits until the server has processed them and run the updates
they owe, as ML-Agents' SAC loop interleaves acting and updating). Return = mean undiscounted return
of the last 10 training episodes on both sides (Pendulum episodes are 200 steps, so 20k steps give
100 episodes). Seconds: SB3's model.learn(N) vs the runner's training loop, both including every
gradient step.

`python -m bench.run --only sac` (the short mode runs 1 seed, full 3).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np

from bench.common import Recorder, ServerProcess, WorkerError, geomean, log, run_worker, set_torch_threads

WINDOW = 10
ENV_ID = "Pendulum-v1"


@dataclass
class SACHyper:
    """SB3 SAC hyperparameters (SB3's names), shared by both sides."""

    learning_rate: float = 1e-3
    buffer_size: int = 50_000
    learning_starts: int = 1000
    batch_size: int = 256
    tau: float = 0.005
    gamma: float = 0.99
    train_freq: int = 1
    gradient_steps: int = 1
    net_arch: List[int] = field(default_factory=lambda: [256, 256])
    activation: str = "relu"
    #: Ludus: env steps of each env between lockstep syncs (SB3 updates after every step).
    time_horizon: int = 64


def ludus_settings(hp: SACHyper, total_steps: int) -> Dict[str, Any]:
    """The SB3 hyperparameters in ML-Agents' schema: learning_starts = buffer_init_steps,
    train_freq / gradient_steps = steps_per_update; entropy coefficient learned from 1.0 with the
    target -action_dim on both sides."""
    return {
        "trainer_type": "sac",
        "hyperparameters": {
            "batch_size": hp.batch_size,
            "buffer_size": hp.buffer_size,
            "buffer_init_steps": hp.learning_starts,
            "learning_rate": hp.learning_rate,
            "learning_rate_schedule": "constant",
            "tau": hp.tau,
            "steps_per_update": hp.train_freq / hp.gradient_steps,
            "init_entcoef": 1.0,
        },
        "network_settings": {"normalize": False, "hidden_units": hp.net_arch[0], "num_layers": len(hp.net_arch),
                             "activation": hp.activation},
        "reward_signals": {"extrinsic": {"gamma": hp.gamma, "strength": 1.0}},
        "time_horizon": hp.time_horizon,
        "max_steps": total_steps,
    }


def _summarise(returns: List[float], seconds: float, steps: int, updates: int) -> Dict[str, Any]:
    tail = returns[-WINDOW:]
    return {"final_mean_return": float(np.mean(tail)) if tail else float("nan"), "episodes": len(returns),
            "seconds": seconds, "env_steps": steps, "updates": updates, "returns": [float(r) for r in returns]}


# -- workers (fresh processes, bench.worker) --------------------------------------------------------
def sb3_worker(steps: int, seed: int, hyper: Dict[str, Any]) -> Dict[str, Any]:
    set_torch_threads(1)
    import torch
    from stable_baselines3 import SAC
    from stable_baselines3.common.env_util import make_vec_env

    hp = SACHyper(**hyper)
    env = make_vec_env(ENV_ID, n_envs=1, seed=seed)  # Monitor-wrapped: episode returns in the infos
    activation = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh, "swish": torch.nn.SiLU}[hp.activation]
    model = SAC("MlpPolicy", env, learning_rate=hp.learning_rate, buffer_size=hp.buffer_size, learning_starts=hp.learning_starts,
                batch_size=hp.batch_size, tau=hp.tau, gamma=hp.gamma, train_freq=hp.train_freq, gradient_steps=hp.gradient_steps,
                ent_coef="auto_1.0", policy_kwargs=dict(net_arch=list(hp.net_arch), activation_fn=activation),
                seed=seed, device="cpu", verbose=0)
    started = time.perf_counter()
    model.learn(total_timesteps=steps)
    seconds = time.perf_counter() - started
    returns = [float(r) for r in env.envs[0].get_episode_rewards()]
    env.close()
    return _summarise(returns, seconds, int(model.num_timesteps), int(model._n_updates))


def ludus_worker(steps: int, seed: int, hyper: Dict[str, Any], server: Optional[str] = None) -> Dict[str, Any]:
    from ludus_client import LudusClient
    from ludus_client.gym_runner import run

    hp = SACHyper(**hyper)
    proc = None
    if server is None:
        proc = ServerProcess(seed=seed).start()
        server = proc.address
    try:
        result = run(ENV_ID, server, steps, num_envs=1, behavior_name="Pendulum_sac", settings=ludus_settings(hp, steps),
                     seed=seed, window=WINDOW, progress=False, sync=True)
        with LudusClient(server) as client:
            stats = dict(client.describe("Pendulum_sac").latest_update_stats)
    finally:
        if proc is not None:
            proc.stop()
    out = _summarise(result.returns, result.seconds, result.env_steps, int(result.policy_version - 1))
    out["latest_stats"] = stats
    return out


# -- section ----------------------------------------------------------------------------------------
NOTES = [
    "SAC on Pendulum-v1: Ludus (gym_runner lockstep against a ludus-server subprocess) vs SB3 SAC, same "
    "hyperparameters (lr 1e-3, batch 256, buffer 50k, 1000 warm-up steps, tau 0.005, gamma 0.99, one gradient "
    "step per env step, 256x256 ReLU, entropy coefficient learned from 1.0). Return = mean of the last 10 "
    "training episodes. Known differences: SB3 acts uniformly at random during its warm-up, Ludus with the "
    "untrained policy (ML-Agents' buffer_init_steps); SB3 trains twin target Qs (SAC v2), Ludus ML-Agents' "
    "value critic with a Polyak target (SAC v1); Ludus syncs its policy every 64 env steps, SB3 every step. "
    "Ludus 'updates' counts policy versions (bursts of <= 256 gradient steps).",
]


def plan(mode: str) -> Dict[str, Any]:
    if mode == "smoke":
        return {"steps": 600, "seeds": [0], "hyper": {"learning_starts": 300, "batch_size": 64, "net_arch": [32, 32]}}
    if mode == "short":
        return {"steps": 20_000, "seeds": [0], "hyper": {}}
    return {"steps": 20_000, "seeds": [0, 1, 2], "hyper": {}}


def run_section(rec: Recorder, mode: str) -> None:
    p = plan(mode)
    for text in NOTES:
        rec.note("sac", text)
    hp = SACHyper(**{**asdict(SACHyper()), **p["hyper"]})
    hyper, steps = asdict(hp), p["steps"]
    results: Dict[str, List[Dict[str, Any]]] = {"sb3": [], "ludus": []}
    ratios: List[float] = []
    for k, seed in enumerate(p["seeds"]):
        order = ["sb3", "ludus"] if k % 2 == 0 else ["ludus", "sb3"]
        pair = {}
        for side in order:
            log(f"sac {ENV_ID} seed {seed}: {side} ({steps} steps)")
            try:
                out = run_worker(f"bench.sac:{side}_worker", {"steps": steps, "seed": seed, "hyper": hyper}, timeout=7200)
            except WorkerError as err:
                rec.note("sac", f"{ENV_ID} seed {seed} {side}: FAILED: {str(err)[:500]}")
                continue
            pair[side] = out
            results[side].append(out)
            rec.add("sac", f"{ENV_ID}/{side}/seed{seed}", {
                "final_mean_return": out["final_mean_return"], "seconds": out["seconds"], "env_steps": out["env_steps"],
                "episodes": out["episodes"], "updates": out["updates"], "steps_per_s": out["env_steps"] / max(out["seconds"], 1e-9),
            }, {"env": ENV_ID, "side": side, "seed": seed, "order": order.index(side), "hyper": hyper,
                "ludus_settings": ludus_settings(hp, steps) if side == "ludus" else None})
            log(f"  -> return {out['final_mean_return']:.1f}, {out['seconds']:.1f}s")
        if len(pair) == 2:
            ratio = pair["ludus"]["seconds"] / pair["sb3"]["seconds"]
            ratios.append(ratio)
            rec.add("sac", f"{ENV_ID}/ratio/seed{seed}", {
                "wallclock_ratio_ludus_over_sb3": ratio,
                "return_diff_ludus_minus_sb3": pair["ludus"]["final_mean_return"] - pair["sb3"]["final_mean_return"],
            }, {"env": ENV_ID, "seed": seed, "first": order[0]})
    if results["sb3"] and results["ludus"]:
        rec.add("sac", f"{ENV_ID}/summary", {
            "sb3_final_return_mean": float(np.mean([r["final_mean_return"] for r in results["sb3"]])),
            "ludus_final_return_mean": float(np.mean([r["final_mean_return"] for r in results["ludus"]])),
            "sb3_seconds_mean": float(np.mean([r["seconds"] for r in results["sb3"]])),
            "ludus_seconds_mean": float(np.mean([r["seconds"] for r in results["ludus"]])),
            "wallclock_ratio_geomean": geomean(ratios) if ratios else float("nan"),
            "seeds": len(ratios),
        }, {"env": ENV_ID, "steps": steps, "hyper": hyper})


# -- report ---------------------------------------------------------------------------------------
def render(rec: Recorder) -> str:
    """Markdown for bench/report.py: the summary, then every run."""
    def f(value: float, digits: int = 2) -> str:
        return "n/a" if value is None or value != value else f"{value:.{digits}f}"
    out = []
    for r in rec.section_records("sac"):
        if r["name"].endswith("/summary"):
            m = r["metrics"]
            out.append("| steps | seeds | SB3 return (last 10 ep.) | Ludus return (last 10 ep.) | SB3 s | Ludus s | wall-clock Ludus/SB3 (geomean) |\n"
                       "|---|---|---|---|---|---|---|\n"
                       f"| {r['params']['steps']} | {int(m['seeds'])} | {f(m['sb3_final_return_mean'], 1)} | "
                       f"{f(m['ludus_final_return_mean'], 1)} | {f(m['sb3_seconds_mean'], 1)} | {f(m['ludus_seconds_mean'], 1)} | "
                       f"{f(m['wallclock_ratio_geomean'])} |")
    runs = [r for r in rec.section_records("sac") if "/ratio/" not in r["name"] and not r["name"].endswith("/summary")]
    if runs:
        rows = ["| seed | side | ran | final return | seconds | env steps/s | episodes | updates |", "|---|---|---|---|---|---|---|---|"]
        rows += [f"| {r['params']['seed']} | {r['params']['side']} | {r['params']['order'] + 1} | {f(r['metrics']['final_mean_return'], 1)} | "
                 f"{f(r['metrics']['seconds'], 1)} | {f(r['metrics']['steps_per_s'], 0)} | {int(r['metrics']['episodes'])} | "
                 f"{int(r['metrics']['updates'])} |" for r in runs]
        out.append("Per run:\n\n" + "\n".join(rows))
    return "\n\n".join(out)
