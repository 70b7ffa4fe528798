"""trainer_type: sac — settings, the SAC pieces (Polyak averaging, target entropies, discrete Q
heads, bootstrapping, the ring replay buffer), the tanh-squashed policy on both sides, the RPC
surface, checkpointed replay buffers across a real --resume, and learning through the real gRPC
path (Pendulum-v1 and a discrete game task of our own).
"""
from __future__ import annotations

import math
import signal
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from prometheus_client import generate_latest

from game_envs import register_envs
from ludus.v1 import trainer_pb2 as pb
from ludus_client import BehaviorSpec, LudusClient, LudusError, TrajectoryBuilder
from ludus_client.gym_runner import run
from ludus_client.policy import LocalPolicy
from ludus_client.tensor_codec import to_tensor
from ludus_service.buffer import DONE, next_obs_key
from ludus_service.checkpoint import checkpoint_files, load_checkpoint
from ludus_service.optimizer.sac import SACOptimizer, polyak_update, target_entropies
from ludus_service.replay_buffer import ReplayBuffer
from ludus_service.sac_networks import QNetwork
from ludus_service.sac_trainer import SACTrainer
from ludus_service.settings import SACHyperparameters, resolve_settings
from ludus_service.spec import ActionSpec, ObservationSpec
from ludus_service.spec import BehaviorSpec as ServiceSpec
from ludus_service.validation import TrajectoryData
from serverproc import ServerProcess, wait_until
from test_game_tasks import assert_goal_seek_learned, greedy_score, random_score

register_envs()
GOAL_SEEK = "ludus-tests/GoalSeek1D-v0"


def sac_settings(**hyper) -> dict:
    return {"trainer_type": "sac", "hyperparameters": {"batch_size": 32, "buffer_size": 1000, **hyper},
            "network_settings": {"hidden_units": 32, "num_layers": 2}, "time_horizon": 16}


def service_spec(continuous: int = 1, branches=()) -> ServiceSpec:
    return ServiceSpec((ObservationSpec("obs", (3,)),), ActionSpec(continuous, tuple(branches)))


def trajectory(spec: ServiceSpec, length: int, seed: int = 0, done: bool = False, interrupted: bool = False,
               agent: str = "a", memory_size: int = 0) -> TrajectoryData:
    """Random steps; with `memory_size`, the policy memories a recurrent client would have sent."""
    rng = np.random.default_rng(seed)
    a = spec.actions
    return TrajectoryData(
        observations=[rng.normal(size=(length, 3)).astype(np.float32)],
        continuous_actions=np.tanh(rng.normal(size=(length, a.continuous_size))).astype(np.float32),
        discrete_actions=np.stack([rng.integers(0, b, length) for b in a.discrete_branches], axis=1) if a.discrete_branches
        else np.zeros((length, 0), np.int64),
        continuous_log_probs=np.zeros((length, a.continuous_size), np.float32),
        discrete_log_probs=np.zeros((length, len(a.discrete_branches)), np.float32),
        action_masks=None, rewards=rng.normal(size=length).astype(np.float32),
        next_observations=None if done else [rng.normal(size=3).astype(np.float32)],
        done=done, interrupted=interrupted, agent_id=agent, policy_version=1,
        memories=rng.normal(size=(length, memory_size)).astype(np.float32) if memory_size else None)


# ---------------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------------

def test_sac_hyperparameters_have_ml_agents_defaults():
    hp = resolve_settings({"trainer_type": "sac"}).hyperparameters
    assert hp == SACHyperparameters(batch_size=128, buffer_size=50000, buffer_init_steps=0, learning_rate=3e-4,
                                    learning_rate_schedule="constant", tau=0.005, steps_per_update=1.0, init_entcoef=1.0,
                                    save_replay_buffer=False, reward_signal_steps_per_update=None)
    trainer = SACTrainer(service_spec(), resolve_settings(sac_settings(steps_per_update=4.0)))
    assert trainer.reward_signal_steps_per_update == 4.0  # unset: steps_per_update (ML-Agents' rule)


