"""Trainer settings in Unity ML-Agents' configuration schema, with strict validation.

Keys, nesting and defaults follow ML-Agents (trainer_type, hyperparameters, network_settings,
reward_signals, time_horizon, max_steps, ...), so a user's existing ML-Agents YAML loads unchanged.
Ludus adds a few keys of its own (documented on the fields) without changing the meaning of any
ML-Agents key. Every unknown key and every bad value raises InvalidArgument naming the dotted key,
e.g. "hyperparameters.batch_size: expected an integer >= 1, got -3".
"""
from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional

import yaml

from ludus_service.errors import InvalidArgument, Unimplemented

Schedule = typing.Literal["linear", "constant"]


@dataclass
class MemorySettings:
    sequence_length: int = 64
    memory_size: int = 128


@dataclass
class NetworkSettings:
    normalize: bool = False
    hidden_units: int = 128
    num_layers: int = 2
    vis_encode_type: typing.Literal["simple", "nature_cnn", "resnet", "match3", "fully_connected"] = "simple"
    memory: Optional[MemorySettings] = None
    goal_conditioning_type: typing.Literal["hyper", "none"] = "hyper"
    deterministic: bool = False
    #: Ludus extension: hidden-layer activation. ML-Agents uses swish; "tanh" reproduces
    #: Stable-Baselines3's default MLP for side-by-side comparisons.
    activation: typing.Literal["swish", "tanh", "relu"] = "swish"


@dataclass
class PPOHyperparameters:
    batch_size: int = 1024
    buffer_size: int = 10240
    learning_rate: float = 3.0e-4
    beta: float = 5.0e-3
    epsilon: float = 0.2
    lambd: float = 0.95
    num_epoch: int = 3
    shared_critic: bool = False
    learning_rate_schedule: Schedule = "linear"
    #: None = inherit learning_rate_schedule (ML-Agents' rule).
    beta_schedule: Optional[Schedule] = None
    epsilon_schedule: Optional[Schedule] = None
    #: Ludus extension: clip the global gradient norm (Stable-Baselines3's max_grad_norm). None = off (ML-Agents).
    max_grad_norm: Optional[float] = None
    #: Ludus extension: PPO's clipped value loss with epsilon (the formula ML-Agents intends). False =
    #: plain MSE, which is what ML-Agents effectively trains and Stable-Baselines3's default.
    clip_value_loss: bool = True


@dataclass
class SACHyperparameters:
    """ML-Agents' SACSettings (trainer_type: sac), with its defaults."""

    batch_size: int = 128
    buffer_size: int = 50000
    #: Steps collected (with the untrained policy) before the first update.
    buffer_init_steps: int = 0
    learning_rate: float = 3.0e-4
    learning_rate_schedule: Schedule = "constant"
    #: Polyak averaging rate of the target value network.
    tau: float = 0.005
    #: Environment steps per gradient step.
    steps_per_update: float = 1.0
    init_entcoef: float = 1.0
    #: Write the replay buffer into checkpoints (restored by --resume).
    save_replay_buffer: bool = False
    #: Environment steps per reward-signal update; None = steps_per_update (ML-Agents' rule).
    reward_signal_steps_per_update: Optional[float] = None


#: The hyperparameters section of each implemented trainer_type.
HYPERPARAMETER_CLASSES = {"ppo": PPOHyperparameters, "sac": SACHyperparameters}
_SAC_BOUNDS: Dict[str, tuple] = {
    "hyperparameters.buffer_init_steps": (0, None, True),
    "hyperparameters.tau": (0.0, 1.0, False),
    "hyperparameters.steps_per_update": (0.0, None, False),
    "hyperparameters.reward_signal_steps_per_update": (0.0, None, False),
    "hyperparameters.init_entcoef": (0.0, None, False),
}


