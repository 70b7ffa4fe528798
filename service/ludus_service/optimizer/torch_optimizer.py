"""TorchOptimizer: owns the policy (actor), the critic, the settings and the reward signals."""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from ludus_service.buffer import AgentBuffer, obs_key
from ludus_service.networks import Actor, Critic, ObservationEncoder
from ludus_service.optimizer.base import Optimizer
from ludus_service.reward_signals import RewardProvider, create_reward_provider
from ludus_service.sequences import AgentMemories
from ludus_service.settings import RewardSignalSettings, TrainerSettings
from ludus_service.spec import BehaviorSpec


class TorchOptimizer(Optimizer):
    def __init__(self, spec: BehaviorSpec, settings: TrainerSettings, device: torch.device | str = "cpu",
                 demonstrations: Optional[Mapping[str, AgentBuffer]] = None) -> None:
        self.spec = spec
        #: Expert steps by demo_path (loaded and checked against the spec at registration), for GAIL.
        self.demonstrations = dict(demonstrations or {})
        self.settings = settings
        self.device = torch.device(device)
        #: Environment steps trained on so far; drives the linear schedules.
        self.global_step = 0
        net = settings.network_settings
        self.encoder = ObservationEncoder(spec, net.normalize, net.goal_conditioning_type).to(self.device)
        self.reward_signals: Dict[str, RewardProvider] = {}
        self.create_reward_signals(settings.reward_signals)
        self.actor = Actor(spec, net, self.encoder).to(self.device)
        self.critic = Critic(spec, net, self.encoder, list(self.reward_signals)).to(self.device)
        #: Recurrent critics: sequence_length (1 otherwise) and each agent's critic memory between
        #: trajectory pieces (ML-Agents' critic_memory_dict, keyed by the real agent id).
        self.sequence_length = net.memory.sequence_length if net.memory is not None else 1
        self.critic_memories = AgentMemories(self.critic.memory_size) if self.critic.memory_size else None

    @property
    def needs_next_observations(self) -> bool:
        return any(p.needs_next_observations for p in self.reward_signals.values())

    @property
    def needs_dones(self) -> bool:
        return any(p.needs_dones for p in self.reward_signals.values())

    @property
    def recurrent(self) -> bool:
        return self.critic_memories is not None

    # -- seed API ---------------------------------------------------------------------------------
    def create_reward_signals(self, reward_signal_configs: Mapping[str, RewardSignalSettings]) -> None:
        """One reward provider per configured signal ("extrinsic", ...), in configuration order."""
        for name, config in reward_signal_configs.items():
            expert = self.demonstrations.get(config.demo_path) if config.demo_path else None
            self.reward_signals[name] = create_reward_provider(
                name, config, self.spec, self.device, expert=expert,
                # GAIL's expert sampling: from the trainer's seeded torch RNG, so --seed runs repeat
                seed=int(torch.randint(0, 2**31 - 1, ()).item()) if name == "gail" else None,
                env_range_actions=self.settings.trainer_type == "sac",  # SAC's actor is tanh-squashed
                vis_encode_type=self.settings.network_settings.vis_encode_type,
            )

    @torch.no_grad()
    def get_trajectory_value_estimates(
        self, batch: AgentBuffer, next_obs: Optional[Sequence[np.ndarray]], done: bool, agent_id: str = "",
        memories: Optional[AgentMemories] = None,
    ) -> Tuple[Dict[str, np.ndarray], Dict[str, float], Optional[np.ndarray]]:
        """Critic values of every step per signal, the bootstrap value of `next_obs` per signal, and
        for recurrent critics the memory at the start of each step's sequence [T, memory_size].

        Trajectory and next observation are evaluated in one pass (for recurrent critics: one pass
        per sequence, continuing the agent's memory from its previous piece, from `memories` or the
        optimizer's own store). With `done`, signals that respect episode ends bootstrap from 0, and
        the agent's critic memory is dropped.
        """
        obs = [batch[obs_key(i)] for i in range(len(self.spec.observations))]
        length = len(obs[0])
        if next_obs is not None:
            obs = [np.concatenate([o, n[None]], axis=0) for o, n in zip(obs, next_obs)]
        critic_memories = None
        if self.recurrent:
            store = memories if memories is not None else self.critic_memories  # (an empty store is falsy)
            values, critic_memories = self._recurrent_values(obs, length, agent_id, done, store)
        else:
            values = {k: v.float().cpu().numpy() for k, v in self.critic(self.to_torch_obs(obs)).items()}
        value_estimates: Dict[str, np.ndarray] = {}
        bootstrap: Dict[str, float] = {}
        for name, provider in self.reward_signals.items():
            v = values[name]
            value_estimates[name] = v[:length]
            if done and provider.respects_done:
                bootstrap[name] = 0.0
            else:
                bootstrap[name] = float(v[length]) if next_obs is not None else float(v[length - 1])
        return value_estimates, bootstrap, critic_memories

    def _recurrent_values(self, obs: List[np.ndarray], length: int, agent_id: str, done: bool,
                          store: AgentMemories) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
        """Sequence by sequence from the agent's stored memory, then (if `obs` holds one more row,
        next_obs) that row from the memory after the last step. The memory after the last step is
        stored for the agent's next piece, or dropped when done."""
        seq = self.sequence_length
        memory = torch.as_tensor(store.get(agent_id), device=self.device)[None]
        starts = np.zeros((length, memory.shape[1]), dtype=np.float32)
        parts: Dict[str, List[np.ndarray]] = {name: [] for name in self.reward_signals}
        pieces = [(start, min(start + seq, length)) for start in range(0, length, seq)]
        after_last = memory
        if len(obs[0]) > length:
            pieces.append((length, length + 1))  # next_obs continues from the last step's memory
        for start, end in pieces:
            if start < length:
                starts[start:end] = memory[0].cpu().numpy()
            values, memory = self.critic.forward_with_memory(self.to_torch_obs([o[start:end] for o in obs]), memory, end - start)
            for name, v in values.items():
                parts[name].append(v.float().cpu().numpy())
            if end == length:
                after_last = memory
        if done:
            store.drop(agent_id)
        else:
            store.set(agent_id, after_last[0].cpu().numpy())
        return {name: np.concatenate(p) for name, p in parts.items()}, starts

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
