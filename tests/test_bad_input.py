"""Bad input: the right status, a message naming the field, no state change, and the server keeps serving.

Each case starts from a valid message (TrajectoryBuilder, a TrainingBatch, a spec, settings) and
breaks exactly one thing. Before and after the bad call the behaviour's observable state
(DescribeBehavior counters, policy version and weights) is compared after the learner is idle.
"""
from __future__ import annotations

import copy
from typing import Callable, List, Optional, Sequence

import grpc
import numpy as np
import pytest

from ludus.v1 import trainer_pb2 as pb
from ludus_client import ActionSpec, BehaviorSpec, LocalPolicy, LudusClient, LudusError, ObservationSpec, TrajectoryBuilder
from ludus_client.tensor_codec import to_tensor

NAME = "Target"
T = 8
SMALL = {
    "hyperparameters": {"batch_size": 32, "buffer_size": 64, "num_epoch": 2},
    "network_settings": {"hidden_units": 16},
    "time_horizon": 16,
}
DISCRETE = BehaviorSpec.vector(4, discrete_branches=[3])
HYBRID = BehaviorSpec.vector(4, continuous_size=2, discrete_branches=[3, 2])
rng = np.random.default_rng(0)


def make_trajectory(spec: BehaviorSpec, policy: LocalPolicy, steps: int = T, version: int = 1,
                    mask: Optional[np.ndarray] = None, done: bool = False) -> pb.Trajectory:
    builder = TrajectoryBuilder(spec, "agent-0")
    for _ in range(steps):
        obs = [rng.standard_normal((1, *o.shape)).astype(np.float32) for o in spec.observations]
        out = policy.act(obs, action_masks=None if mask is None else mask[None], rng=rng)
        builder.add_step([o[0] for o in obs], out.continuous_actions[0], out.discrete_actions[0],
                         out.continuous_log_probs[0], out.discrete_log_probs[0], float(rng.standard_normal()),
                         version, action_mask=mask)
    next_obs = None if done else [rng.standard_normal(o.shape).astype(np.float32) for o in spec.observations]
    return builder.build(next_obs, done=done)


def make_batch(spec: BehaviorSpec, policy: LocalPolicy, n: int = 32) -> pb.TrainingBatch:
    obs = [rng.standard_normal((n, *o.shape)).astype(np.float32) for o in spec.observations]
    out = policy.act(obs, rng=rng)
    batch = pb.TrainingBatch(observations=[to_tensor(o) for o in obs],
                             advantages=to_tensor(rng.standard_normal(n).astype(np.float32)))
    batch.discrete_actions.CopyFrom(to_tensor(out.discrete_actions.astype(np.int32)))
    batch.discrete_log_probs.CopyFrom(to_tensor(out.discrete_log_probs))
    batch.returns["extrinsic"].CopyFrom(to_tensor(rng.standard_normal(n).astype(np.float32)))
    batch.value_estimates["extrinsic"].CopyFrom(to_tensor(np.zeros(n, np.float32)))
    return batch


def state(client: LudusClient, server, name: str = NAME) -> dict:
    """Everything a rejected request must leave untouched, read once the learner is idle."""
    assert server.registry.get(name).wait_idle(timeout=30)
    d = client.describe(name)
    return {
        "total_steps": d.total_steps, "buffered_steps": d.buffered_steps, "queued_steps": d.queued_steps,
        "policy_version": d.policy_version, "dropped_stale_steps": d.dropped_stale_steps,
        "policy_sha256": client.get_policy(name).sha256, "behaviors": client.list_behaviors(),
    }


@pytest.fixture
def target(client: LudusClient, server) -> LocalPolicy:
    """A DISCRETE behaviour that already holds T buffered steps; returns its current policy."""
    client.register(NAME, DISCRETE, SMALL)
    policy = client.get_local_policy(NAME)
    (ack,) = client.submit(NAME, [make_trajectory(DISCRETE, policy)])
    assert ack.accepted_steps == T
    assert server.registry.get(NAME).wait_idle(timeout=30)
    return policy