@dataclass
class RewardSignalSettings:
    gamma: float = 0.99
    strength: float = 1.0
    network_settings: Optional[NetworkSettings] = None
    #: curiosity and rnd only (None = ML-Agents' default: 3e-4 for curiosity, 1e-4 for rnd).
    learning_rate: Optional[float] = None
    #: curiosity, rnd and gail: size of the learned state encoding (ML-Agents' deprecated key; None =
    #: network_settings.hidden_units when given, else 64).
    encoding_size: Optional[int] = None
    #: gail only (then required): the expert's `.demo` file, relative to the server's demo directory
    #: (`ludus-server --demo-dir`, where RecordDemonstration stores recordings).
    demo_path: Optional[str] = None
    #: gail only: the discriminator also sees the actions (and whether the step ended the episode).
    use_actions: bool = False
    #: gail only: variational discriminator bottleneck (VAIL).
    use_vail: bool = False


@dataclass
class BehavioralCloningSettings:
    """ML-Agents' `behavioral_cloning`: imitate a demonstration with a supervised loss."""

    #: The expert's `.demo` file, relative to the server's demo directory (required).
    demo_path: str = ""
    #: Steps over which the cloning strength decays linearly to 0; 0 = constant.
    steps: int = 0
    #: Cloning learning rate = the policy's learning rate x strength.
    strength: float = 1.0
    #: Demonstration steps used per update; 0 = the whole demonstration.
    samples_per_update: int = 0
    #: None = the trainer's num_epoch / batch_size.
    num_epoch: Optional[int] = None
    batch_size: Optional[int] = None


@dataclass
class TrainerSettings:
    trainer_type: str = "ppo"
    #: PPOHyperparameters or SACHyperparameters, chosen by trainer_type (HYPERPARAMETER_CLASSES).
    hyperparameters: Any = field(default_factory=PPOHyperparameters)
    network_settings: NetworkSettings = field(default_factory=NetworkSettings)
    reward_signals: Dict[str, RewardSignalSettings] = field(
        default_factory=lambda: {"extrinsic": RewardSignalSettings()}
    )
    init_path: Optional[str] = None
    keep_checkpoints: int = 5
    even_checkpoints: bool = False
    checkpoint_interval: int = 500000
    max_steps: int = 500000
    time_horizon: int = 64
    summary_freq: int = 50000
    threaded: bool = False
    #: Ludus extension: trajectories acted by a policy more than this many versions older than the
    #: current one are dropped (and counted) rather than mixed into an on-policy update.
    max_policy_lag: int = 2
    #: Ludus extension, per behaviour what `mlagents-learn --inference` is per run: the policy is not
    #: trained. Trajectories are validated, acknowledged and counted (episode statistics still flow,
    #: with "Is Training" 0) but never reach the critic, the buffer or an update; Update is refused.
    #: For evaluating a fixed policy, serving many simulators from one trained policy, and measuring
    #: raw ingestion.
    inference: bool = False
    behavioral_cloning: Optional[BehavioralCloningSettings] = None


#: Reward signals ML-Agents knows; only these are accepted as keys of `reward_signals`.
KNOWN_REWARD_SIGNALS = ("extrinsic", "curiosity", "gail", "rnd")
IMPLEMENTED_REWARD_SIGNALS = ("extrinsic", "curiosity", "gail", "rnd")
#: Keys that only some reward signals take: the signals that accept each one.
SIGNAL_SPECIFIC_KEYS = {
    "learning_rate": ("curiosity", "gail", "rnd"),
    "encoding_size": ("curiosity", "gail", "rnd"),
    "demo_path": ("gail",),
    "use_actions": ("gail",),
    "use_vail": ("gail",),
}
KNOWN_TRAINER_TYPES = ("ppo", "sac", "poca")
IMPLEMENTED_TRAINER_TYPES = ("ppo", "sac")
#: Behaviour-level ML-Agents keys that this server accepts but does not act on yet.
ACCEPTED_UNUSED_KEYS = ("self_play",)
#: Top-level keys of an ML-Agents run configuration that configure the Unity side, not the trainer.
RUN_CONFIG_IGNORED_KEYS = (
    "env_settings", "engine_settings", "checkpoint_settings", "torch_settings",
    "environment_parameters", "debug",
)

