"""Recurrent (LSTM) policies and critics: sequences, padding, memories across calls, the client's
memory interface, and bad input. The learning proof is tests/test_game_tasks.py (CueRecall)."""
from __future__ import annotations

from typing import List

import grpc
import numpy as np
import pytest
import torch

from ludus.v1 import trainer_pb2 as pb
from ludus_client import BehaviorSpec, LudusClient, LudusError, TrajectoryBuilder
from ludus_client.policy import LocalPolicy
from ludus_client.tensor_codec import to_tensor
from ludus_service.sequences import LOSS_MASK, AgentMemories, pad_to_sequences
from ludus_service.settings import resolve_settings
from ludus_service.trainer import PPOTrainer
from ludus_service.validation import parse_trajectory
from serverproc import wait_until

SEQ, MEM = 4, 8
SPEC = BehaviorSpec.vector(3, continuous_size=2, discrete_branches=[3])
SETTINGS = {"hyperparameters": {"batch_size": 16, "buffer_size": 64, "num_epoch": 2},
            "network_settings": {"hidden_units": 16, "memory": {"sequence_length": SEQ, "memory_size": MEM}},
            "time_horizon": 16}


# -- sequences ------------------------------------------------------------------------------------

def pad_oracle(rows: List[np.ndarray], seq: int, fill) -> List[np.ndarray]:
    """Loop oracle: cut into sequences from the first row, pad the last one at its end."""
    out = []
    for start in range(0, len(rows), seq):
        piece = list(rows[start:start + seq])
        while len(piece) < seq:
            piece.append(np.full_like(rows[0], fill))
        out.extend(piece)
    return out


