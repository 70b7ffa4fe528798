"""GAIL: a learned reward that pays for behaving like the expert of a demonstration.

A discriminator D(s[, a, done]) learns to tell the expert's steps (label 1) from the policy's
(label 0); the policy is paid `-log(1 - D)`, high where its steps look expert-like. As in ML-Agents:

- loss `-(log D(expert) + log(1 - D(policy)))` plus a gradient penalty (weight 10) pulling the norm
  of D's gradient toward 1 on points between policy and expert inputs (on D itself, after the
  sigmoid, as ML-Agents does; its statistic is the weighted penalty);
- `use_actions`: the discriminator also sees the action and whether the step ended the episode;
- `use_vail`: a variational bottleneck (128-d code with a learned sigma) whose KL to N(0, I) is held
  near 0.5 nats by a penalty coefficient beta that adapts itself (step 0.0005, starting at 0);
- it respects `done` (an episode end is the end of imitation too) and trains on every PPO minibatch
  against an equally large random sample of the demonstration.

One difference from ML-Agents on purpose: a continuous action in a PPO policy's buffer is the raw
Gaussian sample while a demonstration holds what the environment received, so with `use_actions`
the policy's actions are mapped to the environment's range (`clamp(a, -3, 3) / 3`) before the
discriminator compares them; otherwise it could tell policy from expert by scale alone. (SAC's
tanh-squashed actions already are environment actions and are taken as they are.)

Recurrent behaviours pad their expert rows to whole sequences for cloning; the discriminator only
ever sees the real rows.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch
from torch import nn

from ludus_service.buffer import CONTINUOUS_ACTION, DISCRETE_ACTION, DONE, AgentBuffer
from ludus_service.learned_rewards import LearnedRewardProvider, _mlp, _weights
from ludus_service.sequences import LOSS_MASK, masked_mean
from ludus_service.settings import RewardSignalSettings
from ludus_service.spec import BehaviorSpec

EPSILON = 1e-7
GRADIENT_PENALTY_WEIGHT = 10.0
VAIL_CODE_SIZE = 128
VAIL_TARGET_KL = 0.5  # ML-Agents' "mutual_information"
VAIL_BETA_STEP = 0.0005  # ML-Agents' "alpha"
#: Key under which a behaviour's expert demonstration is handed to the providers that need one.
EXPERT_KEY = "expert"


class GAILRewardProvider(LearnedRewardProvider):
    respects_done = True

    def __init__(self, name: str, settings: RewardSignalSettings, spec: BehaviorSpec, device: torch.device,
                 expert: Optional[AgentBuffer], seed: Optional[int] = None, env_range_actions: bool = False,
                 vis_encode_type: str = "simple") -> None:
        """`expert`: the demonstration's rows; None only for a behaviour served untrained
        (inference), which scores but never learns. `env_range_actions`: the policy's continuous
        actions already are what the environment receives (SAC's tanh-squashed ones), rather than
        raw Gaussian samples (PPO). Images and entity sets pass through encoders of their own
        (`vis_encode_type`) inside the discriminator, so the gradient penalty still differentiates
        with respect to the raw inputs, as in ML-Agents."""
        super().__init__(name, settings, spec, device, vis_encode_type)
        if expert is not None and LOSS_MASK in expert:  # sequence padding is not expert behaviour
            real = expert[LOSS_MASK]
            expert = AgentBuffer({k: v[real] for k, v in expert.as_dict().items() if k != LOSS_MASK})
        if expert is not None and len(expert) == 0:
            raise ValueError("the GAIL demonstration has no steps")
        self.expert = expert
        self.env_range_actions = env_range_actions
        self.use_actions = settings.use_actions
        self.reads_actions = self.needs_dones = settings.use_actions
        self.use_vail = settings.use_vail
        self.continuous_size = spec.actions.continuous_size
        self.branches = list(spec.actions.discrete_branches)
        action_size = (self.continuous_size + sum(self.branches) + 1) if self.use_actions else 0  # +1: the done flag
        self.observations = self._observations()
        self.observation_sizes = [int(np.prod(o.shape)) for o in spec.observations]
        self.encoder = _mlp(self.observations.output_size + action_size, self.hidden_size, self.encoding_size, layers=1)
        self.encoder.append(nn.SiLU())
        if self.use_vail:
            self.code_mu = nn.Linear(self.encoding_size, VAIL_CODE_SIZE)
            self.code_sigma = nn.Parameter(torch.ones(VAIL_CODE_SIZE))
            self.estimator = nn.Linear(VAIL_CODE_SIZE, 1)
            self.register_buffer("beta", torch.zeros(()))
        else:
            self.estimator = nn.Linear(self.encoding_size, 1)
        self.to(device)
        self.adam = torch.optim.Adam(self.parameters(), lr=self.learning_rate)
        self.rng = np.random.default_rng(seed)

    @property
    def stat_name(self) -> str:
        return "Gail"  # ML-Agents: the provider's name "GAIL".capitalize()

    # -- inputs ------------------------------------------------------------------------------------
    def _inputs(self, batch: AgentBuffer, expert: bool) -> torch.Tensor:
        x = self._flat(batch)
        if not self.use_actions:
            return x
        parts = [x]
        if self.continuous_size:
            actions = torch.as_tensor(batch[CONTINUOUS_ACTION], dtype=torch.float32, device=self.device)
            parts.append(actions.clamp(-1.0, 1.0) if expert or self.env_range_actions else actions.clamp(-3.0, 3.0) / 3.0)
        if self.branches:
            disc = torch.as_tensor(batch[DISCRETE_ACTION], dtype=torch.long, device=self.device)
            parts += [nn.functional.one_hot(disc[:, j], size).float() for j, size in enumerate(self.branches)]
        parts.append(torch.as_tensor(batch[DONE], dtype=torch.float32, device=self.device).reshape(-1, 1))
        return torch.cat(parts, dim=1)

    def _features(self, inputs: torch.Tensor) -> torch.Tensor:
        """Raw flat inputs -> the observations' features (images through their encoders) + the
        action part as it is."""
        parts = list(torch.split(inputs, self.observation_sizes + [inputs.shape[1] - sum(self.observation_sizes)], dim=1))
        observations = [p.reshape(p.shape[0], *o.shape) for p, o in zip(parts, self.spec.observations)]
        return torch.cat([self.observations.encode(observations), parts[-1]], dim=1)

    def _logits(self, inputs: torch.Tensor, noise: bool):
        """Discriminator logits, and with VAIL the code means (for the KL term)."""
        hidden = self.encoder(self._features(inputs))
        if not self.use_vail:
            return self.estimator(hidden).squeeze(-1), None
        mu = self.code_mu(hidden)
        code = mu + torch.randn_like(mu) * self.code_sigma if noise else mu
        return self.estimator(code).squeeze(-1), mu

    # -- reward ------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, buffer: AgentBuffer) -> np.ndarray:
        logits, _ = self._logits(self._inputs(buffer, expert=False), noise=False)
        estimate = torch.sigmoid(logits)
        reward = -torch.log(1.0 - estimate * (1.0 - EPSILON)) * self.strength
        return reward.cpu().numpy().astype(np.float32)

    # -- learning ----------------------------------------------------------------------------------
    def sample_expert(self, size: int) -> AgentBuffer:
        if self.expert is None:
            raise RuntimeError("GAIL has no demonstration loaded (the behaviour is served untrained)")
        index = self.rng.integers(0, len(self.expert), size)
        return AgentBuffer({key: value[index] for key, value in self.expert.as_dict().items()})

    def _gradient_penalty(self, policy_in: torch.Tensor, expert_in: torch.Tensor) -> torch.Tensor:
        mix = torch.rand(policy_in.shape[0], 1, device=self.device)
        between = (mix * policy_in + (1.0 - mix) * expert_in).detach().requires_grad_(True)
        logits, _ = self._logits(between, noise=True)
        (gradient,) = torch.autograd.grad(torch.sigmoid(logits).sum(), between, create_graph=True)
        norm = torch.sqrt((gradient ** 2).sum(dim=1) + EPSILON)
        return ((norm - 1.0) ** 2).mean()

    def update(self, minibatch: AgentBuffer) -> Dict[str, float]:
        if LOSS_MASK in minibatch:
            # The discriminator sees single steps, so sequence padding can simply be left out: then it
            # sizes the expert sample and enters the gradient penalty's interpolation no more than a loss.
            real = minibatch[LOSS_MASK]
            minibatch = AgentBuffer({k: v[real] for k, v in minibatch.as_dict().items() if k != LOSS_MASK})
        weights = _weights(minibatch, self.device)
        expert = self.sample_expert(len(minibatch))
        policy_in, expert_in = self._inputs(minibatch, expert=False), self._inputs(expert, expert=True)
        policy_logits, policy_mu = self._logits(policy_in, noise=True)
        expert_logits, expert_mu = self._logits(expert_in, noise=True)
        policy_estimate, expert_estimate = torch.sigmoid(policy_logits), torch.sigmoid(expert_logits)
        # -(log D(expert) + log(1 - D(policy))), in the numerically stable logsigmoid form
        loss = -(nn.functional.logsigmoid(expert_logits).mean() + masked_mean(nn.functional.logsigmoid(-policy_logits), weights))
        stats = {
            "Losses/GAIL Loss": loss.item(),
            "Policy/GAIL Policy Estimate": masked_mean(policy_estimate, weights).item(),
            "Policy/GAIL Expert Estimate": expert_estimate.mean().item(),
        }
        total = loss
        if self.use_vail:
            # KL(N(mu, sigma^2) || N(0, I)) of the expert's codes plus that of the policy's (one shared sigma)
            variance = self.code_sigma ** 2
            kl = (variance - 1.0 - torch.log(variance + EPSILON)).sum() + 0.5 * (
                (expert_mu ** 2).sum(dim=1).mean() + masked_mean((policy_mu ** 2).sum(dim=1), weights))
            total = total + self.beta.item() * (kl - VAIL_TARGET_KL)
            stats["Losses/GAIL KL Loss"] = kl.item()
        penalty = GRADIENT_PENALTY_WEIGHT * self._gradient_penalty(policy_in, expert_in)
        stats["Policy/GAIL Grad Mag Loss"] = penalty.item()
        self._step(total + penalty)
        if self.use_vail:
            with torch.no_grad():  # dual ascent on beta: more pressure while the KL exceeds the target
                self.beta.copy_(torch.clamp(self.beta + VAIL_BETA_STEP * (stats["Losses/GAIL KL Loss"] - VAIL_TARGET_KL), min=0.0))
            stats["Policy/GAIL Beta"] = float(self.beta)
        return stats
