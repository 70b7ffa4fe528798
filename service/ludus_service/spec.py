"""Validation of behaviour specs received at RegisterBehavior.

The dataclasses themselves live in the torch-free SDK (ludus_client.spec) so both sides share them;
this module adds the server's rules: which shapes are legal and which kinds this server can train.
"""
from __future__ import annotations

import re

from ludus.v1 import trainer_pb2 as pb
from ludus_client.spec import ActionSpec, BehaviorSpec, ObservationSpec
from ludus_service.encoders import check_visual_shape
from ludus_service.errors import InvalidArgument, Unimplemented

__all__ = ["ActionSpec", "BehaviorSpec", "ObservationSpec", "check_spec_fits_settings", "parse_spec", "validate_behavior_name"]

_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")
MAX_OBS_ELEMENTS = 1 << 24
MAX_ACTIONS = 4096


def validate_behavior_name(name: str, field: str = "behavior_name") -> str:
    if not _NAME.match(name or ""):
        raise InvalidArgument(field, f"must be 1-128 characters of letters, digits, '_', '-', '.', got {name!r}")
    return name


def parse_spec(msg: pb.BehaviorSpec) -> BehaviorSpec:
    """Proto -> BehaviorSpec, or InvalidArgument naming the bad field."""
    if not msg.observations:
        raise InvalidArgument("spec.observations", "at least one observation is required")
    names = set()
    for i, obs in enumerate(msg.observations):
        path = f"spec.observations[{i}]"
        if not obs.name:
            raise InvalidArgument(f"{path}.name", "must be non-empty")
        if obs.name in names:
            raise InvalidArgument(f"{path}.name", f"duplicate observation name {obs.name!r}")
        names.add(obs.name)
        if not obs.shape or any(d < 1 for d in obs.shape):
            raise InvalidArgument(f"{path}.shape", f"every dimension must be >= 1, got {list(obs.shape)}")
        count = 1
        for d in obs.shape:
            count *= d
        if count > MAX_OBS_ELEMENTS:
            raise InvalidArgument(f"{path}.shape", f"{count} elements per step exceeds {MAX_OBS_ELEMENTS}")
        if obs.kind not in pb.ObservationKind.values():
            raise InvalidArgument(f"{path}.kind", f"unknown kind {obs.kind}")
        if obs.observation_type not in pb.ObservationType.values():
            raise InvalidArgument(f"{path}.observation_type", f"unknown observation type {obs.observation_type}")
    spec = BehaviorSpec.from_proto(msg)
    for i, obs in enumerate(spec.observations):
        path = f"spec.observations[{i}]"
        if obs.kind == pb.OBSERVATION_KIND_UNSPECIFIED:
            raise InvalidArgument(f"{path}.kind", f"cannot infer the kind of a rank-{len(obs.shape)} observation; set kind")
        if obs.kind == pb.OBSERVATION_KIND_ENTITIES and len(obs.shape) != 2:
            raise InvalidArgument(f"{path}.shape", f"an ENTITIES observation is [max_entities, entity_size], got shape {list(obs.shape)}")
        if obs.kind == pb.OBSERVATION_KIND_VECTOR and len(obs.shape) != 1:
            raise InvalidArgument(f"{path}.shape", f"a VECTOR observation has rank 1, got shape {list(obs.shape)}")
        if obs.kind == pb.OBSERVATION_KIND_VISUAL and len(obs.shape) != 3:
            raise InvalidArgument(f"{path}.shape", f"a VISUAL observation is [channels, height, width], got shape {list(obs.shape)}")
        if obs.observation_type == pb.OBSERVATION_TYPE_GOAL_SIGNAL and obs.kind != pb.OBSERVATION_KIND_VECTOR:
            raise Unimplemented(f"{path}.observation_type", "goal signals must be VECTOR observations (visual and entity goals are not implemented)")
    actions = spec.actions
    if actions.continuous_size < 0 or actions.continuous_size > MAX_ACTIONS:
        raise InvalidArgument("spec.actions.continuous_size", f"must be in [0, {MAX_ACTIONS}], got {actions.continuous_size}")
    for j, b in enumerate(actions.discrete_branches):
        if b < 1 or b > MAX_ACTIONS:
            raise InvalidArgument(f"spec.actions.discrete_branches[{j}]", f"must be in [1, {MAX_ACTIONS}], got {b}")
    if actions.continuous_size == 0 and not actions.discrete_branches:
        raise InvalidArgument("spec.actions", "needs a continuous_size > 0 or at least one discrete branch")
    return spec


def check_spec_fits_settings(spec: BehaviorSpec, vis_encode_type: str, field: str = "") -> None:
    """Rules that need the settings: every image must be large enough for the chosen encoder.
    `field` names the setting that chose it (default: the observation's shape)."""
    for i, obs in enumerate(spec.observations):
        if obs.kind == pb.OBSERVATION_KIND_VISUAL:
            check_visual_shape(vis_encode_type, obs.shape, obs.name, field=field or f"spec.observations[{i}].shape")
