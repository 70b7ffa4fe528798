"""ML-Agents configuration schema: defaults, overrides, strict validation, real config files."""
from __future__ import annotations

import pytest

from ludus_service.errors import InvalidArgument, Unimplemented
from ludus_service.settings import load_config, resolve_settings

# A typical ML-Agents config for a vector-observation PPO behaviour (3DBall-style), unchanged.
MLAGENTS_3DBALL = """
behaviors:
  3DBall:
    trainer_type: ppo
    hyperparameters:
      batch_size: 64
      buffer_size: 12000
      learning_rate: 0.0003
      beta: 0.001
      epsilon: 0.2
      lambd: 0.99
      num_epoch: 3
      learning_rate_schedule: linear
      beta_schedule: constant
      epsilon_schedule: linear
    network_settings:
      normalize: true
      hidden_units: 128
      num_layers: 2
      vis_encode_type: simple
    reward_signals:
      extrinsic:
        gamma: 0.99
        strength: 1.0
    keep_checkpoints: 5
    max_steps: 500000
    time_horizon: 1000
    summary_freq: 12000
    threaded: false
env_settings:
  env_path: null
  num_envs: 1
engine_settings:
  time_scale: 20
checkpoint_settings:
  run_id: ball
torch_settings:
  device: cpu
"""


def test_defaults_follow_mlagents():
    s = resolve_settings()
    hp = s.hyperparameters
    assert (hp.batch_size, hp.buffer_size, hp.learning_rate, hp.beta, hp.epsilon, hp.lambd, hp.num_epoch) == (1024, 10240, 3e-4, 5e-3, 0.2, 0.95, 3)
    assert hp.learning_rate_schedule == "linear" and hp.beta_schedule is None
    assert (s.time_horizon, s.max_steps, s.summary_freq, s.checkpoint_interval, s.keep_checkpoints) == (64, 500000, 50000, 500000, 5)
    n = s.network_settings
    assert (n.hidden_units, n.num_layers, n.normalize, n.vis_encode_type, n.memory) == (128, 2, False, "simple", None)
    assert s.reward_signals["extrinsic"].gamma == 0.99 and s.reward_signals["extrinsic"].strength == 1.0


def test_mlagents_config_file_loads_unchanged():
    config = load_config(MLAGENTS_3DBALL)
    s = config.base_for("3DBall")
    assert s.hyperparameters.buffer_size == 12000 and s.network_settings.normalize is True
    assert s.hyperparameters.beta_schedule == "constant" and s.time_horizon == 1000
    # behaviours not listed get default_settings (here: ML-Agents defaults)
    assert config.base_for("Other").hyperparameters.buffer_size == 10240


def test_overrides_merge_over_base():
    base = load_config(MLAGENTS_3DBALL).base_for("3DBall")
    s = resolve_settings({"hyperparameters": {"batch_size": 128.0}}, base=base)  # JSON numbers arrive as floats
    assert s.hyperparameters.batch_size == 128 and isinstance(s.hyperparameters.batch_size, int)
    assert s.hyperparameters.buffer_size == 12000  # kept from the base


@pytest.mark.parametrize("overrides,key", [
    ({"hyperparameters": {"batch_sizee": 1}}, "hyperparameters.batch_sizee"),
    ({"hyperparameters": {"batch_size": "big"}}, "hyperparameters.batch_size"),
    ({"hyperparameters": {"batch_size": 12.5}}, "hyperparameters.batch_size"),
    ({"hyperparameters": {"lambd": 1.5}}, "hyperparameters.lambd"),
    ({"hyperparameters": {"learning_rate": 0}}, "hyperparameters.learning_rate"),
    ({"hyperparameters": {"learning_rate_schedule": "cosine"}}, "hyperparameters.learning_rate_schedule"),
    ({"hyperparameters": {"batch_size": 2048, "buffer_size": 1024}}, "hyperparameters.batch_size"),
    ({"network_settings": {"normalize": "yes"}}, "network_settings.normalize"),
    ({"network_settings": {"hidden_units": 0}}, "network_settings.hidden_units"),
    ({"reward_signals": {"extrinsic": {"gamma": 2}}}, "reward_signals.extrinsic.gamma"),
    ({"reward_signals": {"bonus": {}}}, "reward_signals.bonus"),
    ({"time_horizon": -1}, "time_horizon"),
    ({"trainer_type": "dqn"}, "trainer_type"),
    ({"no_such_key": 1}, "no_such_key"),
])
def test_bad_settings_name_the_key(overrides, key):
    with pytest.raises(InvalidArgument) as err:
        resolve_settings(overrides)
    assert err.value.field == key and key in str(err.value)


