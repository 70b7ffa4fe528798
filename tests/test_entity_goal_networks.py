"""Entity (variable-length) observations and hyper-network goal conditioning: the torch networks,
their numpy twins in the SDK, registration rules, and an entity task learned through the service."""
from __future__ import annotations

import subprocess
import sys

import grpc
import numpy as np
import pytest
import torch

from ludus.v1 import trainer_pb2 as pb
from ludus_client import LudusClient, LudusError, TrajectoryBuilder
from ludus_client.numpy_entities import entity_encoder_forward, hyper_linear_forward
from ludus_client.policy import LocalPolicy
from ludus_client.spec import ActionSpec, BehaviorSpec, ObservationSpec
from ludus_service.entities import EntityEncoder
from ludus_service.goals import HyperLinear
from ludus_service.settings import resolve_settings
from ludus_service.trainer import PPOTrainer
from serverproc import wait_until

ENTITIES = pb.OBSERVATION_KIND_ENTITIES
GOAL = pb.OBSERVATION_TYPE_GOAL_SIGNAL


def randomised(module: torch.nn.Module, scale: float = 0.3) -> torch.nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module


def entity_batch(rng: np.random.Generator, n: int, max_entities: int, size: int) -> np.ndarray:
    """Rows with 0..max_entities present entities (the rest all-zero padding); row 0 has none."""
    x = rng.standard_normal((n, max_entities, size)).astype(np.float32)
    counts = rng.integers(0, max_entities + 1, size=n)
    counts[0] = 0
    for i, c in enumerate(counts):
        x[i, c:] = 0.0
    return x


# -- the entity encoder ---------------------------------------------------------------------------

@pytest.mark.parametrize("max_entities,self_size", [(1, 0), (7, 0), (7, 3), (4, 5)])
def test_numpy_entity_encoder_equals_torch(max_entities: int, self_size: int):
    torch.manual_seed(max_entities + self_size)
    encoder = randomised(EntityEncoder(4, max_entities, self_size, embedding_size=16, num_heads=4))
    rng = np.random.default_rng(0)
    entities = entity_batch(rng, 6, max_entities, 4)
    x_self = rng.standard_normal((6, self_size)).astype(np.float32)
    with torch.no_grad():
        expected = encoder(torch.as_tensor(entities), torch.as_tensor(x_self)).numpy()
    tensors, description = encoder.export("e")
    np.testing.assert_allclose(entity_encoder_forward(description, tensors, entities, x_self), expected, atol=1e-5, rtol=1e-4)
    assert np.isfinite(expected).all()
    assert np.allclose(expected[0], 0.0)  # no entity: zeros, not NaN


def test_entity_encoder_ignores_order_and_padding_position():
    torch.manual_seed(1)
    encoder = randomised(EntityEncoder(3, 4, 2, embedding_size=8, num_heads=2))
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal(3).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    zero = np.zeros(3, np.float32)
    rows = np.stack([np.stack([a, b, zero, zero]), np.stack([b, zero, a, zero]), np.stack([zero, zero, zero, b])])
    x_self = np.repeat(rng.standard_normal((1, 2)).astype(np.float32), 3, axis=0)
    with torch.no_grad():
        out = encoder(torch.as_tensor(rows), torch.as_tensor(x_self)).numpy()
    np.testing.assert_allclose(out[0], out[1], atol=1e-5)  # the same set, reordered and padded elsewhere
    assert not np.allclose(out[0], out[2], atol=1e-3)  # a different set


def test_entity_encoder_gradients_are_finite_even_without_entities():
    encoder = EntityEncoder(3, 5, 2, embedding_size=8, num_heads=2)
    entities = torch.zeros(4, 5, 3)
    entities[1, :2] = torch.randn(2, 3)
    out = encoder(entities, torch.randn(4, 2))
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in encoder.parameters() if p.grad is not None)


# -- goal conditioning ----------------------------------------------------------------------------

def test_numpy_hyper_layer_equals_torch_and_the_goal_conditions_it():
    torch.manual_seed(2)
    layer = randomised(HyperLinear(6, 5, 3, 8))
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 6)).astype(np.float32)
    goal = rng.standard_normal((4, 3)).astype(np.float32)
    with torch.no_grad():
        expected = layer(torch.as_tensor(x), torch.as_tensor(goal)).numpy()
        other_goal = layer(torch.as_tensor(x), torch.as_tensor(goal[::-1].copy())).numpy()
    tensors, description = layer.export("g")
    np.testing.assert_allclose(hyper_linear_forward(description, tensors, x, goal), expected, atol=1e-5, rtol=1e-4)
    assert not np.allclose(expected, other_goal, atol=1e-4)


