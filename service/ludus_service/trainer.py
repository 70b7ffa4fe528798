"""PPO trainer: turns validated trajectories into update-buffer rows and runs the update loop.

Plain Python, no gRPC and no threads: the Behavior (ludus_service.behavior) serialises calls into it.
Per trajectory: fold observations into the normaliser, estimate values, evaluate every reward signal,
GAE per signal with its gamma and the trainer's lambd, mean advantage over signals. When the buffer
holds `buffer_size` steps: normalise advantages, `num_epoch` passes of shuffled minibatches, clear.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from typing import Dict, List, Mapping, Optional

import numpy as np
import torch

from ludus_service.behavioral_cloning import BehavioralCloning
from ludus_service.buffer import (
    ACTION_MASK, ADVANTAGES, CONTINUOUS_ACTION, CONTINUOUS_LOG_PROBS, CRITIC_MEMORY, DISCRETE_ACTION, DISCRETE_LOG_PROBS,
    DONE, MEMORY, AgentBuffer, next_obs_key, obs_key, returns_key, value_estimates_key,
)
from ludus_service.checkpoint import (
    adam_tensors, auxiliary_adam_tensors, module_state, module_tensors, restore_adam, restore_auxiliary_adams,
)
from ludus_service.gae import gae
from ludus_service.optimizer.ppo import NonFiniteUpdate, PPOOptimizer
from ludus_service.learned_rewards import LearnedRewardProvider
from ludus_service.reward_signals import ENVIRONMENT_REWARDS
from ludus_service.sequences import LOSS_MASK, AgentMemories, pad_to_sequences
from ludus_service.settings import TrainerSettings
from ludus_service.spec import BehaviorSpec
from ludus_service.summaries import TrainingSummary
from ludus_service.validation import BatchData, StepData, TrajectoryData

log = logging.getLogger(__name__)

class PPOTrainer:
    def __init__(self, spec: BehaviorSpec, settings: TrainerSettings, device: torch.device | str = "cpu", seed: Optional[int] = None,
                 demonstrations: Optional[Mapping[str, AgentBuffer]] = None) -> None:
        """`demonstrations`: expert steps by demo_path (GAIL, behavioural cloning), loaded and checked
        against `spec` by the registry."""
        if seed is not None:
            torch.manual_seed(seed)
        self.spec = spec
        self.settings = settings
        self.optimizer = PPOOptimizer(spec, settings, device, demonstrations)
        bc = settings.behavioral_cloning
        self.behavioral_cloning = None
        if bc is not None and not settings.inference:
            hp = settings.hyperparameters
            self.behavioral_cloning = BehavioralCloning(
                self.optimizer.actor, bc, hp.learning_rate, hp.batch_size, hp.num_epoch, dict(demonstrations or {})[bc.demo_path],
                self.optimizer.sequence_length, seed)
        self.update_buffer = AgentBuffer()
        self.rng = np.random.default_rng(seed)
        self.policy_version = 1
        self.latest_stats: Dict[str, float] = {}
        self.summary = TrainingSummary()
        memory_size = self.optimizer.critic.memory_size
        self._rpc_memories = AgentMemories(memory_size) if memory_size else None

    @property
    def step(self) -> int:
        return self.optimizer.global_step

    @property
    def buffered_steps(self) -> int:
        return self.update_buffer.num_experiences

    # -- trajectory processing ---------------------------------------------------------------------
    @staticmethod
    def step_fields(data: StepData) -> Dict[str, np.ndarray]:
        fields = {obs_key(i): o for i, o in enumerate(data.observations)}
        fields[CONTINUOUS_ACTION] = data.continuous_actions
        fields[DISCRETE_ACTION] = data.discrete_actions
        fields[CONTINUOUS_LOG_PROBS] = data.continuous_log_probs
        fields[DISCRETE_LOG_PROBS] = data.discrete_log_probs
        return fields

    def _mask_field(self, data: StepData) -> np.ndarray:
        """Every row of the update buffer carries a mask (all-allowed when the client sent none),
        so trajectories with and without masks can share one buffer."""
        if data.action_masks is not None:
            return data.action_masks
        return np.ones((data.length, self.spec.actions.mask_size), dtype=bool)

    def process_trajectory(self, traj: TrajectoryData) -> None:
        """Add one validated trajectory to the update buffer (whole, or not at all on error)."""
        opt = self.optimizer
        opt.update_normalization(traj.observations)
        fields = self.step_fields(traj)
        fields[ACTION_MASK] = self._mask_field(traj)
        fields[ENVIRONMENT_REWARDS] = traj.rewards
        if opt.recurrent:
            fields[MEMORY] = traj.memories
        if opt.needs_dones:  # GAIL with use_actions: 1.0 on the step that ended the episode
            fields[DONE] = np.zeros(traj.length, dtype=np.float32)
            fields[DONE][-1] = float(traj.done)
        if opt.needs_next_observations:  # curiosity: each step's successor (the last step's: next_obs, or itself at a terminal)
            for i, o in enumerate(traj.observations):
                last = traj.next_observations[i][None] if traj.next_observations is not None else o[-1:]
                fields[next_obs_key(i)] = np.concatenate([o[1:], last], axis=0)
        piece = AgentBuffer(fields)
        values, bootstrap, critic_memories = opt.get_trajectory_value_estimates(piece, traj.next_observations, traj.done, traj.agent_id)
        if opt.recurrent:
            piece[CRITIC_MEMORY] = critic_memories
            if traj.interrupted:  # the agent's next trajectory starts a new episode: fresh critic memory
                opt.critic_memories.drop(traj.agent_id)
        lambd = self.settings.hyperparameters.lambd
        advantages = []
        for name, provider in opt.reward_signals.items():
            rewards = provider.evaluate(piece)
            adv = gae(rewards, values[name], bootstrap[name], provider.gamma, lambd)
            piece[returns_key(name)] = adv + values[name]
            piece[value_estimates_key(name)] = values[name]
            advantages.append(adv)
            self.summary.record_value_estimate(name, float(values[name].mean()))
            self.summary.record_signal_reward(name, float(rewards.sum()))
        piece[ADVANTAGES] = np.mean(advantages, axis=0).astype(np.float32)
        if opt.recurrent:  # whole sequences, the last one padded (loss-masked) at its end
            self.update_buffer.append(pad_to_sequences(piece.as_dict(), opt.sequence_length, fill={ACTION_MASK: True}))
        else:
            self.update_buffer.append(piece.as_dict())
        opt.global_step += traj.length
        self.summary.track_episode(traj)

    def record_inference(self, traj: TrajectoryData, accepted_before: int) -> Optional[Dict[str, float]]:
        """Inference mode: only episode statistics, published every `summary_freq` accepted steps
        (ML-Agents' summary period) with "Is Training" 0. Returns the new stats when published."""
        stats = self.summary.record_inference(traj, accepted_before, self.settings.summary_freq, self.optimizer.reward_signals)
        if stats is not None:
            self.latest_stats = stats
        return stats

    # -- updates -----------------------------------------------------------------------------------
    def ready_to_update(self) -> bool:
        return self.update_buffer.num_experiences >= self.settings.hyperparameters.buffer_size

    def update_policy(self) -> Dict[str, float]:
        """ML-Agents' _update_policy: normalise advantages, num_epoch shuffled passes, clear the buffer."""
        hp = self.settings.hyperparameters
        buffer = self.update_buffer
        adv = buffer[ADVANTAGES]
        real = buffer[LOSS_MASK] if LOSS_MASK in buffer else slice(None)  # padding stays out of the statistics
        buffer[ADVANTAGES] = ((adv - adv[real].mean()) / (adv[real].std() + 1e-10)).astype(np.float32)
        seq = self.optimizer.sequence_length  # 1 for non-recurrent networks
        num_sequences = max(hp.batch_size // seq, 1)  # ML-Agents: whole sequences per minibatch
        batch_size = num_sequences * seq
        collected: Dict[str, List[float]] = defaultdict(list)
        for _ in range(hp.num_epoch):
            for minibatch in buffer.shuffled(self.rng, seq).minibatches(batch_size):
                try:
                    stats = self.optimizer.update(minibatch, num_sequences)
                except NonFiniteUpdate as err:  # extreme (finite) experience: skip, keep the weights finite
                    log.warning("skipped a minibatch: %s", err)
                    continue
                stats.update(self.optimizer.update_reward_signals(minibatch))
                for key, value in stats.items():
                    collected[key].append(value)
        buffer.clear()
        stats = {key: float(np.mean(values)) for key, values in collected.items()}
        if self.behavioral_cloning is not None:
            stats.update(self.behavioral_cloning.update(self.step))
        stats.update(self.summary.flush(self.optimizer.reward_signals))
        self.policy_version += 1
        self.latest_stats = stats
        return stats

    def update_from_batch(self, batch: BatchData, num_sequences: int) -> Dict[str, float]:
        """The Update RPC: one optimizer step on a caller-supplied minibatch."""
        fields = self.step_fields(batch)
        fields[ACTION_MASK] = self._mask_field(batch)
        fields[ADVANTAGES] = batch.advantages
        for name in self.optimizer.reward_signals:
            fields[returns_key(name)] = batch.returns[name]
            fields[value_estimates_key(name)] = batch.value_estimates[name]
        if self.optimizer.recurrent:
            fields[MEMORY] = batch.memories
            fields[CRITIC_MEMORY] = batch.critic_memories
        if batch.loss_masks is not None:
            fields[LOSS_MASK] = batch.loss_masks
        stats = self.optimizer.update(AgentBuffer(fields), num_sequences)
        self.policy_version += 1
        self.latest_stats = stats
        return stats

    # -- checkpoint state --------------------------------------------------------------------------
    def state_tensors(self) -> Dict[str, torch.Tensor]:
        """Everything training needs to continue exactly: networks (normaliser included), Adam
        moments, and the processed-but-untrained update buffer."""
        opt = self.optimizer
        tensors = module_tensors({"actor": opt.actor, "critic": opt.critic, **self.learned_signal_modules()})
        tensors.update(adam_tensors(opt.adam))
        tensors.update(auxiliary_adam_tensors(self.auxiliary_adams())[0])
        for key, value in self.update_buffer.as_dict().items():
            tensors[f"buffer.{key}"] = torch.from_numpy(np.ascontiguousarray(value))
        return tensors

    def learned_signal_modules(self) -> Dict[str, LearnedRewardProvider]:
        """Learned reward signals by checkpoint prefix `reward.<name>`."""
        return {f"reward.{n}": p for n, p in self.optimizer.reward_signals.items() if isinstance(p, LearnedRewardProvider)}

    def auxiliary_adams(self) -> Dict[str, torch.optim.Optimizer]:
        """The optimizers outside the trainer's own Adam, by checkpoint prefix: each learned reward
        signal's (`reward_adam.<name>`) and behavioural cloning's (`bc_adam`)."""
        adams = {f"reward_adam.{n}": p.adam for n, p in self.optimizer.reward_signals.items() if isinstance(p, LearnedRewardProvider)}
        if self.behavioral_cloning is not None:
            adams["bc_adam"] = self.behavioral_cloning.adam
        return adams

    def restore_auxiliary_adams(self, tensors: Dict[str, torch.Tensor], metadata: Dict[str, object]) -> None:
        restore_auxiliary_adams(self.auxiliary_adams(), tensors, dict(metadata.get("auxiliary_adam_param_groups", {})))

    def load_reward_networks(self, tensors: Dict[str, torch.Tensor]) -> None:
        """Learned reward signals' networks, where the checkpoint has them (their Adam moments are
        restored by restore_auxiliary_adams on --resume)."""
        for prefix, provider in self.learned_signal_modules().items():
            state = module_state(tensors, prefix)
            if state:
                provider.load_state_dict(state)

    def state_metadata(self) -> Dict[str, object]:
        return {
            "global_step": self.optimizer.global_step,
            "policy_version": self.policy_version,
            "latest_stats": self.latest_stats,
            "rng": self.rng.bit_generator.state,
            "adam_param_groups": self.optimizer.adam.state_dict()["param_groups"],
            "auxiliary_adam_param_groups": auxiliary_adam_tensors(self.auxiliary_adams())[1],
        }

    def load_weights(self, tensors: Dict[str, torch.Tensor]) -> None:
        """Networks only (--initialize-from / init_path): step, version and optimizer start afresh."""
        opt = self.optimizer
        for prefix, module in (("actor", opt.actor), ("critic", opt.critic)):
            module.load_state_dict(module_state(tensors, prefix))
        self.load_reward_networks(tensors)

    def load_state(self, tensors: Dict[str, torch.Tensor], metadata: Dict[str, object]) -> None:
        """Restore a checkpoint written by state_tensors/state_metadata (--resume)."""
        self.load_weights(tensors)
        restore_adam(self.optimizer.adam, tensors, metadata["adam_param_groups"])
        self.restore_auxiliary_adams(tensors, metadata)
        buffer = {k[len("buffer."):]: v.numpy() for k, v in tensors.items() if k.startswith("buffer.")}
        self.update_buffer = AgentBuffer(buffer) if buffer else AgentBuffer()
        self.optimizer.global_step = int(metadata["global_step"])
        self.policy_version = int(metadata["policy_version"])
        self.latest_stats = {k: float(v) for k, v in dict(metadata["latest_stats"]).items()}
        self.rng.bit_generator.state = metadata["rng"]

    def signal_rewards(self, observations: List[np.ndarray], next_observations: Optional[List[np.ndarray]], done: bool,
                       continuous_actions: Optional[np.ndarray] = None, discrete_actions: Optional[np.ndarray] = None,
                       rewards: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
        """Per-step reward of every signal whose inputs are given (EstimateValues / SubmitTrajectories
        with evaluate_signals), with the providers' current networks; nothing is learned or stored.
        Extrinsic needs `rewards`; signals that read actions need both action arrays (an action
        kind the spec lacks is an empty array)."""
        length = len(observations[0])
        fields = {obs_key(i): o for i, o in enumerate(observations)}
        have_actions = continuous_actions is not None and discrete_actions is not None
        if have_actions:
            fields[CONTINUOUS_ACTION], fields[DISCRETE_ACTION] = continuous_actions, discrete_actions
        if rewards is not None:
            fields[ENVIRONMENT_REWARDS] = rewards
        done_flags = np.zeros(length, dtype=np.float32)
        done_flags[-1] = float(done)
        fields[DONE] = done_flags
        for i, o in enumerate(observations):
            last = next_observations[i][None] if next_observations is not None else o[-1:]
            fields[next_obs_key(i)] = np.concatenate([o[1:], last], axis=0)
        piece = AgentBuffer(fields)
        out: Dict[str, np.ndarray] = {}
        for name, provider in self.optimizer.reward_signals.items():
            if name == "extrinsic" and rewards is None:
                continue
            if provider.reads_actions and not have_actions:
                continue
            out[name] = provider.evaluate(piece)
        return out

    def value_snapshot(self, observations: List[np.ndarray]) -> Dict[str, np.ndarray]:
        """Critic values of each step per signal, touching no stored memory (recurrent critics start
        from zeros)."""
        piece = AgentBuffer({obs_key(i): o for i, o in enumerate(observations)})
        scratch = AgentMemories(self.optimizer.critic.memory_size, capacity=1) if self.optimizer.recurrent else None
        values, _, _ = self.optimizer.get_trajectory_value_estimates(piece, None, True, "", scratch)
        return values

    def estimate_values(self, observations: List[np.ndarray], next_observations: Optional[List[np.ndarray]], done: bool,
                        agent_id: str, interrupted: bool = False):
        """The EstimateValues RPC. Recurrent critics continue each agent's memory in a store of their
        own, apart from the trainer's (a caller's agent ids must not disturb the training run's)."""
        piece = AgentBuffer({obs_key(i): o for i, o in enumerate(observations)})
        result = self.optimizer.get_trajectory_value_estimates(piece, next_observations, done, agent_id, self._rpc_memories)
        if interrupted and self._rpc_memories is not None:
            self._rpc_memories.drop(agent_id)
        return result