@pytest.mark.parametrize("settings,code,key", [
    ({"trainer_type": "sac", "hyperparameters": {"beta": 0.01}}, grpc.StatusCode.INVALID_ARGUMENT, "hyperparameters.beta"),
    ({"trainer_type": "sac", "hyperparameters": {"num_epoch": 3}}, grpc.StatusCode.INVALID_ARGUMENT, "hyperparameters.num_epoch"),
    ({"trainer_type": "ppo", "hyperparameters": {"tau": 0.01}}, grpc.StatusCode.INVALID_ARGUMENT, "hyperparameters.tau"),
    ({"hyperparameters": {"buffer_init_steps": 10}}, grpc.StatusCode.INVALID_ARGUMENT, "hyperparameters.buffer_init_steps"),
    ({"trainer_type": "sac", "hyperparameters": {"tau": 1.5}}, grpc.StatusCode.INVALID_ARGUMENT, "hyperparameters.tau"),
    ({"trainer_type": "sac", "hyperparameters": {"steps_per_update": 0}}, grpc.StatusCode.INVALID_ARGUMENT, "hyperparameters.steps_per_update"),
    ({"trainer_type": "sac", "hyperparameters": {"batch_size": 4},
      "network_settings": {"memory": {"memory_size": 32, "sequence_length": 8}}},
     grpc.StatusCode.INVALID_ARGUMENT, "network_settings.memory.sequence_length"),
])
def test_bad_sac_settings_name_the_key(client, settings, code, key):
    with pytest.raises(LudusError) as err:
        client.register("Bad", BehaviorSpec.vector(3, continuous_size=1), settings)
    assert err.value.code == code and key in str(err.value), err.value


def test_registering_sac_reports_its_effective_hyperparameters(client):
    registration = client.register("Sac", BehaviorSpec.vector(3, continuous_size=1), sac_settings(tau=0.01))
    hp = registration.settings["hyperparameters"]
    assert registration.settings["trainer_type"] == "sac"
    assert hp["tau"] == 0.01 and hp["buffer_init_steps"] == 0 and "beta" not in hp


# ---------------------------------------------------------------------------------------------------
# SAC pieces
# ---------------------------------------------------------------------------------------------------

def test_polyak_update_moves_the_target_by_tau():
    torch.manual_seed(0)
    source, target = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    before = [p.detach().clone() for p in target.parameters()]
    polyak_update(source, target, 0.1)
    for old, new, src in zip(before, target.parameters(), source.parameters()):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * src)
    polyak_update(source, target, 1.0)
    for new, src in zip(target.parameters(), source.parameters()):
        torch.testing.assert_close(new, src)


def test_target_entropies_and_initial_entropy_coefficients():
    assert target_entropies(2, [3, 5]) == (-2.0, [0.2 * math.log(3), 0.2 * math.log(5)])
    opt = SACOptimizer(service_spec(2, (3, 5)), resolve_settings(sac_settings(init_entcoef=0.5)))
    assert opt.target_entropy_continuous == -2.0
    torch.testing.assert_close(opt.target_entropy_discrete, torch.tensor([0.2 * math.log(3), 0.2 * math.log(5)]))
    torch.testing.assert_close(opt.log_ent_coef_continuous.detach(), torch.tensor([math.log(0.5)]))
    torch.testing.assert_close(opt.log_ent_coef_discrete.detach(), torch.full((2,), math.log(0.5)))


def test_discrete_q_heads_give_one_value_per_option_and_condense_to_the_taken_ones():
    spec = service_spec(1, (3, 2))
    opt = SACOptimizer(spec, resolve_settings(sac_settings()))
    q = QNetwork(spec, opt.settings.network_settings, opt.encoder, ["extrinsic"])
    out = q([torch.zeros(4, 3)], torch.zeros(4, 1))["extrinsic"]
    assert out.shape == (4, 5)  # 3 + 2 options, for the given continuous action
    values = torch.arange(10, dtype=torch.float32).reshape(2, 5)  # rows [0..4], [5..9]
    taken = torch.tensor([[2, 0], [1, 1]])
    # branch 0 picks column 2 / 1, branch 1 (columns 3-4) picks 3 / 4; averaged over branches
    torch.testing.assert_close(q.condense(values, taken), torch.tensor([(2 + 3) / 2, (6 + 9) / 2]))
    continuous_only = QNetwork(service_spec(2), opt.settings.network_settings, opt.encoder, ["extrinsic"])
    assert continuous_only([torch.zeros(4, 3)], torch.zeros(4, 2))["extrinsic"].shape == (4, 1)


