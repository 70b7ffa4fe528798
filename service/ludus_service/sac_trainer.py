"""SACTrainer: ML-Agents' SAC trainer loop behind the interface PPOTrainer offers to Behavior.

Trajectories go into a replay buffer (ring arrays of buffer_size, ludus_service.replay_buffer) as
(s, a, r_env, s', done, mask) steps; an interrupted episode's last step is stored not-done so the
critic bootstraps through it. Gradient steps are owed by the steps-per-update ratio, as in
ML-Agents: after `buffer_init_steps`, `(step - buffer_init_steps) / steps_per_update` updates in
all (likewise for the reward signals with `reward_signal_steps_per_update`). Each update samples a
minibatch and evaluates every reward signal on it at sampling time, so learned signals score old
experience with their current networks.

Behavior calls `update_policy` while `ready_to_update` holds; each call runs at most
MAX_UPDATES_PER_BURST gradient steps and publishes one policy version, so the learner thread can
take queued trajectories between bursts and a long backlog of updates never stalls intake.

Recurrent behaviours store each trajectory as padded sequences (ludus_service.sequences) with the
client's policy memories and the critic memories the value critic had at each sequence's start
(continued per agent across trajectory pieces, as for PPO), and sample whole sequences.

Behavioural cloning (`behavioral_cloning`) runs its supervised epochs once after each burst of
gradient steps, as ML-Agents' off-policy trainer does after each round of SAC updates.
"""
from __future__ import annotations

import logging
import math
from collections import defaultdict
from typing import Dict, List, Mapping, Optional

import numpy as np
import torch

from ludus_service.behavioral_cloning import BehavioralCloning
from ludus_service.buffer import (
    ACTION_MASK, CONTINUOUS_ACTION, CRITIC_MEMORY, DISCRETE_ACTION, DONE, MEMORY, AgentBuffer, next_obs_key, obs_key,
)
from ludus_service.checkpoint import adam_tensors, auxiliary_adam_tensors, module_state, module_tensors, restore_adam
from ludus_service.optimizer.ppo import NonFiniteUpdate
from ludus_service.optimizer.sac import SACOptimizer, rewards_key
from ludus_service.replay_buffer import ReplayBuffer
from ludus_service.reward_signals import ENVIRONMENT_REWARDS
from ludus_service.sequences import LOSS_MASK, AgentMemories, pad_to_sequences
from ludus_service.settings import TrainerSettings
from ludus_service.spec import BehaviorSpec
from ludus_service.summaries import TrainingSummary
from ludus_service.trainer import PPOTrainer
from ludus_service.validation import TrajectoryData, TransitionBatch

log = logging.getLogger(__name__)

#: SAC has no num_epoch: behavioural cloning's own `num_epoch`, else this many (ML-Agents' default).
DEFAULT_BC_NUM_EPOCH = 3

#: Gradient steps per update_policy call (one published policy version). Small enough that the
#: learner returns to its intake queue often, large enough that publishing stays cheap.
MAX_UPDATES_PER_BURST = 256