@pytest.mark.parametrize("overrides,key", [
    ({"trainer_type": "poca"}, "trainer_type"),
    ({"self_play": {"window": 10}}, "self_play"),
])
def test_valid_but_unimplemented_settings(overrides, key):
    with pytest.raises(Unimplemented) as err:
        resolve_settings(overrides)
    assert err.value.field == key


@pytest.mark.parametrize("memory,key", [
    ({"memory_size": 31}, "network_settings.memory.memory_size"),
    ({"memory_size": 16384}, "network_settings.memory.memory_size"),
    ({"sequence_length": 0}, "network_settings.memory.sequence_length"),
    ({"sequence_length": 2048}, "network_settings.memory.sequence_length"),  # > batch_size 1024
])
def test_bad_memory_settings_name_the_key(memory, key):
    with pytest.raises(InvalidArgument) as err:
        resolve_settings({"network_settings": {"memory": memory}})
    assert err.value.field == key


def test_memory_settings_resolve_with_ml_agents_defaults():
    n = resolve_settings({"network_settings": {"memory": {}}}).network_settings
    assert (n.memory.sequence_length, n.memory.memory_size) == (64, 128)


def test_bad_config_file_names_the_behaviour_key():
    with pytest.raises(InvalidArgument) as err:
        load_config("behaviors:\n  Walker:\n    hyperparameters:\n      bach_size: 3\n")
    assert err.value.field == "behaviors.Walker.hyperparameters.bach_size"
    with pytest.raises(InvalidArgument):
        load_config("unknown_section: 1\n")
    with pytest.raises(InvalidArgument):
        load_config("behaviors: [1, 2\n")


@pytest.mark.parametrize("overrides,key", [
    ({"reward_signals": {"gail": {}}}, "reward_signals.gail.demo_path"),
    ({"reward_signals": {"extrinsic": {"demo_path": "x.demo"}}}, "reward_signals.extrinsic.demo_path"),
    ({"reward_signals": {"curiosity": {"use_actions": True}}}, "reward_signals.curiosity.use_actions"),
    ({"reward_signals": {"rnd": {"use_vail": True}}}, "reward_signals.rnd.use_vail"),
    ({"reward_signals": {"extrinsic": {"learning_rate": 1e-3}}}, "reward_signals.extrinsic.learning_rate"),
    ({"behavioral_cloning": {"strength": 0.5}}, "behavioral_cloning.demo_path"),
    ({"behavioral_cloning": {"demo_path": "x.demo", "steps": -1}}, "behavioral_cloning.steps"),
    ({"behavioral_cloning": {"demo_path": "x.demo", "batch_size": 0}}, "behavioral_cloning.batch_size"),
    ({"behavioral_cloning": {"demo_path": "x.demo", "bogus": 1}}, "behavioral_cloning.bogus"),
])
def test_imitation_settings_are_checked(overrides, key):
    with pytest.raises(InvalidArgument) as err:
        resolve_settings(overrides)
    assert err.value.field == key and key in str(err.value)


def test_imitation_settings_take_mlagents_keys_and_defaults():
    s = resolve_settings({
        "reward_signals": {"gail": {"demo_path": "Expert.demo", "use_actions": True, "strength": 0.01}},
        "behavioral_cloning": {"demo_path": "Expert.demo", "steps": 50000, "strength": 0.5},
    })
    gail = s.reward_signals["gail"]
    assert (gail.gamma, gail.use_actions, gail.use_vail, gail.learning_rate) == (0.99, True, False, None)
    bc = s.behavioral_cloning
    assert (bc.steps, bc.strength, bc.samples_per_update, bc.num_epoch, bc.batch_size) == (50000, 0.5, 0, None, None)


def test_run_config_bounds_apply_under_behaviors():
    """Numeric bounds hold inside `behaviors.<name>` of a run configuration too (they were skipped
    there before: a negative batch_size under a behaviour name was accepted)."""
    with pytest.raises(InvalidArgument) as err:
        load_config("behaviors:\n  My.Agent:\n    hyperparameters:\n      batch_size: -3\n")
    assert err.value.field == "behaviors.My.Agent.hyperparameters.batch_size"
