"""SAC's update step (ML-Agents' TorchSACOptimizer: twin Q, a value critic with a Polyak target,
learned entropy coefficients), written in the plain style of CleanRL's SAC.

Networks: the tanh-squashed actor with a state-dependent log-std (ML-Agents' SAC policy), twin Q
networks (sac_networks.QNetwork), the value critic V (the TorchOptimizer's Critic, which
EstimateValues also reads) and its target copy. Entropy coefficients: one log coefficient for the
continuous block and one per discrete branch, with target entropies -continuous_size and
0.2 * log(branch size).

Losses of one minibatch (a ~ pi(s) sampled with the reparameterisation trick, alpha detached):
- Q: 0.5 * MSE(r + (1 - done) * gamma * V_target(s'), Q_i(s, a_taken)) per signal (done only for
  signals that respect episode ends).
- V: 0.5 * MSE(V(s), min(Q1, Q2)(s, a) - alpha * log pi(a|s)); discrete branches take the
  probability-weighted sum over options, averaged over branches.
- policy: alpha * log pi(a|s) - Q1(s, a) (probability-weighted for discrete branches), as in
  ML-Agents (CleanRL and SB3 take min(Q1, Q2) here). Q1 is frozen for this term, and Q2 of the
  policy's action only enters the (detached) value backup, so it runs without gradients.
- entropy: -log_alpha * (log pi + target_entropy), detached.
Because each loss reaches only its own parameters (Q frozen in the policy term, targets detached),
one backward pass and one Adam over all parameters give the same step as ML-Agents' three optimizers.

Recurrent behaviours train on sampled whole sequences (rows sequence after sequence). The actor
replays each from the policy memory the client recorded at its first step, the value critic from
the critic memory of that step, the Q networks from zeros; every mean skips padding (LOSS_MASK). The
target critic runs over [s_0, s'_0, ..., s'_{L-1}] from the (online) critic's stored memory, so
V_target(s'_t) is computed after the steps before s'_t in the sequence; ML-Agents instead starts it
at s'_0 from the stored memory of the second step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from ludus_service.buffer import (
    ACTION_MASK, CONTINUOUS_ACTION, CRITIC_MEMORY, DISCRETE_ACTION, DONE, MEMORY, AgentBuffer, next_obs_key, obs_key,
)
from ludus_service.networks import Actor, Critic, masked_logits, squash_correction
from ludus_service.optimizer.ppo import NonFiniteUpdate, _adam
from ludus_service.optimizer.torch_optimizer import TorchOptimizer
from ludus_service.sac_networks import QNetwork
from ludus_service.schedules import LEARNING_RATE_FLOOR, decayed_value
from ludus_service.sequences import LOSS_MASK, masked_mean
from ludus_service.settings import TrainerSettings
from ludus_service.spec import BehaviorSpec

#: ML-Agents' discrete target entropy scale: target = 0.2 * log(branch size) per branch.
DISCRETE_TARGET_ENTROPY_SCALE = 0.2


def rewards_key(signal: str) -> str:
    """Per-signal rewards of a sampled minibatch (evaluated at sampling time)."""
    return f"{signal}_rewards"


def target_entropies(continuous_size: int, branches: Sequence[int]) -> tuple:
    """(continuous target, [per-branch targets]): -continuous_size and 0.2 * log(n)."""
    return -float(continuous_size), [DISCRETE_TARGET_ENTROPY_SCALE * math.log(n) for n in branches]


@torch.no_grad()
def polyak_update(source: nn.Module, target: nn.Module, tau: float) -> None:
    """target <- (1 - tau) * target + tau * source, parameter by parameter (one foreach kernel)."""
    src = [p for p in source.parameters()]
    dst = [p for p in target.parameters()]
    torch._foreach_lerp_(dst, src, tau)


def _inplace_body_relus(module: nn.Module) -> None:
    """ReLUs of the MLP bodies run in place (no new activation tensor per layer): each follows a Linear
    whose output nothing else keeps (Linear's backward needs its input, ReLU's its output), so values
    and gradients are unchanged. Only `body` Sequentials: other ReLUs may follow layers that keep
    their outputs."""
    for name, sub in module.named_modules():
        if name.endswith("body") and isinstance(sub, nn.Sequential):
            for k, layer in enumerate(sub):
                if isinstance(layer, nn.ReLU) and k > 0 and isinstance(sub[k - 1], nn.Linear):
                    layer.inplace = True


@dataclass
class PolicySample:
    continuous: torch.Tensor  # [N, c] tanh-squashed, reparameterised (gradients reach the actor)
    continuous_log_probs: torch.Tensor  # [N] sum over dimensions
    discrete_log_probs: List[torch.Tensor]  # per branch [N, options] (masked options ~ -1e8)


class SACOptimizer(TorchOptimizer):
    def __init__(self, spec: BehaviorSpec, settings: TrainerSettings, device: torch.device | str = "cpu",
                 demonstrations=None) -> None:
        super().__init__(spec, settings, device, demonstrations)
        net, hp = settings.network_settings, settings.hyperparameters
        self.actor = Actor(spec, net, self.encoder, conditional_sigma=True, tanh_squash=True).to(self.device)
        signals = list(self.reward_signals)
        self.q1 = QNetwork(spec, net, self.encoder, signals).to(self.device)
        self.q2 = QNetwork(spec, net, self.encoder, signals).to(self.device)
        self.target_critic = Critic(spec, net, self.encoder, signals).to(self.device)
        self.target_critic.load_state_dict(self.critic.state_dict())
        self.target_critic.requires_grad_(False)
        self.continuous_size = spec.actions.continuous_size
        self.branches = list(spec.actions.discrete_branches)
        init = math.log(hp.init_entcoef)
        self.log_ent_coef_continuous = nn.Parameter(torch.full((1 if self.continuous_size else 0,), init, device=self.device))
        self.log_ent_coef_discrete = nn.Parameter(torch.full((len(self.branches),), init, device=self.device))
        cont_target, disc_targets = target_entropies(self.continuous_size, self.branches)
        self.target_entropy_continuous = cont_target
        self.target_entropy_discrete = torch.tensor(disc_targets, dtype=torch.float32, device=self.device)
        self._q_parameters = list(self.q1.parameters()) + list(self.q2.parameters())
        self._parameters = (list(self.actor.parameters()) + self._q_parameters + list(self.critic.parameters())
                            + [self.log_ent_coef_continuous, self.log_ent_coef_discrete])
        self.adam = _adam([p for p in self._parameters if p.numel()], hp.learning_rate)
        for module in (self.actor, self.critic, self.target_critic, self.q1, self.q2):
            _inplace_body_relus(module)

    def current_learning_rate(self) -> float:
        hp = self.settings.hyperparameters
        return decayed_value(hp.learning_rate_schedule, hp.learning_rate, LEARNING_RATE_FLOOR, self.global_step, self.settings.max_steps)

    def modules(self) -> Dict[str, nn.Module]:
        """Every network with weights, by checkpoint prefix."""
        return {"actor": self.actor, "critic": self.critic, "target_critic": self.target_critic, "q1": self.q1, "q2": self.q2}

    # -- the policy ---------------------------------------------------------------------------------
    def sample(self, observations: Sequence[torch.Tensor], masks: Optional[torch.Tensor],
               memories: Optional[torch.Tensor] = None, sequence_length: int = 1) -> PolicySample:
        """Reparameterised actions of every row (recurrent actors: sequences from `memories`)."""
        hidden, _ = self.actor.trunk(observations, memories, sequence_length)
        n = hidden.shape[0]
        continuous = hidden.new_zeros((n, 0))
        cont_lp = hidden.new_zeros(n)
        if self.continuous_size:
            mu, log_std = self.actor.gaussian(hidden)
            noise = torch.randn_like(mu)
            unsquashed = mu + log_std.exp() * noise
            # log N(u; mu, sigma) with (u - mu) / sigma = noise exactly (the reparameterisation): the
            # same value and gradient as computing it back from u, in fewer operations.
            normal_lp = -0.5 * noise * noise - log_std - 0.5 * math.log(2 * math.pi)
            cont_lp = (normal_lp - squash_correction(unsquashed)).sum(dim=1)
            continuous = torch.tanh(unsquashed)
        disc_lps, offset = [], 0
        for head, size in zip(self.actor.branch_heads, self.branches):
            mask = masks[:, offset:offset + size] if masks is not None else None
            offset += size
            disc_lps.append(torch.log_softmax(masked_logits(head(hidden), mask), dim=1))
        return PolicySample(continuous, cont_lp, disc_lps)

    def _branches(self, values: torch.Tensor) -> List[torch.Tensor]:
        parts, offset = [], 0
        for size in self.branches:
            parts.append(values[:, offset:offset + size])
            offset += size
        return parts

    def target_values(self, obs: List[torch.Tensor], next_obs: List[torch.Tensor],
                      critic_memories: Optional[torch.Tensor]) -> Dict[str, torch.Tensor]:
        """V_target(s') of every row. Recurrent: each sequence's [s_0, s'_0 .. s'_{L-1}] from its
        critic memory, keeping the values of the s' rows."""
        if critic_memories is None:
            return self.target_critic(next_obs)
        seq, sequences = self.sequence_length, critic_memories.shape[0]
        joined = []
        for o, n in zip(obs, next_obs):
            o = o.reshape(sequences, seq, *o.shape[1:])
            n = n.reshape(sequences, seq, *n.shape[1:])
            joined.append(torch.cat([o[:, :1], n], dim=1).reshape(sequences * (seq + 1), *o.shape[2:]))
        values = self.target_critic(joined, critic_memories, seq + 1)
        return {name: v.reshape(sequences, seq + 1)[:, 1:].reshape(-1) for name, v in values.items()}

    # -- the update ----------------------------------------------------------------------------------
    def update(self, batch: AgentBuffer, num_sequences: int) -> Dict[str, float]:
        """One SAC gradient step on a sampled minibatch (rewards under rewards_key per signal)."""
        lr = self.current_learning_rate()
        n_obs = len(self.spec.observations)
        obs = self.to_torch_obs([batch[obs_key(i)] for i in range(n_obs)])
        next_obs = self.to_torch_obs([batch[next_obs_key(i)] for i in range(n_obs)])
        cont_actions = self.to_torch(batch[CONTINUOUS_ACTION])
        disc_actions = self.to_torch(batch[DISCRETE_ACTION], torch.long)
        masks = self.to_torch(batch[ACTION_MASK], torch.bool) if self.branches else None
        dones = self.to_torch(batch[DONE])
        seq = self.sequence_length
        loss_mask = self.to_torch(batch[LOSS_MASK], torch.float32) if LOSS_MASK in batch else None
        actor_memories = critic_memories = None
        if self.recurrent:  # each sequence replays from the memories recorded at its first step
            actor_memories = self.to_torch(batch[MEMORY][::seq])
            critic_memories = self.to_torch(batch[CRITIC_MEMORY][::seq])

        def mean(x: torch.Tensor) -> torch.Tensor:
            return masked_mean(x, loss_mask)

        alpha_c = self.log_ent_coef_continuous.detach().exp()
        alpha_d = self.log_ent_coef_discrete.detach().exp()
        pi = self.sample(obs, masks, actor_memories, seq)
        disc_probs = [lp.exp() for lp in pi.discrete_log_probs]

        # Q1 of the policy's actions with Q1 frozen: this term trains the actor only. Q2 of them
        # only feeds the detached value backup.
        for p in self._q_parameters:
            p.requires_grad_(False)
        q1_pi = self.q1(obs, pi.continuous, seq)
        for p in self._q_parameters:
            p.requires_grad_(True)
        with torch.no_grad():
            q2_pi = self.q2(obs, pi.continuous, seq)

        cont_entropy_term = (alpha_c * pi.continuous_log_probs) if self.continuous_size else 0.0
        disc_entropy_terms = [alpha_d[b] * (p * lp).sum(dim=1) for b, (p, lp) in enumerate(zip(disc_probs, pi.discrete_log_probs))]

        def expected_q(q: torch.Tensor) -> torch.Tensor:
            """[N]: the value of the policy's action; probability-weighted over discrete options,
            summed over branches for the policy loss (ML-Agents)."""
            if not self.branches:
                return q[:, 0]
            return torch.stack([(p * qb).sum(dim=1) for p, qb in zip(disc_probs, self._branches(q))], dim=1).sum(dim=1)

        min_q_pi = {name: torch.min(q1_pi[name].detach(), q2_pi[name]) for name in self.reward_signals}
        mean_q1 = torch.stack(list(q1_pi.values())).mean(dim=0)
        policy_loss = mean(cont_entropy_term + sum(disc_entropy_terms, torch.zeros_like(dones)) - expected_q(mean_q1))

        # Value backup: min Q of the policy's action minus the entropy term (discrete: averaged over branches).
        with torch.no_grad():
            target_values = self.target_values(obs, next_obs, critic_memories)
            backups = {}
            for name in self.reward_signals:
                q = min_q_pi[name]
                if self.branches:
                    per_branch = torch.stack([(p * (qb - alpha_d[b] * lp)).sum(dim=1) for b, (p, lp, qb)
                                              in enumerate(zip(disc_probs, pi.discrete_log_probs, self._branches(q)))], dim=1)
                    v = per_branch.mean(dim=1)
                else:
                    v = q[:, 0]
                if self.continuous_size:
                    v = v - alpha_c * pi.continuous_log_probs
                backups[name] = v
        values = self.critic(obs, critic_memories, seq)
        q1_taken, q2_taken = self.q1(obs, cont_actions, seq), self.q2(obs, cont_actions, seq)
        q1_losses, q2_losses, value_losses = [], [], []
        for name, provider in self.reward_signals.items():
            with torch.no_grad():
                not_done = 1.0 - dones if provider.respects_done else torch.ones_like(dones)
                q_backup = self.to_torch(batch[rewards_key(name)]) + not_done * provider.gamma * target_values[name]
            q1_losses.append(0.5 * mean((q_backup - self.q1.condense(q1_taken[name], disc_actions)) ** 2))
            q2_losses.append(0.5 * mean((q_backup - self.q2.condense(q2_taken[name], disc_actions)) ** 2))
            value_losses.append(0.5 * mean((values[name] - backups[name]) ** 2))
        q1_loss, q2_loss = torch.stack(q1_losses).mean(), torch.stack(q2_losses).mean()
        value_loss = torch.stack(value_losses).mean()

        entropy_loss = torch.zeros((), device=self.device)
        if self.continuous_size:
            diff = (pi.continuous_log_probs + self.target_entropy_continuous).detach()
            entropy_loss = entropy_loss - mean(self.log_ent_coef_continuous[0] * diff)
        if self.branches:
            neg_entropy = torch.stack([(p * lp).sum(dim=1) for p, lp in zip(disc_probs, pi.discrete_log_probs)], dim=1)
            diff = (neg_entropy + self.target_entropy_discrete).detach()
            entropy_loss = entropy_loss - mean((self.log_ent_coef_discrete * diff).mean(dim=1))

        loss = policy_loss + q1_loss + q2_loss + value_loss + entropy_loss
        for group in self.adam.param_groups:
            group["lr"] = lr
        self.adam.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in self._parameters if p.grad is not None]
        # Finite loss and gradients, in one check: a sum of the per-tensor norms is finite iff every
        # gradient is (one foreach kernel instead of a norm per tensor).
        total_norm = torch.stack(torch._foreach_norm(grads)).sum() if grads else loss.new_zeros(())
        if not bool(torch.isfinite(loss + total_norm)):
            self.adam.zero_grad(set_to_none=True)
            raise NonFiniteUpdate("batch", f"the loss ({loss.item()}) or its gradient is not finite; no step was taken (values too large?)")
        self.adam.step()
        polyak_update(self.critic, self.target_critic, self.settings.hyperparameters.tau)
        stats = {
            "Losses/Policy Loss": policy_loss.item(),
            "Losses/Value Loss": value_loss.item(),
            "Losses/Q1 Loss": q1_loss.item(),
            "Losses/Q2 Loss": q2_loss.item(),
            "Policy/Learning Rate": lr,
        }
        if self.branches:
            stats["Policy/Discrete Entropy Coeff"] = float(self.log_ent_coef_discrete.detach().exp().mean())
        if self.continuous_size:
            stats["Policy/Continuous Entropy Coeff"] = float(self.log_ent_coef_continuous.detach().exp()[0])
        return stats
