"""Behaviour of every Trainer RPC through the real path: server on loopback, SDK, real torch.

Small networks and buffers keep the whole file fast; every update here is a real PPO step.
"""
from __future__ import annotations

import copy
import hashlib
import threading
from typing import Dict, List, Optional, Sequence

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ludus.v1 import trainer_pb2 as pb
from ludus_client import BehaviorSpec, LocalPolicy, LudusClient, LudusError, TrajectoryBuilder
from ludus_client.tensor_codec import to_tensor

SMALL = {
    "hyperparameters": {"batch_size": 32, "buffer_size": 64, "num_epoch": 2},
    "network_settings": {"hidden_units": 16},
    "time_horizon": 16,
}
DISCRETE = BehaviorSpec.vector(4, discrete_branches=[3])
CONTINUOUS = BehaviorSpec.vector(3, continuous_size=2)
HYBRID = BehaviorSpec.vector(5, continuous_size=2, discrete_branches=[3, 2])
UPDATE_STATS = ("Losses/Policy Loss", "Losses/Value Loss", "Policy/Learning Rate", "Policy/Epsilon", "Policy/Beta", "Policy/Entropy")


def small_settings(**top_level) -> dict:
    settings = copy.deepcopy(SMALL)
    settings.update(top_level)
    return settings


def random_obs(spec: BehaviorSpec, rng: np.random.Generator, leading: Sequence[int]) -> List[np.ndarray]:
    return [rng.standard_normal((*leading, *o.shape)).astype(np.float32) for o in spec.observations]


def make_trajectory(
    spec: BehaviorSpec, policy: LocalPolicy, version: int, rng: np.random.Generator, steps: int = 16,
    agent_id: str = "agent-0", done: bool = False, mask: Optional[np.ndarray] = None,
) -> pb.Trajectory:
    """A trajectory acted by `policy` (the published weights) on random observations."""
    builder = TrajectoryBuilder(spec, agent_id)
    for _ in range(steps):
        obs = random_obs(spec, rng, (1,))
        out = policy.act(obs, action_masks=None if mask is None else mask[None], rng=rng)
        builder.add_step([o[0] for o in obs], out.continuous_actions[0], out.discrete_actions[0],
                         out.continuous_log_probs[0], out.discrete_log_probs[0], float(rng.standard_normal()),
                         version, action_mask=mask)
    return builder.build(None if done else [o[0] for o in random_obs(spec, rng, (1,))], done=done)


def make_batch(spec: BehaviorSpec, policy: LocalPolicy, rng: np.random.Generator, n: int = 32, signals=("extrinsic",),
               mask: Optional[np.ndarray] = None) -> pb.TrainingBatch:
    """A TrainingBatch of n steps, as a caller's own training loop would prepare it."""
    obs = random_obs(spec, rng, (n,))
    masks = None if mask is None else np.tile(mask, (n, 1))
    out = policy.act(obs, action_masks=masks, rng=rng)
    batch = pb.TrainingBatch(observations=[to_tensor(o) for o in obs],
                             advantages=to_tensor(rng.standard_normal(n).astype(np.float32)))
    if spec.actions.continuous_size:
        batch.continuous_actions.CopyFrom(to_tensor(out.continuous_actions))
        batch.continuous_log_probs.CopyFrom(to_tensor(out.continuous_log_probs))
    if spec.actions.discrete_branches:
        batch.discrete_actions.CopyFrom(to_tensor(out.discrete_actions.astype(np.int32)))
        batch.discrete_log_probs.CopyFrom(to_tensor(out.discrete_log_probs))
        if masks is not None:
            batch.action_masks.CopyFrom(to_tensor(masks))
    for signal in signals:
        batch.returns[signal].CopyFrom(to_tensor(rng.standard_normal(n).astype(np.float32)))
        batch.value_estimates[signal].CopyFrom(to_tensor(np.zeros(n, np.float32)))
    return batch


def wait_idle(server, name: str) -> None:
    assert server.registry.get(name).wait_idle(timeout=30), f"{name}: learner did not become idle"


# ---------------------------------------------------------------------------------------------------
# RegisterBehavior


