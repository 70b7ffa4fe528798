"""Imitation through the service: recording expert demonstrations (RecordDemonstration -> `.demo`),
GAIL and behavioural cloning learning a scripted expert from them, demonstration checks at
RegisterBehavior, and per-signal rewards in EstimateValues / SubmitTrajectories answers."""
from __future__ import annotations

from typing import Any, Callable, Dict, List

import gymnasium as gym
import grpc
import numpy as np
import pytest

from game_envs import RuleFollowing, goal_seek_expert_action, register_envs
from ludus.v1 import trainer_pb2 as pb
from ludus_client import BehaviorSpec, LudusError, TrajectoryBuilder
from ludus_client.demo_file import read_demo_file
from ludus_service.demonstrations import load_demonstration
from test_game_tasks import greedy_score, ppo_settings, random_score, train

register_envs()
RULE, GOAL_SEEK = "ludus-tests/RuleFollowing-v0", "ludus-tests/GoalSeek1D-v0"
RULE_SPEC = BehaviorSpec.vector(4, discrete_branches=[4])
GOAL_SPEC = BehaviorSpec.vector(2, continuous_size=1)


def expert_trajectories(env_id: str, spec: BehaviorSpec, expert: Callable[[np.ndarray], Any], episodes: int,
                        seed: int = 0, env_kwargs: Dict[str, Any] = None) -> List[pb.Trajectory]:
    """One trajectory per episode of the scripted expert (log-probabilities are not needed). The
    actions are what the environment received, as in Unity's demonstrations."""
    env = gym.make(env_id, **(env_kwargs or {}))
    out = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        builder = TrajectoryBuilder(spec, f"expert-{episode % 3}")
        while True:
            action = expert(obs)
            cont = np.asarray(action, np.float32).reshape(-1) if spec.actions.continuous_size else np.zeros(0, np.float32)
            disc = np.array([action], np.int64) if spec.actions.discrete_branches else np.zeros(0, np.int64)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            builder.add_step([obs], cont, disc, np.zeros_like(cont), np.zeros(len(disc), np.float32), float(reward), 1)
            obs = next_obs
            if terminated or truncated:
                out.append(builder.build(None if terminated else [obs], done=terminated, interrupted=truncated))
                break
    env.close()
    return out


# -- recording -------------------------------------------------------------------------------------

def test_a_recording_reads_back_identically(client, server):
    client.register("Expert", RULE_SPEC, {"inference": True})
    trajectories = expert_trajectories(RULE, RULE_SPEC, RuleFollowing.expert_action, episodes=6)
    answer = client.record_demonstration("Expert", "rule-expert", trajectories)
    assert answer.demo_path == "rule-expert.demo"
    assert (answer.steps, answer.episodes) == (60, 6)
    assert answer.mean_reward == pytest.approx(10.0)  # the expert is always right
    path = server.registry.demo_dir / answer.demo_path
    raw = read_demo_file(path)
    assert (raw.continuous_size, raw.discrete_branches, raw.meta.number_episodes) == (0, (4,), 6)
    demo = load_demonstration(path, RULE_SPEC)
    sent_obs = np.concatenate([np.frombuffer(t.observations[0].raw_data, np.float32).reshape(-1, 4) for t in trajectories])
    sent_actions = np.concatenate([np.frombuffer(t.discrete_actions.raw_data, np.int32).reshape(-1, 1) for t in trajectories])
    sent_rewards = np.concatenate([np.frombuffer(t.rewards.raw_data, np.float32) for t in trajectories])
    # the expert ids interleave episodes; the file keeps each agent's records together, in order
    order = np.concatenate([np.arange(e * 10, e * 10 + 10) for agent in range(3) for e in range(agent, 6, 3)])
    got_obs = np.concatenate([t.observations[0] for t in demo.trajectories])
    got_actions = np.concatenate([t.discrete_actions for t in demo.trajectories])
    np.testing.assert_array_equal(got_obs, sent_obs[order])
    np.testing.assert_array_equal(got_actions, sent_actions[order])
    np.testing.assert_array_equal(np.concatenate([t.rewards for t in demo.trajectories]), sent_rewards[order])
    assert all(t.interrupted and not t.done for t in demo.trajectories)


