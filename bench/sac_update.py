"""Micro-benchmark: SAC gradient steps alone, Ludus vs Stable-Baselines3, one process, one torch thread.

Both sides get the bench.sac hyperparameters (Pendulum-v1 sizes: 3 observations, 1 action, batch
256, 256x256 ReLU) and a replay buffer filled with the same number of random transitions; then N
gradient steps are timed, alternating the sides in rounds so that machine noise hits both:

- Ludus: SACTrainer.update_policy (sampling + every signal's rewards + SACOptimizer.update, the
  stats of the burst), exactly the server's per-burst work minus publishing the policy.
- SB3: SAC.train(gradient_steps=N, batch_size=256).

`python -m bench.sac_update [--steps N] [--rounds R] [--profile]` prints microseconds per gradient
step for each side and the ratio Ludus/SB3; --profile prints torch.profiler's table of one Ludus burst.
"""
from __future__ import annotations

import argparse
import time
from typing import Callable, Dict, List

import numpy as np

from bench.sac import SACHyper, ludus_settings

OBS, ACT = 3, 1


def _transitions(n: int, seed: int = 0) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"obs": rng.normal(size=(n, OBS)).astype(np.float32), "next_obs": rng.normal(size=(n, OBS)).astype(np.float32),
            "actions": np.tanh(rng.normal(size=(n, ACT))).astype(np.float32),
            "rewards": -rng.random(n).astype(np.float32) * 10, "dones": (rng.random(n) < 0.005).astype(np.float32)}


def ludus_side(hp: SACHyper, fill: int, seed: int = 0):
    """(trainer, run(n)): a trainer whose replay buffer holds `fill` steps, and a function running n updates."""
    from ludus_service.buffer import ACTION_MASK, CONTINUOUS_ACTION, DISCRETE_ACTION, DONE, next_obs_key, obs_key
    from ludus_service.reward_signals import ENVIRONMENT_REWARDS
    from ludus_service.sac_trainer import SACTrainer
    from ludus_service.settings import resolve_settings
    from ludus_service.spec import ActionSpec, BehaviorSpec, ObservationSpec

    spec = BehaviorSpec((ObservationSpec("obs", (OBS,)),), ActionSpec(ACT, ()))
    settings = resolve_settings(ludus_settings(hp, 10 ** 9))
    trainer = SACTrainer(spec, settings, seed=seed)
    t = _transitions(fill, seed)
    trainer.replay.add({obs_key(0): t["obs"], next_obs_key(0): t["next_obs"], CONTINUOUS_ACTION: t["actions"],
                        DISCRETE_ACTION: np.zeros((fill, 0), np.int64), ACTION_MASK: np.ones((fill, 0), bool),
                        ENVIRONMENT_REWARDS: t["rewards"], DONE: t["dones"]})

    def run(n: int) -> Dict[str, float]:
        trainer.optimizer.global_step = hp.learning_starts + (trainer.updates_done + n) * int(hp.train_freq / hp.gradient_steps)
        return trainer.update_policy(max_updates=n)
    return trainer, run


def sb3_side(hp: SACHyper, fill: int, seed: int = 0):
    import gymnasium as gym
    import torch
    from stable_baselines3 import SAC
    from stable_baselines3.common.logger import configure

    env = gym.make("Pendulum-v1")
    activation = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh, "swish": torch.nn.SiLU}[hp.activation]
    model = SAC("MlpPolicy", env, learning_rate=hp.learning_rate, buffer_size=hp.buffer_size, learning_starts=hp.learning_starts,
                batch_size=hp.batch_size, tau=hp.tau, gamma=hp.gamma, train_freq=hp.train_freq, gradient_steps=hp.gradient_steps,
                ent_coef="auto_1.0", policy_kwargs=dict(net_arch=list(hp.net_arch), activation_fn=activation),
                seed=seed, device="cpu", verbose=0)
    model.set_logger(configure(None, [""]))
    t = _transitions(fill, seed)
    rb = model.replay_buffer
    rb.observations[:fill, 0] = t["obs"]
    rb.next_observations[:fill, 0] = t["next_obs"]
    rb.actions[:fill, 0] = t["actions"]
    rb.rewards[:fill, 0] = t["rewards"]
    rb.dones[:fill, 0] = t["dones"]
    rb.pos = fill

    def run(n: int) -> None:
        model.train(gradient_steps=n, batch_size=hp.batch_size)
    return model, run


def _time(run: Callable[[int], object], n: int) -> float:
    started = time.perf_counter()
    run(n)
    return (time.perf_counter() - started) / n * 1e6


def profile_ludus(run: Callable[[int], object], n: int, rows: int = 30) -> None:
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        run(n)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main(argv: List[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=256, help="gradient steps per timed burst")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds (the median is reported)")
    p.add_argument("--fill", type=int, default=20_000, help="transitions in the replay buffers")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--profile", action="store_true", help="torch.profiler table of one Ludus burst")
    p.add_argument("--only", choices=["ludus", "sb3"], default=None)
    args = p.parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    hp = SACHyper()
    sides = {}
    if args.only != "sb3":
        sides["ludus"] = ludus_side(hp, args.fill)[1]
    if args.only != "ludus":
        sides["sb3"] = sb3_side(hp, args.fill)[1]
    for run in sides.values():  # warm-up (allocator, Adam state, first-call overheads)
        run(16)
    if args.profile and "ludus" in sides:
        profile_ludus(sides["ludus"], args.steps)
    times: Dict[str, List[float]] = {k: [] for k in sides}
    for r in range(args.rounds):
        order = list(sides) if r % 2 == 0 else list(sides)[::-1]
        for k in order:
            times[k].append(_time(sides[k], args.steps))
    med = {k: float(np.median(v)) for k, v in times.items()}
    for k, v in times.items():
        print(f"{k:6s} {med[k]:8.0f} us/step (median of {len(v)} x {args.steps} steps; all: {', '.join(f'{x:.0f}' for x in v)})")
    if len(med) == 2:
        print(f"ratio ludus/sb3 {med['ludus'] / med['sb3']:.3f}")


if __name__ == "__main__":
    main()