@pytest.mark.parametrize("done,interrupted,flag", [(True, False, 1.0), (False, True, 0.0), (False, False, 0.0)])
def test_only_a_real_episode_end_is_stored_done(done, interrupted, flag):
    spec = service_spec()
    trainer = SACTrainer(spec, resolve_settings(sac_settings()))
    traj = trajectory(spec, 5, done=done, interrupted=interrupted)
    trainer.process_trajectory(traj)
    stored = trainer.replay.ordered()
    np.testing.assert_array_equal(stored[DONE], [0, 0, 0, 0, flag])
    np.testing.assert_array_equal(stored[next_obs_key(0)][:4], traj.observations[0][1:])
    if not done:  # the bootstrap observation is the trajectory's next_observations
        np.testing.assert_array_equal(stored[next_obs_key(0)][4], traj.next_observations[0])


def test_q_target_bootstraps_unless_done():
    """r + gamma * V_target(s') for a not-done step, r alone for a done one: with V_target fixed at
    a constant c, the Q loss at Q = 0 is 0.5 * mean(target^2)."""
    spec = service_spec()
    opt = SACOptimizer(spec, resolve_settings(sac_settings()))
    for module in (opt.q1, opt.q2):
        for head in module.heads.values():
            torch.nn.init.zeros_(head.weight), torch.nn.init.zeros_(head.bias)
    head = opt.target_critic.heads["extrinsic"]
    torch.nn.init.zeros_(head.weight), torch.nn.init.constant_(head.bias, 10.0)
    n = 4
    batch = {"obs_0": np.zeros((n, 3), np.float32), "next_obs_0": np.zeros((n, 3), np.float32),
             "continuous_action": np.zeros((n, 1), np.float32), "discrete_action": np.zeros((n, 0), np.int64),
             "action_mask": np.ones((n, 0), bool), "extrinsic_rewards": np.ones(n, np.float32)}
    from ludus_service.buffer import AgentBuffer
    gamma = 0.99
    not_done = opt.update(AgentBuffer({**batch, DONE: np.zeros(n, np.float32)}), 1)
    for module in (opt.q1, opt.q2):  # the step moved Q: reset it
        for h in module.heads.values():
            torch.nn.init.zeros_(h.weight), torch.nn.init.zeros_(h.bias)
    torch.nn.init.zeros_(head.weight), torch.nn.init.constant_(head.bias, 10.0)
    is_done = opt.update(AgentBuffer({**batch, DONE: np.ones(n, np.float32)}), 1)
    assert not_done["Losses/Q1 Loss"] == pytest.approx(0.5 * (1 + gamma * 10.0) ** 2, rel=1e-4)
    assert is_done["Losses/Q1 Loss"] == pytest.approx(0.5 * 1.0, rel=1e-4)


def test_ring_buffer_wraps_around_keeping_the_newest_rows():
    ring = ReplayBuffer(5)
    ring.add({"x": np.arange(3, dtype=np.float32)[:, None], "y": np.arange(3)})
    footprint = ring.nbytes
    ring.add({"x": np.arange(3, 7, dtype=np.float32)[:, None], "y": np.arange(3, 7)})
    assert len(ring) == 5 and ring.nbytes == footprint == 5 * (4 + 8)
    np.testing.assert_array_equal(ring.ordered()["y"], [2, 3, 4, 5, 6])
    ring.add({"x": np.arange(7, 19, dtype=np.float32)[:, None], "y": np.arange(7, 19)})  # longer than the ring
    np.testing.assert_array_equal(ring.ordered()["y"], [14, 15, 16, 17, 18])
    batch = ring.sample(np.random.default_rng(0), 64)
    assert set(batch["y"]) <= {14, 15, 16, 17, 18} and np.all(batch["x"][:, 0] == batch["y"])
    restored = ReplayBuffer(5)
    restored.load_state_tensors(ring.state_tensors())
    np.testing.assert_array_equal(restored.ordered()["y"], [14, 15, 16, 17, 18])
    with pytest.raises(ValueError, match="differ"):
        ring.add({"x": np.zeros((1, 1), np.float32)})