def test_recording_errors_are_precise_and_write_nothing(client, server):
    client.register("Expert", RULE_SPEC, {"inference": True})
    good = expert_trajectories(RULE, RULE_SPEC, RuleFollowing.expert_action, episodes=2)
    bad = pb.Trajectory()
    bad.CopyFrom(good[1])
    bad.discrete_actions.raw_data = np.full(10, 7, np.int32).tobytes()
    with pytest.raises(LudusError) as err:
        client.record_demonstration("Expert", "broken", [good[0], bad])
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "requests[1].trajectory.discrete_actions" in err.value.details and "outside [0, 4)" in err.value.details
    assert not list(server.registry.demo_dir.glob("*")) or not (server.registry.demo_dir / "broken.demo").exists()
    for name, code, words in (("../escape", grpc.StatusCode.INVALID_ARGUMENT, "demonstration_name"),
                              ("", grpc.StatusCode.INVALID_ARGUMENT, "demonstration_name")):
        with pytest.raises(LudusError) as err:
            client.record_demonstration("Expert", name, good)
        assert err.value.code == code and words in err.value.details
    with pytest.raises(LudusError) as err:
        client.record_demonstration("Nobody", "x", good)
    assert err.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(LudusError) as err:
        client.record_demonstration("Expert", "empty", [])
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "empty" in err.value.details
    client.record_demonstration("Expert", "once", good)
    with pytest.raises(LudusError) as err:
        client.record_demonstration("Expert", "once", good)
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION and "overwrite" in err.value.details
    assert client.record_demonstration("Expert", "once", good[:1], overwrite=True).episodes == 1


# -- demonstrations at RegisterBehavior ------------------------------------------------------------

def test_register_checks_the_demonstration_against_the_spec(client):
    client.register("Expert", RULE_SPEC, {"inference": True})
    client.record_demonstration("Expert", "rule", expert_trajectories(RULE, RULE_SPEC, RuleFollowing.expert_action, 2))
    cases = [
        (BehaviorSpec.vector(5, discrete_branches=[4]), {"reward_signals": {"gail": {"demo_path": "rule.demo"}}},
         "settings.reward_signals.gail.demo_path", "observation 0 has shape [4] in the demonstration but [5] in the behaviour spec"),
        (BehaviorSpec.vector(4, discrete_branches=[3]), {"behavioral_cloning": {"demo_path": "rule.demo"}},
         "settings.behavioral_cloning.demo_path", "discrete branches: [4] in the demonstration, [3] in the behaviour"),
        (RULE_SPEC, {"reward_signals": {"gail": {"demo_path": "missing.demo"}}},
         "settings.reward_signals.gail.demo_path", "no demonstration 'missing.demo'"),
        (RULE_SPEC, {"reward_signals": {"gail": {"demo_path": "../../etc/passwd"}}},
         "settings.reward_signals.gail.demo_path", "leaves the server's demo directory"),
        (RULE_SPEC, {"reward_signals": {"gail": {"demo_path": "/etc/passwd"}}},
         "settings.reward_signals.gail.demo_path", "must be relative"),
    ]
    for i, (spec, settings, field, words) in enumerate(cases):
        with pytest.raises(LudusError) as err:
            client.register(f"Learner{i}", spec, settings)
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT, err.value
        assert field in err.value.details and words in err.value.details, err.value.details
    assert client.list_behaviors() == ["Expert"]  # nothing half-registered
    client.register("Learner", RULE_SPEC, {"reward_signals": {"gail": {"demo_path": "rule.demo"}}})


# -- per-signal rewards in answers -----------------------------------------------------------------

def test_answers_carry_each_signals_rewards_and_values(client):
    client.register("Expert", RULE_SPEC, {"inference": True})
    demo = client.record_demonstration("Expert", "rule", expert_trajectories(RULE, RULE_SPEC, RuleFollowing.expert_action, 2))
    client.register("Learner", RULE_SPEC, {"reward_signals": {"extrinsic": {"strength": 2.0}, "rnd": {},
                                                              "gail": {"demo_path": demo.demo_path, "use_actions": True}}})
    traj = expert_trajectories(RULE, RULE_SPEC, RuleFollowing.expert_action, 1, seed=50)[0]
    (answer,) = client.submit("Learner", [traj], evaluate_signals=True)
    assert set(answer.signal_rewards) == set(answer.signal_values) == {"extrinsic", "rnd", "gail"}
    rewards = {k: np.frombuffer(v.raw_data, np.float32) for k, v in answer.signal_rewards.items()}
    np.testing.assert_allclose(rewards["extrinsic"], 2.0 * np.frombuffer(traj.rewards.raw_data, np.float32))
    assert all(len(r) == 10 and np.all(np.isfinite(r)) for r in rewards.values())
    assert np.all(rewards["rnd"] > 0) and np.all(rewards["gail"] > 0)
    (plain,) = client.submit("Learner", [traj])
    assert not plain.signal_rewards and not plain.signal_values

    obs = np.frombuffer(traj.observations[0].raw_data, np.float32).reshape(10, 4)
    actions = np.frombuffer(traj.discrete_actions.raw_data, np.int32).reshape(10, 1)
    values, signal_rewards = client.estimate_signals("Learner", [obs], [obs[-1]], False)
    assert set(values) == {"extrinsic", "rnd", "gail"} and set(signal_rewards) == {"rnd"}  # no actions, no rewards given
    values, signal_rewards = client.estimate_signals("Learner", [obs], [obs[-1]], False, discrete_actions=actions,
                                                     rewards=np.ones(10, np.float32))
    assert set(signal_rewards) == {"extrinsic", "rnd", "gail"}
    np.testing.assert_allclose(signal_rewards["extrinsic"], 2.0)
    np.testing.assert_allclose(signal_rewards["gail"], rewards["gail"], rtol=1e-5)
    with pytest.raises(LudusError) as err:
        client.estimate_signals("Learner", [obs], [obs[-1]], False, discrete_actions=np.full((10, 1), 9))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "discrete_actions" in err.value.details


