"""GAIL's discriminator and behavioural cloning as plain objects, on synthetic experts (fast; the
end-to-end imitation of a recorded expert through the service is in test_imitation.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ludus_client import BehaviorSpec
from ludus_service.behavioral_cloning import BehavioralCloning
from ludus_service.buffer import ACTION_MASK, CONTINUOUS_ACTION, DISCRETE_ACTION, DONE, AgentBuffer, obs_key
from ludus_service.gail import GAILRewardProvider
from ludus_service.networks import Actor, ObservationEncoder
from ludus_service.settings import BehavioralCloningSettings, NetworkSettings, RewardSignalSettings

DEVICE = torch.device("cpu")


def _rows(obs: np.ndarray, continuous: np.ndarray, discrete: np.ndarray, done_every: int = 0) -> AgentBuffer:
    done = np.zeros(len(obs), np.float32)
    if done_every:
        done[done_every - 1::done_every] = 1.0
    return AgentBuffer({obs_key(0): obs.astype(np.float32), CONTINUOUS_ACTION: continuous.astype(np.float32),
                        DISCRETE_ACTION: discrete.astype(np.int64), DONE: done})


def _gail(expert: AgentBuffer, spec: BehaviorSpec, **settings) -> GAILRewardProvider:
    torch.manual_seed(0)
    cfg = RewardSignalSettings(demo_path="x.demo", learning_rate=3e-3, **settings)
    return GAILRewardProvider("gail", cfg, spec, DEVICE, expert, seed=0)


SPEC = BehaviorSpec.vector(2, continuous_size=1, discrete_branches=[2])


@pytest.mark.parametrize("use_vail", [False, True])
def test_gail_pays_more_for_expert_like_states(use_vail):
    rng = np.random.default_rng(0)
    n = 256
    expert = _rows(rng.normal(2.0, 0.5, (n, 2)), rng.uniform(-1, 1, (n, 1)), rng.integers(0, 2, (n, 1)))
    policy = _rows(rng.normal(-2.0, 0.5, (n, 2)), rng.normal(0, 1, (n, 1)), rng.integers(0, 2, (n, 1)))
    gail = _gail(expert, SPEC, use_vail=use_vail)
    before = gail.evaluate(policy).mean(), gail.evaluate(expert).mean()
    for _ in range(150):
        stats = gail.update(policy.make_mini_batch(0, 128))
    policy_reward, expert_reward = gail.evaluate(policy).mean(), gail.evaluate(expert).mean()
    margin = 2 if use_vail else 3  # the variational bottleneck keeps VAIL's discriminator less confident
    assert expert_reward > margin * policy_reward, (before, policy_reward, expert_reward)
    # VAIL's bottleneck (KL held near 0.5) caps how sure its discriminator can get
    high, low = (0.6, 0.45) if use_vail else (0.7, 0.3)
    assert stats["Policy/GAIL Expert Estimate"] > high > low > stats["Policy/GAIL Policy Estimate"], stats
    expected = {"Losses/GAIL Loss", "Policy/GAIL Policy Estimate", "Policy/GAIL Expert Estimate", "Policy/GAIL Grad Mag Loss"}
    if use_vail:
        expected |= {"Policy/GAIL Beta", "Losses/GAIL KL Loss"}
        assert stats["Policy/GAIL Beta"] >= 0.0
    assert set(stats) == expected
    assert np.all(np.isfinite(gail.evaluate(policy))) and np.all(gail.evaluate(policy) >= 0)


def test_gail_with_actions_tells_expert_actions_from_others_in_the_same_states():
    """Same states on both sides; the expert picks option 0, the policy option 1. Only a
    discriminator that sees actions can pay the expert's choice more."""
    rng = np.random.default_rng(1)
    n = 256
    obs = rng.normal(0, 1, (n, 2))
    expert = _rows(obs, np.zeros((n, 1)), np.zeros((n, 1)))
    policy = _rows(obs, np.zeros((n, 1)), np.ones((n, 1)))
    gail = _gail(expert, SPEC, use_actions=True)
    assert gail.reads_actions and gail.needs_dones
    for _ in range(150):
        gail.update(policy.make_mini_batch(0, 128))
    # the gradient penalty bounds how far one action flip can move the logit, hence 2x not more
    assert gail.evaluate(expert).mean() > 2 * gail.evaluate(policy).mean()


def test_gail_compares_continuous_actions_in_the_environments_range():
    """The policy's buffer holds raw Gaussian samples; the expert's file holds env actions. A raw 1.5
    is an env action of 0.5, so a policy doing exactly what the expert does is indistinguishable."""
    rng = np.random.default_rng(2)
    obs = rng.normal(0, 1, (64, 2))
    spec = BehaviorSpec.vector(2, continuous_size=1)
    expert = _rows(obs, np.full((64, 1), 0.5), np.zeros((64, 0)))
    gail = _gail(expert, spec, use_actions=True)
    same = _rows(obs, np.full((64, 1), 1.5), np.zeros((64, 0)))
    assert torch.allclose(gail._inputs(same, expert=False), gail._inputs(expert, expert=True))


