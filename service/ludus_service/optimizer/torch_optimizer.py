"""TorchOptimizer: owns the policy (actor), the critic, the settings and the reward signals."""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from ludus_service.buffer import AgentBuffer, obs_key
from ludus_service.networks import Actor, Critic, ObservationEncoder
from ludus_service.optimizer.base import Optimizer
from ludus_service.reward_signals import RewardProvider, create_reward_provider
from ludus_service.settings import RewardSignalSettings, TrainerSettings
from ludus_service.spec import BehaviorSpec


class TorchOptimizer(Optimizer):
    def __init__(self, spec: BehaviorSpec, settings: TrainerSettings, device: torch.device | str = "cpu") -> None:
        self.spec = spec
        self.settings = settings
        self.device = torch.device(device)
        #: Environment steps trained on so far; drives the linear schedules.
        self.global_step = 0
        net = settings.network_settings
        self.encoder = ObservationEncoder(spec, net.normalize).to(self.device)
        self.reward_signals: Dict[str, RewardProvider] = {}
        self.create_reward_signals(settings.reward_signals)
        self.actor = Actor(spec, net, self.encoder).to(self.device)
        self.critic = Critic(spec, net, self.encoder, list(self.reward_signals)).to(self.device)

    # -- seed API ---------------------------------------------------------------------------------
    def create_reward_signals(self, reward_signal_configs: Mapping[str, RewardSignalSettings]) -> None:
        """One reward provider per configured signal ("extrinsic", ...), in configuration order."""
        for name, config in reward_signal_configs.items():
            self.reward_signals[name] = create_reward_provider(name, config)

    @torch.no_grad()
    def get_trajectory_value_estimates(
        self, batch: AgentBuffer, next_obs: Optional[Sequence[np.ndarray]], done: bool, agent_id: str = ""
    ) -> Tuple[Dict[str, np.ndarray], Dict[str, float], Optional[np.ndarray]]:
        """Critic values of every step per signal, the bootstrap value of `next_obs` per signal, and
        critic memories (None: recurrent critics are not implemented yet).

        Trajectory and next observation are evaluated in one forward pass. With `done`, signals that
        respect episode ends bootstrap from 0.
        """
        obs = [batch[obs_key(i)] for i in range(len(self.spec.observations))]
        length = len(obs[0])
        if next_obs is not None:
            obs = [np.concatenate([o, n[None]], axis=0) for o, n in zip(obs, next_obs)]
        values = self.critic(self.to_torch_obs(obs))
        value_estimates: Dict[str, np.ndarray] = {}
        bootstrap: Dict[str, float] = {}
        for name, provider in self.reward_signals.items():
            v = values[name].float().cpu().numpy()
            value_estimates[name] = v[:length]
            if done and provider.respects_done:
                bootstrap[name] = 0.0
            else:
                bootstrap[name] = float(v[length]) if next_obs is not None else float(v[length - 1])
        return value_estimates, bootstrap, None

    # -- helpers ----------------------------------------------------------------------------------
    @property
    def signal_names(self) -> List[str]:
        return list(self.reward_signals)

    def to_torch_obs(self, observations: Sequence[np.ndarray]) -> List[torch.Tensor]:
        return [torch.as_tensor(o, dtype=torch.float32, device=self.device) for o in observations]

    def to_torch(self, array: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.as_tensor(array, dtype=dtype, device=self.device)

    def update_normalization(self, observations: Sequence[np.ndarray]) -> None:
        """Fold a trajectory's observations into the running normaliser (when normalize is on)."""
        if self.encoder.normalizer is not None:
            self.encoder.normalizer.update(self.encoder.concat(self.to_torch_obs(observations)))

    def update_reward_signals(self, batch: AgentBuffer) -> Dict[str, float]:
        stats: Dict[str, float] = {}
        for provider in self.reward_signals.values():
            stats.update(provider.update(batch))
        return stats
