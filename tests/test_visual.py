"""Visual observations end to end: registration rules, the five encoders through the real gRPC path,
uint8 / float / PNG frames, mixed observations, and a camera task that must be learned."""
from __future__ import annotations

from typing import List, Tuple

import grpc
import numpy as np
import pytest
import torch

from ludus.v1 import trainer_pb2 as pb
from ludus_client import LudusClient, LudusError, TrajectoryBuilder
from ludus_client.images import png_tensor
from ludus_client.policy import LocalPolicy
from ludus_client.spec import ActionSpec, BehaviorSpec, ObservationSpec
from ludus_service.encoders import MIN_RESOLUTION
from ludus_service.settings import resolve_settings
from ludus_service.trainer import PPOTrainer
from serverproc import wait_until

VISUAL = pb.OBSERVATION_KIND_VISUAL
#: Every encoder with an image it accepts (its minimum side, non-square where it can be).
ENCODER_SHAPES = {"simple": (3, 20, 24), "nature_cnn": (3, 36, 40), "resnet": (3, 15, 17), "match3": (1, 5, 7),
                  "fully_connected": (3, 4, 6)}


def camera_spec(shape: Tuple[int, int, int], vector: int = 0, actions: ActionSpec = ActionSpec(0, (4,))) -> BehaviorSpec:
    observations = [ObservationSpec("camera", tuple(shape), VISUAL)]
    if vector:
        observations.append(ObservationSpec("state", (vector,)))
    return BehaviorSpec(tuple(observations), actions)


def small(encoder: str, **extra) -> dict:
    settings = {"hyperparameters": {"batch_size": 32, "buffer_size": 64, "num_epoch": 2},
                "network_settings": {"hidden_units": 16, "vis_encode_type": encoder}, "time_horizon": 16}
    settings.update(extra)
    return settings


def random_steps(spec: BehaviorSpec, rng: np.random.Generator, n: int, uint8: bool) -> List[np.ndarray]:
    out = []
    for o in spec.observations:
        if o.kind == VISUAL:
            frames = rng.integers(0, 256, size=(n, *o.shape), dtype=np.uint8)
            out.append(frames if uint8 else frames.astype(np.float32) / 255.0)
        else:
            out.append(rng.standard_normal((n, *o.shape)).astype(np.float32))
    return out


def acted_trajectory(spec: BehaviorSpec, policy: LocalPolicy, rng: np.random.Generator, steps: int, uint8: bool,
                     agent_id: str = "a") -> pb.Trajectory:
    obs = random_steps(spec, rng, steps + 1, uint8)
    out = policy.act([o[:steps] for o in obs], rng=rng)
    builder = TrajectoryBuilder(spec, agent_id)
    for t in range(steps):
        builder.add_step([o[t] for o in obs], out.continuous_actions[t], out.discrete_actions[t], out.continuous_log_probs[t],
                         out.discrete_log_probs[t], float(rng.standard_normal()), policy.version)
    return builder.build([o[steps] for o in obs])


@pytest.mark.parametrize("encoder", [e for e in sorted(ENCODER_SHAPES) if MIN_RESOLUTION[e] > 1])  # fully_connected takes any size
def test_register_rejects_an_image_below_the_encoder_minimum(client: LudusClient, encoder: str):
    minimum = MIN_RESOLUTION[encoder]
    with pytest.raises(LudusError) as info:
        client.register(f"Tiny_{encoder}", camera_spec((3, minimum - 1, minimum + 3)), small(encoder))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    details = info.value.details
    assert "spec.observations[0]" in details and "camera" in details and str(minimum) in details and encoder in details
    assert "Tiny_" + encoder not in client.list_behaviors()


def test_register_rejects_a_visual_observation_that_is_not_channels_height_width(client: LudusClient):
    spec = BehaviorSpec((ObservationSpec("camera", (20, 20), VISUAL),), ActionSpec(0, (2,)))
    with pytest.raises(LudusError) as info:
        client.register("Flat", spec, small("simple"))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "spec.observations[0].shape" in info.value.details


