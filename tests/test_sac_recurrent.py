"""Recurrent SAC (`network_settings.memory` with trainer_type sac): the replay buffer keeps and samples
whole sequences, trajectories are stored with the client's policy memories and the critic's memories,
padding never reaches a loss, the target critic continues each sequence's memory, the Update and
EstimateValues RPCs take and give memories, and an LSTM policy learns a memory task through the real
gRPC path."""
from __future__ import annotations

import copy

import grpc
import numpy as np
import pytest
import torch

from game_envs import register_envs
from ludus.v1 import trainer_pb2 as pb
from ludus_client import BehaviorSpec, LudusClient, LudusError
from ludus_client.gym_runner import run
from ludus_client.tensor_codec import to_tensor
from ludus_service.buffer import CRITIC_MEMORY, MEMORY, AgentBuffer, obs_key
from ludus_service.optimizer.sac import SACOptimizer, rewards_key
from ludus_service.replay_buffer import ReplayBuffer
from ludus_service.sac_trainer import SACTrainer
from ludus_service.sequences import LOSS_MASK
from ludus_service.settings import resolve_settings
from ludus_service.spec import ActionSpec, ObservationSpec
from ludus_service.spec import BehaviorSpec as ServiceSpec
from ludus_service.validation import TrajectoryData
from test_game_tasks import CUE_RECALL, recurrent_greedy_score
from test_sac import trajectory as sac_trajectory

register_envs()

MEMORY_SIZE, SEQUENCE_LENGTH = 16, 4


def recurrent_sac_settings(**hyper) -> dict:
    return {"trainer_type": "sac", "time_horizon": 16,
            "hyperparameters": {"batch_size": 32, "buffer_size": 1000, **hyper},
            "network_settings": {"hidden_units": 32, "num_layers": 2,
                                 "memory": {"memory_size": MEMORY_SIZE, "sequence_length": SEQUENCE_LENGTH}}}


def service_spec(continuous: int = 1, branches=(2,)) -> ServiceSpec:
    return ServiceSpec((ObservationSpec("obs", (3,)),), ActionSpec(continuous, tuple(branches)))


def trajectory(spec: ServiceSpec, length: int, seed: int = 0, **kwargs) -> TrajectoryData:
    """test_sac's random trajectory, with the policy memories a recurrent client sends."""
    return sac_trajectory(spec, length, seed, memory_size=MEMORY_SIZE, **kwargs)


# ---------------------------------------------------------------------------------------------------
# The replay buffer holds whole sequences
# ---------------------------------------------------------------------------------------------------

def test_sequence_ring_rounds_capacity_up_and_samples_whole_aligned_sequences():
    ring = ReplayBuffer(10, sequence_length=4)
    assert ring.capacity == 12  # whole sequences; buffer_size steps always fit
    for start in (0, 8, 20):  # 8 + 12 + 8 rows: the ring wraps twice
        n = 12 if start == 8 else 8
        ring.add({"t": np.arange(start, start + n, dtype=np.int64)})
    assert len(ring) == 12
    assert sorted(ring.ordered()["t"].tolist()) == list(range(16, 28))
    batch = ring.sample(np.random.default_rng(0), 64)
    rows = batch["t"].reshape(-1, 4)
    assert rows.shape == (16, 4)
    assert (rows[:, 0] % 4 == 0).all() and (np.diff(rows, axis=1) == 1).all()  # never straddles two sequences
    assert set(rows[:, 0].tolist()) == {16, 20, 24}
    with pytest.raises(ValueError, match="whole sequences"):
        ring.add({"t": np.arange(3, dtype=np.int64)})


# ---------------------------------------------------------------------------------------------------
# Trajectories become padded sequences with both memories
# ---------------------------------------------------------------------------------------------------