def test_register_creates_version_1_and_is_idempotent(client: LudusClient):
    first = client.register("Walker", DISCRETE, SMALL)
    assert (first.policy_version, first.created) == (1, True)
    assert first.reward_signals == ["extrinsic"]

    again = client.register("Walker", DISCRETE, SMALL)
    assert (again.policy_version, again.created) == (1, False)
    assert again.settings == first.settings and again.reward_signals == first.reward_signals
    # Without settings: confirms the existing behaviour, whatever it was registered with.
    assert client.register("Walker", DISCRETE).created is False
    assert client.list_behaviors() == ["Walker"]


def test_register_effective_settings_have_mlagents_defaults_and_overrides(client: LudusClient):
    reg = client.register("Walker", DISCRETE, SMALL)
    s = reg.settings
    hp = s["hyperparameters"]
    # Overrides.
    assert (hp["batch_size"], hp["buffer_size"], hp["num_epoch"]) == (32, 64, 2)
    assert s["network_settings"]["hidden_units"] == 16 and s["time_horizon"] == 16
    # ML-Agents defaults for everything else.
    assert s["trainer_type"] == "ppo"
    assert hp["lambd"] == pytest.approx(0.95) and hp["epsilon"] == pytest.approx(0.2)
    assert hp["learning_rate"] == pytest.approx(3e-4) and hp["beta"] == pytest.approx(5e-3)
    assert hp["learning_rate_schedule"] == "linear"
    assert s["network_settings"]["num_layers"] == 2 and s["network_settings"]["normalize"] is False
    assert s["reward_signals"]["extrinsic"]["gamma"] == pytest.approx(0.99)
    assert s["reward_signals"]["extrinsic"]["strength"] == pytest.approx(1.0)
    assert s["max_steps"] == 500000
    # DescribeBehavior reports the same effective settings.
    from google.protobuf import json_format
    assert json_format.MessageToDict(client.describe("Walker").effective_settings) == s


def test_register_different_spec_is_failed_precondition(client: LudusClient):
    client.register("Walker", DISCRETE, SMALL)
    with pytest.raises(LudusError) as info:
        client.register("Walker", BehaviorSpec.vector(5, discrete_branches=[3]), SMALL)
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "spec" in info.value.details
    with pytest.raises(LudusError) as info:
        client.register("Walker", BehaviorSpec.vector(4, discrete_branches=[3, 2]), SMALL)
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "spec.actions.discrete_branches" in info.value.details
    assert client.describe("Walker").spec == DISCRETE.to_proto()


def test_register_different_settings_is_failed_precondition_naming_the_key(client: LudusClient):
    client.register("Walker", DISCRETE, SMALL)
    other = copy.deepcopy(SMALL)
    other["hyperparameters"]["num_epoch"] = 5
    with pytest.raises(LudusError) as info:
        client.register("Walker", DISCRETE, other)
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "hyperparameters.num_epoch" in info.value.details
    with pytest.raises(LudusError) as info:
        client.register("Walker", DISCRETE, small_settings(time_horizon=32))
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "time_horizon" in info.value.details
    assert client.describe("Walker").effective_settings["hyperparameters"]["num_epoch"] == 2


# ---------------------------------------------------------------------------------------------------
# EstimateValues


def test_estimate_values_shapes_and_done_bootstrap(client: LudusClient):
    client.register("Walker", DISCRETE, SMALL)
    rng = np.random.default_rng(0)
    obs = random_obs(DISCRETE, rng, (7,))
    values, bootstrap = client.estimate_values("Walker", obs, None, done=True)
    assert set(values) == {"extrinsic"} and set(bootstrap) == {"extrinsic"}
    assert values["extrinsic"].shape == (7,) and values["extrinsic"].dtype == np.float32
    assert np.isfinite(values["extrinsic"]).all()
    assert bootstrap["extrinsic"] == 0.0  # terminal: no bootstrapping, exactly
    # Read-only and deterministic: the same request gives the same values.
    again, _ = client.estimate_values("Walker", obs, None, done=True)
    np.testing.assert_array_equal(again["extrinsic"], values["extrinsic"])


