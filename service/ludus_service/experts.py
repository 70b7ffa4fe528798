"""A demonstration as expert rows for GAIL's discriminator and behavioural cloning.

One row per demonstrated transition, with the update buffer's field names (obs_i, next_obs_i,
continuous_action, discrete_action, action_mask, done), so the same code reads policy and expert
minibatches. Recurrent behaviours get every trajectory padded to whole sequences (padding loss-masked,
as the update buffer does), because cloning replays sequences.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np

from ludus_service.buffer import ACTION_MASK, CONTINUOUS_ACTION, DISCRETE_ACTION, DONE, AgentBuffer, next_obs_key, obs_key
from ludus_service.demonstrations import Demonstration, load_demonstration
from ludus_service.sequences import pad_to_sequences
from ludus_service.spec import BehaviorSpec


def expert_rows(demo: Demonstration, spec: BehaviorSpec, sequence_length: int = 1) -> AgentBuffer:
    buffer = AgentBuffer()
    for traj in demo.trajectories:
        fields: Dict[str, np.ndarray] = {obs_key(i): o for i, o in enumerate(traj.observations)}
        fields.update({next_obs_key(i): o for i, o in enumerate(traj.next_observations)})
        fields[CONTINUOUS_ACTION] = traj.continuous_actions.astype(np.float32)
        fields[DISCRETE_ACTION] = traj.discrete_actions.astype(np.int64)
        fields[ACTION_MASK] = (traj.action_masks if traj.action_masks is not None
                               else np.ones((traj.length, spec.actions.mask_size), dtype=bool))
        fields[DONE] = traj.dones.astype(np.float32)
        if sequence_length > 1:
            fields = pad_to_sequences(fields, sequence_length, fill={ACTION_MASK: True})
        buffer.append(fields)
    return buffer


def load_expert_buffer(path: Path, spec: BehaviorSpec, field: str, sequence_length: int = 1) -> AgentBuffer:
    """Read and check a demonstration (InvalidArgument naming `field` and what is wrong) into rows."""
    return expert_rows(load_demonstration(path, spec, field), spec, sequence_length)