# Bounds for numeric keys: (min, max, min_inclusive). Anything not listed must only have the right type.
_BOUNDS: Dict[str, tuple] = {
    **_SAC_BOUNDS,
    "hyperparameters.batch_size": (1, None, True),
    "hyperparameters.buffer_size": (1, None, True),
    "hyperparameters.learning_rate": (0.0, None, False),
    "hyperparameters.beta": (0.0, None, True),
    "hyperparameters.epsilon": (0.0, None, False),
    "hyperparameters.lambd": (0.0, 1.0, True),
    "hyperparameters.num_epoch": (1, None, True),
    "hyperparameters.max_grad_norm": (0.0, None, False),
    # Upper bounds so a request cannot make the server allocate an absurd network (memory exhaustion).
    "network_settings.hidden_units": (1, 8192, True),
    "network_settings.num_layers": (0, 32, True),
    "network_settings.memory.sequence_length": (1, None, True),
    "network_settings.memory.memory_size": (2, 8192, True),
    "keep_checkpoints": (0, None, True),
    "checkpoint_interval": (1, None, True),
    "max_steps": (1, None, True),
    "time_horizon": (1, None, True),
    "summary_freq": (1, None, True),
    "max_policy_lag": (0, None, True),
    "gamma": (0.0, 1.0, True),
    "learning_rate": (0.0, None, False),
    "encoding_size": (1, 8192, True),
    "strength": (0.0, None, True),
    "behavioral_cloning.steps": (0, None, True),
    "behavioral_cloning.strength": (0.0, None, True),
    "behavioral_cloning.samples_per_update": (0, None, True),
    "behavioral_cloning.num_epoch": (1, None, True),
    "behavioral_cloning.batch_size": (1, None, True),
}


def _bound_key(path: str) -> str:
    """The bound entry of a dotted key: reward_signals.<name>.gamma shares one entry regardless of the
    signal's name, and a run configuration's "behaviors.<name>." prefix is skipped (behaviour names
    may contain dots, so the first suffix that names a bounded key wins)."""
    parts = path.split(".")
    for start in range(len(parts)):
        rest = parts[start:]
        if rest[0] == "reward_signals" and len(rest) == 3:
            return rest[2]
        if ".".join(rest) in _BOUNDS:
            return ".".join(rest)
    return path


def _check_bounds(path: str, value: float) -> None:
    bound = _BOUNDS.get(_bound_key(path))
    if bound is None:
        return
    lo, hi, lo_inclusive = bound
    if lo is not None and (value < lo or (value == lo and not lo_inclusive)):
        op = ">=" if lo_inclusive else ">"
        raise InvalidArgument(path, f"must be {op} {lo}, got {value!r}")
    if hi is not None and value > hi:
        raise InvalidArgument(path, f"must be <= {hi}, got {value!r}")