def test_estimate_values_bootstraps_from_the_value_of_next_observations(client: LudusClient):
    client.register("Walker", DISCRETE, SMALL)
    rng = np.random.default_rng(1)
    # Train the critic a little so values are not just the initialisation.
    policy = client.get_local_policy("Walker")
    client.update("Walker", make_batch(DISCRETE, policy, rng), num_sequences=32)
    obs = random_obs(DISCRETE, rng, (5,))
    boots = []
    for _ in range(2):
        next_obs = random_obs(DISCRETE, rng, ())
        values, bootstrap = client.estimate_values("Walker", obs, next_obs, done=False)
        assert values["extrinsic"].shape == (5,)
        boot = bootstrap["extrinsic"]
        assert np.isfinite(boot)
        # The bootstrap is the critic's value of next_observations (not of the last step, not 0).
        next_value, _ = client.estimate_values("Walker", [o[None] for o in next_obs], None, done=True)
        assert boot == pytest.approx(float(next_value["extrinsic"][0]), rel=1e-5, abs=1e-6)
        # Values of the steps do not depend on whether a next observation was sent.
        values_done, _ = client.estimate_values("Walker", obs, None, done=True)
        np.testing.assert_allclose(values["extrinsic"], values_done["extrinsic"], rtol=1e-5, atol=1e-6)
        boots.append(boot)
    assert boots[0] != boots[1]


def test_estimate_values_requires_next_observations_unless_done(client: LudusClient):
    client.register("Walker", DISCRETE, SMALL)
    obs = random_obs(DISCRETE, np.random.default_rng(2), (4,))
    with pytest.raises(LudusError) as info:
        client.estimate_values("Walker", obs, None, done=False)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "next_observations" in info.value.details


# ---------------------------------------------------------------------------------------------------
# Update


def test_update_returns_stats_and_new_weights(client: LudusClient):
    client.register("Walker", DISCRETE, SMALL)
    rng = np.random.default_rng(3)
    before = client.get_local_policy("Walker")
    assert before.version == 1
    stats, version = client.update("Walker", make_batch(DISCRETE, before, rng), num_sequences=32)
    assert version == 2
    for key in UPDATE_STATS:
        assert key in stats and np.isfinite(stats[key]), key
    assert stats["Policy/Learning Rate"] == pytest.approx(3e-4, rel=1e-3)
    assert stats["Policy/Epsilon"] == pytest.approx(0.2, rel=1e-3)
    assert stats["Policy/Beta"] == pytest.approx(5e-3, rel=1e-3)
    assert stats["Policy/Entropy"] > 0

    after = client.get_local_policy("Walker")
    assert after.version == 2
    assert before.tensors.keys() == after.tensors.keys()
    changed = [k for k in before.tensors if not np.array_equal(before.tensors[k], after.tensors[k])]
    assert changed, "an update must change the actor's weights"
    assert any(k.startswith("discrete.0") for k in changed)

    described = client.describe("Walker")
    assert described.policy_version == 2 and dict(described.latest_update_stats) == pytest.approx(stats)
    assert client.update("Walker", make_batch(DISCRETE, after, rng), num_sequences=32)[1] == 3


