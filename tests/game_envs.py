"""Small Gymnasium envs of our own for learning tests: deterministic under a seed, fast, no Unity.

- `GoalSeek1D(action_type)`: walk along [-1, 1] to a goal. action_type "continuous" (Box(-1, 1):
  x += 0.2 a), "discrete" (Discrete(3): left / stay / right by 0.2) or "hybrid" (Tuple(Discrete(3)
  direction, Box(0, 0.2) step size)). Observation [x, g].
- `DictObsGoal`: the same task with a Dict observation {"position", "goal"} and a MultiDiscrete([3, 2],
  start=[-1, 0]) action: the first branch is the direction (-1, 0, +1), the second does nothing.
- `MaskedChoice`: Discrete(4); the observation is the one-hot of the good action; every step
  info["action_mask"] allows a random subset that always holds the good action. +1 for the good
  action, -1 for another allowed one; taking a masked action is counted and (by default) raises.

- `GoalEnv1D`: GoalSeek1D (discrete) with Gymnasium-Robotics' GoalEnv Dict observation; the desired
  goal is a goal signal for hyper-network conditioning.
- `RuleFollowing`: imitation. A cue each step; the scripted expert answers (cue + 1) % 4; fixed
  10-step episodes. `goal_seek_expert_action` is GoalSeek1D's scripted (continuous) expert.
- `CueRecall`: memory. A cue (-1 or +1) is shown at the first step only; after `delay` blank steps
  the agent must answer with the cue's side (Discrete(2)): +1 right, -1 wrong, then the episode ends.
  Only a policy with memory beats chance (mean return 0).

GoalSeek rewards: -0.1 |x - g| every step (shaping), +1 and termination when |x - g| < 0.1,
truncation after 30 steps; info["is_success"] at the end of an episode. Any policy that keeps
moving towards the goal reaches it (a step never jumps over the 0.2-wide goal zone).

`register_envs()` registers them as "ludus-tests/GoalSeek1D-v0" (kwarg action_type),
"ludus-tests/DictObsGoal-v0" and "ludus-tests/MaskedChoice-v0".
"""
from __future__ import annotations

import abc
from typing import Any, Dict, Optional, Tuple

import gymnasium as gym
import numpy as np
from gymnasium import spaces

GOAL_RADIUS = 0.1
STEP = 0.2
MAX_STEPS = 30


class _GoalSeekBase(gym.Env, abc.ABC):
    """x and goal g in [-1, 1], at least 0.3 apart at reset."""

    metadata = {"render_modes": []}

    def __init__(self, max_steps: int = MAX_STEPS) -> None:
        self.max_steps = max_steps
        self.x = 0.0
        self.goal = 0.0
        self.t = 0

    @abc.abstractmethod
    def _observe(self) -> Any:
        """The observation of the current state."""

    @abc.abstractmethod
    def _delta(self, action: Any) -> float:
        """How far an action moves the agent."""

    def reset(self, *, seed: Optional[int] = None, options: Optional[Dict[str, Any]] = None) -> Tuple[Any, Dict[str, Any]]:
        super().reset(seed=seed)
        self.x, self.goal = (float(v) for v in self.np_random.uniform(-1.0, 1.0, size=2))
        while abs(self.x - self.goal) < 0.3:
            self.goal = float(self.np_random.uniform(-1.0, 1.0))
        self.t = 0
        return self._observe(), {}

    def step(self, action: Any):
        self.x = float(np.clip(self.x + self._delta(action), -1.0, 1.0))
        self.t += 1
        distance = abs(self.x - self.goal)
        reached = distance < GOAL_RADIUS
        reward = -0.1 * distance + (1.0 if reached else 0.0)
        truncated = not reached and self.t >= self.max_steps
        info = {"is_success": reached} if reached or truncated else {}
        return self._observe(), reward, reached, truncated, info


class GoalSeek1D(_GoalSeekBase):
    ACTION_TYPES = ("continuous", "discrete", "hybrid")

    def __init__(self, action_type: str = "continuous", max_steps: int = MAX_STEPS) -> None:
        super().__init__(max_steps)
        if action_type not in self.ACTION_TYPES:
            raise ValueError(f"action_type must be one of {self.ACTION_TYPES}, got {action_type!r}")
        self.action_type = action_type
        self.observation_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        if action_type == "continuous":
            self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        elif action_type == "discrete":
            self.action_space = spaces.Discrete(3)  # 0 left, 1 stay, 2 right
        else:
            self.action_space = spaces.Tuple((spaces.Discrete(3), spaces.Box(0.0, STEP, (1,), np.float32)))

    def _observe(self) -> np.ndarray:
        return np.array([self.x, self.goal], np.float32)

    def _delta(self, action: Any) -> float:
        if self.action_type == "continuous":
            return STEP * float(np.clip(np.asarray(action).reshape(-1)[0], -1.0, 1.0))
        if self.action_type == "discrete":
            return STEP * (int(action) - 1)
        direction, size = action
        return (int(direction) - 1) * float(np.clip(np.asarray(size).reshape(-1)[0], 0.0, STEP))