def _coerce(path: str, tp: Any, value: Any) -> Any:
    """Convert a YAML/JSON value to the annotated type, or raise InvalidArgument naming `path`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _coerce(path, inner, value)
    if origin is typing.Literal:
        if value not in args:
            raise InvalidArgument(path, f"must be one of {list(args)}, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise InvalidArgument(path, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        # Struct (JSON) numbers arrive as floats: accept 256.0, reject 256.5 and booleans.
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not value.is_integer()):
            raise InvalidArgument(path, f"expected an integer, got {value!r}")
        value = int(value)
        _check_bounds(path, value)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidArgument(path, f"expected a number, got {value!r}")
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise InvalidArgument(path, f"must be finite, got {value!r}")
        _check_bounds(path, value)
        return value
    if tp is str:
        if not isinstance(value, str):
            raise InvalidArgument(path, f"expected a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return _build_dataclass(path, tp, value)
    raise TypeError(f"unsupported settings type {tp} at {path}")  # programming error, not user input


def _build_dataclass(path: str, cls: type, value: Any, base: Any = None) -> Any:
    if not isinstance(value, Mapping):
        raise InvalidArgument(path or "settings", f"expected a mapping, got {type(value).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    obj = copy.deepcopy(base) if base is not None else cls()
    for key, raw in value.items():
        key_path = f"{path}.{key}" if path else (str(key) or '""')  # an empty key is still named
        if key not in names:
            raise InvalidArgument(key_path, f"unknown key (valid keys: {', '.join(sorted(names))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(hints[key]) or (
            typing.get_origin(hints[key]) is typing.Union
            and any(dataclasses.is_dataclass(a) for a in typing.get_args(hints[key]))
        ):
            if raw is None:
                new = None if typing.get_origin(hints[key]) is typing.Union else _coerce(key_path, hints[key], raw)
            else:
                inner = hints[key]
                if typing.get_origin(inner) is typing.Union:
                    inner = [a for a in typing.get_args(inner) if a is not type(None)][0]
                new = _build_dataclass(key_path, inner, raw, base=current)
        else:
            new = _coerce(key_path, hints[key], raw)
        setattr(obj, key, new)
    return obj


def _merge_trainer_settings(base: TrainerSettings, overrides: Mapping[str, Any], path: str = "") -> TrainerSettings:
    overrides = dict(overrides)
    for key in ACCEPTED_UNUSED_KEYS:
        if key in overrides and overrides[key] not in (None, {}, False):
            raise Unimplemented(f"{path}{key}", "is a valid ML-Agents key that this server does not implement yet")
        overrides.pop(key, None)
    if "trainer_type" in overrides:
        trainer_type = overrides["trainer_type"]
        if trainer_type not in KNOWN_TRAINER_TYPES:
            raise InvalidArgument(f"{path}trainer_type", f"must be one of {list(KNOWN_TRAINER_TYPES)}, got {trainer_type!r}")
        if trainer_type not in IMPLEMENTED_TRAINER_TYPES:
            raise Unimplemented(f"{path}trainer_type", f"{trainer_type!r} is not implemented yet (available: {list(IMPLEMENTED_TRAINER_TYPES)})")
    signals_raw = overrides.pop("reward_signals", None)
    hyper_raw = overrides.pop("hyperparameters", _UNSET)
    merged = _build_dataclass(path.rstrip("."), TrainerSettings, overrides, base=base)
    merged.hyperparameters = _merge_hyperparameters(merged, hyper_raw, path)
    if signals_raw is not None:
        sig_path = f"{path}reward_signals"
        if not isinstance(signals_raw, Mapping) or not signals_raw:
            raise InvalidArgument(sig_path, "expected a non-empty mapping of signal name to settings")
        signals: Dict[str, RewardSignalSettings] = {}
        for name, raw in signals_raw.items():
            if name not in KNOWN_REWARD_SIGNALS:
                raise InvalidArgument(f"{sig_path}.{name}", f"unknown reward signal (valid: {list(KNOWN_REWARD_SIGNALS)})")
            if name not in IMPLEMENTED_REWARD_SIGNALS:
                raise Unimplemented(f"{sig_path}.{name}", f"reward signal {name!r} is not implemented yet (available: {list(IMPLEMENTED_REWARD_SIGNALS)})")
            signals[name] = _build_dataclass(f"{sig_path}.{name}", RewardSignalSettings, raw or {})
            defaults = RewardSignalSettings()
            for key, signals_taking in SIGNAL_SPECIFIC_KEYS.items():
                if name not in signals_taking and getattr(signals[name], key) != getattr(defaults, key):
                    raise InvalidArgument(f"{sig_path}.{name}.{key}", f"applies to {', '.join(signals_taking)}, not {name}")
            if name == "gail" and not signals[name].demo_path:
                raise InvalidArgument(f"{sig_path}.gail.demo_path", "is required: the expert demonstration (.demo file) GAIL imitates")
        merged.reward_signals = signals
    _check_consistency(merged, path)
    return merged


_UNSET = object()


def _merge_hyperparameters(merged: TrainerSettings, raw: Any, path: str) -> Any:
    """The hyperparameters class follows trainer_type: PPO keys under sac (and SAC keys under ppo)
    are unknown keys. Switching trainer_type starts from the new type's defaults."""
    cls = HYPERPARAMETER_CLASSES[merged.trainer_type]
    current = merged.hyperparameters if isinstance(merged.hyperparameters, cls) else cls()
    if raw is _UNSET:
        return current
    return _build_dataclass(f"{path}hyperparameters", cls, raw, base=current)