@pytest.mark.parametrize("spec, mask", [
    pytest.param(DISCRETE, None, id="discrete"),
    pytest.param(CONTINUOUS, None, id="continuous"),
    pytest.param(HYBRID, np.array([True, False, True, False, True]), id="hybrid-masked"),
])
def test_sdk_log_probs_match_the_server_actor(client: LudusClient, spec: BehaviorSpec, mask):
    """The numpy LocalPolicy and the server's torch actor agree on log-probabilities (masks included):
    on data acted by the current version, PPO's ratio is exactly 1, so the clipped surrogate loss is
    |mean(advantages)|. A mismatch would silently bias every update."""
    client.register("Agent", spec, SMALL)
    rng = np.random.default_rng(15)
    for expected_version in (2, 3, 4):
        batch = make_batch(spec, client.get_local_policy("Agent"), rng, mask=mask)
        advantages = np.frombuffer(batch.advantages.raw_data, np.float32)
        stats, version = client.update("Agent", batch, num_sequences=32)
        assert version == expected_version
        assert stats["Losses/Policy Loss"] == pytest.approx(abs(float(advantages.mean())), rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("num_sequences", [3, 0, 33, -1])
def test_update_rejects_wrong_num_sequences(client: LudusClient, num_sequences: int):
    client.register("Walker", DISCRETE, SMALL)
    batch = make_batch(DISCRETE, client.get_local_policy("Walker"), np.random.default_rng(4))
    with pytest.raises(LudusError) as info:
        client.update("Walker", batch, num_sequences=num_sequences)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "num_sequences" in info.value.details
    assert client.describe("Walker").policy_version == 1


@pytest.mark.parametrize("signals, field", [((), "batch.returns"), (("curiosity",), "batch.returns")])
def test_update_rejects_returns_without_every_signal(client: LudusClient, signals, field):
    client.register("Walker", DISCRETE, SMALL)
    batch = make_batch(DISCRETE, client.get_local_policy("Walker"), np.random.default_rng(5), signals=signals)
    with pytest.raises(LudusError) as info:
        client.update("Walker", batch, num_sequences=32)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in info.value.details and "extrinsic" in info.value.details
    assert client.describe("Walker").policy_version == 1


# ---------------------------------------------------------------------------------------------------
# SubmitTrajectories, versions, GetPolicy


def test_submitted_trajectories_train_and_publish_versions(client: LudusClient, server):
    client.register("Walker", DISCRETE, SMALL)
    rng = np.random.default_rng(6)
    policy = client.get_local_policy("Walker")
    policy_bytes_v1 = client.get_policy("Walker", version=1).data
    # 5 x 16 = 80 steps: the first 64 fill buffer_size and trigger one update; 16 stay buffered.
    trajectories = [make_trajectory(DISCRETE, policy, 1, rng, agent_id=f"a{i}", done=(i == 2)) for i in range(5)]
    responses = client.submit("Walker", trajectories)
    assert [r.accepted_steps for r in responses] == [16] * 5
    assert [r.dropped_steps for r in responses] == [0] * 5
    assert all(r.drop_reason == pb.DROP_REASON_NONE for r in responses)
    assert [r.total_steps for r in responses] == [16, 32, 48, 64, 80]
    wait_idle(server, "Walker")

    described = client.describe("Walker")
    assert described.policy_version == 2
    assert described.total_steps == 80
    assert described.buffered_steps == 16
    assert described.queued_steps == 0
    assert described.dropped_stale_steps == 0
    for key in UPDATE_STATS:
        assert key in described.latest_update_stats, key
    assert "Environment/Cumulative Reward" in described.latest_update_stats  # one episode ended (done)

    # The published versions: immutable bytes per version, version 2 differs from version 1.
    v2 = client.get_policy("Walker", version=2)
    assert v2.trained_steps == 64
    assert client.get_policy("Walker", version=2).data == v2.data
    assert client.get_policy("Walker", version=2).sha256 == v2.sha256 == hashlib.sha256(v2.data).hexdigest()
    assert client.get_policy("Walker", version=1).data == policy_bytes_v1
    assert v2.data != policy_bytes_v1
    with pytest.raises(LudusError) as info:
        client.get_policy("Walker", version=3)
    assert info.value.code == grpc.StatusCode.NOT_FOUND

    # Later acknowledgements carry the new version and statistics.
    more = client.submit("Walker", [make_trajectory(DISCRETE, v2.load(), 2, rng)])
    assert more[0].policy_version == 2 and more[0].total_steps == 96
    assert "Losses/Policy Loss" in more[0].latest_update_stats
    wait_idle(server, "Walker")
    described = client.describe("Walker")
    assert (described.total_steps, described.buffered_steps, described.policy_version) == (96, 32, 2)


def test_other_float_observation_dtypes_are_converted(client: LudusClient, server):
    client.register("Walker", DISCRETE, SMALL)
    rng = np.random.default_rng(16)
    traj = make_trajectory(DISCRETE, client.get_local_policy("Walker"), 1, rng, steps=6)
    obs = np.frombuffer(traj.observations[0].raw_data, np.float32).reshape(6, 4)
    traj.observations[0].CopyFrom(to_tensor(obs.astype(np.float64)))
    traj.next_observations[0].CopyFrom(to_tensor(np.zeros(4, np.float16)))
    traj.rewards.CopyFrom(to_tensor(np.ones(6, np.float64)))
    (ack,) = client.submit("Walker", [traj])
    assert ack.accepted_steps == 6
    wait_idle(server, "Walker")
    assert client.describe("Walker").buffered_steps == 6


def test_several_observations_in_spec_order(client: LudusClient, server):
    from ludus_client import ActionSpec, ObservationSpec
    spec = BehaviorSpec((ObservationSpec("rays", (3,)), ObservationSpec("position", (2,))), ActionSpec(0, (2,)))
    client.register("Multi", spec, SMALL)
    rng = np.random.default_rng(17)
    policy = _train_one_version(client, server, "Multi", spec, rng)
    out = policy.act(random_obs(spec, rng, (10,)), rng=rng)
    assert out.discrete_actions.shape == (10, 1)
    values, _ = client.estimate_values("Multi", random_obs(spec, rng, (4,)), None, done=True)
    assert values["extrinsic"].shape == (4,)
    with pytest.raises(LudusError) as info:  # the observations swapped: each is checked against its own spec
        client.estimate_values("Multi", random_obs(spec, rng, (4,))[::-1], None, done=True)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "observations[0]" in info.value.details


def test_get_policy_versions_are_immutable_and_distinct(client: LudusClient):
    client.register("Walker", DISCRETE, SMALL)
    rng = np.random.default_rng(7)
    v1 = client.get_policy("Walker")
    assert v1.version == 1 and v1.trained_steps == 0
    assert hashlib.sha256(v1.data).hexdigest() == v1.sha256
    client.update("Walker", make_batch(DISCRETE, v1.load(), rng), num_sequences=32)

    v1_again = client.get_policy("Walker", version=1)
    assert v1_again.data == v1.data and v1_again.sha256 == v1.sha256
    v2 = client.get_policy("Walker", version=2)
    assert client.get_policy("Walker", version=2).data == v2.data
    assert client.get_policy("Walker").version == 2  # 0 = latest
    assert client.get_policy("Walker").sha256 == v2.sha256
    assert v2.data != v1.data and v2.sha256 != v1.sha256
    assert hashlib.sha256(v2.data).hexdigest() == v2.sha256
    loaded = v2.load()
    assert loaded.version == 2 and loaded.behavior_name == "Walker"

    for missing in (3, 99):
        with pytest.raises(LudusError) as info:
            client.get_policy("Walker", version=missing)
        assert info.value.code == grpc.StatusCode.NOT_FOUND
        assert "version" in info.value.details


# ---------------------------------------------------------------------------------------------------
# WatchPolicy


class Watcher:
    """Consumes a WatchPolicy stream in a thread, recording every blob."""

    def __init__(self, client: LudusClient, name: str, **kwargs) -> None:
        self.watch = client.watch_policy(name, **kwargs)
        self.blobs = []
        self.errors: List[BaseException] = []
        self._changed = threading.Condition()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for blob in self.watch:
                with self._changed:
                    self.blobs.append(blob)
                    self._changed.notify_all()
        except BaseException as err:  # noqa: BLE001 - reported by the test
            self.errors.append(err)

    def wait_for(self, count: int, timeout: float = 15.0) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: len(self.blobs) >= count, timeout)

    def stop(self) -> None:
        self.watch.cancel()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()
        assert not self.errors, self.errors