# -- learning from a demonstration -----------------------------------------------------------------

@pytest.mark.learning
def test_gail_alone_reproduces_the_scripted_expert(client, server):
    """No environment reward reaches the learner: only GAIL's, from 40 recorded expert episodes. The
    cue -> answer rule is arbitrary, so only imitation can find it (chance: 25% right)."""
    client.register("Expert", RULE_SPEC, {"inference": True})
    demo = client.record_demonstration("Expert", "rule", expert_trajectories(RULE, RULE_SPEC, RuleFollowing.expert_action, 40))
    settings = ppo_settings(buffer_size=512, hidden_units=32, learning_rate=1e-3, num_epoch=8, gamma=0.9, beta=0.01)
    settings["reward_signals"] = {"gail": {"demo_path": demo.demo_path, "use_actions": True, "gamma": 0.9, "learning_rate": 1e-2}}
    result, policy = train(server, RULE, "GAIL-Learner", 24_576, settings)
    greedy, baseline = greedy_score(policy, RULE), random_score(RULE)
    stats = server.registry.get("GAIL-Learner").trainer.latest_stats
    print(f"GAIL: greedy return {greedy.mean_return:.2f}/10 (random {baseline.mean_return:.2f}) in {result.seconds:.1f}s; {stats}")
    assert greedy.mean_return >= 9.5, greedy
    assert baseline.mean_return <= 3.5
    assert {"Losses/GAIL Loss", "Policy/GAIL Expert Estimate", "Policy/GAIL Policy Estimate", "Policy/Gail Reward",
            "Policy/Gail Value Estimate"} <= set(stats)


def _clone_goal_seek_expert(client, server, learner: str, settings: Dict[str, Any], steps: int) -> Dict[str, float]:
    """Record 30 scripted continuous GoalSeek episodes, train `learner` with the extrinsic reward off
    and `settings["behavioral_cloning"]` (its demo_path filled in), and check that it reaches the
    goal greedily; returns the learner's latest statistics."""
    client.register("Expert", GOAL_SPEC, {"inference": True})
    kwargs = {"action_type": "continuous"}
    trajectories = expert_trajectories(GOAL_SEEK, GOAL_SPEC, goal_seek_expert_action, 30, env_kwargs=kwargs)
    demo = client.record_demonstration("Expert", f"goal-seek-{learner}", trajectories)
    settings["reward_signals"] = {"extrinsic": {"strength": 0.0}}
    settings["behavioral_cloning"]["demo_path"] = demo.demo_path
    result, policy = train(server, GOAL_SEEK, learner, steps, settings, env_kwargs=kwargs)
    greedy, baseline = greedy_score(policy, GOAL_SEEK, kwargs), random_score(GOAL_SEEK, kwargs)
    stats = server.registry.get(learner).trainer.latest_stats
    print(f"{learner}: greedy success {greedy.success_rate:.2f} (random {baseline.success_rate:.2f}) in {result.seconds:.1f}s; "
          f"pretraining loss {stats.get('Losses/Pretraining Loss')}")
    assert greedy.success_rate >= 0.95, greedy
    assert "Losses/Pretraining Loss" in stats
    return stats


@pytest.mark.learning
def test_behavioral_cloning_reproduces_the_scripted_expert(client, server):
    """Continuous GoalSeek with the extrinsic reward switched off (strength 0): only the cloning
    loss on 30 expert episodes moves the policy (16 updates, each 5 epochs over the demonstration)."""
    settings = ppo_settings(buffer_size=512, hidden_units=64, learning_rate=1e-3, num_epoch=3)
    settings["behavioral_cloning"] = {"strength": 3.0, "batch_size": 32, "num_epoch": 5}
    _clone_goal_seek_expert(client, server, "BC-Learner", settings, 8_192)