def expect_error(call: Callable[[], object], code: grpc.StatusCode, *fragments: str) -> LudusError:
    with pytest.raises(LudusError) as info:
        call()
    err = info.value
    assert err.code == code, f"{err.code}: {err.details}"
    for fragment in fragments:
        assert fragment in err.details, f"{fragment!r} not in {err.details!r}"
    return err


def assert_still_serving(client: LudusClient, server, policy: LocalPolicy, before: dict) -> None:
    """State unchanged by the rejected call, and a valid submit afterwards is accepted."""
    assert state(client, server) == before
    (ack,) = client.submit(NAME, [make_trajectory(DISCRETE, policy, steps=3)])
    assert (ack.accepted_steps, ack.dropped_steps) == (3, 0)
    assert ack.total_steps == before["total_steps"] + 3
    after = state(client, server)
    assert after["buffered_steps"] == before["buffered_steps"] + 3


# ---------------------------------------------------------------------------------------------------
# Trajectories (SubmitTrajectories)


def _set(field: str, array: np.ndarray) -> Callable[[pb.Trajectory], None]:
    def mutate(traj: pb.Trajectory) -> None:
        getattr(traj, field).CopyFrom(to_tensor(array))
    return mutate


def _obs(array: np.ndarray) -> Callable[[pb.Trajectory], None]:
    def mutate(traj: pb.Trajectory) -> None:
        traj.observations[0].CopyFrom(to_tensor(array))
    return mutate


def _short_raw_data(traj: pb.Trajectory) -> None:
    traj.observations[0].raw_data = traj.observations[0].raw_data[:-1]


def _nan_reward(traj: pb.Trajectory) -> None:
    rewards = np.zeros(T, np.float32)
    rewards[3] = np.nan
    traj.rewards.CopyFrom(to_tensor(rewards))


def _inf_observation(traj: pb.Trajectory) -> None:
    obs = rng.standard_normal((T, 4)).astype(np.float32)
    obs[5, 2] = np.inf
    traj.observations[0].CopyFrom(to_tensor(obs))


def _nan_next_observation(traj: pb.Trajectory) -> None:
    traj.next_observations[0].CopyFrom(to_tensor(np.array([0.0, np.nan, 0.0, 0.0], np.float32)))


def _empty(traj: pb.Trajectory) -> None:
    traj.observations[0].CopyFrom(to_tensor(np.zeros((0, 4), np.float32)))
    traj.rewards.CopyFrom(to_tensor(np.zeros(0, np.float32)))
    traj.discrete_actions.CopyFrom(to_tensor(np.zeros((0, 1), np.int32)))
    traj.discrete_log_probs.CopyFrom(to_tensor(np.zeros((0, 1), np.float32)))


def _discrete_out_of_range(traj: pb.Trajectory) -> None:
    actions = np.zeros((T, 1), np.int32)
    actions[2, 0] = 3
    traj.discrete_actions.CopyFrom(to_tensor(actions))


def _negative_discrete(traj: pb.Trajectory) -> None:
    actions = np.zeros((T, 1), np.int64)
    actions[0, 0] = -1
    traj.discrete_actions.CopyFrom(to_tensor(actions))


def _masked_choice(traj: pb.Trajectory) -> None:
    traj.discrete_actions.CopyFrom(to_tensor(np.zeros((T, 1), np.int32)))
    traj.action_masks.CopyFrom(to_tensor(np.tile([False, True, True], (T, 1))))


def _all_masked(traj: pb.Trajectory) -> None:
    traj.discrete_actions.CopyFrom(to_tensor(np.zeros((T, 1), np.int32)))
    masks = np.ones((T, 3), bool)
    masks[4] = False
    traj.action_masks.CopyFrom(to_tensor(masks))


def _attr(name: str, value) -> Callable[[pb.Trajectory], None]:
    def mutate(traj: pb.Trajectory) -> None:
        setattr(traj, name, value)
    return mutate


def _clear(name: str) -> Callable[[pb.Trajectory], None]:
    def mutate(traj: pb.Trajectory) -> None:
        traj.ClearField(name)
    return mutate


