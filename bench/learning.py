"""Section `learning`: Ludus (through gRPC) vs Stable-Baselines3 PPO, same hyperparameters and network.

Each run is a fresh process with one torch thread. The Ludus side starts a `ludus-server` subprocess
(one torch thread, the CLI's default on 2 cores) and trains with ludus_client.gym_runner.run(sync=True),
so it pays for everything a real deployment pays for: two processes, gRPC on loopback, safetensors
policy exchange. The training return is measured the same way on both sides: the undiscounted return
of every training episode (SB3: its Monitor wrapper), mean over the last 20 episodes.
"""
from __future__ import annotations

import os

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np

from bench.common import Recorder, ServerProcess, WorkerError, geomean, log, run_worker, set_torch_threads

WINDOW = 20


@dataclass
class PPOHyper:
    """SB3 PPO hyperparameters (names as SB3's), shared by both sides."""

    n_envs: int = 1
    n_steps: int = 2048
    batch_size: int = 64
    n_epochs: int = 10
    learning_rate: float = 3e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    net_arch: List[int] = field(default_factory=lambda: [64, 64])
    activation: str = "tanh"


#: Per env: SB3 defaults for the classic-control discrete tasks; rl-zoo's Pendulum-v1 PPO settings
#: without gSDE (Ludus has no state-dependent exploration) for the continuous one.
ENV_HYPER: Dict[str, PPOHyper] = {
    "CartPole-v1": PPOHyper(),
    "Acrobot-v1": PPOHyper(),
    "Pendulum-v1": PPOHyper(n_envs=4, n_steps=1024, gamma=0.9, gae_lambda=0.95, n_epochs=10, learning_rate=1e-3, clip_range=0.2),
}


def ludus_settings(hp: PPOHyper, total_steps: int) -> Dict[str, Any]:
    """The SB3 hyperparameters in ML-Agents' schema (see bench/README.md for the mapping table)."""
    if len(set(hp.net_arch)) != 1:
        raise ValueError("Ludus MLPs have equal hidden layers")
    return {
        "trainer_type": "ppo",
        "hyperparameters": {
            "batch_size": hp.batch_size,
            "buffer_size": hp.n_steps * hp.n_envs,
            "learning_rate": hp.learning_rate,
            "learning_rate_schedule": "constant",
            "beta": hp.ent_coef,
            "beta_schedule": "constant",
            "epsilon": hp.clip_range,
            "epsilon_schedule": "constant",
            "lambd": hp.gae_lambda,
            "num_epoch": hp.n_epochs,
            # SB3's update, exactly: global grad-norm clipping and an unclipped (MSE) value loss.
            "max_grad_norm": hp.max_grad_norm,
            "clip_value_loss": False,
        },
        "network_settings": {
            "normalize": False,
            "hidden_units": hp.net_arch[0],
            "num_layers": len(hp.net_arch),
            "activation": hp.activation,
        },
        "reward_signals": {"extrinsic": {"gamma": hp.gamma, "strength": 1.0}},
        "time_horizon": hp.n_steps,
        "max_steps": total_steps,
    }


def _summarise(returns: List[float], curve: List[tuple], steps: int) -> Dict[str, Any]:
    pairs = [(s, r) for (s, _), r in zip(curve, returns) if s <= steps]
    kept = [r for _, r in pairs]
    tail = kept[-WINDOW:]
    return {
        "final_mean_return": float(np.mean(tail)) if tail else float("nan"),
        "episodes": len(kept),
        "curve": [[int(s), float(m)] for (s, m) in curve if s <= steps],
    }


