"""Behaviour specs as plain dataclasses, convertible to and from the wire messages."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Tuple

from ludus.v1 import trainer_pb2 as pb


@dataclass(frozen=True)
class ObservationSpec:
    name: str
    shape: Tuple[int, ...]
    kind: int = pb.OBSERVATION_KIND_VECTOR
    observation_type: int = pb.OBSERVATION_TYPE_DEFAULT

    def to_proto(self) -> pb.ObservationSpec:
        return pb.ObservationSpec(name=self.name, shape=list(self.shape), kind=self.kind, observation_type=self.observation_type)

    @classmethod
    def from_proto(cls, msg: pb.ObservationSpec) -> "ObservationSpec":
        kind = msg.kind
        if kind == pb.OBSERVATION_KIND_UNSPECIFIED:
            kind = {1: pb.OBSERVATION_KIND_VECTOR, 3: pb.OBSERVATION_KIND_VISUAL}.get(len(msg.shape), pb.OBSERVATION_KIND_UNSPECIFIED)
        return cls(msg.name, tuple(int(d) for d in msg.shape), kind, msg.observation_type)


@dataclass(frozen=True)
class ActionSpec:
    continuous_size: int = 0
    discrete_branches: Tuple[int, ...] = ()

    @property
    def num_branches(self) -> int:
        return len(self.discrete_branches)

    @property
    def mask_size(self) -> int:
        return sum(self.discrete_branches)

    def to_proto(self) -> pb.ActionSpec:
        return pb.ActionSpec(continuous_size=self.continuous_size, discrete_branches=list(self.discrete_branches))

    @classmethod
    def from_proto(cls, msg: pb.ActionSpec) -> "ActionSpec":
        return cls(int(msg.continuous_size), tuple(int(b) for b in msg.discrete_branches))


@dataclass(frozen=True)
class BehaviorSpec:
    observations: Tuple[ObservationSpec, ...]
    actions: ActionSpec = field(default_factory=ActionSpec)

    def to_proto(self) -> pb.BehaviorSpec:
        return pb.BehaviorSpec(observations=[o.to_proto() for o in self.observations], actions=self.actions.to_proto())

    @classmethod
    def from_proto(cls, msg: pb.BehaviorSpec) -> "BehaviorSpec":
        return cls(tuple(ObservationSpec.from_proto(o) for o in msg.observations), ActionSpec.from_proto(msg.actions))

    @classmethod
    def vector(cls, obs_size: int, continuous_size: int = 0, discrete_branches: List[int] | Tuple[int, ...] = ()) -> "BehaviorSpec":
        """Shorthand for the common case: one flat observation vector."""
        return cls((ObservationSpec("obs", (obs_size,)),), ActionSpec(continuous_size, tuple(discrete_branches)))
