"""CartPole-v1 learns through the real gRPC path (server on loopback, SDK, ludus-gym runner).

Marked `learning` so it can be deselected locally (-m "not learning"); CI runs it.
"""
from __future__ import annotations

import pathlib

import pytest

from ludus_client.gym_runner import load_behavior_settings, run

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.learning
def test_cartpole_reaches_195_within_60k_steps(server):
    settings = load_behavior_settings(str(ROOT / "configs/cartpole.yaml"), "CartPole-v1")
    result = run("CartPole-v1", f"127.0.0.1:{server.port}", steps=60_000, num_envs=8, behavior_name="CartPole-v1",
                 settings=settings, seed=0, target_return=195.0, window=20, progress=False)
    print(f"steps={result.env_steps} episodes={result.episodes} mean_return={result.mean_return:.1f} "
          f"version={result.policy_version} seconds={result.seconds:.1f}")
    assert result.solved, f"mean return {result.mean_return:.1f} < 195 after {result.env_steps} steps"
    assert result.env_steps <= 60_000
    described = server.registry.get("CartPole-v1")
    assert described.policy_version > 10 and described.dropped_stale_steps == 0