class SACTrainer:
    """Same surface as PPOTrainer (process_trajectory, ready_to_update/update_policy,
    update_from_batch, estimate_values, record_inference, checkpoint state)."""

    #: Off-policy: trajectories of any past policy version are useful (max_policy_lag does not apply).
    on_policy = False

    def __init__(self, spec: BehaviorSpec, settings: TrainerSettings, device: torch.device | str = "cpu", seed: Optional[int] = None,
                 demonstrations: Optional[Mapping[str, AgentBuffer]] = None) -> None:
        if seed is not None:
            torch.manual_seed(seed)
        self.spec = spec
        self.settings = settings
        self.optimizer = SACOptimizer(spec, settings, device, demonstrations)
        hp = settings.hyperparameters
        self.replay = ReplayBuffer(hp.buffer_size, self.optimizer.sequence_length)
        memory_size = self.optimizer.critic.memory_size
        #: EstimateValues' own per-agent critic memories (a caller's agent ids must not disturb training's).
        self._rpc_memories = AgentMemories(memory_size) if memory_size else None
        bc = settings.behavioral_cloning
        self.behavioral_cloning = None
        if bc is not None and not settings.inference:
            self.behavioral_cloning = BehavioralCloning(
                self.optimizer.actor, bc, hp.learning_rate, hp.batch_size, DEFAULT_BC_NUM_EPOCH,
                dict(demonstrations or {})[bc.demo_path], self.optimizer.sequence_length, seed)
        self.rng = np.random.default_rng(seed)
        self.policy_version = 1
        self.latest_stats: Dict[str, float] = {}
        #: Gradient steps (policy and reward signals) taken so far: with the step count they say
        #: how many are owed.
        self.updates_done = 0
        self.reward_updates_done = 0
        self.summary = TrainingSummary()
        self._burst_stats: Dict[str, List[float]] = defaultdict(list)

    @property
    def step(self) -> int:
        return self.optimizer.global_step

    @property
    def buffered_steps(self) -> int:
        return self.replay.num_experiences

    # -- trajectory processing ---------------------------------------------------------------------
    def process_trajectory(self, traj: TrajectoryData) -> None:
        """Store one validated trajectory's steps in the replay buffer (whole, or not at all)."""
        opt = self.optimizer
        opt.update_normalization(traj.observations)
        fields: Dict[str, np.ndarray] = {obs_key(i): o for i, o in enumerate(traj.observations)}
        for i, o in enumerate(traj.observations):
            # s' of every step: the next step's observation; the last step's is next_obs (its own
            # observation at a terminal without one: done masks it out of the Q backup).
            last = traj.next_observations[i][None] if traj.next_observations is not None else o[-1:]
            fields[next_obs_key(i)] = np.concatenate([o[1:], last], axis=0)
        fields[CONTINUOUS_ACTION] = traj.continuous_actions
        fields[DISCRETE_ACTION] = traj.discrete_actions
        fields[ACTION_MASK] = (traj.action_masks if traj.action_masks is not None
                               else np.ones((traj.length, self.spec.actions.mask_size), dtype=bool))
        fields[ENVIRONMENT_REWARDS] = np.asarray(traj.rewards, dtype=np.float32)
        dones = np.zeros(traj.length, dtype=np.float32)
        dones[-1] = 1.0 if traj.done and not traj.interrupted else 0.0  # interrupted: bootstrap
        fields[DONE] = dones
        # Value estimates for the statistics ML-Agents reports ("Policy/<Signal> Value Estimate");
        # recurrent critics also give the memory at each sequence's start, continued per agent.
        values, _, critic_memories = opt.get_trajectory_value_estimates(
            AgentBuffer({obs_key(i): o for i, o in enumerate(traj.observations)}), traj.next_observations, traj.done, traj.agent_id)
        if opt.recurrent:
            fields[MEMORY] = traj.memories
            fields[CRITIC_MEMORY] = critic_memories
            if traj.interrupted:  # the agent's next trajectory starts a new episode: fresh critic memory
                opt.critic_memories.drop(traj.agent_id)
        for name, v in values.items():
            self.summary.record_value_estimate(name, float(v.mean()))
        piece = AgentBuffer(fields)
        for name, provider in opt.reward_signals.items():  # "Policy/<Signal> Reward" of learned signals
            if name != "extrinsic":
                self.summary.record_signal_reward(name, float(provider.evaluate(piece).sum()))
        if opt.recurrent:  # whole sequences, the last one padded (loss-masked) at its end
            fields = pad_to_sequences(fields, opt.sequence_length, fill={ACTION_MASK: True})
        self.replay.add(fields)
        opt.global_step += traj.length
        self.summary.track_episode(traj)

    record_inference = PPOTrainer.record_inference  # episode statistics only, the same for both

    # -- updates -----------------------------------------------------------------------------------
    def _owed(self, steps_per_update: float, done: int) -> int:
        hp = self.settings.hyperparameters
        if self.step < hp.buffer_init_steps or self.replay.num_experiences < hp.batch_size:
            return 0
        return max(int(math.floor((self.step - hp.buffer_init_steps) / steps_per_update)) - done, 0)

    @property
    def reward_signal_steps_per_update(self) -> float:
        hp = self.settings.hyperparameters
        return hp.reward_signal_steps_per_update or hp.steps_per_update

    def owed_updates(self) -> int:
        return self._owed(self.settings.hyperparameters.steps_per_update, self.updates_done)

    def owed_reward_updates(self) -> int:
        return self._owed(self.reward_signal_steps_per_update, self.reward_updates_done)

    def ready_to_update(self) -> bool:
        return self.owed_updates() > 0 or (bool(self.learned_signal_modules()) and self.owed_reward_updates() > 0)

    def sample(self, batch_size: int) -> AgentBuffer:
        """A uniform minibatch (whole sequences for recurrent behaviours) with every signal's rewards
        evaluated now (ML-Agents: at sampling time)."""
        batch = self.replay.sample(self.rng, batch_size)
        for name, provider in self.optimizer.reward_signals.items():
            batch[rewards_key(name)] = provider.evaluate(batch)
        return batch

    def update_policy(self, max_updates: int = MAX_UPDATES_PER_BURST) -> Dict[str, float]:
        """One burst: at most `max_updates` owed gradient steps (and owed reward-signal updates),
        then a new policy version. Statistics average the burst's steps."""
        hp = self.settings.hyperparameters
        num_sequences = max(hp.batch_size // self.optimizer.sequence_length, 1)
        collected: Dict[str, List[float]] = defaultdict(list)
        policy_updates = min(self.owed_updates(), max_updates)
        for _ in range(policy_updates):
            try:
                stats = self.optimizer.update(self.sample(hp.batch_size), num_sequences)
            except NonFiniteUpdate as err:  # extreme (finite) experience: skip, keep the weights finite
                log.warning("skipped a minibatch: %s", err)
                stats = {}
            self.updates_done += 1
            for key, value in stats.items():
                collected[key].append(value)
        for _ in range(min(self.owed_reward_updates(), max_updates)):
            batch = self.replay.sample(self.rng, hp.batch_size)
            for key, value in self.optimizer.update_reward_signals(batch).items():
                collected[key].append(value)
            self.reward_updates_done += 1
        stats = {key: float(np.mean(values)) for key, values in collected.items()}
        if self.behavioral_cloning is not None and policy_updates:
            stats.update(self.behavioral_cloning.update(self.step))
        stats.update(self.summary.flush(self.optimizer.reward_signals))
        self.policy_version += 1
        self.latest_stats = stats
        return stats

    learned_signal_modules = PPOTrainer.learned_signal_modules
    auxiliary_adams = PPOTrainer.auxiliary_adams
    restore_auxiliary_adams = PPOTrainer.restore_auxiliary_adams
    load_reward_networks = PPOTrainer.load_reward_networks

    def update_from_batch(self, batch: TransitionBatch, num_sequences: int) -> Dict[str, float]:
        """The Update RPC: one SAC gradient step (and one step of each learned reward signal) on a
        caller's transitions, every signal's rewards evaluated now as for a sampled minibatch."""
        fields: Dict[str, np.ndarray] = {obs_key(i): o for i, o in enumerate(batch.observations)}
        fields.update({next_obs_key(i): o for i, o in enumerate(batch.next_observations)})
        fields[CONTINUOUS_ACTION] = batch.continuous_actions
        fields[DISCRETE_ACTION] = batch.discrete_actions
        fields[ACTION_MASK] = (batch.action_masks if batch.action_masks is not None
                               else np.ones((batch.length, self.spec.actions.mask_size), dtype=bool))
        fields[ENVIRONMENT_REWARDS] = batch.rewards
        fields[DONE] = batch.dones.astype(np.float32)
        if self.optimizer.recurrent:
            fields[MEMORY] = batch.memories
            fields[CRITIC_MEMORY] = batch.critic_memories
        if batch.loss_masks is not None:
            fields[LOSS_MASK] = batch.loss_masks
        minibatch = AgentBuffer(fields)
        for name, provider in self.optimizer.reward_signals.items():
            minibatch[rewards_key(name)] = provider.evaluate(minibatch)
        stats = self.optimizer.update(minibatch, num_sequences)
        stats.update(self.optimizer.update_reward_signals(minibatch))
        self.policy_version += 1
        self.latest_stats = stats
        return stats

    # -- checkpoint state --------------------------------------------------------------------------
    def state_tensors(self) -> Dict[str, torch.Tensor]:
        """Networks (normaliser included), entropy coefficients, Adam moments, learned reward
        signals, and with save_replay_buffer the replay buffer (all safetensors-ready tensors)."""
        opt = self.optimizer
        tensors = module_tensors({**opt.modules(), **self.learned_signal_modules()})
        tensors["log_ent_coef.continuous"] = opt.log_ent_coef_continuous.detach()
        tensors["log_ent_coef.discrete"] = opt.log_ent_coef_discrete.detach()
        tensors.update(adam_tensors(opt.adam))
        tensors.update(auxiliary_adam_tensors(self.auxiliary_adams())[0])
        if self.settings.hyperparameters.save_replay_buffer:
            tensors.update(self.replay.state_tensors())
        return tensors

    def state_metadata(self) -> Dict[str, object]:
        """PPO's counters and optimizer groups, plus the gradient steps taken (they say how many are owed)."""
        return {**PPOTrainer.state_metadata(self), "updates_done": self.updates_done, "reward_updates_done": self.reward_updates_done}

    def load_weights(self, tensors: Dict[str, torch.Tensor]) -> None:
        """Networks only (--initialize-from / init_path). A PPO checkpoint's actor has no log-std
        head, so only SAC checkpoints initialise an SAC behaviour."""
        opt = self.optimizer
        for prefix, module in opt.modules().items():
            state = module_state(tensors, prefix)
            if state or prefix in ("actor", "critic"):
                module.load_state_dict(state)
        with torch.no_grad():
            if "log_ent_coef.continuous" in tensors:
                opt.log_ent_coef_continuous.copy_(tensors["log_ent_coef.continuous"])
                opt.log_ent_coef_discrete.copy_(tensors["log_ent_coef.discrete"])
        self.load_reward_networks(tensors)

    def load_state(self, tensors: Dict[str, torch.Tensor], metadata: Dict[str, object]) -> None:
        """Restore a checkpoint written by state_tensors/state_metadata (--resume)."""
        self.load_weights(tensors)
        restore_adam(self.optimizer.adam, tensors, metadata["adam_param_groups"])
        self.restore_auxiliary_adams(tensors, metadata)
        self.replay.load_state_tensors(tensors)
        self.optimizer.global_step = int(metadata["global_step"])
        self.policy_version = int(metadata["policy_version"])
        self.updates_done = int(metadata["updates_done"])
        self.reward_updates_done = int(metadata["reward_updates_done"])
        self.latest_stats = {k: float(v) for k, v in dict(metadata["latest_stats"]).items()}
        self.rng.bit_generator.state = metadata["rng"]

    # Read-only evaluation for EstimateValues / evaluate_signals: only the reward providers and the
    # value critic are involved, which SAC has exactly as PPO does.
    signal_rewards = PPOTrainer.signal_rewards
    value_snapshot = PPOTrainer.value_snapshot
    estimate_values = PPOTrainer.estimate_values  # the value critic V(s), with its own memory store