class DictObsGoal(_GoalSeekBase):
    def __init__(self, max_steps: int = MAX_STEPS) -> None:
        super().__init__(max_steps)
        self.observation_space = spaces.Dict({"position": spaces.Box(-1.0, 1.0, (1,), np.float32),
                                              "goal": spaces.Box(-1.0, 1.0, (1,), np.float32)})
        self.action_space = spaces.MultiDiscrete([3, 2], start=[-1, 0])  # direction -1/0/+1, and a no-op choice

    def _observe(self) -> Dict[str, np.ndarray]:
        return {"position": np.array([self.x], np.float32), "goal": np.array([self.goal], np.float32)}

    def _delta(self, action: Any) -> float:
        direction, noop = (int(a) for a in np.asarray(action).reshape(-1))
        assert direction in (-1, 0, 1) and noop in (0, 1), action
        return STEP * direction


class GoalEnv1D(_GoalSeekBase):
    """The GoalSeek task in Gymnasium-Robotics' GoalEnv layout: {"observation", "achieved_goal",
    "desired_goal"}; ludus-gym marks desired_goal as a GOAL_SIGNAL observation."""

    def __init__(self, max_steps: int = MAX_STEPS) -> None:
        super().__init__(max_steps)
        box = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.observation_space = spaces.Dict({"observation": box, "achieved_goal": box, "desired_goal": box})
        self.action_space = spaces.Discrete(3)

    def _observe(self) -> Dict[str, np.ndarray]:
        x = np.array([self.x], np.float32)
        return {"observation": x, "achieved_goal": x.copy(), "desired_goal": np.array([self.goal], np.float32)}

    def _delta(self, action: Any) -> float:
        return STEP * (int(action) - 1)


class MaskedActionTaken(RuntimeError):
    pass


class MaskedChoice(gym.Env):
    """Contextual bandit with action masks; 10 steps per episode (truncated: time is not observed)."""

    metadata = {"render_modes": []}
    N = 4
    #: Masked actions taken by every instance since the last `reset_counter()`.
    masked_actions_taken = 0

    def __init__(self, episode_length: int = 10, raise_on_masked: bool = True) -> None:
        self.episode_length = episode_length
        self.raise_on_masked = raise_on_masked
        self.observation_space = spaces.Box(0.0, 1.0, (self.N,), np.float32)
        self.action_space = spaces.Discrete(self.N)
        self.good = 0
        self.mask = np.ones(self.N, np.int8)
        self.t = 0

    @classmethod
    def reset_counter(cls) -> None:
        cls.masked_actions_taken = 0

    def _draw(self) -> Tuple[np.ndarray, Dict[str, Any]]:
        self.good = int(self.np_random.integers(self.N))
        self.mask = (self.np_random.random(self.N) < 0.5).astype(np.int8)  # Gymnasium's convention: int8, 1 = allowed
        self.mask[self.good] = 1
        obs = np.zeros(self.N, np.float32)
        obs[self.good] = 1.0
        return obs, {"action_mask": self.mask.copy()}

    def reset(self, *, seed: Optional[int] = None, options: Optional[Dict[str, Any]] = None):
        super().reset(seed=seed)
        self.t = 0
        return self._draw()

    def step(self, action: Any):
        action = int(action)
        if not self.mask[action]:
            MaskedChoice.masked_actions_taken += 1
            if self.raise_on_masked:
                raise MaskedActionTaken(f"action {action} is masked (mask {self.mask.tolist()})")
        reward = 1.0 if action == self.good else -1.0
        self.t += 1
        obs, info = self._draw()
        return obs, reward, False, self.t >= self.episode_length, info