def test_watch_policy_sees_every_version_in_order(client: LudusClient):
    client.register("Walker", DISCRETE, SMALL)
    rng = np.random.default_rng(8)
    watcher = Watcher(client, "Walker")
    try:
        assert watcher.wait_for(1), "the current version is sent first"
        for _ in range(3):
            client.update("Walker", make_batch(DISCRETE, client.get_local_policy("Walker"), rng), num_sequences=32)
        assert watcher.wait_for(4)
    finally:
        watcher.stop()
    assert [b.version for b in watcher.blobs] == [1, 2, 3, 4]
    for blob in watcher.blobs:
        fetched = client.get_policy("Walker", version=blob.version)
        assert blob.data == fetched.data and blob.sha256 == fetched.sha256
        assert blob.load().version == blob.version


def test_watch_policy_versions_only_and_after_version(client: LudusClient):
    client.register("Walker", DISCRETE, SMALL)
    rng = np.random.default_rng(9)
    announcements = Watcher(client, "Walker", versions_only=True)
    try:
        assert announcements.wait_for(1)
        client.update("Walker", make_batch(DISCRETE, client.get_local_policy("Walker"), rng), num_sequences=32)
        assert announcements.wait_for(2)
    finally:
        announcements.stop()
    assert [b.version for b in announcements.blobs] == [1, 2]
    assert all(b.data == b"" for b in announcements.blobs)
    assert [b.sha256 for b in announcements.blobs] == [client.get_policy("Walker", v).sha256 for v in (1, 2)]

    # after_version: only newer versions; kept versions already published are replayed.
    later = Watcher(client, "Walker", after_version=1)
    try:
        assert later.wait_for(1)
    finally:
        later.stop()
    assert [b.version for b in later.blobs] == [2]


