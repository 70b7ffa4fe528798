"""Behavioural cloning (ML-Agents' `behavioral_cloning`): a supervised pull toward a demonstration.

After every PPO update the actor takes `num_epoch` passes over (at most `samples_per_update` steps
of) the demonstration with its own Adam, at the policy's learning rate x `strength`, decaying
linearly to 0 over `steps` trained environment steps (constant when `steps` is 0). Its statistic is
"Losses/Pretraining Loss".

Losses: cross-entropy of the expert's option per discrete branch (with the expert's action masks),
and for the continuous block the mean squared error between the action the environment would get
from the policy's mean and the expert's action: `mu / 3` for PPO's actor (the env receives
`clamp(a, -3, 3) / 3`), `tanh(mu)` for SAC's tanh-squashed actor.
ML-Agents compares the raw sample with the expert's env-range action instead, which asks the policy
for a mean three times too small; matching in the environment's range clones the expert's actions.

Recurrent actors replay each demonstration episode in sequences of `sequence_length` from a zero
memory (a demonstration has no policy memories), with padding left out of the loss.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
import torch
from torch import nn

from ludus_service.buffer import ACTION_MASK, CONTINUOUS_ACTION, DISCRETE_ACTION, AgentBuffer, obs_key
from ludus_service.networks import Actor, masked_logits
from ludus_service.schedules import decayed_value
from ludus_service.sequences import LOSS_MASK, masked_mean
from ludus_service.settings import BehavioralCloningSettings

#: ML-Agents' floor for the decayed cloning learning rate; at the floor cloning stops.
BC_LEARNING_RATE_FLOOR = 1e-10


class BehavioralCloning:
    def __init__(self, actor: Actor, settings: BehavioralCloningSettings, policy_learning_rate: float,
                 default_batch_size: int, default_num_epoch: int, expert: AgentBuffer,
                 sequence_length: int = 1, seed: Optional[int] = None) -> None:
        if len(expert) == 0:
            raise ValueError("the behavioural-cloning demonstration has no steps")
        self.actor = actor
        self.settings = settings
        self.expert = expert
        self.initial_learning_rate = policy_learning_rate * settings.strength
        self.sequence_length = sequence_length
        self.num_sequences = max((settings.batch_size or default_batch_size) // sequence_length, 1)
        self.num_epoch = settings.num_epoch or default_num_epoch
        self.adam = torch.optim.Adam(actor.parameters(), lr=self.initial_learning_rate)
        self.rng = np.random.default_rng(seed)
        self.device = next(actor.parameters()).device

    def learning_rate(self, step: int) -> float:
        if self.settings.steps <= 0:
            return self.initial_learning_rate
        return decayed_value("linear", self.initial_learning_rate, BC_LEARNING_RATE_FLOOR, step, self.settings.steps)

    def loss(self, batch: AgentBuffer, num_sequences: int) -> torch.Tensor:
        actor = self.actor
        obs = [torch.as_tensor(batch[obs_key(i)], dtype=torch.float32, device=self.device) for i in range(len(actor.spec.observations))]
        memories = None
        if actor.memory is not None:
            memories = torch.zeros(num_sequences, actor.memory_size, device=self.device)
        hidden, _ = actor.trunk(obs, memories, self.sequence_length)
        weights = torch.as_tensor(batch[LOSS_MASK], dtype=torch.float32, device=self.device) if LOSS_MASK in batch else None
        per_step = torch.zeros(hidden.shape[0], device=self.device)
        if actor.continuous_size:
            expert = torch.as_tensor(batch[CONTINUOUS_ACTION], dtype=torch.float32, device=self.device).clamp(-1.0, 1.0)
            mu = actor.mu(hidden)
            mean_action = torch.tanh(mu) if actor.tanh_squash else mu / 3.0
            per_step = per_step + ((mean_action - expert) ** 2).mean(dim=1)
        if actor.branches:
            chosen = torch.as_tensor(batch[DISCRETE_ACTION], dtype=torch.long, device=self.device)
            masks = torch.as_tensor(batch[ACTION_MASK], dtype=torch.bool, device=self.device) if ACTION_MASK in batch else None
            offset = 0
            for j, (head, size) in enumerate(zip(actor.branch_heads, actor.branches)):
                logits = masked_logits(head(hidden), masks[:, offset:offset + size] if masks is not None else None)
                per_step = per_step + nn.functional.cross_entropy(logits, chosen[:, j], reduction="none")
                offset += size
        return masked_mean(per_step, weights)

    def update(self, step: int) -> Dict[str, float]:
        """ML-Agents' BCModule.update: called once after each policy update."""
        lr = self.learning_rate(step)
        if lr <= BC_LEARNING_RATE_FLOOR:  # decayed away: no more cloning (ML-Agents reports a 0 loss)
            return {"Losses/Pretraining Loss": 0.0}
        for group in self.adam.param_groups:
            group["lr"] = lr
        rows_per_batch = self.num_sequences * self.sequence_length
        total_sequences = len(self.expert) // self.sequence_length
        batches = max(total_sequences // self.num_sequences, 1)
        if self.settings.samples_per_update > 0:
            batches = max(min(batches, self.settings.samples_per_update // rows_per_batch), 1)
        losses: List[float] = []
        for _ in range(self.num_epoch):
            shuffled = self.expert.shuffled(self.rng, self.sequence_length)
            for b in range(batches):
                minibatch = shuffled.make_mini_batch(b * rows_per_batch, min((b + 1) * rows_per_batch, len(shuffled)))
                num_sequences = len(minibatch) // self.sequence_length
                loss = self.loss(minibatch, num_sequences)
                self.adam.zero_grad(set_to_none=True)
                if not bool(torch.isfinite(loss)):
                    continue
                loss.backward()
                self.adam.step()
                losses.append(loss.item())
        if not losses:
            return {}
        return {"Losses/Pretraining Loss": float(np.mean(losses))}