class CueRecall(gym.Env):
    """Observation [cue, answer_now]: cue is +-1 at t = 0 and 0 afterwards; answer_now is 1 at the
    answering step. Actions before the answer are ignored."""

    metadata = {"render_modes": []}

    def __init__(self, delay: int = 3) -> None:
        self.delay = delay
        self.observation_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = spaces.Discrete(2)
        self.cue = 1
        self.t = 0

    def _obs(self) -> np.ndarray:
        return np.array([self.cue if self.t == 0 else 0.0, 1.0 if self.t == self.delay else 0.0], np.float32)

    def reset(self, *, seed: Optional[int] = None, options: Optional[Dict[str, Any]] = None):
        super().reset(seed=seed)
        self.cue = 1 if self.np_random.random() < 0.5 else -1
        self.t = 0
        return self._obs(), {}

    def step(self, action: Any):
        if self.t < self.delay:
            self.t += 1
            return self._obs(), 0.0, False, False, {}
        right = int(action) == (1 if self.cue > 0 else 0)
        return self._obs(), 1.0 if right else -1.0, True, False, {"is_success": right}


class Corridor(gym.Env):
    """Sparse reward: start at cell 0 of `length`, step left or right (Discrete(2)); +1 only on
    reaching the last cell (terminated); truncated after `max_steps`. The observation is the one-hot
    cell. A random walk almost never gets there, so extrinsic reward alone has nothing to learn from."""

    metadata = {"render_modes": []}

    def __init__(self, length: int = 20, max_steps: int = 40) -> None:
        self.length, self.max_steps = length, max_steps
        self.observation_space = spaces.Box(0.0, 1.0, (length,), np.float32)
        self.action_space = spaces.Discrete(2)
        self.x = 0
        self.t = 0

    def _obs(self) -> np.ndarray:
        obs = np.zeros(self.length, np.float32)
        obs[self.x] = 1.0
        return obs

    def reset(self, *, seed: Optional[int] = None, options: Optional[Dict[str, Any]] = None):
        super().reset(seed=seed)
        self.x, self.t = 0, 0
        return self._obs(), {}

    def step(self, action: Any):
        self.x = int(np.clip(self.x + (1 if int(action) == 1 else -1), 0, self.length - 1))
        self.t += 1
        reached = self.x == self.length - 1
        truncated = not reached and self.t >= self.max_steps
        info = {"is_success": reached} if reached or truncated else {}
        return self._obs(), 1.0 if reached else 0.0, reached, truncated, info


class RuleFollowing(gym.Env):
    """Imitation: every step shows a cue (one-hot of 4); the expert's rule answers (cue + 1) % 4.
    +1 per answer that follows the rule, 0 otherwise; always 10 steps (then truncated), so episode
    length carries no signal. `expert_action(obs)` is the scripted expert."""

    metadata = {"render_modes": []}
    CUES = 4

    def __init__(self, episode_length: int = 10) -> None:
        self.episode_length = episode_length
        self.observation_space = spaces.Box(0.0, 1.0, (self.CUES,), np.float32)
        self.action_space = spaces.Discrete(self.CUES)
        self.cue, self.t, self.correct = 0, 0, 0

    @classmethod
    def expert_action(cls, obs: np.ndarray) -> int:
        return (int(np.argmax(obs)) + 1) % cls.CUES

    def _obs(self) -> np.ndarray:
        return np.eye(self.CUES, dtype=np.float32)[self.cue]

    def reset(self, *, seed: Optional[int] = None, options: Optional[Dict[str, Any]] = None):
        super().reset(seed=seed)
        self.cue, self.t, self.correct = int(self.np_random.integers(self.CUES)), 0, 0
        return self._obs(), {}

    def step(self, action: Any):
        reward = 1.0 if int(action) == (self.cue + 1) % self.CUES else 0.0
        self.correct += int(reward)
        self.t += 1
        self.cue = int(self.np_random.integers(self.CUES))
        truncated = self.t >= self.episode_length
        info = {"is_success": self.correct == self.episode_length} if truncated else {}
        return self._obs(), reward, False, truncated, info


def goal_seek_expert_action(obs: np.ndarray) -> np.ndarray:
    """GoalSeek1D's scripted expert (continuous): step straight at the goal, slowing down near it."""
    x, goal = float(obs[0]), float(obs[1])
    return np.array([np.clip((goal - x) / STEP, -1.0, 1.0)], np.float32)


def register_envs() -> None:
    """Register the envs with Gymnasium (idempotent)."""
    for env_id, entry_point in (("ludus-tests/GoalSeek1D-v0", GoalSeek1D), ("ludus-tests/DictObsGoal-v0", DictObsGoal),
                                ("ludus-tests/MaskedChoice-v0", MaskedChoice), ("ludus-tests/CueRecall-v0", CueRecall),
                                ("ludus-tests/GoalEnv1D-v0", GoalEnv1D), ("ludus-tests/Corridor-v0", Corridor),
                                ("ludus-tests/RuleFollowing-v0", RuleFollowing)):
        if env_id not in gym.registry:
            gym.register(env_id, entry_point=entry_point)  # no max_episode_steps: the envs truncate themselves