# ---------------------------------------------------------------------------------------------------
# The tanh-squashed policy: torch and the torch-free SDK agree
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("branches", [(), (3,)])
def test_local_policy_matches_the_torch_sac_actor(branches):
    spec = service_spec(2, branches)
    opt = SACOptimizer(spec, resolve_settings(sac_settings()))
    with torch.no_grad():  # a policy with wide, state-dependent spreads
        opt.actor.log_std_head.weight.normal_(0, 0.5)
        opt.actor.mu.weight.normal_(0, 1.0)
    tensors, architecture = opt.actor.export()
    assert architecture["tanh_squash"] and architecture["conditional_sigma"]
    policy = LocalPolicy(tensors, architecture, version=1)
    obs = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    out = policy.act([obs], rng=np.random.default_rng(1))
    assert np.all(np.abs(out.continuous_actions) < 1) and np.abs(out.continuous_actions).max() > 0.9
    np.testing.assert_array_equal(out.env_continuous_actions, out.continuous_actions)  # no clamp / 3
    evaluation = opt.actor.evaluate([torch.from_numpy(obs)], torch.from_numpy(out.continuous_actions),
                                    torch.from_numpy(out.discrete_actions), None)
    np.testing.assert_allclose(evaluation.continuous_log_probs.detach().numpy(), out.continuous_log_probs, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(evaluation.discrete_log_probs.detach().numpy(), out.discrete_log_probs, rtol=1e-4, atol=1e-5)
    greedy = policy.act([obs], deterministic=True)
    with torch.no_grad():
        hidden, _ = opt.actor.trunk([torch.from_numpy(obs)], None, 1)
        mu, _ = opt.actor.gaussian(hidden)
    np.testing.assert_allclose(greedy.continuous_actions, torch.tanh(mu).numpy(), rtol=1e-4, atol=1e-5)


def test_sampled_log_probs_match_the_actor_evaluation_of_the_sampled_actions():
    """SACOptimizer.sample computes log N(u) from the reparameterisation noise directly; it must equal
    the actor's log-probability of the squashed action it returns."""
    opt = SACOptimizer(service_spec(2), resolve_settings(sac_settings()))
    with torch.no_grad():
        opt.actor.log_std_head.weight.normal_(0, 0.3)
        opt.actor.mu.weight.normal_(0, 0.3)
    obs = [torch.from_numpy(np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32))]
    with torch.no_grad():
        pi = opt.sample(obs, None)
        evaluation = opt.actor.evaluate(obs, pi.continuous, torch.zeros((64, 0), dtype=torch.long), None)
    torch.testing.assert_close(pi.continuous_log_probs, evaluation.continuous_log_probs.sum(dim=1), rtol=1e-3, atol=1e-3)


