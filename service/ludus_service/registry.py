"""The behaviours a server trains: created idempotently by RegisterBehavior, restored by --resume."""
from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch

from ludus.v1 import trainer_pb2 as pb
from ludus_service.behavior import Behavior, spec_from_dict
from ludus_service.buffer import AgentBuffer
from ludus_service.demo_recorder import DEMO_NAME
from ludus_service.experts import load_expert_buffer
from ludus_service.checkpoint import latest_checkpoint, load_checkpoint
from ludus_service.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from ludus_service.metrics import ServerMetrics
from ludus_service.settings import ServerConfig, TrainerSettings, resolve_settings, settings_to_dict
from ludus_service.spec import BehaviorSpec, check_spec_fits_settings, parse_spec, validate_behavior_name

log = logging.getLogger(__name__)
DEFAULT_MAX_REPLAY_BUFFER_BYTES = 4 << 30


def replay_bytes_per_step(spec: BehaviorSpec, memory_size: int = 0) -> int:
    """What one SAC replay step holds: observation and next observation (float32), actions,
    action mask, reward and done; recurrent behaviours add policy and critic memories (float32) and
    the loss mask."""
    observation_floats = sum(int(np.prod(o.shape)) for o in spec.observations)
    a = spec.actions
    recurrent = 2 * 4 * memory_size + 1 if memory_size else 0
    return 2 * 4 * observation_floats + 4 * a.continuous_size + 8 * a.num_branches + a.mask_size + 4 + 4 + recurrent


