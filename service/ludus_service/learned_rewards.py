"""Learned intrinsic rewards: curiosity (ICM) and random network distillation (RND).

Both reward novelty, so both ignore `done` when bootstrapping (an episode end is not the end of
novelty). Their networks see the observations as ML-Agents' reward networks do (SignalObservations:
vector observations flattened, each image and entity set through an encoder of its own), train on
every minibatch with their own Adam, and score a trajectory with the networks they have when the
trajectory is processed (ML-Agents' order). Rewards come out multiplied by `strength`.

- Curiosity: an encoder phi; an inverse model (phi(s), phi(s')) -> action (MSE for continuous actions,
  cross-entropy per discrete branch) and a forward model (phi(s), action) -> phi(s'); loss
  10 * (0.2 * forward + 0.8 * inverse); reward 0.5 * ||phi(s') - forward(phi(s), a)||^2, clipped to
  1 / strength, and 0 before the first update (the networks have learnt nothing yet).
- RND: reward ||predictor(s) - target(s)||^2 with the target a fixed random network and the
  predictor trained to match it, so states seen often stop paying.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import numpy as np
import torch
from torch import nn

from ludus_service.buffer import CONTINUOUS_ACTION, DISCRETE_ACTION, AgentBuffer, next_obs_key, obs_key
from ludus_service.networks import ObservationEncoder, ObservationFeatures
from ludus_service.reward_signals import RewardProvider
from ludus_service.sequences import LOSS_MASK, masked_mean
from ludus_service.settings import NetworkSettings, RewardSignalSettings
from ludus_service.spec import BehaviorSpec

DEFAULT_ENCODING = 64
DEFAULT_LEARNING_RATES = {"curiosity": 3e-4, "gail": 3e-4, "rnd": 1e-4}


def _mlp(in_size: int, hidden: int, out_size: int, layers: int = 2) -> nn.Sequential:
    modules: List[nn.Module] = []
    size = in_size
    for _ in range(layers):
        modules += [nn.Linear(size, hidden), nn.SiLU()]
        size = hidden
    modules.append(nn.Linear(size, out_size))
    return nn.Sequential(*modules)


class SignalObservations(nn.Module):
    """The observations as one reward network sees them: vector observations flattened (raw, not
    normalised) and each image / entity set through an encoder of its own (`vis_encode_type`, output
    `hidden_units`), as ML-Agents' curiosity and RND networks do with their NetworkBody. An MLP on raw
    pixels instead (84x84x3 = 21,168 inputs) would be slow and learn poorly. With vector observations
    only this is the plain concatenation and has no weights."""

    def __init__(self, spec: BehaviorSpec, vis_encode_type: str, hidden_units: int, device: torch.device) -> None:
        super().__init__()
        self.device = device
        self.count = len(spec.observations)
        self.flatten = ObservationEncoder(spec, normalize=False)  # no weights: it only concatenates
        settings = NetworkSettings(hidden_units=hidden_units, vis_encode_type=vis_encode_type)
        self.features = ObservationFeatures(spec, settings, self.flatten)
        self.output_size = self.features.output_size

    def forward(self, buffer: AgentBuffer, key=obs_key) -> torch.Tensor:
        obs = [torch.as_tensor(buffer[key(i)], dtype=torch.float32, device=self.device) for i in range(self.count)]
        return self.encode(obs)

    def encode(self, observations: List[torch.Tensor]) -> torch.Tensor:
        return self.features(observations, self.flatten(observations))


def _weights(batch: AgentBuffer, device: torch.device) -> Optional[torch.Tensor]:
    """1 for real steps, 0 for recurrent padding (None: every row counts)."""
    return torch.as_tensor(batch[LOSS_MASK], dtype=torch.float32, device=device) if LOSS_MASK in batch else None


class LearnedRewardProvider(RewardProvider, nn.Module):
    respects_done = False
    needs_next_observations = False

    def __init__(self, name: str, settings: RewardSignalSettings, spec: BehaviorSpec, device: torch.device,
                 vis_encode_type: str = "simple") -> None:
        RewardProvider.__init__(self, name, settings)
        nn.Module.__init__(self)
        self.spec = spec
        self.device = device
        hidden = settings.network_settings.hidden_units if settings.network_settings is not None else None
        self.encoding_size = settings.encoding_size or hidden or DEFAULT_ENCODING
        self.hidden_size = hidden or max(self.encoding_size, DEFAULT_ENCODING)
        self.learning_rate = settings.learning_rate or DEFAULT_LEARNING_RATES[name]
        self.vis_encode_type = vis_encode_type

    def _observations(self) -> SignalObservations:
        return SignalObservations(self.spec, self.vis_encode_type, self.hidden_size, self.device)

    def _flat(self, buffer: AgentBuffer, key=obs_key) -> torch.Tensor:
        parts = [torch.as_tensor(buffer[key(i)], dtype=torch.float32, device=self.device).reshape(len(buffer), -1)
                 for i in range(len(self.spec.observations))]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def _step(self, loss: torch.Tensor) -> bool:
        """One Adam step unless the loss is not finite (extreme inputs must not poison the networks)."""
        self.adam.zero_grad(set_to_none=True)
        if not bool(torch.isfinite(loss)):
            return False
        loss.backward()
        self.adam.step()
        return True


class CuriosityRewardProvider(LearnedRewardProvider):
    needs_next_observations = True
    reads_actions = True

    def __init__(self, name: str, settings: RewardSignalSettings, spec: BehaviorSpec, device: torch.device,
                 vis_encode_type: str = "simple") -> None:
        super().__init__(name, settings, spec, device, vis_encode_type)
        actions = spec.actions
        self.continuous_size, self.branches = actions.continuous_size, list(actions.discrete_branches)
        action_size = self.continuous_size + sum(self.branches)
        self.observations = self._observations()  # phi = encoder(observations(s))
        self.encoder = _mlp(self.observations.output_size, self.hidden_size, self.encoding_size)
        self.inverse = _mlp(2 * self.encoding_size, self.hidden_size, action_size, layers=1)
        self.forward_model = _mlp(self.encoding_size + action_size, self.hidden_size, self.encoding_size, layers=1)
        self.to(device)
        self.adam = torch.optim.Adam(self.parameters(), lr=self.learning_rate)
        #: Rewards are 0 until the first update (ML-Agents): untrained models would pay for noise.
        self.updated = False

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Restored networks have been trained: they pay rewards again at once."""
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.updated = True
        return result

    def _actions(self, batch: AgentBuffer) -> torch.Tensor:
        parts = []
        if self.continuous_size:
            parts.append(torch.as_tensor(batch[CONTINUOUS_ACTION], dtype=torch.float32, device=self.device))
        if self.branches:
            disc = torch.as_tensor(batch[DISCRETE_ACTION], dtype=torch.long, device=self.device)
            parts += [nn.functional.one_hot(disc[:, j], size).float() for j, size in enumerate(self.branches)]
        return torch.cat(parts, dim=1)

    def _prediction_error(self, batch: AgentBuffer) -> torch.Tensor:
        phi = self.encoder(self.observations(batch))
        phi_next = self.encoder(self.observations(batch, next_obs_key))
        predicted = self.forward_model(torch.cat([phi, self._actions(batch)], dim=1))
        return 0.5 * ((predicted - phi_next) ** 2).sum(dim=1), phi, phi_next

    @torch.no_grad()
    def evaluate(self, buffer: AgentBuffer) -> np.ndarray:
        if not self.updated:
            return np.zeros(len(buffer), dtype=np.float32)
        error, _, _ = self._prediction_error(buffer)
        reward = torch.clamp(error, 0.0, 1.0 / self.strength if self.strength > 0 else math.inf) * self.strength
        return reward.cpu().numpy().astype(np.float32)

    def update(self, minibatch: AgentBuffer) -> Dict[str, float]:
        weights = _weights(minibatch, self.device)
        error, phi, phi_next = self._prediction_error(minibatch)
        forward_loss = masked_mean(error, weights)
        logits = self.inverse(torch.cat([phi, phi_next], dim=1))
        inverse_terms = []
        if self.continuous_size:
            target = torch.as_tensor(minibatch[CONTINUOUS_ACTION], dtype=torch.float32, device=self.device)
            inverse_terms.append(((logits[:, :self.continuous_size] - target) ** 2).sum(dim=1))
        offset = self.continuous_size
        disc = torch.as_tensor(minibatch[DISCRETE_ACTION], dtype=torch.long, device=self.device)
        for j, size in enumerate(self.branches):
            inverse_terms.append(nn.functional.cross_entropy(logits[:, offset:offset + size], disc[:, j], reduction="none"))
            offset += size
        inverse_loss = masked_mean(torch.stack(inverse_terms).sum(dim=0), weights)
        loss = 10.0 * (0.2 * forward_loss + 0.8 * inverse_loss)
        if self._step(loss):
            self.updated = True
        return {"Losses/Curiosity Forward Loss": forward_loss.item(), "Losses/Curiosity Inverse Loss": inverse_loss.item()}