@pytest.mark.parametrize("length", [1, 3, 4, 5, 8, 11])
@pytest.mark.parametrize("seq", [1, 4, 5])
def test_padding_to_sequences_matches_a_loop(length: int, seq: int):
    rng = np.random.default_rng(length * 10 + seq)
    fields = {"obs": rng.standard_normal((length, 3)).astype(np.float32), "mask": rng.random((length, 2)) < 0.5,
              "act": rng.integers(0, 5, (length, 1))}
    padded = pad_to_sequences(fields, seq, fill={"mask": True})
    total = -(-length // seq) * seq
    for key, fill in (("obs", 0.0), ("mask", True), ("act", 0)):
        expected = np.stack(pad_oracle(list(fields[key]), seq, fill))
        np.testing.assert_array_equal(padded[key], expected)
        assert padded[key].dtype == fields[key].dtype
    assert padded[LOSS_MASK].tolist() == [True] * length + [False] * (total - length)


def test_agent_memories_are_bounded_and_default_to_zeros():
    store = AgentMemories(4, capacity=2)
    assert store.get("a").tolist() == [0.0] * 4
    store.set("a", np.ones(4))
    store.set("b", np.ones(4) * 2)
    store.set("c", np.ones(4) * 3)
    assert len(store) == 2 and store.get("a").tolist() == [0.0] * 4 and store.get("c")[0] == 3.0
    store.drop("c")
    assert store.get("c")[0] == 0.0


# -- networks and the client's policy ------------------------------------------------------------

def _trainer(seed: int = 0) -> PPOTrainer:
    trainer = PPOTrainer(SPEC, resolve_settings(SETTINGS), "cpu", seed)
    with torch.no_grad():
        for p in list(trainer.optimizer.actor.parameters()) + list(trainer.optimizer.critic.parameters()):
            p.add_(0.1 * torch.randn_like(p))
    return trainer


def rollout(policy: LocalPolicy, obs: np.ndarray, rng: np.random.Generator, memory=None):
    """Step by step with the client policy, carrying its memory; returns outputs and input memories."""
    memory = policy.initial_memories(1) if memory is None else memory
    outs, inputs = [], []
    for t in range(len(obs)):
        inputs.append(memory[0])
        out = policy.act([obs[t:t + 1]], rng=rng, memories=memory)
        outs.append(out)
        memory = out.memories
    return outs, np.stack(inputs), memory


def test_client_policy_steps_equal_the_torch_actor_over_sequences():
    trainer = _trainer()
    tensors, arch = trainer.optimizer.actor.export()
    policy = LocalPolicy(tensors, arch, 1)
    assert arch["format"] == "ludus.actor.v2" and policy.memory_size == MEM
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((12, 3)).astype(np.float32)
    outs, memories, _ = rollout(policy, obs, rng)
    cont = np.concatenate([o.continuous_actions for o in outs])
    disc = np.concatenate([o.discrete_actions for o in outs])
    # Training replays 3 sequences of 4 from the memories the client recorded at their first steps.
    ev = trainer.optimizer.actor.evaluate([torch.as_tensor(obs)], torch.as_tensor(cont), torch.as_tensor(disc), None,
                                          torch.as_tensor(memories[::SEQ]), SEQ)
    np.testing.assert_allclose(ev.continuous_log_probs.detach().numpy(), np.concatenate([o.continuous_log_probs for o in outs]), atol=1e-5)
    np.testing.assert_allclose(ev.discrete_log_probs.detach().numpy(), np.concatenate([o.discrete_log_probs for o in outs]), atol=1e-5)


def test_the_policy_refuses_to_act_without_memories():
    policy = LocalPolicy(*_trainer().optimizer.actor.export(), 1)
    with pytest.raises(ValueError, match="recurrent"):
        policy.act([np.zeros((1, 3), np.float32)])
    with pytest.raises(ValueError, match="shape"):
        policy.act([np.zeros((2, 3), np.float32)], memories=np.zeros((1, MEM), np.float32))


def test_trainer_pads_each_trajectory_to_whole_sequences():
    trainer = _trainer()
    policy = LocalPolicy(*trainer.optimizer.actor.export(), 1)
    rng = np.random.default_rng(1)
    for length in (5, 8, 3):
        obs = rng.standard_normal((length, 3)).astype(np.float32)
        outs, memories, _ = rollout(policy, obs, rng)
        builder = TrajectoryBuilder(SPEC, f"agent{length}")
        for t, out in enumerate(outs):
            builder.add_step([obs[t]], out.continuous_actions[0], out.discrete_actions[0], out.continuous_log_probs[0],
                             out.discrete_log_probs[0], 1.0, 1, memory=memories[t])
        trainer.process_trajectory(parse_trajectory(builder.build(None, done=True), SPEC, memory_size=MEM))
    buffer = trainer.update_buffer
    assert buffer.num_experiences == 8 + 8 + 4
    assert buffer[LOSS_MASK].tolist() == [True] * 5 + [False] * 3 + [True] * 8 + [True] * 3 + [False]


# -- through the service --------------------------------------------------------------------------

def test_critic_memory_continues_across_estimate_values_calls(client: LudusClient):
    """Two calls for one agent give what one call on the joined trajectory gives."""
    client.register("Rnn", SPEC, SETTINGS)
    rng = np.random.default_rng(2)
    obs = rng.standard_normal((12, 3)).astype(np.float32)
    nxt = rng.standard_normal(3).astype(np.float32)
    joined, joined_boot, joined_mem = client.estimate_values_full("Rnn", [obs], [nxt], done=False, agent_id="whole")
    first, _, first_mem = client.estimate_values_full("Rnn", [obs[:8]], [obs[8]], done=False, agent_id="split")
    second, second_boot, second_mem = client.estimate_values_full("Rnn", [obs[8:]], [nxt], done=False, agent_id="split")
    np.testing.assert_allclose(np.concatenate([first["extrinsic"], second["extrinsic"]]), joined["extrinsic"], atol=1e-5)
    assert second_boot["extrinsic"] == pytest.approx(joined_boot["extrinsic"], abs=1e-5)
    np.testing.assert_allclose(np.concatenate([first_mem, second_mem]), joined_mem, atol=1e-5)
    assert joined_mem.shape == (12, MEM)
    assert not np.allclose(joined_mem[0], joined_mem[4])  # sequences start from different memories
    assert (joined_mem[:4] == joined_mem[0]).all()  # one memory per sequence, repeated for its steps
    # A fresh agent starts from zeros; done drops the agent's memory, so it starts afresh too.
    fresh, _, _ = client.estimate_values_full("Rnn", [obs[8:]], [nxt], done=False, agent_id="fresh")
    assert not np.allclose(fresh["extrinsic"], second["extrinsic"])
    client.estimate_values_full("Rnn", [obs[:8]], None, done=True, agent_id="ended")
    after_done, _, after_mem = client.estimate_values_full("Rnn", [obs[8:]], [nxt], done=False, agent_id="ended")
    np.testing.assert_allclose(after_done["extrinsic"], fresh["extrinsic"], atol=1e-6)
    assert (after_mem[0] == 0).all()


def test_recurrent_behaviour_trains_through_the_service(client: LudusClient):
    reg = client.register("RnnTrain", SPEC, SETTINGS)
    policy = client.get_local_policy("RnnTrain")
    rng = np.random.default_rng(3)
    trajectories = []
    for k in range(6):
        obs = rng.standard_normal((13, 3)).astype(np.float32)
        outs, memories, _ = rollout(policy, obs, rng)
        builder = TrajectoryBuilder(SPEC, f"agent{k % 2}")
        for t, out in enumerate(outs):
            builder.add_step([obs[t]], out.continuous_actions[0], out.discrete_actions[0], out.continuous_log_probs[0],
                             out.discrete_log_probs[0], float(rng.standard_normal()), policy.version, memory=memories[t])
        trajectories.append(builder.build([obs[0]], done=k % 3 == 2))
    acks = client.submit("RnnTrain", trajectories)
    assert sum(a.accepted_steps for a in acks) == 78  # padding is the server's business, not counted
    wait_until(lambda: client.describe("RnnTrain").policy_version > reg.policy_version, 60, "a recurrent update")
    stats = dict(client.describe("RnnTrain").latest_update_stats)
    assert np.isfinite(stats["Losses/Policy Loss"]) and np.isfinite(stats["Losses/Value Loss"])
    assert client.get_local_policy("RnnTrain").memory_size == MEM


def test_update_rpc_takes_whole_sequences_with_memories_and_loss_masks(client: LudusClient):
    client.register("RnnUpdate", SPEC, SETTINGS)
    rng = np.random.default_rng(4)
    n = 8

    def batch(rows: int = n, memories: bool = True) -> pb.TrainingBatch:
        b = pb.TrainingBatch(
            observations=[to_tensor(rng.standard_normal((rows, 3)).astype(np.float32))],
            continuous_actions=to_tensor(rng.standard_normal((rows, 2)).astype(np.float32)),
            continuous_log_probs=to_tensor(np.full((rows, 2), -1.0, np.float32)),
            discrete_actions=to_tensor(rng.integers(0, 3, (rows, 1)).astype(np.int32)),
            discrete_log_probs=to_tensor(np.full((rows, 1), -1.1, np.float32)),
            advantages=to_tensor(rng.standard_normal(rows).astype(np.float32)),
            loss_masks=to_tensor(np.array([True] * (rows - 1) + [False])),
        )
        b.returns["extrinsic"].CopyFrom(to_tensor(rng.standard_normal(rows).astype(np.float32)))
        b.value_estimates["extrinsic"].CopyFrom(to_tensor(rng.standard_normal(rows).astype(np.float32)))
        if memories:
            b.memories.CopyFrom(to_tensor(np.zeros((rows, MEM), np.float32)))
            b.critic_memories.CopyFrom(to_tensor(np.zeros((rows, MEM), np.float32)))
        return b

    stats, version = client.update("RnnUpdate", batch(), n // SEQ)
    assert version == 2 and np.isfinite(stats["Losses/Policy Loss"])
    for bad, num_sequences, field in ((batch(6), 1, "batch"), (batch(), n, "num_sequences"), (batch(memories=False), 2, "batch.memories")):
        with pytest.raises(LudusError) as info:
            client.update("RnnUpdate", bad, num_sequences)
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and field in info.value.details
    assert client.describe("RnnUpdate").policy_version == 2


def test_memories_are_required_exactly_when_the_networks_are_recurrent(client: LudusClient):
    client.register("RnnStrict", SPEC, SETTINGS)
    client.register("Flat", SPEC, {k: v for k, v in SETTINGS.items() if k != "network_settings"})
    flat_policy = client.get_local_policy("Flat")
    rng = np.random.default_rng(5)
    obs = rng.standard_normal((4, 3)).astype(np.float32)
    out = flat_policy.act([obs], rng=rng)
    builder = TrajectoryBuilder(SPEC, "a")
    for t in range(4):
        builder.add_step([obs[t]], out.continuous_actions[t], out.discrete_actions[t], out.continuous_log_probs[t],
                         out.discrete_log_probs[t], 0.0, 1)
    no_memories = builder.build(None, done=True)
    with pytest.raises(LudusError) as info:
        client.submit("RnnStrict", [no_memories])
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "trajectory.memories" in info.value.details
    with_memories = pb.Trajectory()
    with_memories.CopyFrom(no_memories)
    with_memories.memories.CopyFrom(to_tensor(np.zeros((4, MEM), np.float32)))
    with pytest.raises(LudusError) as info:
        client.submit("Flat", [with_memories])
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "memories" in info.value.details and "not recurrent" in info.value.details
    with pytest.raises(LudusError) as info:
        client.estimate_values("RnnStrict", [obs], None, done=True)  # no agent_id
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "agent_id" in info.value.details
    wrong_size = pb.Trajectory()
    wrong_size.CopyFrom(no_memories)
    wrong_size.memories.CopyFrom(to_tensor(np.zeros((4, MEM + 2), np.float32)))
    with pytest.raises(LudusError) as info:
        client.submit("RnnStrict", [wrong_size])
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "trajectory.memories" in info.value.details
    assert client.describe("RnnStrict").total_steps == 0
