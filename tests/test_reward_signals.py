"""Learned reward signals (curiosity, RND) through the service: exploration on a sparse-reward task,
reward values, statistics and checkpoints."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Dict

import grpc
import numpy as np
import pytest
import torch

from ludus_client import BehaviorSpec, LudusError, TrajectoryBuilder
from ludus_client.policy import LocalPolicy
from ludus_service.buffer import AgentBuffer
from ludus_service.checkpoint import load_checkpoint, save_checkpoint
from ludus_service.errors import InvalidArgument
from ludus_service.buffer import next_obs_key
from ludus_service.settings import resolve_settings
from ludus_service.trainer import PPOTrainer
from ludus_service.validation import parse_trajectory
from test_game_tasks import greedy_score, ppo_settings, random_score, train

CORRIDOR = "ludus-tests/Corridor-v0"


#: Per signal: its settings and the step budget (the extrinsic-only run gets the same budget).
SIGNALS = {
    "curiosity": ({"strength": 0.1, "gamma": 0.99}, 16_384),
    "rnd": ({"strength": 0.3, "gamma": 0.99, "learning_rate": 1e-3}, 32_768),
}


def corridor_settings(signal: str = "") -> Dict[str, Any]:
    settings = ppo_settings(buffer_size=1024, hidden_units=32, learning_rate=1e-3, gamma=0.99, time_horizon=64)
    if signal:
        settings["reward_signals"][signal] = dict(SIGNALS[signal][0])
    return settings


@pytest.mark.learning
@pytest.mark.parametrize("signal", ["curiosity", "rnd"])
def test_intrinsic_reward_finds_the_sparse_reward_that_extrinsic_alone_does_not(server, signal):
    """Corridor of 20 cells, +1 only at the far end within 40 steps: a random walk gets there 0.35%
    of the time. With the same budget, PPO on extrinsic reward never finds it; with the intrinsic
    signal added it learns to walk straight there."""
    steps = SIGNALS[signal][1]
    baseline = random_score(CORRIDOR)
    extrinsic, extrinsic_policy = train(server, CORRIDOR, f"Corridor-extrinsic-{signal}", steps, corridor_settings())
    explored, explored_policy = train(server, CORRIDOR, f"Corridor-{signal}", steps, corridor_settings(signal))
    plain, curious = greedy_score(extrinsic_policy, CORRIDOR), greedy_score(explored_policy, CORRIDOR)
    print(f"corridor: random success {baseline.success_rate:.2f} | extrinsic greedy {plain.success_rate:.2f} "
          f"(last-50 {extrinsic.mean_return:.2f}) | +{signal} greedy {curious.success_rate:.2f} (last-50 {explored.mean_return:.2f})")
    assert curious.success_rate >= 0.9, curious
    assert plain.success_rate <= 0.1, plain


# -- reward values, settings, statistics, checkpoints (no learning runs) ---------------------------

SPEC = BehaviorSpec.vector(4, continuous_size=1, discrete_branches=[3])


def _trainer(signals: Dict[str, Any]) -> PPOTrainer:
    settings = resolve_settings({"hyperparameters": {"batch_size": 32, "buffer_size": 128, "num_epoch": 2},
                                 "network_settings": {"hidden_units": 16}, "reward_signals": {"extrinsic": {}, **signals}})
    return PPOTrainer(SPEC, settings, "cpu", 0)


def _trajectory(trainer: PPOTrainer, rng: np.random.Generator, obs: np.ndarray, agent: str = "a", done: bool = True):
    policy = LocalPolicy(*trainer.optimizer.actor.export(), trainer.policy_version)
    out = policy.act([obs], rng=rng)
    builder = TrajectoryBuilder(SPEC, agent)
    for t in range(len(obs)):
        builder.add_step([obs[t]], out.continuous_actions[t], out.discrete_actions[t], out.continuous_log_probs[t],
                         out.discrete_log_probs[t], 0.0, policy.version)
    return parse_trajectory(builder.build(None if done else [obs[0]], done=done), SPEC)


def _buffer(trainer: PPOTrainer, traj) -> AgentBuffer:
    fields = PPOTrainer.step_fields(traj)
    for i, o in enumerate(traj.observations):
        fields[next_obs_key(i)] = np.concatenate([o[1:], o[-1:]], axis=0)
    return AgentBuffer(fields)


def test_curiosity_pays_nothing_before_its_first_update_then_pays_for_surprise():
    trainer = _trainer({"curiosity": {"strength": 0.5}})
    curiosity = trainer.optimizer.reward_signals["curiosity"]
    rng = np.random.default_rng(0)
    traj = _trajectory(trainer, rng, rng.standard_normal((32, 4)).astype(np.float32))
    assert (curiosity.evaluate(_buffer(trainer, traj)) == 0).all()
    while not trainer.ready_to_update():
        trainer.process_trajectory(_trajectory(trainer, rng, rng.standard_normal((32, 4)).astype(np.float32)))
    stats = trainer.update_policy()
    assert {"Losses/Curiosity Forward Loss", "Losses/Curiosity Inverse Loss", "Policy/Curiosity Reward",
            "Policy/Curiosity Value Estimate"} <= set(stats)
    rewards = curiosity.evaluate(_buffer(trainer, traj))
    assert (rewards > 0).any() and (rewards <= 1.0 + 1e-6).all()  # clipped to 1/strength, times strength


def test_rnd_reward_falls_on_states_seen_often():
    trainer = _trainer({"rnd": {"strength": 1.0, "learning_rate": 1e-3}})
    rnd = trainer.optimizer.reward_signals["rnd"]
    rng = np.random.default_rng(1)
    familiar = np.tile(rng.standard_normal((1, 4)).astype(np.float32), (32, 1))
    novel = rng.standard_normal((32, 4)).astype(np.float32) * 2
    before = rnd.evaluate(_buffer(trainer, _trajectory(trainer, rng, familiar))).mean()
    for _ in range(3):
        while not trainer.ready_to_update():
            trainer.process_trajectory(_trajectory(trainer, rng, familiar, agent=f"a{trainer.buffered_steps}"))
        assert "Losses/RND Loss" in trainer.update_policy()
    after = rnd.evaluate(_buffer(trainer, _trajectory(trainer, rng, familiar))).mean()
    unseen = rnd.evaluate(_buffer(trainer, _trajectory(trainer, rng, novel))).mean()
    assert after < 0.5 * before and unseen > 2 * after


def test_intrinsic_signals_always_bootstrap_and_have_their_own_values():
    trainer = _trainer({"curiosity": {}, "rnd": {}})
    rng = np.random.default_rng(2)
    obs = [rng.standard_normal((8, 4)).astype(np.float32)]
    values, bootstrap, _ = trainer.estimate_values(obs, None, True, "a")
    assert set(values) == {"extrinsic", "curiosity", "rnd"}
    assert bootstrap["extrinsic"] == 0.0 and bootstrap["curiosity"] != 0.0 and bootstrap["rnd"] != 0.0


def test_reward_networks_travel_with_checkpoints():
    trainer = _trainer({"curiosity": {}, "rnd": {}})
    rng = np.random.default_rng(3)
    while not trainer.ready_to_update():
        trainer.process_trajectory(_trajectory(trainer, rng, rng.standard_normal((32, 4)).astype(np.float32), agent=str(trainer.buffered_steps)))
    trainer.update_policy()
    restored = _trainer({"curiosity": {}, "rnd": {}})
    with tempfile.TemporaryDirectory() as directory:  # through a real safetensors file and its JSON metadata
        path = save_checkpoint(Path(directory), trainer.step, trainer.state_tensors(), {"trainer": trainer.state_metadata()}, keep=1)
        tensors, metadata = load_checkpoint(path)
    restored.load_state(tensors, metadata["trainer"])
    traj = _trajectory(trainer, rng, rng.standard_normal((16, 4)).astype(np.float32))
    for name in ("curiosity", "rnd"):
        np.testing.assert_allclose(restored.optimizer.reward_signals[name].evaluate(_buffer(trainer, traj)),
                                   trainer.optimizer.reward_signals[name].evaluate(_buffer(trainer, traj)), rtol=1e-6)
        # Their Adam moments too, so a resumed run takes the same steps as an uninterrupted one.
        saved, loaded = trainer.optimizer.reward_signals[name].adam.state_dict(), restored.optimizer.reward_signals[name].adam.state_dict()
        assert saved["state"] and saved["state"].keys() == loaded["state"].keys()
        for index, moments in saved["state"].items():
            for key, value in moments.items():
                torch.testing.assert_close(loaded["state"][index][key], value)
        assert loaded["param_groups"][0]["lr"] == saved["param_groups"][0]["lr"]


@pytest.mark.parametrize("signals,key", [
    ({"extrinsic": {"learning_rate": 1e-3}}, "reward_signals.extrinsic.learning_rate"),
    ({"curiosity": {"learning_rate": -1.0}}, "reward_signals.curiosity.learning_rate"),
    ({"rnd": {"encoding_size": 0}}, "reward_signals.rnd.encoding_size"),
])
def test_bad_reward_signal_settings_name_the_key(signals, key):
    with pytest.raises(InvalidArgument) as err:
        resolve_settings({"reward_signals": signals})
    assert err.value.field == key


# -- images: curiosity and RND encode them with encoders of their own (ML-Agents' reward networks) --

def _visual_spec():
    from ludus_service.spec import ActionSpec, ObservationSpec
    from ludus_service.spec import BehaviorSpec as ServiceSpec
    from ludus.v1 import trainer_pb2 as pb

    return ServiceSpec((ObservationSpec("camera", (3, 24, 24), pb.OBSERVATION_KIND_VISUAL), ObservationSpec("speed", (2,))),
                       ActionSpec(0, (4,)))


def _visual_rows(rng: np.random.Generator, images: np.ndarray) -> AgentBuffer:
    n = len(images)
    return AgentBuffer({"obs_0": images, "obs_1": rng.standard_normal((n, 2)).astype(np.float32),
                        next_obs_key(0): images[::-1].copy(), next_obs_key(1): rng.standard_normal((n, 2)).astype(np.float32),
                        "continuous_action": np.zeros((n, 0), np.float32), "discrete_action": rng.integers(0, 4, (n, 1))})


@pytest.mark.parametrize("name", ["curiosity", "rnd", "gail"])
def test_learned_signals_encode_images_with_a_conv_encoder_not_an_mlp_on_pixels(name):
    from ludus_service.reward_signals import create_reward_provider
    from ludus_service.settings import RewardSignalSettings

    spec = _visual_spec()
    rng = np.random.default_rng(0)
    expert = _visual_rows(rng, rng.random((64, 3, 24, 24), dtype=np.float32) * 0.2) if name == "gail" else None
    settings = RewardSignalSettings(learning_rate=1e-3, demo_path="x.demo") if name == "gail" else RewardSignalSettings(learning_rate=1e-3)
    provider = create_reward_provider(name, settings, spec, "cpu", expert=expert, seed=0, vis_encode_type="simple")
    linears = [m for m in provider.modules() if isinstance(m, torch.nn.Linear)]
    assert any(isinstance(m, torch.nn.Conv2d) for m in provider.modules())
    assert max(m.in_features for m in linears) < 3 * 24 * 24  # no dense layer on raw pixels
    familiar = np.tile(rng.random((1, 3, 24, 24), dtype=np.float32), (64, 1, 1, 1))
    batch = _visual_rows(rng, familiar)
    frozen = [p.detach().clone() for p in provider.target_observations.parameters()] if name == "rnd" else []
    first = provider.update(batch)
    for _ in range(60):
        last = provider.update(batch)
    loss_key = {"rnd": "Losses/RND Loss", "curiosity": "Losses/Curiosity Forward Loss", "gail": "Losses/GAIL Loss"}[name]
    assert np.isfinite(last[loss_key]) and last[loss_key] < first[loss_key], (first, last)
    if name == "rnd":  # the fixed target (its image encoder included) never moves; the familiar image stops paying
        assert all(torch.equal(a, b) for a, b in zip(frozen, provider.target_observations.parameters()))
        novel = _visual_rows(rng, rng.random((64, 3, 24, 24), dtype=np.float32))
        assert provider.evaluate(novel).mean() > 2 * provider.evaluate(batch).mean()
    if name == "gail":  # the discriminator tells the expert's (dim) camera from the policy's
        assert provider.evaluate(expert).mean() > 2 * provider.evaluate(batch).mean()
        assert np.isfinite(last["Policy/GAIL Grad Mag Loss"])  # the penalty differentiates through the conv encoder


def test_a_signal_image_encoder_too_large_for_the_images_is_refused_at_registration(client):
    from ludus.v1 import trainer_pb2 as pb
    from ludus_client import ActionSpec, ObservationSpec

    spec = BehaviorSpec((ObservationSpec("camera", (3, 24, 24), pb.OBSERVATION_KIND_VISUAL), ObservationSpec("speed", (2,))),
                        ActionSpec(0, (2,)))
    settings = {"reward_signals": {"extrinsic": {}, "rnd": {"network_settings": {"vis_encode_type": "nature_cnn"}}}}
    with pytest.raises(LudusError) as err:
        client.register("TinyCamera", spec, settings)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "reward_signals.rnd.network_settings.vis_encode_type" in err.value.details and "36" in err.value.details
    settings["reward_signals"]["rnd"]["network_settings"]["vis_encode_type"] = "simple"
    client.register("TinyCamera", spec, settings)
