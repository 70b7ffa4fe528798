"""GAE and discounted returns against a plain O(T^2) loop oracle (TorchRL-style), plus the trainer's
handling of done / interrupted / time-horizon cuts."""
from __future__ import annotations

import numpy as np
import pytest

from ludus_service.gae import discounted_returns, gae


def oracle_advantages(rewards, values, bootstrap, gamma, lambd):
    """Direct definition: A_t = sum_k (gamma*lambd)^k delta_{t+k}."""
    T = len(rewards)
    v = list(values) + [bootstrap]
    deltas = [rewards[t] + gamma * v[t + 1] - v[t] for t in range(T)]
    return np.array([sum((gamma * lambd) ** (k - t) * deltas[k] for k in range(t, T)) for t in range(T)])


def oracle_returns(rewards, gamma, bootstrap):
    T = len(rewards)
    return np.array([sum(gamma ** (k - t) * rewards[k] for k in range(t, T)) + gamma ** (T - t) * bootstrap for t in range(T)])


@pytest.mark.parametrize("gamma", [0.0, 0.9, 0.99, 1.0])
@pytest.mark.parametrize("lambd", [0.0, 0.8, 0.95, 1.0])
@pytest.mark.parametrize("T", [1, 7, 64])
def test_gae_matches_oracle(gamma, lambd, T):
    rng = np.random.default_rng(T)
    rewards, values, bootstrap = rng.normal(size=T), rng.normal(size=T), float(rng.normal())
    np.testing.assert_allclose(gae(rewards, values, bootstrap, gamma, lambd),
                               oracle_advantages(rewards, values, bootstrap, gamma, lambd), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gamma", [0.5, 0.99])
def test_gae_with_lambda_one_is_return_minus_value(gamma):
    rng = np.random.default_rng(1)
    rewards, values = rng.normal(size=20), rng.normal(size=20)
    np.testing.assert_allclose(gae(rewards, values, 0.7, gamma, 1.0) + values,
                               oracle_returns(rewards, gamma, 0.7), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gamma", [0.0, 0.9, 0.99])
def test_discounted_returns_match_oracle(gamma):
    rewards = np.random.default_rng(2).normal(size=33)
    np.testing.assert_allclose(discounted_returns(rewards, gamma, 1.5), oracle_returns(rewards, gamma, 1.5), rtol=1e-5, atol=1e-5)


def _trainer_and_traj(done, interrupted, T=10, gamma=0.9, lambd=0.8):
    from ludus_client.spec import BehaviorSpec
    from ludus_client.trajectory import TrajectoryBuilder
    from ludus_service.settings import resolve_settings
    from ludus_service.trainer import PPOTrainer
    from ludus_service.validation import parse_trajectory

    spec = BehaviorSpec.vector(3, discrete_branches=[2])
    settings = resolve_settings({"hyperparameters": {"lambd": lambd, "buffer_size": 1000, "batch_size": 10},
                                 "reward_signals": {"extrinsic": {"gamma": gamma}}})
    trainer = PPOTrainer(spec, settings, seed=0)
    rng = np.random.default_rng(0)
    builder = TrajectoryBuilder(spec, "a")
    for _ in range(T):
        builder.add_step([rng.normal(size=3)], np.zeros(0), np.array([1]), np.zeros(0), np.array([-0.7]), float(rng.normal()), 1)
    next_obs = rng.normal(size=3).astype(np.float32)
    traj = parse_trajectory(builder.build([next_obs], done=done, interrupted=interrupted), spec)
    return trainer, traj, next_obs


@pytest.mark.parametrize("done,interrupted", [(True, False), (False, True), (False, False)])
def test_trainer_bootstraps_by_done_semantics(done, interrupted):
    """done: bootstrap 0; interrupted (step limit) and time-horizon cuts: bootstrap V(next_obs)."""
    gamma, lambd = 0.9, 0.8
    trainer, traj, next_obs = _trainer_and_traj(done, interrupted, gamma=gamma, lambd=lambd)
    values, _, _ = trainer.estimate_values(traj.observations, None, True, "a")
    next_value, _, _ = trainer.estimate_values([next_obs[None]], None, True, "a")
    bootstrap = 0.0 if done else float(next_value["extrinsic"][0])
    trainer.process_trajectory(traj)
    buf = trainer.update_buffer
    expected = oracle_advantages(traj.rewards, values["extrinsic"], bootstrap, gamma, lambd)
    np.testing.assert_allclose(buf["advantages"], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(buf["extrinsic_returns"], expected + values["extrinsic"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(buf["extrinsic_value_estimates"], values["extrinsic"], rtol=1e-6)
