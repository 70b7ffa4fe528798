"""Inference mode (`inference: true`, `ludus-server --inference`): trajectories are validated,
counted and summarised, never trained on. Real server, real SDK."""
from __future__ import annotations

import signal
from pathlib import Path

import grpc
import numpy as np
import pytest
from safetensors.numpy import load

from ludus_client import BehaviorSpec, LudusClient, LudusError
from ludus_service.checkpoint import checkpoint_files
from serverproc import ServerProcess, wait_until
from test_api import CONTINUOUS, DISCRETE, make_batch, make_trajectory, small_settings


def test_inference_behaviour_accepts_and_counts_but_never_trains(client: LudusClient):
    reg = client.register("Eval", DISCRETE, small_settings(inference=True, summary_freq=48))
    policy = client.get_local_policy("Eval")
    before = client.get_policy("Eval").data
    rng = np.random.default_rng(0)
    # 6 x 16 steps: far beyond buffer_size 64, which would have triggered an update when training.
    trajectories = [make_trajectory(DISCRETE, policy, reg.policy_version, rng, steps=16, agent_id=f"a{i % 2}", done=i % 3 == 2)
                    for i in range(6)]
    responses = client.submit("Eval", trajectories)
    assert [r.accepted_steps for r in responses] == [16] * 6
    assert [r.dropped_steps for r in responses] == [0] * 6
    assert responses[-1].total_steps == 96
    assert all(r.policy_version == reg.policy_version for r in responses)
    described = client.describe("Eval")
    assert described.total_steps == 96
    assert described.buffered_steps == 0 and described.queued_steps == 0
    assert described.policy_version == reg.policy_version
    assert client.get_policy("Eval").data == before  # weights untouched
    # Summaries every summary_freq (48) accepted steps, flagged as not training; episodes still counted.
    stats = dict(responses[-1].latest_update_stats)
    assert stats["Is Training"] == 0.0
    assert "Environment/Cumulative Reward" in stats and np.isfinite(stats["Environment/Cumulative Reward"])
    assert "Losses/Policy Loss" not in stats


def test_inference_behaviour_refuses_update_but_estimates_values(client: LudusClient):
    client.register("Frozen", CONTINUOUS, small_settings(inference=True))
    policy = client.get_local_policy("Frozen")
    rng = np.random.default_rng(1)
    with pytest.raises(LudusError) as info:
        client.update("Frozen", make_batch(CONTINUOUS, policy, rng, n=32), 32)
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "behavior_name" in info.value.details and "inference" in info.value.details
    values, _ = client.estimate_values("Frozen", [rng.standard_normal((10, 3)).astype(np.float32)], None, done=True)
    assert values["extrinsic"].shape == (10,)


def test_inference_mode_still_rejects_bad_trajectories(client: LudusClient):
    reg = client.register("Strict", DISCRETE, small_settings(inference=True))
    policy = client.get_local_policy("Strict")
    traj = make_trajectory(DISCRETE, policy, reg.policy_version, np.random.default_rng(2))
    traj.rewards.raw_data = np.full(16, np.nan, np.float32).tobytes()
    with pytest.raises(LudusError) as info:
        client.submit("Strict", [traj])
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "rewards" in info.value.details and "NaN" in info.value.details
    assert client.describe("Strict").total_steps == 0


def test_server_inference_flag_serves_a_resumed_policy_untrained_and_leaves_checkpoints_alone(tmp_path: Path):
    ckpt = tmp_path / "ckpt"
    spec = BehaviorSpec.vector(3, discrete_branches=[2])
    settings = small_settings()
    trained = ServerProcess(["--checkpoint-dir", str(ckpt), "--seed", "0"])
    try:
        with LudusClient(trained.target) as c:
            reg = c.register("Bot", spec, settings)
            policy = c.get_local_policy("Bot")
            rng = np.random.default_rng(3)
            c.submit("Bot", [make_trajectory(spec, policy, reg.policy_version, rng, steps=32, agent_id=f"a{i}") for i in range(2)])
            wait_until(lambda: c.describe("Bot").policy_version >= 2, 60, "the first update")
            trained_blob = c.get_policy("Bot")
        trained.proc.send_signal(signal.SIGTERM)  # graceful: the final checkpoint holds version 2
        assert trained.wait(60) == 0
    finally:
        trained.stop()
    files_before = sorted(p.name for _, p in checkpoint_files(ckpt / "Bot"))
    assert files_before
    serving = ServerProcess(["--checkpoint-dir", str(ckpt), "--resume", "--inference"])
    try:
        with LudusClient(serving.target) as c:
            blob = c.get_policy("Bot")
            assert blob.version == trained_blob.version
            assert same_weights(blob.data, trained_blob.data)
            described = c.describe("Bot")
            policy = blob.load()
            rng = np.random.default_rng(4)
            c.submit("Bot", [make_trajectory(spec, policy, blob.version, rng, steps=32, agent_id=f"b{i}") for i in range(4)])
            assert same_weights(c.get_policy("Bot").data, trained_blob.data)
            assert c.describe("Bot").total_steps == described.total_steps + 128
            # Registering under --inference forces the mode whatever the client asks.
            c.register("Other", spec, small_settings(inference=False))
            with pytest.raises(LudusError) as info:
                c.update("Other", make_batch(spec, c.get_local_policy("Other"), rng, n=32), 32)
            assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
        serving.proc.send_signal(signal.SIGTERM)  # a graceful stop writes no checkpoint in inference mode
        assert serving.wait(60) == 0
    finally:
        serving.stop()
    assert sorted(p.name for _, p in checkpoint_files(ckpt / "Bot")) == files_before


def same_weights(a: bytes, b: bytes) -> bool:
    """Equal tensors (the safetensors header's metadata order differs between processes)."""
    ta, tb = load(a), load(b)
    return ta.keys() == tb.keys() and all(np.array_equal(ta[k], tb[k]) for k in ta)
