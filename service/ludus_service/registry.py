"""The behaviours a server trains, created idempotently by RegisterBehavior."""
from __future__ import annotations

import dataclasses
import threading
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from ludus.v1 import trainer_pb2 as pb
from ludus_service.behavior import Behavior
from ludus_service.errors import FailedPrecondition, NotFound
from ludus_service.settings import ServerConfig, resolve_settings, settings_to_dict
from ludus_service.spec import BehaviorSpec, parse_spec, validate_behavior_name


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
    def __init__(self, config: Optional[ServerConfig] = None, device: torch.device | str = "cpu", seed: Optional[int] = None) -> None:
        self.config = config or ServerConfig()
        self.device = torch.device(device)
        self.seed = seed
        self._behaviors: Dict[str, Behavior] = {}
        self._lock = threading.Lock()

    def register(self, name: str, spec_msg: pb.BehaviorSpec, overrides: Optional[Mapping[str, Any]]) -> Tuple[Behavior, bool]:
        validate_behavior_name(name)
        spec = parse_spec(spec_msg)
        settings = resolve_settings(overrides, base=self.config.base_for(name))
        with self._lock:
            existing = self._behaviors.get(name)
            if existing is not None:
                if existing.spec != spec:
                    raise FailedPrecondition("spec", f"behaviour {name!r} is registered with a different spec: {describe_spec_difference(existing.spec, spec)}")
                if overrides and settings != existing.settings:
                    diff = _first_difference(settings_to_dict(existing.settings), settings_to_dict(settings), "settings")
                    raise FailedPrecondition("settings", f"behaviour {name!r} is registered with different settings: {diff}")
                return existing, False
            behavior = Behavior(name, spec, settings, dict(overrides or {}), self.device, self.seed)
            self._behaviors[name] = behavior
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

    def close(self) -> None:
        for behavior in self.all():
            behavior.close()