@pytest.mark.parametrize("goal_type", ["hyper", "none"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_local_policy_equals_the_torch_actor_with_entities_and_goals(goal_type: str, num_layers: int):
    spec = BehaviorSpec((ObservationSpec("self", (3,)), ObservationSpec("things", (5, 4), ENTITIES),
                         ObservationSpec("goal", (2,), pb.OBSERVATION_KIND_VECTOR, GOAL)), ActionSpec(2, (3,)))
    settings = resolve_settings({"network_settings": {"hidden_units": 16, "num_layers": num_layers, "normalize": True,
                                                      "goal_conditioning_type": goal_type}})
    trainer = PPOTrainer(spec, settings, "cpu", 0)
    randomised(trainer.optimizer.actor, 0.1)
    tensors, arch = trainer.optimizer.actor.export()
    assert ("goal_layer" in arch) == (goal_type == "hyper")
    policy = LocalPolicy(tensors, arch, 1)
    rng = np.random.default_rng(3)
    obs = [rng.standard_normal((6, 3)).astype(np.float32), entity_batch(rng, 6, 5, 4), rng.standard_normal((6, 2)).astype(np.float32)]
    out = policy.act(obs, rng=rng)
    ev = trainer.optimizer.actor.evaluate([torch.as_tensor(o) for o in obs], torch.as_tensor(out.continuous_actions),
                                          torch.as_tensor(out.discrete_actions), None)
    np.testing.assert_allclose(ev.continuous_log_probs.detach().numpy(), out.continuous_log_probs, atol=1e-4)
    np.testing.assert_allclose(ev.discrete_log_probs.detach().numpy(), out.discrete_log_probs, atol=1e-4)


def test_the_sdk_modules_import_without_torch():
    code = "import sys, ludus_client.numpy_entities, ludus_client.policy; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- through the service --------------------------------------------------------------------------

def test_registration_rules_for_entities_and_goals(client: LudusClient):
    bad_rank = BehaviorSpec((ObservationSpec("things", (4,), ENTITIES),), ActionSpec(0, (2,)))
    with pytest.raises(LudusError) as info:
        client.register("BadEntities", bad_rank, None)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "spec.observations[0].shape" in info.value.details
    visual_goal = BehaviorSpec((ObservationSpec("v", (3,)), ObservationSpec("g", (3, 20, 20), pb.OBSERVATION_KIND_VISUAL, GOAL)),
                               ActionSpec(0, (2,)))
    with pytest.raises(LudusError) as info:
        client.register("VisualGoal", visual_goal, None)
    assert info.value.code == grpc.StatusCode.UNIMPLEMENTED and "spec.observations[1].observation_type" in info.value.details


def target_task(rng: np.random.Generator, n: int, max_entities: int = 4):
    """Entities are (position one-hot of 4, is_target, 1); one target and 0-3 distractors on other
    positions, in random slots. The right action is the target's position."""
    entities = np.zeros((n, max_entities, 6), np.float32)
    answer = rng.integers(0, 4, size=n)
    for i in range(n):
        positions = rng.permutation(4)
        distractors = [p for p in positions if p != answer[i]][:rng.integers(0, 4)]
        slots = rng.permutation(max_entities)
        for slot, (pos, target) in zip(slots, [(answer[i], 1.0)] + [(p, 0.0) for p in distractors]):
            entities[i, slot, pos] = 1.0
            entities[i, slot, 4] = target
            entities[i, slot, 5] = 1.0
    return entities, answer


@pytest.mark.learning
def test_pointing_at_the_target_among_a_variable_number_of_entities_is_learned(client: LudusClient):
    spec = BehaviorSpec((ObservationSpec("things", (4, 6), ENTITIES),), ActionSpec(0, (4,)))
    settings = {"hyperparameters": {"batch_size": 128, "buffer_size": 1024, "num_epoch": 3, "learning_rate": 1e-3,
                                    "learning_rate_schedule": "constant", "beta": 1e-3},
                "network_settings": {"hidden_units": 32}}
    reg = client.register("Targets", spec, settings)
    rng = np.random.default_rng(0)
    test_obs, test_answer = target_task(rng, 512)
    untrained = client.get_local_policy("Targets").act([test_obs], deterministic=True)
    assert (untrained.discrete_actions[:, 0] == test_answer).mean() < 0.5
    version, steps, accuracy = reg.policy_version, 0, 0.0
    while steps < 16_384 and accuracy <= 0.9:
        policy = client.get_local_policy("Targets")
        obs, answer = target_task(rng, 1024)
        empty = rng.random(1024) < 0.05  # some steps see no entity at all: reward 0 whatever the action
        obs[empty] = 0.0
        out = policy.act([obs], rng=rng)
        reward = np.where(empty, 0.0, (out.discrete_actions[:, 0] == answer).astype(np.float32))
        trajectories = []
        for i in range(len(obs)):
            builder = TrajectoryBuilder(spec, f"agent{i % 64}")
            builder.add_step([obs[i]], out.continuous_actions[i], out.discrete_actions[i], out.continuous_log_probs[i],
                             out.discrete_log_probs[i], float(reward[i]), policy.version)
            trajectories.append(builder.build(None, done=True))
        client.submit("Targets", trajectories)
        steps += len(obs)
        wait_until(lambda: client.describe("Targets").policy_version > version, 120, "an update")
        version = client.describe("Targets").policy_version
        greedy = client.get_local_policy("Targets").act([test_obs], deterministic=True)
        accuracy = float((greedy.discrete_actions[:, 0] == test_answer).mean())
    assert accuracy > 0.9, f"greedy accuracy {accuracy:.2f} after {steps} steps (random: 0.25)"