def test_trajectories_are_stored_as_padded_sequences_with_policy_and_critic_memories():
    spec = service_spec()
    trainer = SACTrainer(spec, resolve_settings(recurrent_sac_settings()), seed=0)
    critic = trainer.optimizer.critic
    first, second = trajectory(spec, 10, seed=1), trajectory(spec, 6, seed=2, interrupted=True)
    trainer.process_trajectory(first)
    trainer.process_trajectory(second)
    stored = trainer.replay.ordered()
    assert len(trainer.replay) == 12 + 8 and trainer.step == 16
    np.testing.assert_array_equal(stored[LOSS_MASK], [True] * 10 + [False] * 2 + [True] * 6 + [False] * 2)
    np.testing.assert_array_equal(stored[MEMORY][:10], first.memories)
    np.testing.assert_array_equal(stored[MEMORY][12:18], second.memories)
    assert not stored[MEMORY][10:12].any()
    # Critic memories: zeros for a new agent, then the critic's own memory, continued from the first
    # piece into the second (same agent, not done).
    with torch.no_grad():
        memory = torch.zeros(1, MEMORY_SIZE)
        expected = []
        for obs in (first.observations[0], second.observations[0]):
            for start in range(0, len(obs), SEQUENCE_LENGTH):
                expected.append(memory[0].numpy().copy())
                _, memory = critic.forward_with_memory([torch.from_numpy(obs[start:start + SEQUENCE_LENGTH])], memory,
                                                       len(obs[start:start + SEQUENCE_LENGTH]))
    starts = stored[CRITIC_MEMORY][::SEQUENCE_LENGTH][[0, 1, 2, 3, 4]]
    np.testing.assert_allclose(starts, np.stack(expected), atol=1e-6)
    assert np.abs(expected[3]).max() > 0  # the second piece did not start from zeros
    # The interrupted piece ended the episode: the agent's next piece starts from a zero memory.
    assert trainer.optimizer.critic_memories.get("a").tolist() == [0.0] * MEMORY_SIZE


# ---------------------------------------------------------------------------------------------------
# The update: masked padding, the target critic's memory, a real step
# ---------------------------------------------------------------------------------------------------

def test_target_critic_continues_each_sequence_like_a_step_by_step_loop():
    spec = service_spec()
    opt = SACOptimizer(spec, resolve_settings(recurrent_sac_settings()))
    with torch.no_grad():
        for p in opt.target_critic.parameters():
            p.normal_(0, 0.5)
    rng = np.random.default_rng(3)
    sequences = 3
    obs = torch.from_numpy(rng.normal(size=(sequences * SEQUENCE_LENGTH, 3)).astype(np.float32))
    next_obs = torch.from_numpy(rng.normal(size=(sequences * SEQUENCE_LENGTH, 3)).astype(np.float32))
    memories = torch.from_numpy(rng.normal(size=(sequences, MEMORY_SIZE)).astype(np.float32))
    with torch.no_grad():
        got = opt.target_values([obs], [next_obs], memories)["extrinsic"]
        expected = []
        for s in range(sequences):  # oracle: s_0, then each s'_t, one step at a time
            rows = slice(s * SEQUENCE_LENGTH, (s + 1) * SEQUENCE_LENGTH)
            _, memory = opt.target_critic.forward_with_memory([obs[rows][:1]], memories[s:s + 1], 1)
            for t in range(SEQUENCE_LENGTH):
                values, memory = opt.target_critic.forward_with_memory([next_obs[rows][t:t + 1]], memory, 1)
                expected.append(values["extrinsic"])
    torch.testing.assert_close(got, torch.cat(expected), rtol=1e-5, atol=1e-6)


def _sampled_batch(spec: ServiceSpec, seed: int) -> AgentBuffer:
    """Two sequences, the second with two padding rows (as a sampled minibatch looks)."""
    trainer = SACTrainer(spec, resolve_settings(recurrent_sac_settings(batch_size=8)), seed=seed)
    trainer.process_trajectory(trajectory(spec, 4, seed=seed))
    trainer.process_trajectory(trajectory(spec, 2, seed=seed + 1, done=True, agent="b"))
    fields = trainer.replay.ordered()
    fields[rewards_key("extrinsic")] = fields["environment_rewards"]
    return AgentBuffer(fields)


def _params_after_update(spec: ServiceSpec, batch: AgentBuffer) -> list:
    torch.manual_seed(0)
    opt = SACOptimizer(spec, resolve_settings(recurrent_sac_settings(batch_size=8)))
    torch.manual_seed(1)  # the same reparameterisation noise for every batch
    opt.update(batch, 2)
    return [p.detach().clone() for p in opt._parameters]