def _check_consistency(s: TrainerSettings, path: str = "") -> None:
    """Cross-key rules (ML-Agents enforces the same ones)."""
    hp = s.hyperparameters
    if hp.batch_size > hp.buffer_size:
        raise InvalidArgument(f"{path}hyperparameters.batch_size", f"({hp.batch_size}) must not exceed hyperparameters.buffer_size ({hp.buffer_size})")
    bc = s.behavioral_cloning
    if bc is not None and not bc.demo_path:
        raise InvalidArgument(f"{path}behavioral_cloning.demo_path", "is required: the demonstration (.demo file) to clone")
    mem = s.network_settings.memory
    if mem is not None:
        if mem.memory_size % 2:
            raise InvalidArgument(f"{path}network_settings.memory.memory_size", f"must be even, got {mem.memory_size}")
        if mem.sequence_length > hp.batch_size:
            raise InvalidArgument(f"{path}network_settings.memory.sequence_length", f"({mem.sequence_length}) must not exceed hyperparameters.batch_size ({hp.batch_size})")


def resolve_settings(overrides: Optional[Mapping[str, Any]] = None, base: Optional[TrainerSettings] = None) -> TrainerSettings:
    """Settings = ML-Agents defaults <- base (server config) <- overrides (RegisterBehavior)."""
    start = copy.deepcopy(base) if base is not None else TrainerSettings()
    if not overrides:
        _check_consistency(start)
        return start
    if not isinstance(overrides, Mapping):
        raise InvalidArgument("settings", "expected a mapping")
    return _merge_trainer_settings(start, overrides)


def settings_to_dict(settings: TrainerSettings) -> Dict[str, Any]:
    """Plain nested dict with every key (for RegisterBehavior's effective_settings)."""
    return dataclasses.asdict(settings)


def beta_schedule(hp: PPOHyperparameters) -> str:
    return hp.beta_schedule or hp.learning_rate_schedule


def epsilon_schedule(hp: PPOHyperparameters) -> str:
    return hp.epsilon_schedule or hp.learning_rate_schedule


@dataclass
class ServerConfig:
    """An ML-Agents run configuration: `default_settings` plus per-behaviour `behaviors`."""

    default_settings: TrainerSettings = field(default_factory=TrainerSettings)
    behaviors: Dict[str, Mapping[str, Any]] = field(default_factory=dict)

    def base_for(self, behavior_name: str) -> TrainerSettings:
        raw = self.behaviors.get(behavior_name)
        if raw is None:
            return copy.deepcopy(self.default_settings)
        return _merge_trainer_settings(self.default_settings, raw, path=f"behaviors.{behavior_name}.")


def load_config(text: str) -> ServerConfig:
    """Parse an ML-Agents YAML run configuration (safe_load: no object construction)."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise InvalidArgument("config", f"not valid YAML: {err}") from err
    if not isinstance(data, Mapping):
        raise InvalidArgument("config", "top level must be a mapping")
    allowed = {"behaviors", "default_settings", *RUN_CONFIG_IGNORED_KEYS}
    for key in data:
        if key not in allowed:
            raise InvalidArgument(str(key), f"unknown top-level key (valid: {', '.join(sorted(allowed))})")
    default = resolve_settings(data.get("default_settings") or {})
    behaviors = data.get("behaviors") or {}
    if not isinstance(behaviors, Mapping):
        raise InvalidArgument("behaviors", "expected a mapping of behaviour name to settings")
    config = ServerConfig(default_settings=default, behaviors=dict(behaviors))
    for name in behaviors:  # validate every behaviour now, not at its first registration
        config.base_for(name)
    return config