def test_gail_bootstraps_from_zero_at_episode_ends():
    from ludus_service.settings import resolve_settings
    from ludus_service.trainer import PPOTrainer

    rng = np.random.default_rng(0)
    expert = _rows(rng.normal(0, 1, (32, 2)), rng.uniform(-1, 1, (32, 1)), rng.integers(0, 2, (32, 1)))
    settings = resolve_settings({"reward_signals": {"gail": {"demo_path": "x.demo"}, "curiosity": {}},
                                 "network_settings": {"hidden_units": 8}})
    trainer = PPOTrainer(SPEC, settings, "cpu", 0, demonstrations={"x.demo": expert})
    piece = AgentBuffer({obs_key(0): rng.normal(0, 1, (5, 2)).astype(np.float32)})
    _, at_end, _ = trainer.optimizer.get_trajectory_value_estimates(piece, None, True)
    _, cut, _ = trainer.optimizer.get_trajectory_value_estimates(piece, [np.ones(2, np.float32)], False)
    assert at_end["gail"] == 0.0 and cut["gail"] != 0.0  # an episode end is the end of imitation too
    assert at_end["curiosity"] != 0.0  # (novelty is not: curiosity always bootstraps)


def test_gail_never_samples_sequence_padding_and_rejects_an_empty_demonstration():
    from ludus_service.sequences import LOSS_MASK, pad_to_sequences

    rng = np.random.default_rng(0)
    rows = _rows(rng.normal(3, 0.1, (5, 2)), np.full((5, 1), 0.5), np.ones((5, 1)))
    padded = AgentBuffer(pad_to_sequences(rows.as_dict(), 16))
    assert len(padded) == 16 and padded[LOSS_MASK].sum() == 5
    gail = _gail(padded, SPEC)
    sample = gail.sample_expert(1000)
    assert len(gail.expert) == 5 and np.all(sample[obs_key(0)] > 2)  # never an all-zero padding row
    with pytest.raises(ValueError, match="no steps"):
        _gail(AgentBuffer(), SPEC)


def test_gail_updates_leave_sequence_padding_out_entirely():
    """A recurrent trainer's minibatch carries padding rows: GAIL's step (losses, gradient penalty
    and the size of the expert sample) is the same whatever the padding holds, and the same as on the
    real rows alone."""
    from ludus_service.sequences import LOSS_MASK

    rng = np.random.default_rng(0)
    expert = _rows(rng.normal(2.0, 0.5, (64, 2)), rng.uniform(-1, 1, (64, 1)), rng.integers(0, 2, (64, 1)))
    real = _rows(rng.normal(-2.0, 0.5, (12, 2)), rng.normal(0, 1, (12, 1)), rng.integers(0, 2, (12, 1)))
    mask = np.array([True] * 6 + [False] * 2 + [True] * 6 + [False] * 2)

    def padded(fill: float) -> AgentBuffer:
        fields = {}
        for key, value in real.as_dict().items():
            rows = np.full((16, *value.shape[1:]), fill, dtype=value.dtype)
            rows[mask] = value
            fields[key] = rows
        fields[LOSS_MASK] = mask
        return AgentBuffer(fields)

    def weights_after(batch: AgentBuffer) -> list:
        gail = _gail(expert, SPEC, use_vail=True)
        torch.manual_seed(1)
        gail.update(batch)
        return [p.detach().clone() for p in gail.parameters()]

    reference = weights_after(real)
    for fill in (0.0, 7.0):
        for a, b in zip(reference, weights_after(padded(fill))):
            torch.testing.assert_close(a, b)


# -- behavioural cloning ---------------------------------------------------------------------------

def _actor(spec: BehaviorSpec, memory=None) -> Actor:
    torch.manual_seed(0)
    net = NetworkSettings(hidden_units=32, num_layers=1, memory=memory)
    return Actor(spec, net, ObservationEncoder(spec, False))


def test_cloning_reproduces_a_discrete_expert_and_respects_its_masks():
    spec = BehaviorSpec.vector(3, discrete_branches=[3])
    rng = np.random.default_rng(0)
    state = rng.integers(0, 3, 300)
    obs = np.eye(3, dtype=np.float32)[state]
    expert = AgentBuffer({obs_key(0): obs, CONTINUOUS_ACTION: np.zeros((300, 0), np.float32),
                          DISCRETE_ACTION: state[:, None].astype(np.int64), ACTION_MASK: np.ones((300, 3), bool)})
    actor = _actor(spec)
    bc = BehavioralCloning(actor, BehavioralCloningSettings(demo_path="x.demo"), 3e-3, 64, 3, expert, seed=0)
    first = bc.update(0)["Losses/Pretraining Loss"]
    for _ in range(20):
        stats = bc.update(0)
    assert stats["Losses/Pretraining Loss"] < first / 10
    hidden, _ = actor.trunk([torch.eye(3)], None, 1)
    assert actor.branch_heads[0](hidden).argmax(dim=1).tolist() == [0, 1, 2]