# ---------------------------------------------------------------------------------------------------
# Stale data


def test_stale_trajectories_are_dropped_and_counted(client: LudusClient, server):
    client.register("Walker", DISCRETE, small_settings(max_policy_lag=0))
    rng = np.random.default_rng(10)
    v1 = client.get_local_policy("Walker")
    old = make_trajectory(DISCRETE, v1, 1, rng, steps=12)
    assert client.update("Walker", make_batch(DISCRETE, v1, rng), num_sequences=32)[1] == 2

    (response,) = client.submit("Walker", [old])
    assert response.accepted_steps == 0
    assert response.dropped_steps == 12
    assert response.drop_reason == pb.DROP_REASON_STALE_POLICY_VERSION
    assert response.policy_version == 2
    assert response.total_steps == 0
    wait_idle(server, "Walker")
    described = client.describe("Walker")
    assert described.dropped_stale_steps == 12
    assert (described.total_steps, described.buffered_steps, described.queued_steps) == (0, 0, 0)

    # Current data is still accepted.
    (fresh,) = client.submit("Walker", [make_trajectory(DISCRETE, client.get_local_policy("Walker"), 2, rng, steps=5)])
    assert (fresh.accepted_steps, fresh.dropped_steps, fresh.drop_reason) == (5, 0, pb.DROP_REASON_NONE)
    wait_idle(server, "Walker")
    described = client.describe("Walker")
    assert (described.total_steps, described.buffered_steps, described.dropped_stale_steps) == (5, 5, 12)


def test_default_policy_lag_accepts_slightly_old_data(client: LudusClient, server):
    client.register("Walker", DISCRETE, SMALL)  # max_policy_lag 2
    rng = np.random.default_rng(11)
    v1 = client.get_local_policy("Walker")
    for _ in range(2):
        client.update("Walker", make_batch(DISCRETE, v1, rng), num_sequences=32)
    (ok,) = client.submit("Walker", [make_trajectory(DISCRETE, v1, 1, rng, steps=4)])  # lag 2: accepted
    assert (ok.accepted_steps, ok.dropped_steps) == (4, 0)
    client.update("Walker", make_batch(DISCRETE, v1, rng), num_sequences=32)
    (stale,) = client.submit("Walker", [make_trajectory(DISCRETE, v1, 1, rng, steps=4)])  # lag 3: dropped
    assert (stale.accepted_steps, stale.dropped_steps, stale.drop_reason) == (0, 4, pb.DROP_REASON_STALE_POLICY_VERSION)


# ---------------------------------------------------------------------------------------------------
# Action spaces


def _train_one_version(client: LudusClient, server, name: str, spec: BehaviorSpec, rng, mask=None) -> LocalPolicy:
    policy = client.get_local_policy(name)
    trajectories = [make_trajectory(spec, policy, 1, rng, agent_id=f"a{i}", mask=mask) for i in range(4)]
    assert sum(r.accepted_steps for r in client.submit(name, trajectories)) == 64
    wait_idle(server, name)
    described = client.describe(name)
    assert described.policy_version == 2 and described.buffered_steps == 0
    after = client.get_local_policy(name)
    assert after.version == 2
    assert any(not np.array_equal(policy.tensors[k], after.tensors[k]) for k in policy.tensors)
    return after


