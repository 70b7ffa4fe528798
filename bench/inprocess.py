"""The Ludus learner without the service: Gymnasium envs + LocalPolicy + PPOTrainer in one process.

`run_inprocess` is ludus_client.gym_runner.run(sync=True) with the network taken out: the same
acting code (LocalPolicy in numpy), the same wire messages (TrajectoryBuilder -> pb.Trajectory),
the same server-side validation (parse_trajectory) and the same PPOTrainer, but trajectories are
handed to the trainer directly, updates run inline when the buffer is full, and the new actor is
re-exported straight into a LocalPolicy (no safetensors, no WatchPolicy). Comparing its wall-clock
with the service's at equal steps gives the "remote tax".
"""
from __future__ import annotations

import time
from typing import Any, Dict, Optional

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from ludus.v1 import trainer_pb2 as pb
from ludus_client.gym_runner import ActionAdapter, AgentRecorder, RunResult, spec_from_spaces
from ludus_client.policy import LocalPolicy
from ludus_service.settings import resolve_settings
from ludus_service.trainer import PPOTrainer
from ludus_service.validation import parse_trajectory


def run_inprocess(
    env_id: str,
    steps: int,
    num_envs: int = 1,
    settings: Optional[Dict[str, Any]] = None,
    seed: int = 0,
    window: int = 20,
    device: str = "cpu",
    final_update: bool = True,
) -> RunResult:
    """Train `env_id` for `steps` env steps, on-policy (one rollout of buffer_size steps per version).

    With `final_update`, the last rollout is cut and trained on too, so a run of N steps performs
    N / buffer_size updates, like SB3's learn(N).
    """
    envs = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync",
                        vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP})
    spec = spec_from_spaces(envs.single_observation_space, envs.single_action_space)
    adapter = ActionAdapter(envs.single_action_space)
    trainer_settings = resolve_settings(settings)
    trainer = PPOTrainer(spec, trainer_settings, device, seed)
    time_horizon = trainer_settings.time_horizon
    rollout_steps = trainer_settings.hyperparameters.buffer_size
    rng = np.random.default_rng(seed)

    def export() -> LocalPolicy:
        tensors, architecture = trainer.optimizer.actor.export()
        return LocalPolicy(tensors, architecture, trainer.policy_version)

    policy = export()

    def submit(msg: pb.Trajectory) -> None:
        nonlocal policy
        trainer.process_trajectory(parse_trajectory(msg, spec))
        if trainer.ready_to_update():
            trainer.update_policy()
            policy = export()

    recorder = AgentRecorder(spec, env_id, num_envs, time_horizon, submit, window)
    started = time.perf_counter()
    obs, _ = envs.reset(seed=seed)
    env_steps, acted_steps = 0, 0

    rollout_version = policy.version

    def end_rollout() -> None:
        nonlocal acted_steps, rollout_version
        recorder.flush(obs)  # bootstrap every open piece, as gym_runner does
        if policy.version == rollout_version:  # (the update may already have run at the rollout's last step)
            raise RuntimeError(f"rollout of {acted_steps} steps did not fill buffer_size {rollout_steps}")
        acted_steps, rollout_version = 0, policy.version

    try:
        while env_steps < steps:
            if acted_steps >= rollout_steps:
                end_rollout()
            obs = recorder.step(envs, adapter, policy, obs, rng, env_steps)
            env_steps += num_envs
            acted_steps += num_envs
        if final_update and acted_steps >= rollout_steps:
            end_rollout()
    finally:
        envs.close()
    return RunResult(env_steps, len(recorder.returns), recorder.mean_return, False, time.perf_counter() - started,
                     policy.version, recorder.returns, recorder.curve)