def test_in_place_relus_change_no_update():
    """The SAC networks' body ReLUs run in place; updates equal those of out-of-place ReLUs."""
    settings = sac_settings()
    settings["network_settings"]["activation"] = "relu"
    spec = service_spec(1)
    opts = []
    for inplace in (True, False):
        torch.manual_seed(0)
        opt = SACOptimizer(spec, resolve_settings(settings))
        relus = [m for net in opt.modules().values() for name, m in net.named_modules()
                 if isinstance(m, torch.nn.ReLU) and name.startswith("body.")]
        assert len(relus) == 5 * 2 and all(m.inplace for m in relus)  # 5 networks, 2 layers each
        for m in relus:
            m.inplace = inplace
        opts.append(opt)
    trainer_data = trajectory(spec, 64)
    from ludus_service.buffer import AgentBuffer
    n = 64
    batch = AgentBuffer({"obs_0": trainer_data.observations[0], "next_obs_0": np.roll(trainer_data.observations[0], -1, axis=0),
                         "continuous_action": trainer_data.continuous_actions, "discrete_action": np.zeros((n, 0), np.int64),
                         "action_mask": np.ones((n, 0), bool), "extrinsic_rewards": trainer_data.rewards, DONE: np.zeros(n, np.float32)})
    stats = []
    for opt in opts:
        torch.manual_seed(1)
        stats.append([opt.update(batch, 1) for _ in range(3)])
    assert stats[0] == stats[1]
    for a, b in zip(opts[0].adam.param_groups[0]["params"], opts[1].adam.param_groups[0]["params"]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------
# Intake and updates
# ---------------------------------------------------------------------------------------------------

def test_long_update_backlogs_run_in_bursts_and_intake_keeps_accepting(server, client):
    """A 1500-step trajectory owes 1500 gradient steps: they run in capped bursts (one policy
    version each), and trajectories submitted while an update is blocked are acknowledged at once."""
    client.register("Burst", BehaviorSpec.vector(3, continuous_size=1), sac_settings(buffer_size=4000))
    behavior = server.registry.get("Burst")
    gate, inside = threading.Event(), threading.Event()
    real_update = behavior.trainer.optimizer.update

    def gated(batch, num_sequences):
        inside.set()
        gate.wait(60)
        return real_update(batch, num_sequences)
    behavior.trainer.optimizer.update = gated
    policy = client.get_local_policy("Burst")
    spec = BehaviorSpec.vector(3, continuous_size=1)

    def piece(length: int, seed: int) -> pb.Trajectory:
        rng = np.random.default_rng(seed)
        builder = TrajectoryBuilder(spec, f"agent-{seed}")
        obs = rng.normal(size=(length + 1, 3)).astype(np.float32)
        out = policy.act([obs[:-1]], rng=rng)
        for i in range(length):
            builder.add_step([obs[i]], out.continuous_actions[i], out.discrete_actions[i], out.continuous_log_probs[i],
                             out.discrete_log_probs[i], float(rng.normal()), policy.version)
        return builder.build([obs[-1]])
    try:
        client.submit("Burst", [piece(1500, 0)])
        assert inside.wait(60), "the learner never started updating"
        acks = client.submit("Burst", [piece(16, s) for s in range(1, 6)])  # the learner is stuck in an update
        assert [a.accepted_steps for a in acks] == [16] * 5
    finally:
        gate.set()
        behavior.trainer.optimizer.update = real_update
    assert behavior.wait_idle(300)
    trainer = behavior.trainer
    assert trainer.updates_done == trainer.step == 1500 + 5 * 16 and trainer.owed_updates() == 0
    assert behavior.policy_version >= 1 + math.ceil(1500 / 256)  # bursts of at most 256 steps, one version each
    scraped = generate_latest(server.registry.metrics.registry).decode()
    assert 'ludus_replay_buffer_steps{behavior="Burst"} 1580.0' in scraped
    # preallocated for buffer_size rows: obs + next obs (3 floats each), 1 action, reward, done (floats)
    assert trainer.replay.nbytes >= 4000 * (2 * 3 + 1 + 1 + 1) * 4
    assert f'ludus_replay_buffer_bytes{{behavior="Burst"}} {float(trainer.replay.nbytes)}' in scraped


def _transitions(n: int, rng: np.random.Generator, **extra) -> pb.TrainingBatch:
    batch = pb.TrainingBatch(
        observations=[to_tensor(rng.normal(size=(n, 3)).astype(np.float32))],
        next_observations=[to_tensor(rng.normal(size=(n, 3)).astype(np.float32))],
        continuous_actions=to_tensor(rng.normal(size=(n, 1)).astype(np.float32)),
        rewards=to_tensor(rng.normal(size=n).astype(np.float32)),
        dones=to_tensor(rng.random(n) < 0.1), **extra)
    return batch


def test_update_rpc_takes_transitions_and_estimate_values_reads_the_critic(server, client):
    spec = BehaviorSpec.vector(3, continuous_size=1)
    registration = client.register("Rpc", spec, sac_settings())
    rng = np.random.default_rng(0)
    critic = server.registry.get("Rpc").trainer.optimizer.critic
    before = [p.detach().clone() for p in critic.parameters()]
    stats, version = client.update("Rpc", _transitions(64, rng), 64)
    assert version == registration.policy_version + 1
    assert {"Losses/Policy Loss", "Losses/Value Loss", "Losses/Q1 Loss", "Losses/Q2 Loss",
            "Policy/Continuous Entropy Coeff", "Policy/Learning Rate"} <= set(stats)
    assert any(not torch.equal(a, b) for a, b in zip(before, critic.parameters()))
    for batch, field in ((pb.TrainingBatch(), "batch.rewards"),
                         (_transitions(8, rng, advantages=to_tensor(np.zeros(8, np.float32))), "batch.advantages"),
                         (pb.TrainingBatch(observations=_transitions(8, rng).observations, rewards=_transitions(8, rng).rewards,
                                           continuous_actions=_transitions(8, rng).continuous_actions), "batch.next_observations")):
        with pytest.raises(LudusError) as err:
            client.update("Rpc", batch, 8)
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and field in err.value.details, err.value
    obs = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    nxt = np.ones(3, np.float32)
    values, bootstrap = client.estimate_values("Rpc", [obs], [nxt], done=False)
    critic = server.registry.get("Rpc").trainer.optimizer.critic
    with torch.no_grad():
        expected = critic([torch.from_numpy(np.concatenate([obs, nxt[None]]))])["extrinsic"].numpy()
    np.testing.assert_allclose(values["extrinsic"], expected[:6], rtol=1e-5, atol=1e-6)
    assert bootstrap["extrinsic"] == pytest.approx(float(expected[6]), rel=1e-5, abs=1e-6)
    _, done_bootstrap = client.estimate_values("Rpc", [obs], None, done=True)
    assert done_bootstrap["extrinsic"] == 0.0


def test_gym_runner_trains_sac_in_lockstep_without_dropping_old_versions(server):
    """Off-policy: every owed gradient step runs, and steps acted by many versions ago still count."""
    settings = sac_settings(buffer_init_steps=128)
    result = run(GOAL_SEEK, f"127.0.0.1:{server.port}", steps=512, num_envs=2, behavior_name="Lockstep", settings=settings,
                 seed=0, progress=False, env_kwargs={"action_type": "hybrid"})
    behavior = server.registry.get("Lockstep")
    assert behavior.wait_idle(120)
    assert behavior.trainer.step == 512 and behavior.trainer.updates_done == 512 - 128
    assert result.policy_version > 3 and behavior.dropped_stale_steps == 0
    assert behavior.settings.max_policy_lag == 2  # the default, not applied to an off-policy trainer


# ---------------------------------------------------------------------------------------------------
# Checkpointed replay buffers across a real restart
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("save", [True, False])
def test_replay_buffer_survives_resume_when_saved(tmp_path: Path, save: bool):
    ckpt = tmp_path / "checkpoints"
    spec = BehaviorSpec.vector(3, discrete_branches=[2])
    settings = sac_settings(save_replay_buffer=save, buffer_size=100, buffer_init_steps=10_000)  # no updates
    first = ServerProcess(["--checkpoint-dir", str(ckpt), "--seed", "0"])
    try:
        with LudusClient(first.target) as client:
            client.register("Replay", spec, settings)
            rng = np.random.default_rng(0)
            observations = rng.normal(size=(130, 3)).astype(np.float32)
            for start in range(0, 130, 13):  # 130 steps into a 100-step ring: it wraps
                builder = TrajectoryBuilder(spec, "agent")
                for i in range(start, start + 13):
                    builder.add_step([observations[i]], np.zeros(0, np.float32), np.array([i % 2]), np.zeros(0, np.float32),
                                     np.array([-0.69], np.float32), float(i), 1)
                client.submit("Replay", [builder.build([observations[start + 12]], done=True)])
            wait_until(lambda: client.describe("Replay").queued_steps == 0, 60, "the learner to take every step")
            assert client.describe("Replay").buffered_steps == 100
        first.proc.send_signal(signal.SIGTERM)  # orderly end: final checkpoint
        assert first.wait(60) == 0, first.output()
    finally:
        first.stop()
    _, path = checkpoint_files(ckpt / "Replay")[-1]
    tensors, _ = load_checkpoint(path)
    replay = {k: v for k, v in tensors.items() if k.startswith("replay.")}
    if save:
        np.testing.assert_array_equal(replay["replay.obs_0"].numpy(), observations[30:])  # the newest 100, oldest first
        np.testing.assert_array_equal(replay["replay.environment_rewards"].numpy(), np.arange(30, 130, dtype=np.float32))
    else:
        assert not replay
    second = ServerProcess(["--checkpoint-dir", str(ckpt), "--resume", "--seed", "0"])
    try:
        with LudusClient(second.target) as client:
            described = client.describe("Replay")
            assert described.buffered_steps == (100 if save else 0)
            assert described.total_steps == 130
    finally:
        second.stop()


# ---------------------------------------------------------------------------------------------------
# Learning through the real gRPC path
# ---------------------------------------------------------------------------------------------------

PENDULUM_SETTINGS = {
    "trainer_type": "sac", "time_horizon": 64, "max_steps": 20_000,
    "hyperparameters": {"batch_size": 256, "buffer_size": 50_000, "learning_rate": 1e-3, "buffer_init_steps": 1000,
                        "steps_per_update": 1.0},
    "network_settings": {"hidden_units": 256, "num_layers": 2, "activation": "relu"},
}


@pytest.mark.learning
def test_pendulum_learns_with_sac_within_20k_steps(server):
    """Stops as soon as the last 10 episodes average >= -400 (a random policy: about -1200), which
    must happen within 20k env steps."""
    result = run("Pendulum-v1", f"127.0.0.1:{server.port}", steps=20_000, num_envs=1, behavior_name="Pendulum",
                 settings=PENDULUM_SETTINGS, seed=0, window=10, target_return=-400.0, progress=False)
    behavior = server.registry.get("Pendulum")
    assert behavior.wait_idle(300)  # the last pieces, flushed at the end, owe their updates too
    trainer = behavior.trainer
    print(f"steps={result.env_steps} episodes={result.episodes} mean_return(last 10)={result.mean_return:.1f} "
          f"updates={trainer.updates_done} version={result.policy_version} seconds={result.seconds:.1f}")
    assert result.solved and result.env_steps <= 20_000, result.returns[-10:]
    assert result.mean_return >= -400
    assert trainer.updates_done == trainer.step - 1_000  # lockstep: every owed update ran (1,000 warm-up steps)


@pytest.mark.learning
def test_discrete_goal_seek_learns_with_sac(server):
    settings = {"trainer_type": "sac", "time_horizon": 32, "max_steps": 1_000_000,
                "hyperparameters": {"batch_size": 128, "buffer_size": 20_000, "learning_rate": 1e-3, "buffer_init_steps": 500},
                "network_settings": {"hidden_units": 64, "num_layers": 2},
                "reward_signals": {"extrinsic": {"gamma": 0.95}}}
    kwargs = {"action_type": "discrete"}
    baseline = random_score(GOAL_SEEK, kwargs)
    target = f"127.0.0.1:{server.port}"
    result = run(GOAL_SEEK, target, steps=6_000, num_envs=4, behavior_name="GoalSeek-sac", settings=settings, seed=0,
                 window=50, progress=False, env_kwargs=kwargs)
    with LudusClient(target) as client:
        policy = client.get_local_policy("GoalSeek-sac")
    assert_goal_seek_learned("sac discrete", result, greedy_score(policy, GOAL_SEEK, kwargs), baseline)