def _extra_observation(traj: pb.Trajectory) -> None:
    traj.observations.append(to_tensor(np.zeros((T, 4), np.float32)))


def _both_done_and_interrupted(traj: pb.Trajectory) -> None:
    traj.done = True
    traj.interrupted = True


def _positive_log_prob(traj: pb.Trajectory) -> None:
    traj.discrete_log_probs.CopyFrom(to_tensor(np.full((T, 1), 0.5, np.float32)))


TRAJECTORY_CASES = [
    # (id, mutation, fragments the message must contain)
    ("obs-shape", _obs(np.zeros((T, 5), np.float32)), ["trajectory.observations[0]", "shape"]),
    ("obs-rank", _obs(np.zeros((T, 2, 2), np.float32)), ["trajectory.observations[0]", "shape"]),
    ("obs-length", _obs(np.zeros((T + 1, 4), np.float32)), ["trajectory.observations[0]", "shape"]),
    ("obs-int32", _obs(np.zeros((T, 4), np.int32)), ["trajectory.observations[0]", "INT32"]),
    ("obs-count", _extra_observation, ["trajectory.observations", "observation tensors"]),
    ("raw-data-short", _short_raw_data, ["trajectory.observations[0]", "raw_data", "bytes"]),
    ("nan-reward", _nan_reward, ["trajectory.rewards", "NaN"]),
    ("inf-observation", _inf_observation, ["trajectory.observations[0]", "Inf"]),
    ("nan-next-observation", _nan_next_observation, ["trajectory.next_observations[0]", "NaN"]),
    ("missing-next-observations", _clear("next_observations"), ["trajectory.next_observations"]),
    ("empty", _empty, ["trajectory.rewards", "empty"]),
    ("missing-rewards", _clear("rewards"), ["trajectory.rewards", "required"]),
    ("discrete-out-of-range", _discrete_out_of_range, ["trajectory.discrete_actions", "outside [0, 3)"]),
    ("discrete-negative", _negative_discrete, ["trajectory.discrete_actions", "outside"]),
    ("discrete-float", _set("discrete_actions", np.zeros((T, 1), np.float32)), ["trajectory.discrete_actions", "FLOAT32"]),
    ("missing-discrete-actions", _clear("discrete_actions"), ["trajectory.discrete_actions", "required"]),
    ("log-prob-count", _set("discrete_log_probs", np.zeros((T, 2), np.float32)), ["trajectory.discrete_log_probs", "shape"]),
    ("log-prob-positive", _positive_log_prob, ["trajectory.discrete_log_probs"]),
    ("continuous-for-discrete", _set("continuous_actions", np.zeros((T, 2), np.float32)), ["trajectory.continuous_actions", "omitted"]),
    ("done-and-interrupted", _both_done_and_interrupted, ["trajectory.interrupted", "done"]),
    ("missing-agent-id", _attr("agent_id", ""), ["trajectory.agent_id"]),
    ("long-agent-id", _attr("agent_id", "x" * 300), ["trajectory.agent_id"]),
    ("policy-version-0", _attr("policy_version", 0), ["trajectory.policy_version"]),
    ("policy-version-negative", _attr("policy_version", -4), ["trajectory.policy_version"]),
    ("mask-forbids-choice", _masked_choice, ["trajectory.discrete_actions", "action_masks"]),
    ("mask-all-options-masked", _all_masked, ["trajectory.action_masks", "branch 0"]),
    ("mask-shape", _set("action_masks", np.ones((T, 4), bool)), ["trajectory.action_masks", "shape"]),
    ("mask-dtype", _set("action_masks", np.ones((T, 3), np.float32)), ["trajectory.action_masks", "FLOAT32"]),
]


@pytest.mark.parametrize("mutate, fragments", [pytest.param(m, f, id=i) for i, m, f in TRAJECTORY_CASES])
def test_bad_trajectory_is_rejected_without_state_change(client: LudusClient, server, target: LocalPolicy, mutate, fragments):
    traj = make_trajectory(DISCRETE, target)
    mutate(traj)
    before = state(client, server)
    err = expect_error(lambda: client.submit(NAME, [traj]), grpc.StatusCode.INVALID_ARGUMENT, *fragments)
    assert err.details.startswith("requests[0].trajectory."), err.details
    assert_still_serving(client, server, target, before)