def test_cloning_matches_continuous_expert_actions_in_the_environments_range():
    spec = BehaviorSpec.vector(2, continuous_size=2)
    rng = np.random.default_rng(0)
    obs = rng.uniform(-1, 1, (512, 2)).astype(np.float32)
    target = np.clip(np.stack([0.8 * obs[:, 0], -0.5 * obs[:, 1]], axis=1), -1, 1).astype(np.float32)
    expert = AgentBuffer({obs_key(0): obs, CONTINUOUS_ACTION: target, DISCRETE_ACTION: np.zeros((512, 0), np.int64)})
    actor = _actor(spec)
    bc = BehavioralCloning(actor, BehavioralCloningSettings(demo_path="x.demo"), 3e-3, 128, 3, expert, seed=0)
    for _ in range(40):
        bc.update(0)
    hidden, _ = actor.trunk([torch.as_tensor(obs)], None, 1)
    env_actions = (actor.mu(hidden).clamp(-3, 3) / 3).detach().numpy()
    assert np.abs(env_actions - target).mean() < 0.05


def test_cloning_a_tanh_squashed_actor_compares_its_mean_action_tanh_mu():
    """SAC's actor acts tanh(u): the cloning loss is the MSE between tanh(mu) and the expert's action,
    and cloning drives tanh(mu) (not mu / 3) onto the expert's actions."""
    spec = BehaviorSpec.vector(2, continuous_size=2)
    rng = np.random.default_rng(0)
    obs = rng.uniform(-1, 1, (512, 2)).astype(np.float32)
    target = np.stack([0.9 * obs[:, 0], -0.6 * obs[:, 1]], axis=1).astype(np.float32)
    expert = AgentBuffer({obs_key(0): obs, CONTINUOUS_ACTION: target, DISCRETE_ACTION: np.zeros((512, 0), np.int64)})
    torch.manual_seed(0)
    actor = Actor(spec, NetworkSettings(hidden_units=32, num_layers=1), ObservationEncoder(spec, False),
                  conditional_sigma=True, tanh_squash=True)
    bc = BehavioralCloning(actor, BehavioralCloningSettings(demo_path="x.demo"), 3e-3, 128, 3, expert, seed=0)
    with torch.no_grad():
        hidden, _ = actor.trunk([torch.as_tensor(obs)], None, 1)
        by_hand = ((torch.tanh(actor.mu(hidden)) - torch.as_tensor(target)) ** 2).mean()
        torch.testing.assert_close(bc.loss(expert, 512), by_hand)
    for _ in range(40):
        bc.update(0)
    hidden, _ = actor.trunk([torch.as_tensor(obs)], None, 1)
    mean_actions = torch.tanh(actor.mu(hidden)).detach().numpy()
    assert np.abs(mean_actions - target).mean() < 0.05


def test_cloning_strength_decays_over_its_steps_then_stops():
    spec = BehaviorSpec.vector(3, discrete_branches=[3])
    obs = np.eye(3, dtype=np.float32)
    expert = AgentBuffer({obs_key(0): obs, CONTINUOUS_ACTION: np.zeros((3, 0), np.float32),
                          DISCRETE_ACTION: np.arange(3)[:, None]})
    settings = BehavioralCloningSettings(demo_path="x.demo", steps=1000, strength=0.5)
    bc = BehavioralCloning(_actor(spec), settings, 1e-3, 64, 1, expert)
    assert bc.learning_rate(0) == pytest.approx(5e-4)
    assert bc.learning_rate(500) == pytest.approx(2.5e-4, rel=1e-6)
    assert bc.update(999)["Losses/Pretraining Loss"] > 0
    weights = [p.detach().clone() for p in bc.actor.parameters()]
    assert bc.update(1000) == {"Losses/Pretraining Loss": 0.0}  # decayed to the floor: no more cloning, weights untouched
    assert all(torch.equal(a, b) for a, b in zip(weights, bc.actor.parameters()))


def test_recurrent_cloning_replays_padded_sequences_from_zero_memory():
    from ludus_service.sequences import LOSS_MASK, pad_to_sequences
    from ludus_service.settings import MemorySettings

    spec = BehaviorSpec.vector(3, discrete_branches=[3])
    state = np.array([0, 1, 2, 1, 0])
    fields = {obs_key(0): np.eye(3, dtype=np.float32)[state], CONTINUOUS_ACTION: np.zeros((5, 0), np.float32),
              DISCRETE_ACTION: state[:, None].astype(np.int64)}
    expert = AgentBuffer(pad_to_sequences(fields, 4))
    assert expert[LOSS_MASK].tolist() == [True] * 5 + [False] * 3
    actor = _actor(spec, MemorySettings(sequence_length=4, memory_size=8))
    bc = BehavioralCloning(actor, BehavioralCloningSettings(demo_path="x.demo"), 1e-2, 8, 1, expert, sequence_length=4, seed=0)
    losses = [bc.update(0)["Losses/Pretraining Loss"] for _ in range(150)]
    assert losses[-1] < losses[0] / 5, losses[::25]