def test_continuous_actions_train_and_act(client: LudusClient, server):
    client.register("Reacher", CONTINUOUS, SMALL)
    rng = np.random.default_rng(12)
    policy = _train_one_version(client, server, "Reacher", CONTINUOUS, rng)
    out = policy.act(random_obs(CONTINUOUS, rng, (50,)), rng=rng)
    assert out.continuous_actions.shape == (50, 2) and out.continuous_log_probs.shape == (50, 2)
    assert out.discrete_actions.shape == (50, 0)
    assert np.isfinite(out.continuous_actions).all() and np.isfinite(out.continuous_log_probs).all()
    assert np.abs(out.env_continuous_actions).max() <= 1.0
    stats, version = client.update("Reacher", make_batch(CONTINUOUS, policy, rng), num_sequences=32)
    assert version == 3 and all(k in stats for k in UPDATE_STATS)


def test_hybrid_actions_with_masks_train_and_act(client: LudusClient, server):
    client.register("Hybrid", HYBRID, SMALL)
    rng = np.random.default_rng(13)
    # Branch 0 (3 options): option 1 masked; branch 1 (2 options): option 0 masked.
    mask = np.array([True, False, True, False, True])
    policy = _train_one_version(client, server, "Hybrid", HYBRID, rng, mask=mask)
    out = policy.act(random_obs(HYBRID, rng, (200,)), action_masks=np.tile(mask, (200, 1)), rng=rng)
    assert out.continuous_actions.shape == (200, 2) and out.discrete_actions.shape == (200, 2)
    assert not (out.discrete_actions[:, 0] == 1).any()
    assert (out.discrete_actions[:, 1] == 1).all()
    assert set(np.unique(out.discrete_actions[:, 0])) == {0, 2}  # both allowed options occur
    assert (out.discrete_log_probs <= 0).all() and np.isfinite(out.discrete_log_probs).all()
    np.testing.assert_allclose(out.discrete_log_probs[:, 1], 0.0, atol=1e-6)  # the only allowed option
    # The trajectories the service accepted after training also carry masks.
    (ack,) = client.submit("Hybrid", [make_trajectory(HYBRID, policy, 2, rng, mask=mask)])
    assert ack.accepted_steps == 16


def test_several_behaviours_are_independent(client: LudusClient, server):
    a = client.register("A", DISCRETE, SMALL)
    b = client.register("B", CONTINUOUS, small_settings(max_policy_lag=5))
    assert a.created and b.created
    assert a.settings["max_policy_lag"] == 2 and b.settings["max_policy_lag"] == 5
    assert client.list_behaviors() == ["A", "B"]
    rng = np.random.default_rng(14)
    client.update("A", make_batch(DISCRETE, client.get_local_policy("A"), rng), num_sequences=32)
    client.submit("B", [make_trajectory(CONTINUOUS, client.get_local_policy("B"), 1, rng, steps=10)])
    wait_idle(server, "B")
    da, db = client.describe("A"), client.describe("B")
    assert (da.policy_version, da.total_steps) == (2, 0)
    assert (db.policy_version, db.total_steps, db.buffered_steps) == (1, 10, 10)
    assert da.spec == DISCRETE.to_proto() and db.spec == CONTINUOUS.to_proto()
    assert client.get_local_policy("A").branches == [3] and client.get_local_policy("B").continuous_size == 2
    # A behaviour's data is checked against its own spec: B's trajectory is wrong for A.
    with pytest.raises(LudusError) as info:
        client.submit("A", [make_trajectory(CONTINUOUS, client.get_local_policy("B"), 1, rng, steps=3)])
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    # One stream may carry several behaviours.
    stub_requests = [
        pb.SubmitTrajectoriesRequest(behavior_name="A", trajectory=make_trajectory(DISCRETE, client.get_local_policy("A"), 2, rng, steps=3)),
        pb.SubmitTrajectoriesRequest(behavior_name="B", trajectory=make_trajectory(CONTINUOUS, client.get_local_policy("B"), 1, rng, steps=4)),
    ]
    acks = list(client.stub.SubmitTrajectories(iter(stub_requests), timeout=30))
    assert [(r.accepted_steps, r.total_steps) for r in acks] == [(3, 3), (4, 14)]


# ---------------------------------------------------------------------------------------------------
# Health


def test_health_check_serving(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "ludus.v1.Trainer"):
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10, wait_for_ready=True)
            assert response.status == health_pb2.HealthCheckResponse.SERVING, service
        with pytest.raises(grpc.RpcError) as info:
            stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
