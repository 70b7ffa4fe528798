"""Episode and signal statistics between two updates (ML-Agents' per-summary stats), shared by the
PPO and SAC trainers.

Episodes are followed per agent id across trajectory pieces; an episode counts when a piece ends
with `done` or `interrupted`. The agents being followed are bounded (least recently seen first out),
so agent ids that vanish mid-episode cannot grow memory without limit.
"""
from __future__ import annotations

from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional

import numpy as np

from ludus_service.reward_signals import RewardProvider
from ludus_service.validation import TrajectoryData

MAX_TRACKED_AGENTS = 100_000


@dataclass
class _EpisodeProgress:
    reward: float = 0.0
    length: int = 0


@dataclass
class _Window:
    episode_rewards: List[float] = field(default_factory=list)
    episode_lengths: List[int] = field(default_factory=list)
    value_estimates: Dict[str, List[float]] = field(default_factory=lambda: defaultdict(list))
    signal_rewards: Dict[str, List[float]] = field(default_factory=lambda: defaultdict(list))


class TrainingSummary:
    def __init__(self, max_tracked_agents: int = MAX_TRACKED_AGENTS) -> None:
        self.max_tracked_agents = max_tracked_agents
        self._episodes: "OrderedDict[str, _EpisodeProgress]" = OrderedDict()
        self._window = _Window()

    def track_episode(self, traj: TrajectoryData) -> None:
        progress = self._episodes.pop(traj.agent_id, None) or _EpisodeProgress()
        progress.reward += float(traj.rewards.sum())
        progress.length += traj.length
        if traj.done or traj.interrupted:
            self._window.episode_rewards.append(progress.reward)
            self._window.episode_lengths.append(progress.length)
        else:
            self._episodes[traj.agent_id] = progress
            while len(self._episodes) > self.max_tracked_agents:
                self._episodes.popitem(last=False)

    def record_value_estimate(self, signal: str, mean_value: float) -> None:
        self._window.value_estimates[signal].append(mean_value)

    def record_signal_reward(self, signal: str, total: float) -> None:
        """A learned signal's reward summed over one processed trajectory."""
        self._window.signal_rewards[signal].append(total)

    def record_inference(self, traj: TrajectoryData, accepted_before: int, summary_freq: int,
                         signals: Mapping[str, RewardProvider]) -> Optional[Dict[str, float]]:
        """Inference mode: episode statistics only, published every `summary_freq` accepted steps
        (ML-Agents' summary period) with "Is Training" 0. The new stats when published, else None."""
        self.track_episode(traj)
        if (accepted_before + traj.length) // summary_freq == accepted_before // summary_freq:
            return None
        return self.flush(signals, training=False)

    def flush(self, signals: Mapping[str, RewardProvider], training: bool = True) -> Dict[str, float]:
        """The window's statistics under ML-Agents' names; starts a new window."""
        w = self._window
        stats: Dict[str, float] = {"Is Training": 1.0 if training else 0.0}
        for name, provider in signals.items():
            if w.value_estimates[name]:
                stats[f"Policy/{provider.stat_name} Value Estimate"] = float(np.mean(w.value_estimates[name]))
            if name != "extrinsic" and w.signal_rewards[name]:  # learned signals: mean reward per processed trajectory
                stats[f"Policy/{provider.stat_name} Reward"] = float(np.mean(w.signal_rewards[name]))
        if w.episode_rewards:
            stats["Environment/Cumulative Reward"] = float(np.mean(w.episode_rewards))
            stats["Environment/Episode Length"] = float(np.mean(w.episode_lengths))
            if "extrinsic" in signals:  # per episode: the cumulative environment reward times strength
                stats[f"Policy/{signals['extrinsic'].stat_name} Reward"] = float(np.mean(w.episode_rewards)) * signals["extrinsic"].strength
        self._window = _Window()
        return stats