def test_policy_version_newer_than_current_is_dropped_not_trained(client: LudusClient, server, target: LocalPolicy):
    """Only possible after a restart from an older checkpoint: the steps are dropped (the acting
    policy is unknown here) with DROP_REASON_UNKNOWN_POLICY_VERSION, and the stream goes on."""
    before = state(client, server)
    newer = make_trajectory(DISCRETE, target)
    newer.policy_version = before["policy_version"] + 1
    valid = make_trajectory(DISCRETE, target, steps=3)
    dropped, accepted = client.submit(NAME, [newer, valid])
    assert (dropped.accepted_steps, dropped.dropped_steps) == (0, T)
    assert dropped.drop_reason == pb.DROP_REASON_UNKNOWN_POLICY_VERSION
    assert dropped.policy_version == before["policy_version"]
    assert dropped.total_steps == before["total_steps"]
    assert (accepted.accepted_steps, accepted.drop_reason) == (3, pb.DROP_REASON_NONE)
    after = state(client, server)
    assert after["dropped_stale_steps"] == before["dropped_stale_steps"] + T
    assert after["total_steps"] == before["total_steps"] + 3
    assert after["buffered_steps"] == before["buffered_steps"] + 3
    assert after["policy_version"] == before["policy_version"]


def test_unknown_behaviour_on_every_rpc(client: LudusClient, server, target: LocalPolicy):
    before = state(client, server)
    traj = make_trajectory(DISCRETE, target)
    obs = [np.zeros((2, 4), np.float32)]
    calls = {
        "submit": lambda: client.submit("Nope", [traj]),
        "estimate_values": lambda: client.estimate_values("Nope", obs, None, done=True),
        "update": lambda: client.update("Nope", make_batch(DISCRETE, target), 32),
        "get_policy": lambda: client.get_policy("Nope"),
        "describe": lambda: client.describe("Nope"),
        "watch_policy": lambda: next(client.watch_policy("Nope")),
    }
    for name, call in calls.items():
        err = expect_error(call, grpc.StatusCode.NOT_FOUND, "behavior_name", "Nope")
        assert err.details, name
    assert_still_serving(client, server, target, before)


def test_stream_keeps_trajectories_acknowledged_before_the_error(client: LudusClient, server, target: LocalPolicy):
    before = state(client, server)
    valid = make_trajectory(DISCRETE, target, steps=5)
    invalid = make_trajectory(DISCRETE, target, steps=6)
    _nan_reward_any(invalid)
    after_invalid = make_trajectory(DISCRETE, target, steps=7)  # never reached: the stream ends at the error
    err = expect_error(lambda: client.submit(NAME, [valid, invalid, after_invalid]), grpc.StatusCode.INVALID_ARGUMENT,
                       "requests[1].trajectory.rewards", "NaN")
    assert err.details
    after = state(client, server)
    assert after["total_steps"] == before["total_steps"] + 5
    assert after["buffered_steps"] == before["buffered_steps"] + 5
    assert after["policy_version"] == before["policy_version"]
    # The acknowledgements of a stream that reached its end are all there.
    responses = client.submit(NAME, [make_trajectory(DISCRETE, target, steps=2), make_trajectory(DISCRETE, target, steps=3)])
    assert [r.total_steps for r in responses] == [before["total_steps"] + 7, before["total_steps"] + 10]