@pytest.mark.learning
def test_behavioral_cloning_with_sac_reproduces_the_scripted_expert(client, server):
    """The same cloning task under trainer_type sac: with the extrinsic reward off, SAC's own losses
    only push toward entropy, so reaching the goal greedily is the cloning loss's work (run after
    each burst of gradient steps, on the tanh-squashed actor's mean action)."""
    settings = {"trainer_type": "sac", "time_horizon": 32, "max_steps": 1_000_000,
                "hyperparameters": {"batch_size": 64, "buffer_size": 10_000, "learning_rate": 1e-3, "buffer_init_steps": 256,
                                    "steps_per_update": 4.0},
                "network_settings": {"hidden_units": 64, "num_layers": 2},
                "behavioral_cloning": {"strength": 1.0, "batch_size": 32}}
    stats = _clone_goal_seek_expert(client, server, "BC-SAC-Learner", settings, 4_096)
    assert "Losses/Q1 Loss" in stats


def test_gail_and_curiosity_train_under_sac_too(client, server):
    """SAC scores learned signals on each sampled minibatch and trains them by
    reward_signal_steps_per_update: GAIL's discriminator and curiosity's models take steps."""
    client.register("Expert", RULE_SPEC, {"inference": True})
    demo = client.record_demonstration("Expert", "rule", expert_trajectories(RULE, RULE_SPEC, RuleFollowing.expert_action, 5))
    settings = {"trainer_type": "sac", "time_horizon": 10,
                "hyperparameters": {"batch_size": 32, "buffer_size": 1000, "buffer_init_steps": 0, "steps_per_update": 4.0},
                "network_settings": {"hidden_units": 16, "num_layers": 1},
                "reward_signals": {"extrinsic": {}, "curiosity": {"strength": 0.1},
                                   "gail": {"demo_path": demo.demo_path, "use_actions": True}}}
    client.register("SAC-Imitator", RULE_SPEC, settings)
    policy = client.get_local_policy("SAC-Imitator")
    trajectories = expert_trajectories(RULE, RULE_SPEC, lambda obs: int(policy.act([obs[None]]).discrete_actions[0, 0]), 10)
    client.submit("SAC-Imitator", trajectories)
    behavior = server.registry.get("SAC-Imitator")
    assert behavior.wait_idle(60)
    stats = behavior.trainer.latest_stats
    assert behavior.trainer.updates_done == 100 // 4
    for key in ("Losses/GAIL Loss", "Policy/GAIL Expert Estimate", "Losses/Curiosity Forward Loss", "Losses/Q1 Loss",
                "Policy/Gail Reward", "Policy/Curiosity Reward"):
        assert key in stats and np.isfinite(stats[key]), (key, stats)


def test_review_edge_cases_get_precise_statuses(client, server):
    """Control characters in demo_path, the demo directory itself as a folder of demonstrations,
    replacing a demonstration a behaviour trains on, a recording whose total reward overflows, and
    an SAC replay buffer too large for the server."""
    client.register("Expert", RULE_SPEC, {"inference": True})
    client.record_demonstration("Expert", "rule", expert_trajectories(RULE, RULE_SPEC, RuleFollowing.expert_action, 2))
    with pytest.raises(LudusError) as err:
        client.register("Nul", RULE_SPEC, {"reward_signals": {"gail": {"demo_path": "a\x00b.demo"}}})
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "control characters" in err.value.details
    client.register("Folder", RULE_SPEC, {"reward_signals": {"gail": {"demo_path": "."}}})  # every .demo in the directory
    with pytest.raises(LudusError) as err:
        client.record_demonstration("Expert", "rule", expert_trajectories(RULE, RULE_SPEC, RuleFollowing.expert_action, 1),
                                    overwrite=True)
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION and "Folder" in err.value.details
    huge = expert_trajectories(RULE, RULE_SPEC, RuleFollowing.expert_action, 2)
    for traj in huge:
        traj.rewards.raw_data = np.full(10, 3e38, np.float32).tobytes()
    with pytest.raises(LudusError) as err:
        client.record_demonstration("Expert", "huge", huge)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "rewards" in err.value.details
    assert not (server.registry.demo_dir / "huge.demo").exists()
    with pytest.raises(LudusError) as err:
        client.register("BigReplay", RULE_SPEC, {"trainer_type": "sac", "hyperparameters": {"buffer_size": 10**12}})
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "settings.hyperparameters.buffer_size" in err.value.details and "GiB" in err.value.details
    assert "BigReplay" not in client.list_behaviors()