# -- workers (run in fresh processes by bench.worker) ---------------------------------------------
def sb3_worker(env_id: str, steps: int, seed: int, hyper: Dict[str, Any]) -> Dict[str, Any]:
    set_torch_threads(1)
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    hp = PPOHyper(**hyper)

    class EpisodeLog(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.returns: List[float] = []
            self.curve: List[tuple] = []

        def _on_step(self) -> bool:
            for i, info in enumerate(self.locals["infos"]):
                episode = info.get("episode")
                if episode is not None:  # Monitor's end-of-episode record
                    self.returns.append(float(episode["r"]))
                    step = self.num_timesteps - len(self.locals["infos"]) + i + 1
                    self.curve.append((step, float(np.mean(self.returns[-WINDOW:]))))
            return True

    env = make_vec_env(env_id, n_envs=hp.n_envs, seed=seed)  # DummyVecEnv of Monitor-wrapped envs
    activation = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU, "swish": torch.nn.SiLU}[hp.activation]
    model = PPO(
        "MlpPolicy", env, n_steps=hp.n_steps, batch_size=hp.batch_size, n_epochs=hp.n_epochs,
        learning_rate=hp.learning_rate, gamma=hp.gamma, gae_lambda=hp.gae_lambda, clip_range=hp.clip_range,
        ent_coef=hp.ent_coef, vf_coef=hp.vf_coef, max_grad_norm=hp.max_grad_norm,
        policy_kwargs=dict(net_arch=dict(pi=list(hp.net_arch), vf=list(hp.net_arch)), activation_fn=activation),
        seed=seed, device="cpu", verbose=0,
    )
    callback = EpisodeLog()
    started = time.perf_counter()
    model.learn(total_timesteps=steps, callback=callback)
    seconds = time.perf_counter() - started
    env.close()
    out = _summarise(callback.returns, callback.curve, steps)
    out.update(seconds=seconds, env_steps=int(model.num_timesteps), updates=int(model._n_updates // max(hp.n_epochs, 1)))
    return out


def ludus_worker(env_id: str, steps: int, seed: int, hyper: Dict[str, Any], server: Optional[str] = None) -> Dict[str, Any]:
    """gym_runner.run against a `ludus-server` subprocess (or `server` if given)."""
    from ludus_client.gym_runner import run

    hp = PPOHyper(**hyper)
    settings = ludus_settings(hp, steps)
    buffer = hp.n_steps * hp.n_envs
    # gym_runner leaves the open pieces of the last rollout unsubmitted when `steps` runs out; one more
    # env step makes it cut (and wait for) the last rollout, so N steps = N / buffer_size updates,
    # exactly what SB3's learn(N) does.
    run_steps = steps + hp.n_envs if steps % buffer == 0 else steps
    proc = None
    if server is None:
        proc = ServerProcess(seed=seed).start()
        server = proc.address
    try:
        result = run(env_id, server, run_steps, num_envs=hp.n_envs, behavior_name=env_id.replace("-", "_"),
                     settings=settings, seed=seed, window=WINDOW, progress=False, sync=True)
    finally:
        if proc is not None:
            proc.stop()
    out = _summarise(result.returns, result.curve, steps)
    out.update(seconds=result.seconds, env_steps=steps, updates=int(result.policy_version - 1))
    return out


# -- section ----------------------------------------------------------------------------------------
#: Notes printed under the section in the report.
NOTES = [
    "Same hyperparameters and 64x64 tanh actor/critic on both sides (mapping and known differences: "
     "bench/README.md). Return = mean undiscounted return of the last 20 training episodes. Ludus: "
     "gym_runner.run(sync=True) against a ludus-server subprocess; seconds = the run's training loop "
     "(SB3: model.learn), both including every update.",
]


def plan(mode: str) -> Dict[str, Any]:
    if mode == "smoke":
        return {"envs": {"CartPole-v1": 512}, "seeds": [0], "hyper": {"n_steps": 256}}
    if mode == "short":
        return {"envs": {"CartPole-v1": 40960}, "seeds": [0, 1], "hyper": {}}
    envs = {"CartPole-v1": 100_000, "Acrobot-v1": 100_000, "Pendulum-v1": 200_000}
    only = [e for e in os.environ.get("LUDUS_BENCH_ENVS", "").split(",") if e]  # e.g. re-measure one env after a fix
    return {"envs": {e: n for e, n in envs.items() if not only or e in only}, "seeds": [0, 1, 2], "hyper": {}}


def _round_steps(steps: int, hp: PPOHyper) -> int:
    """Whole rollouts only, so both sides do the same number of updates."""
    buffer = hp.n_steps * hp.n_envs
    return max(buffer, (steps // buffer) * buffer)


def run_section(rec: Recorder, mode: str) -> None:
    p = plan(mode)
    for text in NOTES:
        rec.note("learning", text)
    curves: Dict[str, Any] = rec.side.setdefault("learning_curves", {})
    for env_id, steps in p["envs"].items():
        hp = ENV_HYPER[env_id]
        hp = PPOHyper(**{**asdict(hp), **p["hyper"]})
        if mode == "smoke":
            hp.batch_size = min(hp.batch_size, hp.n_steps)
        steps = _round_steps(steps, hp)
        hyper = asdict(hp)
        results: Dict[str, List[Dict[str, Any]]] = {"sb3": [], "ludus": []}
        for k, seed in enumerate(p["seeds"]):
            order = ["sb3", "ludus"] if k % 2 == 0 else ["ludus", "sb3"]
            pair = {}
            for side in order:
                log(f"learning {env_id} seed {seed}: {side} ({steps} steps)")
                target = "bench.learning:sb3_worker" if side == "sb3" else "bench.learning:ludus_worker"
                try:
                    out = run_worker(target, {"env_id": env_id, "steps": steps, "seed": seed, "hyper": hyper}, timeout=7200)
                except WorkerError as err:
                    rec.note("learning", f"{env_id} seed {seed} {side}: FAILED: {str(err)[:500]}")
                    continue
                pair[side] = out
                results[side].append(out)
                curves.setdefault(env_id, {}).setdefault(side, []).append({"seed": seed, "curve": out["curve"]})
                rec.add("learning", f"{env_id}/{side}/seed{seed}", {
                    "final_mean_return": out["final_mean_return"], "seconds": out["seconds"],
                    "env_steps": out["env_steps"], "episodes": out["episodes"], "updates": out["updates"],
                    "steps_per_s": out["env_steps"] / max(out["seconds"], 1e-9),
                }, {"env": env_id, "side": side, "seed": seed, "order": order.index(side), "hyper": hyper,
                    "ludus_settings": ludus_settings(hp, steps) if side == "ludus" else None})
                log(f"  -> return {out['final_mean_return']:.1f}, {out['seconds']:.1f}s")
            if len(pair) == 2:
                rec.add("learning", f"{env_id}/ratio/seed{seed}", {
                    "wallclock_ratio_ludus_over_sb3": pair["ludus"]["seconds"] / pair["sb3"]["seconds"],
                    "return_diff_ludus_minus_sb3": pair["ludus"]["final_mean_return"] - pair["sb3"]["final_mean_return"],
                }, {"env": env_id, "seed": seed, "first": order[0]})
        if results["sb3"] and results["ludus"]:
            ratios = [r["metrics"]["wallclock_ratio_ludus_over_sb3"] for r in rec.section_records("learning")
                      if r["name"].startswith(f"{env_id}/ratio/")]
            s_ret = [r["final_mean_return"] for r in results["sb3"]]
            l_ret = [r["final_mean_return"] for r in results["ludus"]]
            rec.add("learning", f"{env_id}/summary", {
                "sb3_final_return_mean": float(np.mean(s_ret)), "sb3_final_return_std": float(np.std(s_ret)),
                "ludus_final_return_mean": float(np.mean(l_ret)), "ludus_final_return_std": float(np.std(l_ret)),
                "sb3_seconds_mean": float(np.mean([r["seconds"] for r in results["sb3"]])),
                "ludus_seconds_mean": float(np.mean([r["seconds"] for r in results["ludus"]])),
                "wallclock_ratio_geomean": geomean(ratios),
                "seeds": len(ratios),
            }, {"env": env_id, "steps": steps, "hyper": hyper})