def _first_difference(a: Any, b: Any, path: str) -> Optional[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            diff = _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
            if diff:
                return diff
        return None
    return None if a == b else f"{path} is {b!r}, registered {a!r}"


def describe_spec_difference(registered: BehaviorSpec, requested: BehaviorSpec) -> str:
    return _first_difference(dataclasses.asdict(registered), dataclasses.asdict(requested), "spec") or "specs differ"


class BehaviorRegistry:
    def __init__(
        self,
        config: Optional[ServerConfig] = None,
        device: torch.device | str = "cpu",
        seed: Optional[int] = None,
        metrics: Optional[ServerMetrics] = None,
        checkpoint_dir: Optional[Path] = None,
        initialize_from: Optional[Path] = None,
        max_queued_steps: Optional[int] = None,
        intake_timeout: float = 10.0,
        force_inference: bool = False,
        demo_dir: Optional[Path] = None,
        max_replay_buffer_bytes: int = DEFAULT_MAX_REPLAY_BUFFER_BYTES,
    ) -> None:
        self.config = config or ServerConfig()
        self.device = torch.device(device)
        self.seed = seed
        self.metrics = metrics or ServerMetrics(self.device)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.initialize_from = Path(initialize_from) if initialize_from is not None else None
        self.max_queued_steps = max_queued_steps
        self.intake_timeout = intake_timeout
        #: `ludus-server --inference`: every behaviour, registered or resumed, is served untrained.
        self.force_inference = force_inference
        #: Where `demo_path` settings point into and RecordDemonstration writes (`--demo-dir`).
        self.demo_dir = Path(demo_dir) if demo_dir is not None else Path("demos")
        #: SAC replay buffers are preallocated rings of buffer_size steps: bounded per behaviour.
        self.max_replay_buffer_bytes = max_replay_buffer_bytes
        self._behaviors: Dict[str, Behavior] = {}
        self._lock = threading.Lock()
        #: Set at graceful shutdown: new trainer RPCs are refused with UNAVAILABLE.
        self.shutting_down = False

    def _check_replay_buffer_size(self, spec: BehaviorSpec, settings: TrainerSettings) -> None:
        """Refuse an SAC buffer_size whose replay buffer would not fit, before anything is accepted
        (the ring is allocated when the first trajectory arrives; failing then would lose it)."""
        if settings.trainer_type != "sac":
            return
        memory = settings.network_settings.memory
        needed = settings.hyperparameters.buffer_size * replay_bytes_per_step(spec, memory.memory_size if memory else 0)
        if needed > self.max_replay_buffer_bytes:
            raise ResourceExhausted("settings.hyperparameters.buffer_size",
                                    f"a replay buffer of {settings.hyperparameters.buffer_size} steps of this spec needs "
                                    f"{needed / 2**30:.2f} GiB; this server allows {self.max_replay_buffer_bytes / 2**30:.2f} GiB "
                                    "per behaviour (ludus-server --max-replay-buffer-bytes)")

    # -- demonstrations ----------------------------------------------------------------------------
    def demo_file(self, demo_path: str, field: str) -> Path:
        """The file a `demo_path` setting names: relative to the demo directory and inside it, so
        settings sent over the network cannot make the server read arbitrary files."""
        if not demo_path:
            raise InvalidArgument(field, "is empty")
        if any(ord(c) < 32 for c in demo_path):
            raise InvalidArgument(field, f"contains control characters: {demo_path!r}")
        if Path(demo_path).is_absolute():
            raise InvalidArgument(field, f"must be relative to the server's demo directory ({self.demo_dir}), got {demo_path!r}")
        root = self.demo_dir.resolve()
        try:
            full = (root / demo_path).resolve()
        except (OSError, ValueError) as err:  # e.g. a symlink loop, a name the OS refuses
            raise InvalidArgument(field, f"cannot be resolved: {err}") from None
        if full != root and root not in full.parents:
            raise InvalidArgument(field, f"{demo_path!r} leaves the server's demo directory ({self.demo_dir})")
        if not (full.is_file() or full.is_dir()):  # a folder of .demo files is fine too (ML-Agents)
            raise InvalidArgument(field, f"no demonstration {demo_path!r} in the server's demo directory ({self.demo_dir}); "
                                         "record one with RecordDemonstration or copy the .demo file there")
        return full

    def demo_recording_path(self, name: str, overwrite: bool, field: str = "requests[0].demonstration_name") -> Path:
        """Where RecordDemonstration writes `<name>.demo`: a plain file name in the demo directory."""
        if not DEMO_NAME.fullmatch(name or ""):
            raise InvalidArgument(field, f"must be 1-128 letters, digits, '_', '-' or '.', not starting with '.', got {name!r}")
        path = self.demo_dir / f"{name}.demo"
        if path.exists() and not overwrite:
            raise FailedPrecondition(field, f"{path.name} already exists in the server's demo directory; "
                                            "choose another name or set overwrite")
        target = path.resolve()
        in_use = path.exists() and sorted(b.name for b in self.all() if any(
            used == target or (used.is_dir() and used == target.parent)  # a folder reads every .demo in it
            for used in (p.resolve() for _, _, p in self._safe_demo_files(b.settings))))
        if in_use:  # replacing it would change what a checkpointed behaviour resumes with
            raise FailedPrecondition(field, f"{path.name} is the demonstration of behaviour(s) {', '.join(in_use)}; "
                                            "record under another name")
        return path

    def _safe_demo_files(self, settings: TrainerSettings) -> List[Tuple[str, str, Path]]:
        try:
            return self.demo_files(settings)
        except InvalidArgument:
            return []

    def load_demonstrations(self, settings: TrainerSettings, spec: BehaviorSpec, field_prefix: str = "settings"
                            ) -> Dict[str, AgentBuffer]:
        """Expert steps of every demonstration the settings name (GAIL signals, behavioral_cloning),
        by demo_path, each checked against the behaviour's spec (INVALID_ARGUMENT saying what differs)."""
        sequence_length = settings.network_settings.memory.sequence_length if settings.network_settings.memory else 1
        loaded: Dict[str, AgentBuffer] = {}
        for field, demo_path, path in self.demo_files(settings, field_prefix):
            if demo_path not in loaded:
                loaded[demo_path] = load_expert_buffer(path, spec, field, sequence_length)
        return loaded

    def demo_files(self, settings: TrainerSettings, field_prefix: str = "settings") -> List[Tuple[str, str, Path]]:
        """(settings field, demo_path, file) of every demonstration the settings name, each checked
        to exist inside the demo directory (cheap: nothing is read)."""
        wanted = [(f"{field_prefix}.reward_signals.{name}.demo_path", s.demo_path)
                  for name, s in settings.reward_signals.items() if s.demo_path]
        if settings.behavioral_cloning is not None:
            wanted.append((f"{field_prefix}.behavioral_cloning.demo_path", settings.behavioral_cloning.demo_path))
        return [(field, demo_path, self.demo_file(demo_path, field)) for field, demo_path in wanted]

    def _behavior_kwargs(self, name: str) -> Dict[str, Any]:
        return dict(device=self.device, seed=self.seed, metrics=self.metrics.for_behavior(name), checkpoint_dir=self.checkpoint_dir,
                    max_queued_steps=self.max_queued_steps, intake_timeout=self.intake_timeout)

    def resume(self) -> List[str]:
        """Restore every behaviour that has a checkpoint under checkpoint_dir (--resume)."""
        if self.checkpoint_dir is None or not self.checkpoint_dir.is_dir():
            return []
        restored = []
        for directory in sorted(p for p in self.checkpoint_dir.iterdir() if p.is_dir()):
            found = latest_checkpoint(directory)
            if found is None:
                continue
            path, tensors, meta = found
            name = meta["behavior_name"]
            settings = resolve_settings(meta["settings"])
            # Served untrained (--inference): the expert's steps are never used, so not needed.
            demonstrations = {} if self.force_inference else self.load_demonstrations(
                settings, spec_from_dict(meta["spec"]), f"checkpoint {path}: settings")
            self._behaviors[name] = Behavior.from_checkpoint(tensors, meta, inference=self.force_inference or None,
                                                             demonstrations=demonstrations, **self._behavior_kwargs(name))
            log.info("resumed %s from %s (step %d, policy version %d)", name, path, self._behaviors[name].trainer.step,
                     self._behaviors[name].policy_version)
            restored.append(name)
        self.metrics.behaviors.set(len(self._behaviors))
        return restored

    def _initial_weights(self, name: str, settings: TrainerSettings) -> Optional[Dict[str, torch.Tensor]]:
        """Weights from ML-Agents' `init_path` (a checkpoint file or behaviour folder) or --initialize-from."""
        if settings.init_path:
            source = Path(settings.init_path)
            try:  # is_file, not exists: reading a device such as /dev/zero never ends
                found = latest_checkpoint(source) if source.is_dir() else (source, *load_checkpoint(source)) if source.is_file() else None
            except (OSError, ValueError) as err:  # not a checkpoint, unreadable, or a name the OS refuses
                raise InvalidArgument("settings.init_path", f"no readable checkpoint at {source}: {err}") from None
            if found is None:
                raise InvalidArgument("settings.init_path", f"no readable checkpoint at {source}")
            return found[1]
        if self.initialize_from is not None:
            found = latest_checkpoint(self.initialize_from / name)
            if found is not None:
                log.info("initialising %s from %s", name, found[0])
                return found[1]
        return None

    def register(self, name: str, spec_msg: pb.BehaviorSpec, overrides: Optional[Mapping[str, Any]]) -> Tuple[Behavior, bool]:
        validate_behavior_name(name)
        spec = parse_spec(spec_msg)
        settings = resolve_settings(overrides, base=self.config.base_for(name))
        if self.force_inference:
            settings = dataclasses.replace(settings, inference=True)
        check_spec_fits_settings(spec, settings.network_settings.vis_encode_type)
        for signal, config in settings.reward_signals.items():  # learned signals' image encoders of their own
            if signal != "extrinsic" and config.network_settings is not None:
                check_spec_fits_settings(spec, config.network_settings.vis_encode_type,
                                         f"reward_signals.{signal}.network_settings.vis_encode_type")
        self.demo_files(settings)  # a missing demonstration is the same error for new and existing names
        self._check_replay_buffer_size(spec, settings)
        with self._lock:
            existing = self._behaviors.get(name)
            if existing is not None:
                if existing.spec != spec:
                    raise FailedPrecondition("spec", f"behaviour {name!r} is registered with a different spec: {describe_spec_difference(existing.spec, spec)}")
                if overrides and settings != existing.settings:
                    diff = _first_difference(settings_to_dict(existing.settings), settings_to_dict(settings), "settings")
                    raise FailedPrecondition("settings", f"behaviour {name!r} is registered with different settings: {diff}")
                return existing, False
            weights = self._initial_weights(name, settings)
            demonstrations = {} if settings.inference else self.load_demonstrations(settings, spec)
            try:
                behavior = Behavior(name, spec, settings, dict(overrides or {}), initial_weights=weights,
                                    demonstrations=demonstrations, **self._behavior_kwargs(name))
            except RuntimeError as err:  # e.g. init weights whose shapes do not fit this spec/network
                raise FailedPrecondition("settings.init_path", f"initial weights do not fit behaviour {name!r}: {err}") from None
            self._behaviors[name] = behavior
            self.metrics.behaviors.set(len(self._behaviors))
            return behavior, True

    def get(self, name: str) -> Behavior:
        behavior = self._behaviors.get(name)
        if behavior is None:
            raise NotFound("behavior_name", f"no behaviour named {name!r} is registered (call RegisterBehavior first)")
        return behavior

    def names(self) -> List[str]:
        return sorted(self._behaviors)

    def all(self) -> List[Behavior]:
        return list(self._behaviors.values())

    def close(self, checkpoint: bool = True) -> None:
        """Finish accepted work and checkpoint every behaviour (graceful shutdown)."""
        for behavior in self.all():
            behavior.close(checkpoint=checkpoint)
