"""Reward providers (ML-Agents' create_reward_signals builds one per configured signal).

Each provider turns a processed trajectory into per-step rewards (already multiplied by its
`strength`) and can learn from minibatches. `respects_done` decides whether the bootstrap value is 0
at episode ends (extrinsic, GAIL) or always taken (curiosity, RND).
"""
from __future__ import annotations

import abc
from typing import Dict, Optional

import numpy as np
import torch

from ludus_service.buffer import AgentBuffer
from ludus_service.settings import RewardSignalSettings

ENVIRONMENT_REWARDS = "environment_rewards"


class RewardProvider(abc.ABC):
    name: str
    respects_done: bool = True
    #: Whether evaluate/update read the next observation of every step (buffer fields next_obs_i).
    needs_next_observations: bool = False
    #: Whether evaluate/update read the buffer field `done` (1.0 on a step that ended its episode).
    needs_dones: bool = False
    #: Whether evaluate reads the actions (curiosity; GAIL with use_actions).
    reads_actions: bool = False

    def __init__(self, name: str, settings: RewardSignalSettings) -> None:
        self.name = name
        self.gamma = settings.gamma
        self.strength = settings.strength

    @property
    def stat_name(self) -> str:
        """Title-cased name used in ML-Agents statistics, e.g. "Policy/Extrinsic Reward"."""
        return self.name.capitalize()

    @abc.abstractmethod
    def evaluate(self, buffer: AgentBuffer) -> np.ndarray:
        """Per-step rewards of `buffer`, times strength, float32 [T]."""

    def update(self, minibatch: AgentBuffer) -> Dict[str, float]:
        """Learn from a minibatch; returns statistics (none for fixed signals)."""
        return {}


class ExtrinsicRewardProvider(RewardProvider):
    """The environment's own reward."""

    def evaluate(self, buffer: AgentBuffer) -> np.ndarray:
        return (buffer[ENVIRONMENT_REWARDS] * self.strength).astype(np.float32)


def create_reward_provider(name: str, settings: RewardSignalSettings, spec=None, device="cpu",
                           expert: Optional[AgentBuffer] = None, seed: Optional[int] = None,
                           env_range_actions: bool = False, vis_encode_type: str = "simple") -> RewardProvider:
    """The provider of a configured signal; learned ones (curiosity, rnd, gail) need the spec and
    device, and GAIL the expert's steps, a seed for its expert sampling, and whether the policy's
    continuous actions are already environment actions (SAC). Learned signals encode images with
    the signal's own `network_settings.vis_encode_type`, else `vis_encode_type` (the behaviour's)."""
    if name == "extrinsic":
        return ExtrinsicRewardProvider(name, settings)
    from ludus_service.learned_rewards import CuriosityRewardProvider, RNDRewardProvider  # torch networks

    if settings.network_settings is not None:
        vis_encode_type = settings.network_settings.vis_encode_type
    if name == "gail":
        from ludus_service.gail import GAILRewardProvider

        return GAILRewardProvider(name, settings, spec, torch.device(device), expert, seed, env_range_actions, vis_encode_type)

    learned = {"curiosity": CuriosityRewardProvider, "rnd": RNDRewardProvider}
    if name not in learned:
        raise ValueError(f"reward signal {name!r} is not implemented")
    return learned[name](name, settings, spec, torch.device(device), vis_encode_type)