def _nan_reward_any(traj: pb.Trajectory) -> None:
    rewards = np.zeros(len(traj.rewards.raw_data) // 4, np.float32)
    rewards[-1] = np.nan
    traj.rewards.CopyFrom(to_tensor(rewards))


def test_unknown_behaviour_mid_stream(client: LudusClient, server, target: LocalPolicy):
    before = state(client, server)
    requests = [
        pb.SubmitTrajectoriesRequest(behavior_name=NAME, trajectory=make_trajectory(DISCRETE, target, steps=4)),
        pb.SubmitTrajectoriesRequest(behavior_name="Nope", trajectory=make_trajectory(DISCRETE, target, steps=4)),
    ]
    call = client.stub.SubmitTrajectories(iter(requests), timeout=30)
    received = []
    with pytest.raises(grpc.RpcError) as info:
        for response in call:
            received.append(response)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and "behavior_name" in info.value.details()
    assert [r.accepted_steps for r in received] == [4]
    assert state(client, server)["total_steps"] == before["total_steps"] + 4


def test_hybrid_trajectory_errors_name_the_field(client: LudusClient, server):
    client.register("Hybrid", HYBRID, SMALL)
    policy = client.get_local_policy("Hybrid")
    before = state(client, server, "Hybrid")
    cases = [
        (_clear("continuous_actions"), ["continuous_actions", "required"]),
        (_set("continuous_log_probs", np.zeros((T, 3), np.float32)), ["continuous_log_probs", "shape"]),
        (_set("continuous_actions", np.full((T, 2), np.nan, np.float32)), ["continuous_actions", "NaN"]),
        (_set("discrete_actions", np.tile([0, 2], (T, 1)).astype(np.int32)), ["discrete_actions", "branch 1", "outside [0, 2)"]),
        (_set("action_masks", np.ones((T, 3), bool)), ["action_masks", "shape"]),
    ]
    for mutate, fragments in cases:
        traj = make_trajectory(HYBRID, policy)
        mutate(traj)
        expect_error(lambda: client.submit("Hybrid", [traj]), grpc.StatusCode.INVALID_ARGUMENT, *fragments)
    assert state(client, server, "Hybrid") == before
    (ack,) = client.submit("Hybrid", [make_trajectory(HYBRID, policy, mask=np.array([1, 1, 0, 1, 0], bool))])
    assert ack.accepted_steps == T


# ---------------------------------------------------------------------------------------------------
# EstimateValues and Update


def _estimate(observations, next_observations, done=False):
    def call(client: LudusClient):
        request = pb.EstimateValuesRequest(behavior_name=NAME, agent_id="a", done=done,
                                           observations=[to_tensor(o) for o in observations],
                                           next_observations=[to_tensor(o) for o in next_observations])
        try:
            return client.stub.EstimateValues(request, timeout=30)
        except grpc.RpcError as err:
            raise LudusError.from_rpc(err) from None
    return call


_OK_OBS = np.zeros((3, 4), np.float32)
_OK_NEXT = np.zeros(4, np.float32)
ESTIMATE_CASES = [
    ("no-observations", _estimate([], [_OK_NEXT]), ["observations"]),
    ("zero-steps", _estimate([np.zeros((0, 4), np.float32)], [_OK_NEXT]), ["observations[0]"]),
    ("obs-shape", _estimate([np.zeros((3, 5), np.float32)], [_OK_NEXT]), ["observations[0]", "shape"]),
    ("obs-nan", _estimate([np.full((3, 4), np.nan, np.float32)], [_OK_NEXT]), ["observations[0]", "NaN"]),
    ("obs-int", _estimate([np.zeros((3, 4), np.int64)], [_OK_NEXT]), ["observations[0]", "INT64"]),
    ("next-shape", _estimate([_OK_OBS], [np.zeros((1, 4), np.float32)]), ["next_observations[0]", "shape"]),
    ("next-inf", _estimate([_OK_OBS], [np.array([0, np.inf, 0, 0], np.float32)]), ["next_observations[0]", "Inf"]),
    ("next-missing", _estimate([_OK_OBS], []), ["next_observations", "required"]),
]


@pytest.mark.parametrize("call, fragments", [pytest.param(c, f, id=i) for i, c, f in ESTIMATE_CASES])
def test_bad_estimate_values(client: LudusClient, server, target: LocalPolicy, call, fragments):
    before = state(client, server)
    expect_error(lambda: call(client), grpc.StatusCode.INVALID_ARGUMENT, *fragments)
    assert_still_serving(client, server, target, before)


def _batch_nan_advantage(batch: pb.TrainingBatch) -> None:
    adv = np.zeros(32, np.float32)
    adv[7] = np.nan
    batch.advantages.CopyFrom(to_tensor(adv))


def _batch_short_returns(batch: pb.TrainingBatch) -> None:
    batch.returns["extrinsic"].CopyFrom(to_tensor(np.zeros(31, np.float32)))


def _batch_extra_signal(batch: pb.TrainingBatch) -> None:
    batch.value_estimates["gail"].CopyFrom(to_tensor(np.zeros(32, np.float32)))


def _batch_bad_action(batch: pb.TrainingBatch) -> None:
    batch.discrete_actions.CopyFrom(to_tensor(np.full((32, 1), 7, np.int32)))


def _batch_missing_extrinsic(batch: pb.TrainingBatch) -> None:
    del batch.returns["extrinsic"]


def _batch_obs_short(batch: pb.TrainingBatch) -> None:
    batch.observations[0].CopyFrom(to_tensor(np.zeros((16, 4), np.float32)))


def _batch_with_sac_rewards(batch: pb.TrainingBatch) -> None:
    batch.rewards.CopyFrom(to_tensor(np.zeros(32, np.float32)))


UPDATE_CASES = [
    ("sac-field-on-ppo", _batch_with_sac_rewards, 32, ["batch.rewards", "trainer_type ppo"]),
    ("nan-advantage", _batch_nan_advantage, 32, ["batch.advantages", "NaN"]),
    ("returns-length", _batch_short_returns, 32, ["batch.returns[extrinsic]", "shape"]),
    ("returns-missing-extrinsic", _batch_missing_extrinsic, 32, ["batch.returns", "extrinsic"]),
    ("value-estimates-extra-signal", _batch_extra_signal, 32, ["batch.value_estimates", "gail"]),
    ("action-out-of-range", _batch_bad_action, 32, ["batch.discrete_actions", "outside"]),
    ("observations-length", _batch_obs_short, 32, ["batch.observations[0]", "shape"]),
    ("num-sequences-3", lambda b: None, 3, ["num_sequences"]),
    ("num-sequences-0", lambda b: None, 0, ["num_sequences"]),
]


@pytest.mark.parametrize("mutate, num_sequences, fragments", [pytest.param(m, n, f, id=i) for i, m, n, f in UPDATE_CASES])
def test_bad_update_changes_nothing(client: LudusClient, server, target: LocalPolicy, mutate, num_sequences, fragments):
    batch = make_batch(DISCRETE, target)
    mutate(batch)
    before = state(client, server)
    expect_error(lambda: client.update(NAME, batch, num_sequences), grpc.StatusCode.INVALID_ARGUMENT, *fragments)
    assert_still_serving(client, server, target, before)
    # The same batch, repaired, is accepted.
    stats, version = client.update(NAME, make_batch(DISCRETE, target), 32)
    assert version == before["policy_version"] + 1 and "Losses/Policy Loss" in stats


# ---------------------------------------------------------------------------------------------------
# RegisterBehavior


def _with(path: str, value) -> dict:
    settings = copy.deepcopy(SMALL)
    node = settings
    keys = path.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    return settings


SETTINGS_CASES = [
    ("unknown-key", _with("hyperparameters.batch_sizee", 32), grpc.StatusCode.INVALID_ARGUMENT, "hyperparameters.batch_sizee"),
    ("unknown-top-level-key", _with("time_horizonn", 32), grpc.StatusCode.INVALID_ARGUMENT, "time_horizonn"),
    ("wrong-type", _with("hyperparameters.batch_size", "big"), grpc.StatusCode.INVALID_ARGUMENT, "hyperparameters.batch_size"),
    ("not-an-integer", _with("hyperparameters.batch_size", 31.5), grpc.StatusCode.INVALID_ARGUMENT, "hyperparameters.batch_size"),
    ("bool-for-number", _with("hyperparameters.learning_rate", True), grpc.StatusCode.INVALID_ARGUMENT, "hyperparameters.learning_rate"),
    ("out-of-range", _with("hyperparameters.lambd", 1.5), grpc.StatusCode.INVALID_ARGUMENT, "hyperparameters.lambd"),
    ("negative-learning-rate", _with("hyperparameters.learning_rate", -1.0), grpc.StatusCode.INVALID_ARGUMENT, "hyperparameters.learning_rate"),
    ("gamma-out-of-range", _with("reward_signals.extrinsic.gamma", 1.5), grpc.StatusCode.INVALID_ARGUMENT, "reward_signals.extrinsic.gamma"),
    ("batch-exceeds-buffer", _with("hyperparameters.batch_size", 128), grpc.StatusCode.INVALID_ARGUMENT, "hyperparameters.batch_size"),
    ("bad-schedule", _with("hyperparameters.learning_rate_schedule", "cosine"), grpc.StatusCode.INVALID_ARGUMENT, "hyperparameters.learning_rate_schedule"),
    ("not-a-mapping", _with("hyperparameters", 5), grpc.StatusCode.INVALID_ARGUMENT, "hyperparameters"),
    ("unknown-trainer-type", _with("trainer_type", "dqn"), grpc.StatusCode.INVALID_ARGUMENT, "trainer_type"),
    ("unknown-reward-signal", _with("reward_signals.bonus", {}), grpc.StatusCode.INVALID_ARGUMENT, "reward_signals.bonus"),
    ("poca", _with("trainer_type", "poca"), grpc.StatusCode.UNIMPLEMENTED, "trainer_type"),
    ("sac with PPO keys", _with("trainer_type", "sac"), grpc.StatusCode.INVALID_ARGUMENT, "hyperparameters.num_epoch"),
    ("gail without demo", _with("reward_signals.gail", {"strength": 0.02}), grpc.StatusCode.INVALID_ARGUMENT, "reward_signals.gail.demo_path"),
    ("gail demo missing", _with("reward_signals.gail", {"demo_path": "nope.demo"}), grpc.StatusCode.INVALID_ARGUMENT,
     "settings.reward_signals.gail.demo_path: no demonstration 'nope.demo'"),
    ("odd-memory-size", _with("network_settings.memory", {"memory_size": 15, "sequence_length": 8}), grpc.StatusCode.INVALID_ARGUMENT, "network_settings.memory.memory_size"),
    ("sequence-exceeds-batch", _with("network_settings.memory", {"memory_size": 16, "sequence_length": 64}), grpc.StatusCode.INVALID_ARGUMENT, "network_settings.memory.sequence_length"),
]


@pytest.mark.parametrize("settings, code, field", [pytest.param(s, c, f, id=i) for i, s, c, f in SETTINGS_CASES])
def test_bad_settings_at_register(client: LudusClient, server, target: LocalPolicy, settings, code, field):
    before = state(client, server)
    expect_error(lambda: client.register("NewOne", DISCRETE, settings), code, field)
    # Re-registering the existing behaviour with bad settings is rejected the same way and changes nothing.
    expect_error(lambda: client.register(NAME, DISCRETE, settings), code, field)
    assert "NewOne" not in client.list_behaviors()
    assert_still_serving(client, server, target, before)
    assert client.register("NewOne", DISCRETE, SMALL).created  # the name is still free


def _spec(observations: Sequence[ObservationSpec], continuous: int = 0, branches: Sequence[int] = ()) -> BehaviorSpec:
    return BehaviorSpec(tuple(observations), ActionSpec(continuous, tuple(branches)))


SPEC_CASES = [
    ("no-observations", _spec([], branches=[3]), grpc.StatusCode.INVALID_ARGUMENT, "spec.observations"),
    ("zero-dimension", _spec([ObservationSpec("obs", (0,))], branches=[3]), grpc.StatusCode.INVALID_ARGUMENT, "spec.observations[0].shape"),
    ("negative-dimension", _spec([ObservationSpec("obs", (-2,))], branches=[3]), grpc.StatusCode.INVALID_ARGUMENT, "spec.observations[0].shape"),
    ("empty-shape", _spec([ObservationSpec("obs", ())], branches=[3]), grpc.StatusCode.INVALID_ARGUMENT, "spec.observations[0].shape"),
    ("unnamed-observation", _spec([ObservationSpec("", (4,))], branches=[3]), grpc.StatusCode.INVALID_ARGUMENT, "spec.observations[0].name"),
    ("duplicate-name", _spec([ObservationSpec("a", (4,)), ObservationSpec("a", (2,))], branches=[3]), grpc.StatusCode.INVALID_ARGUMENT, "spec.observations[1].name"),
    ("no-actions", _spec([ObservationSpec("obs", (4,))]), grpc.StatusCode.INVALID_ARGUMENT, "spec.actions"),
    ("negative-branch", _spec([ObservationSpec("obs", (4,))], branches=[3, -1]), grpc.StatusCode.INVALID_ARGUMENT, "spec.actions.discrete_branches[1]"),
    ("zero-branch", _spec([ObservationSpec("obs", (4,))], branches=[0]), grpc.StatusCode.INVALID_ARGUMENT, "spec.actions.discrete_branches[0]"),
    ("negative-continuous", _spec([ObservationSpec("obs", (4,))], continuous=-2), grpc.StatusCode.INVALID_ARGUMENT, "spec.actions.continuous_size"),
    ("visual-too-small", _spec([ObservationSpec("cam", (3, 8, 8), pb.OBSERVATION_KIND_VISUAL)], branches=[3]), grpc.StatusCode.INVALID_ARGUMENT, "spec.observations[0].shape"),
    ("visual-rank-2", _spec([ObservationSpec("cam", (8, 8), pb.OBSERVATION_KIND_VISUAL)], branches=[3]), grpc.StatusCode.INVALID_ARGUMENT, "spec.observations[0].shape"),
    ("vector-rank-3", _spec([ObservationSpec("obs", (3, 8, 8), pb.OBSERVATION_KIND_VECTOR)], branches=[3]), grpc.StatusCode.INVALID_ARGUMENT, "spec.observations[0].shape"),
    ("entities-rank-1", _spec([ObservationSpec("things", (8,), pb.OBSERVATION_KIND_ENTITIES)], branches=[3]), grpc.StatusCode.INVALID_ARGUMENT, "spec.observations[0].shape"),
    ("visual-goal", _spec([ObservationSpec("cam", (3, 20, 20), pb.OBSERVATION_KIND_VISUAL, pb.OBSERVATION_TYPE_GOAL_SIGNAL)], branches=[3]), grpc.StatusCode.UNIMPLEMENTED, "spec.observations[0].observation_type"),
]


@pytest.mark.parametrize("spec, code, field", [pytest.param(s, c, f, id=i) for i, s, c, f in SPEC_CASES])
def test_bad_spec_at_register(client: LudusClient, server, target: LocalPolicy, spec, code, field):
    before = state(client, server)
    expect_error(lambda: client.register("NewOne", spec, SMALL), code, field)
    assert "NewOne" not in client.list_behaviors()
    assert_still_serving(client, server, target, before)


@pytest.mark.parametrize("name", ["", "has space", "slash/name", "x" * 129])
def test_bad_behaviour_name_at_register(client: LudusClient, server, target: LocalPolicy, name):
    before = state(client, server)
    expect_error(lambda: client.register(name, DISCRETE, SMALL), grpc.StatusCode.INVALID_ARGUMENT, "behavior_name")
    assert_still_serving(client, server, target, before)


def test_bad_policy_requests(client: LudusClient, server, target: LocalPolicy):
    before = state(client, server)
    request = pb.GetPolicyRequest(behavior_name=NAME, version=-1)
    with pytest.raises(grpc.RpcError) as info:
        list(client.stub.GetPolicy(request, timeout=30))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "version" in info.value.details()
    request = pb.GetPolicyRequest(behavior_name=NAME, format=7)
    with pytest.raises(grpc.RpcError) as info:
        list(client.stub.GetPolicy(request, timeout=30))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "format" in info.value.details()
    expect_error(lambda: client.get_policy(NAME, version=5), grpc.StatusCode.NOT_FOUND, "version")
    assert_still_serving(client, server, target, before)
