"""PPO loss details: the clipped value loss (intended ML-Agents formula) vs plain MSE, schedules,
gradient-norm clipping."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ludus_client.spec import BehaviorSpec
from ludus_service.buffer import AgentBuffer
from ludus_service.schedules import decayed_value
from ludus_service.settings import resolve_settings
from ludus_service.trainer import PPOTrainer


def _batch(trainer: PPOTrainer, n: int = 64, return_scale: float = 50.0) -> AgentBuffer:
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(n, 4)).astype(np.float32)
    with torch.no_grad():
        values = trainer.optimizer.critic(trainer.optimizer.to_torch_obs([obs]))["extrinsic"].numpy()
    return AgentBuffer({
        "obs_0": obs, "continuous_action": np.zeros((n, 0), np.float32), "discrete_action": rng.integers(0, 2, (n, 1)),
        "continuous_log_probs": np.zeros((n, 0), np.float32), "discrete_log_probs": np.full((n, 1), np.log(0.5), np.float32),
        "action_mask": np.ones((n, 2), bool), "advantages": rng.normal(size=n).astype(np.float32),
        "extrinsic_returns": (values + return_scale).astype(np.float32), "extrinsic_value_estimates": values,
    })


def _trainer(**hp) -> PPOTrainer:
    settings = resolve_settings({"hyperparameters": {"batch_size": 64, "buffer_size": 64, **hp}, "network_settings": {"hidden_units": 16}})
    return PPOTrainer(BehaviorSpec.vector(4, discrete_branches=[2]), settings, seed=0)


def test_value_loss_is_plain_mse_without_clipping_and_the_intended_clipped_loss_with_it():
    # returns = V - 50 and V_old = V + 1: the clipped estimate is V_old - eps = V + 0.8, so
    # plain MSE = 50^2 while the clipped (pessimistic) loss = max(50^2, 50.8^2) = 50.8^2.
    for clip, expected in ((False, 50.0 ** 2), (True, 50.8 ** 2)):
        trainer = _trainer(clip_value_loss=clip, epsilon=0.2, learning_rate_schedule="constant")
        batch = _batch(trainer)
        values = batch["extrinsic_value_estimates"].copy()
        batch["extrinsic_returns"] = values - 50.0
        batch["extrinsic_value_estimates"] = values + 1.0
        assert trainer.optimizer.update(batch, 64)["Losses/Value Loss"] == pytest.approx(expected, rel=1e-4)


def test_max_grad_norm_limits_the_step():
    free, capped = _trainer(learning_rate=1e-2), _trainer(learning_rate=1e-2, max_grad_norm=1e-3)
    before = [p.detach().clone() for p in capped.optimizer.actor.parameters()]
    free.optimizer.update(_batch(free), 64)
    capped.optimizer.update(_batch(capped), 64)
    grads = [p.grad for p in capped.optimizer._parameters if p.grad is not None]
    assert torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])) <= 1e-3 + 1e-6
    assert any(not torch.equal(a, b) for a, b in zip(before, capped.optimizer.actor.parameters()))


@pytest.mark.parametrize("step,expected", [(0, 3e-4), (250, 1.5e-4 + 0.5e-10), (500, 1e-10), (900, 1e-10)])
def test_linear_schedule_with_floor(step, expected):
    assert decayed_value("linear", 3e-4, 1e-10, step, 500) == pytest.approx(expected, rel=1e-6)
    assert decayed_value("constant", 3e-4, 1e-10, step, 500) == 3e-4


def test_schedules_inherit_learning_rate_schedule_and_respect_floors():
    t = _trainer(learning_rate_schedule="constant", epsilon=0.3, beta=0.01)
    t.optimizer.global_step = 10 ** 9
    h = t.optimizer.current_hyperparameters()
    assert (h["learning_rate"], h["epsilon"], h["beta"]) == (3e-4, 0.3, 0.01)  # beta/epsilon inherit "constant"
    t = _trainer(epsilon=0.3, beta=0.01)  # linear, past max_steps: the floors
    t.optimizer.global_step = 10 ** 9
    h = t.optimizer.current_hyperparameters()
    assert (h["learning_rate"], h["epsilon"], h["beta"]) == pytest.approx((1e-10, 0.1, 1e-5))