@pytest.mark.parametrize("encoder", sorted(ENCODER_SHAPES))
def test_every_encoder_trains_through_the_service_and_the_client_acts_like_the_server(client: LudusClient, encoder: str):
    """Mixed camera + vector observations, hybrid actions; uint8 frames on the wire; one real update."""
    spec = camera_spec(ENCODER_SHAPES[encoder], vector=3, actions=ActionSpec(2, (3, 2)))
    name = f"Cam_{encoder}"
    reg = client.register(name, spec, small(encoder))
    policy = client.get_local_policy(name)
    assert policy.architecture["format"] == "ludus.actor.v2"
    rng = np.random.default_rng(0)
    acks = client.submit(name, [acted_trajectory(spec, policy, rng, 32, uint8=True, agent_id=f"a{i}") for i in range(2)])
    assert sum(a.accepted_steps for a in acks) == 64
    wait_until(lambda: client.describe(name).policy_version > reg.policy_version, 120, f"{encoder} update")
    stats = dict(client.describe(name).latest_update_stats)
    assert np.isfinite(stats["Losses/Policy Loss"]) and np.isfinite(stats["Losses/Value Loss"])
    new_policy = client.get_local_policy(name)
    obs = random_steps(spec, rng, 4, uint8=True)
    assert np.isfinite(new_policy.act(obs, rng=rng).continuous_log_probs).all()
    # EstimateValues takes the same uint8 frames.
    values, bootstrap = client.estimate_values(name, obs, None, done=True)
    assert values["extrinsic"].shape == (4,) and bootstrap["extrinsic"] == 0.0


@pytest.mark.parametrize("encoder", sorted(ENCODER_SHAPES))
def test_local_policy_log_probs_equal_the_torch_actor(encoder: str):
    spec = camera_spec(ENCODER_SHAPES[encoder], vector=5, actions=ActionSpec(2, (3, 2)))
    trainer = PPOTrainer(spec, resolve_settings(small(encoder, network_settings={"hidden_units": 16, "vis_encode_type": encoder,
                                                                                 "normalize": True})), "cpu", 0)
    with torch.no_grad():  # weights away from their initial values, so a wrong mapping shows
        for p in trainer.optimizer.actor.parameters():
            p.add_(0.05 * torch.randn_like(p))
    tensors, arch = trainer.optimizer.actor.export()
    policy = LocalPolicy(tensors, arch, 1)
    rng = np.random.default_rng(1)
    obs = random_steps(spec, rng, 6, uint8=True)
    out = policy.act(obs, rng=rng)
    as_float = [o.astype(np.float32) / 255.0 if o.dtype == np.uint8 else o for o in obs]
    ev = trainer.optimizer.actor.evaluate([torch.as_tensor(o) for o in as_float], torch.as_tensor(out.continuous_actions),
                                          torch.as_tensor(out.discrete_actions), None)
    np.testing.assert_allclose(ev.continuous_log_probs.detach().numpy(), out.continuous_log_probs, atol=1e-4)
    np.testing.assert_allclose(ev.discrete_log_probs.detach().numpy(), out.discrete_log_probs, atol=1e-4)


def test_uint8_float_and_png_frames_are_the_same_observation(client: LudusClient):
    """The three wire forms of one frame give one value estimate."""
    spec = camera_spec((3, 20, 20))
    client.register("Forms", spec, small("simple"))
    frames = np.random.default_rng(2).integers(0, 256, size=(5, 3, 20, 20), dtype=np.uint8)
    v_uint8, _ = client.estimate_values("Forms", [frames], None, done=True)
    v_float, _ = client.estimate_values("Forms", [frames.astype(np.float32) / 255.0], None, done=True)
    request = pb.EstimateValuesRequest(behavior_name="Forms", done=True, observations=[png_tensor(frames)])
    v_png = client.stub.EstimateValues(request, timeout=30).values["extrinsic"]
    png_values = np.frombuffer(v_png.raw_data, np.float32)
    np.testing.assert_allclose(v_uint8["extrinsic"], v_float["extrinsic"], atol=1e-5)
    np.testing.assert_allclose(png_values, v_float["extrinsic"], atol=1e-5)