class RNDRewardProvider(LearnedRewardProvider):
    def __init__(self, name: str, settings: RewardSignalSettings, spec: BehaviorSpec, device: torch.device,
                 vis_encode_type: str = "simple") -> None:
        super().__init__(name, settings, spec, device, vis_encode_type)
        # Target and predictor each see the observations through encoders of their own: a shared
        # image encoder trained by the predictor would move the fixed target.
        self.target_observations = self._observations()
        self.target = _mlp(self.target_observations.output_size, self.hidden_size, self.encoding_size)
        for p in list(self.target_observations.parameters()) + list(self.target.parameters()):
            p.requires_grad_(False)
        self.predictor_observations = self._observations()
        self.predictor = _mlp(self.predictor_observations.output_size, self.hidden_size, self.encoding_size)
        self.to(device)
        self.adam = torch.optim.Adam(list(self.predictor_observations.parameters()) + list(self.predictor.parameters()),
                                     lr=self.learning_rate)

    def _error(self, batch: AgentBuffer) -> torch.Tensor:
        predicted = self.predictor(self.predictor_observations(batch))
        return ((predicted - self.target(self.target_observations(batch))) ** 2).sum(dim=1)

    @torch.no_grad()
    def evaluate(self, buffer: AgentBuffer) -> np.ndarray:
        return (self._error(buffer) * self.strength).cpu().numpy().astype(np.float32)

    def update(self, minibatch: AgentBuffer) -> Dict[str, float]:
        loss = masked_mean(self._error(minibatch), _weights(minibatch, self.device))
        self._step(loss)
        return {"Losses/RND Loss": loss.item()}
