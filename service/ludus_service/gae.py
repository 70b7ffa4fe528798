"""Discounted returns and Generalised Advantage Estimation, as pure functions of numpy arrays.

Functional (no trainer state) so they can be tested against a plain loop oracle, as TorchRL does.
"""
from __future__ import annotations

import numpy as np


def discounted_returns(rewards: np.ndarray, gamma: float, bootstrap: float = 0.0) -> np.ndarray:
    """return_t = r_t + gamma * return_{t+1}, with return_T = bootstrap."""
    out = np.empty(len(rewards), dtype=np.float32)
    running = float(bootstrap)
    for t in range(len(rewards) - 1, -1, -1):
        running = float(rewards[t]) + gamma * running
        out[t] = running
    return out


def gae(rewards: np.ndarray, values: np.ndarray, bootstrap: float, gamma: float, lambd: float) -> np.ndarray:
    """Advantages A_t = sum_k (gamma*lambd)^k delta_{t+k}, delta_t = r_t + gamma V_{t+1} - V_t.

    `values` are the critic's estimates of the trajectory's steps; V_T = `bootstrap` is the value
    after the last step (0 for a terminal trajectory). Returns float32 advantages of length T; the
    value targets are `advantages + values`.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    next_values = np.append(values[1:], bootstrap)
    deltas = rewards + gamma * next_values - values
    advantages = np.empty_like(deltas)
    running = 0.0
    decay = gamma * lambd
    for t in range(len(deltas) - 1, -1, -1):
        running = deltas[t] + decay * running
        advantages[t] = running
    return advantages.astype(np.float32)