def test_uint8_is_refused_for_vector_observations(client: LudusClient):
    client.register("Vec", BehaviorSpec.vector(4, discrete_branches=[2]), small("simple"))
    with pytest.raises(LudusError) as info:
        client.estimate_values("Vec", [np.zeros((3, 4), np.uint8)], None, done=True)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "observations[0]" in info.value.details and "UINT8" in info.value.details


# -- learning -------------------------------------------------------------------------------------

def quadrant_frames(rng: np.random.Generator, n: int, side: int) -> Tuple[np.ndarray, np.ndarray]:
    """Grey frames with one bright square in a random quadrant (the answer) on faint noise."""
    frames = rng.integers(0, 40, size=(n, 1, side, side), dtype=np.uint8)
    quadrant = rng.integers(0, 4, size=n)
    half = side // 2
    for i, q in enumerate(quadrant):
        r, c = (q // 2) * half, (q % 2) * half
        frames[i, 0, r + 2:r + half - 2, c + 2:c + half - 2] = 255
    return frames, quadrant


@pytest.mark.learning
@pytest.mark.parametrize("encoder,side,budget", [("simple", 20, 12_000), ("fully_connected", 12, 12_000)])
def test_a_camera_task_is_learned(client: LudusClient, encoder: str, side: int, budget: int):
    """Point at the quadrant that holds the bright square: random = 25% right, learned > 90%."""
    spec = camera_spec((1, side, side))
    settings = {"hyperparameters": {"batch_size": 128, "buffer_size": 1024, "num_epoch": 3, "learning_rate": 1e-3,
                                    "learning_rate_schedule": "constant", "beta": 1e-3},
                "network_settings": {"hidden_units": 32, "vis_encode_type": encoder}}
    name = f"Quadrant_{encoder}"
    reg = client.register(name, spec, settings)
    rng = np.random.default_rng(0)
    test_frames, test_answer = quadrant_frames(rng, 512, side)
    untrained = client.get_local_policy(name).act([test_frames], deterministic=True)
    assert (untrained.discrete_actions[:, 0] == test_answer).mean() < 0.5  # the task is not solved by chance
    version, steps, accuracy = reg.policy_version, 0, 0.0
    while steps < budget:
        policy = client.get_local_policy(name)
        frames, answer = quadrant_frames(rng, 1024, side)
        out = policy.act([frames], rng=rng)
        correct = out.discrete_actions[:, 0] == answer
        trajectories = []
        for i in range(len(frames)):  # one-step episodes
            builder = TrajectoryBuilder(spec, f"agent{i % 64}")
            builder.add_step([frames[i]], out.continuous_actions[i], out.discrete_actions[i], out.continuous_log_probs[i],
                             out.discrete_log_probs[i], 1.0 if correct[i] else 0.0, policy.version)
            trajectories.append(builder.build(None, done=True))
        client.submit(name, trajectories)
        steps += len(frames)
        wait_until(lambda: client.describe(name).policy_version > version, 120, "an update")
        version = client.describe(name).policy_version
        test_frames, test_answer = quadrant_frames(rng, 512, side)
        greedy = client.get_local_policy(name).act([test_frames], deterministic=True)
        accuracy = float((greedy.discrete_actions[:, 0] == test_answer).mean())
        if accuracy > 0.9:
            break
    assert accuracy > 0.9, f"{encoder}: greedy accuracy {accuracy:.2f} after {steps} steps (random: 0.25)"