def test_padding_rows_never_change_an_update():
    spec = service_spec()
    batch = _sampled_batch(spec, seed=0)
    assert batch[LOSS_MASK].tolist() == [True] * 6 + [False] * 2
    garbage = copy.deepcopy(batch)
    rng = np.random.default_rng(9)
    pad = ~garbage[LOSS_MASK]
    for key in (obs_key(0), "next_obs_0", MEMORY, CRITIC_MEMORY, "continuous_action", rewards_key("extrinsic")):
        garbage[key][pad] = rng.normal(scale=5.0, size=garbage[key][pad].shape)
    garbage["done"][pad] = 1.0
    reference = _params_after_update(spec, batch)
    for a, b in zip(reference, _params_after_update(spec, garbage)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # Without the mask the same garbage does change the step (the comparison above can fail).
    unmasked = copy.deepcopy(garbage)
    unmasked[LOSS_MASK] = np.ones_like(unmasked[LOSS_MASK])
    assert any(not torch.allclose(a, b, atol=1e-6) for a, b in zip(reference, _params_after_update(spec, unmasked)))


def test_owed_updates_sample_whole_sequences_and_train_every_network():
    spec = service_spec()
    trainer = SACTrainer(spec, resolve_settings(recurrent_sac_settings(buffer_init_steps=0, batch_size=16)), seed=0)
    opt = trainer.optimizer
    before = {name: [p.detach().clone() for p in m.parameters()] for name, m in opt.modules().items()}
    for i in range(4):
        trainer.process_trajectory(trajectory(spec, 7, seed=i, done=i % 2 == 1))
    assert trainer.ready_to_update()
    stored = trainer.replay.ordered()  # 4 trajectories of 7 steps: 8 rows each, nothing wrapped yet
    stored_sequences = {stored[obs_key(0)][k:k + SEQUENCE_LENGTH].tobytes(): k for k in range(0, 32, SEQUENCE_LENGTH)}
    seen = []
    real_update = opt.update

    def spy(batch, num_sequences):
        seen.append((batch, num_sequences))
        return real_update(batch, num_sequences)

    opt.update = spy
    stats = trainer.update_policy()
    assert trainer.updates_done == 28 and trainer.owed_updates() == 0
    assert len(seen) == 28
    for batch, num_sequences in seen:  # every minibatch: 4 whole stored sequences with their own memories
        assert num_sequences == 4 and len(batch) == 16
        for k in range(0, 16, SEQUENCE_LENGTH):
            start = stored_sequences[batch[obs_key(0)][k:k + SEQUENCE_LENGTH].tobytes()]
            np.testing.assert_array_equal(batch[MEMORY][k], stored[MEMORY][start])
            np.testing.assert_array_equal(batch[CRITIC_MEMORY][k], stored[CRITIC_MEMORY][start])
            np.testing.assert_array_equal(batch[LOSS_MASK][k:k + SEQUENCE_LENGTH], stored[LOSS_MASK][start:start + SEQUENCE_LENGTH])
    for key in ("Losses/Policy Loss", "Losses/Q1 Loss", "Losses/Q2 Loss", "Losses/Value Loss"):
        assert np.isfinite(stats[key]), (key, stats)
    for name, module in opt.modules().items():  # the LSTMs too, including the Q networks'
        changed = [not torch.equal(a, b) for a, b in zip(before[name], module.parameters())]
        assert all(changed) if name != "target_critic" else any(changed), name
    assert opt.q1.memory is not None and opt.q1.memory.memory_size == MEMORY_SIZE


def test_learned_reward_signals_train_on_sampled_sequences():
    """Curiosity and RND score and train on sampled sequences (padding rows masked out of their losses)."""
    spec = service_spec()
    settings = recurrent_sac_settings(buffer_init_steps=0, batch_size=16)
    settings["reward_signals"] = {"extrinsic": {}, "curiosity": {"strength": 0.1}, "rnd": {"strength": 0.1}}
    trainer = SACTrainer(spec, resolve_settings(settings), seed=0)
    for i in range(3):
        trainer.process_trajectory(trajectory(spec, 6, seed=i, done=True, agent=f"agent{i}"))
    stats = trainer.update_policy()
    for key in ("Losses/Curiosity Forward Loss", "Losses/RND Loss", "Losses/Q1 Loss", "Policy/Curiosity Reward"):
        assert key in stats and np.isfinite(stats[key]), (key, stats)
    assert trainer.reward_updates_done == 18
    # Their steps ignore whatever the padding rows hold.
    batch = AgentBuffer(trainer.replay.ordered())
    assert not batch[LOSS_MASK].all()
    garbage = copy.deepcopy(batch)
    pad = ~garbage[LOSS_MASK]
    rng = np.random.default_rng(5)
    for key in (obs_key(0), "next_obs_0", "continuous_action"):
        garbage[key][pad] = rng.normal(scale=5.0, size=garbage[key][pad].shape)

    def weights_after(minibatch: AgentBuffer) -> list:
        state = copy.deepcopy(trainer)
        torch.manual_seed(2)
        state.optimizer.update_reward_signals(minibatch)
        return [p.detach().clone() for m in state.learned_signal_modules().values() for p in m.parameters()]

    for a, b in zip(weights_after(batch), weights_after(garbage)):
        torch.testing.assert_close(a, b)


def test_recurrent_replay_buffer_round_trips_through_checkpoint_tensors():
    spec = service_spec()
    settings = resolve_settings(recurrent_sac_settings(save_replay_buffer=True))
    trainer = SACTrainer(spec, settings, seed=0)
    for i in range(3):
        trainer.process_trajectory(trajectory(spec, 5 + i, seed=i))
    restored = SACTrainer(spec, settings, seed=0)
    restored.load_state(trainer.state_tensors(), trainer.state_metadata())
    for key, value in trainer.replay.ordered().items():
        np.testing.assert_array_equal(restored.replay.ordered()[key], value)
    assert {MEMORY, CRITIC_MEMORY, LOSS_MASK} <= set(restored.replay.keys())
    other = SACTrainer(spec, resolve_settings({**recurrent_sac_settings(save_replay_buffer=True), "network_settings": {
        "hidden_units": 32, "num_layers": 2, "memory": {"memory_size": MEMORY_SIZE, "sequence_length": 3}}}), seed=0)
    tensors = {k: v[:-1] for k, v in trainer.state_tensors().items() if k.startswith("replay.")}
    with pytest.raises(ValueError, match="sequence_length"):
        other.replay.load_state_tensors(tensors)


# ---------------------------------------------------------------------------------------------------
# The RPC surface
# ---------------------------------------------------------------------------------------------------

def _sequence_batch(n: int, rng: np.random.Generator, memories: bool = True, **extra) -> pb.TrainingBatch:
    batch = pb.TrainingBatch(
        observations=[to_tensor(rng.normal(size=(n, 3)).astype(np.float32))],
        next_observations=[to_tensor(rng.normal(size=(n, 3)).astype(np.float32))],
        continuous_actions=to_tensor(np.tanh(rng.normal(size=(n, 1))).astype(np.float32)),
        rewards=to_tensor(rng.normal(size=n).astype(np.float32)), **extra)
    if "dones" not in extra:
        batch.dones.CopyFrom(to_tensor(np.zeros(n, bool)))
    if memories:
        batch.memories.CopyFrom(to_tensor(rng.normal(size=(n, MEMORY_SIZE)).astype(np.float32)))
        batch.critic_memories.CopyFrom(to_tensor(rng.normal(size=(n, MEMORY_SIZE)).astype(np.float32)))
    return batch


def test_update_rpc_takes_sequences_with_memories_and_estimate_values_returns_critic_memories(client: LudusClient, server):
    spec = BehaviorSpec.vector(3, continuous_size=1)
    registration = client.register("RecurrentSAC", spec, recurrent_sac_settings())
    rng = np.random.default_rng(0)
    mask = np.ones(8, bool)
    mask[-2:] = False
    dones = np.zeros(8, bool)
    dones[5] = True  # the last real row of the second sequence
    stats, version = client.update("RecurrentSAC", _sequence_batch(8, rng, loss_masks=to_tensor(mask), dones=to_tensor(dones)), 2)
    assert version == registration.policy_version + 1 and np.isfinite(stats["Losses/Q1 Loss"])
    for batch, num_sequences, field in (
            (_sequence_batch(8, rng, memories=False), 2, "batch.memories"),
            (_sequence_batch(8, rng), 4, "num_sequences"),
            (_sequence_batch(6, rng), 1, "batch"),  # not whole sequences of 4
            (_sequence_batch(8, rng, loss_masks=to_tensor(np.zeros(8, bool))), 2, "batch.loss_masks"),
            # padding in the middle of a sequence, and a sequence that runs on past an episode's end
            (_sequence_batch(8, rng, loss_masks=to_tensor(np.array([1, 0, 1, 1, 1, 1, 1, 1], bool))), 2, "batch.loss_masks"),
            (_sequence_batch(8, rng, dones=to_tensor(np.array([0, 0, 0, 0, 0, 1, 0, 0], bool))), 2, "batch.dones")):
        with pytest.raises(LudusError) as err:
            client.update("RecurrentSAC", batch, num_sequences)
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and field in err.value.details, err.value
    # EstimateValues continues the agent's critic memory from call to call, apart from training's.
    obs = rng.normal(size=(6, 3)).astype(np.float32)
    whole, _, _ = client.estimate_values_full("RecurrentSAC", [obs], None, done=True, agent_id="probe")
    client.estimate_values_full("RecurrentSAC", [obs[:4]], [obs[4]], done=False, agent_id="split")
    rest, _, rest_memories = client.estimate_values_full("RecurrentSAC", [obs[4:]], None, done=True, agent_id="split")
    np.testing.assert_allclose(rest["extrinsic"], whole["extrinsic"][4:], rtol=1e-5, atol=1e-6)
    assert rest_memories.shape == (2, MEMORY_SIZE) and np.abs(rest_memories).max() > 0
    assert len(server.registry.get("RecurrentSAC").trainer.optimizer.critic_memories) == 0


# ---------------------------------------------------------------------------------------------------
# Learning a memory task through the real gRPC path
# ---------------------------------------------------------------------------------------------------

@pytest.mark.learning
def test_recurrent_sac_learns_to_recall_a_cue(server):
    """CueRecall: the cue is visible at the first step only, so only a policy with memory beats chance
    (0.5; a feed-forward PPO policy stays there, tests/test_game_tasks.py)."""
    settings = {"trainer_type": "sac", "time_horizon": 16, "max_steps": 1_000_000,
                "hyperparameters": {"batch_size": 64, "buffer_size": 20_000, "learning_rate": 3e-3, "buffer_init_steps": 256,
                                    "steps_per_update": 2.0},
                "network_settings": {"hidden_units": 32, "num_layers": 1, "memory": {"memory_size": 32, "sequence_length": 4}},
                "reward_signals": {"extrinsic": {"gamma": 0.9}}}
    target = f"127.0.0.1:{server.port}"
    result = run(CUE_RECALL, target, steps=4_096, num_envs=4, behavior_name="CueRecall-sac", settings=settings, seed=0,
                 window=50, progress=False)
    with LudusClient(target) as client:
        policy = client.get_local_policy("CueRecall-sac")
    greedy = recurrent_greedy_score(policy)
    print(f"recurrent SAC cue recall: last-50 {result.mean_return:.2f} greedy success {greedy.success_rate:.2f} "
          f"({result.seconds:.1f}s, {server.registry.get('CueRecall-sac').trainer.updates_done} updates)")
    assert policy.recurrent and policy.memory_size == 32
    assert greedy.success_rate >= 0.95, greedy


def test_behavioral_cloning_with_recurrent_sac_resumes_with_its_adam():
    """BC runs after each burst under (recurrent) SAC, and its optimizer travels with the checkpoint."""
    spec = service_spec()
    rng = np.random.default_rng(0)
    expert = AgentBuffer({obs_key(0): rng.normal(size=(40, 3)).astype(np.float32),
                          "continuous_action": np.tanh(rng.normal(size=(40, 1))).astype(np.float32),
                          "discrete_action": rng.integers(0, 2, (40, 1)), "action_mask": np.ones((40, 2), bool)})
    settings = {**recurrent_sac_settings(buffer_init_steps=0, batch_size=16),
                "behavioral_cloning": {"demo_path": "expert.demo", "batch_size": 8}}
    trainer = SACTrainer(spec, resolve_settings(settings), seed=0, demonstrations={"expert.demo": expert})
    for i in range(3):
        trainer.process_trajectory(trajectory(spec, 8, seed=i, done=True, agent=f"agent{i}"))
    stats = trainer.update_policy()
    assert stats["Losses/Pretraining Loss"] > 0
    restored = SACTrainer(spec, resolve_settings(settings), seed=0, demonstrations={"expert.demo": expert})
    restored.load_state(trainer.state_tensors(), trainer.state_metadata())
    saved, loaded = trainer.behavioral_cloning.adam.state_dict()["state"], restored.behavioral_cloning.adam.state_dict()["state"]
    assert saved and saved.keys() == loaded.keys()
    for index, moments in saved.items():
        for key, value in moments.items():
            torch.testing.assert_close(loaded[index][key], value)
