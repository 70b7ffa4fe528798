"""TrajectoryBuilder: collect one agent's steps and turn them into a wire Trajectory."""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

from ludus.v1 import trainer_pb2 as pb
from ludus_client.spec import BehaviorSpec
from ludus_client.tensor_codec import observation_array, to_tensor


class TrajectoryBuilder:
    """Accumulates steps of one agent; `build` emits them (time-major tensors) and starts afresh.

    Typical loop: obs -> policy.act -> env.step -> `add_step(obs, output, i, reward, version)`; at an
    episode end `build(final_obs, done=terminated, interrupted=truncated)`, and every `time_horizon`
    steps `build(next_obs)` to send a piece of a long episode.
    """

    def __init__(self, spec: BehaviorSpec, agent_id: str) -> None:
        self.spec = spec
        self.agent_id = agent_id
        self._reset()

    def _reset(self) -> None:
        self._obs: List[List[np.ndarray]] = [[] for _ in self.spec.observations]
        self._cont: List[np.ndarray] = []
        self._disc: List[np.ndarray] = []
        self._cont_lp: List[np.ndarray] = []
        self._disc_lp: List[np.ndarray] = []
        self._rewards: List[float] = []
        self._masks: List[np.ndarray] = []
        self._memories: List[np.ndarray] = []
        self._version: Optional[int] = None

    def __len__(self) -> int:
        return len(self._rewards)

    def add_step(
        self,
        observations: Sequence[np.ndarray],
        continuous_action: np.ndarray,
        discrete_action: np.ndarray,
        continuous_log_prob: np.ndarray,
        discrete_log_prob: np.ndarray,
        reward: float,
        policy_version: int,
        action_mask: Optional[np.ndarray] = None,
        memory: Optional[np.ndarray] = None,
    ) -> None:
        """One step. Recurrent policies: `memory` is the policy memory that went INTO this step."""
        for store, obs, spec in zip(self._obs, observations, self.spec.observations):
            store.append(observation_array(obs, spec.kind == pb.OBSERVATION_KIND_VISUAL))
        self._cont.append(continuous_action)
        self._disc.append(discrete_action)
        self._cont_lp.append(continuous_log_prob)
        self._disc_lp.append(discrete_log_prob)
        self._rewards.append(float(reward))
        if action_mask is not None:
            self._masks.append(np.asarray(action_mask, dtype=bool))
        if memory is not None:
            self._memories.append(np.asarray(memory, dtype=np.float32))
        # A trajectory is labelled with the oldest version that acted in it (conservative for lag checks).
        self._version = policy_version if self._version is None else min(self._version, policy_version)

    def build(self, next_observations: Optional[Sequence[np.ndarray]], done: bool = False, interrupted: bool = False) -> pb.Trajectory:
        if not self._rewards:
            raise ValueError("no steps to build a trajectory from")
        a = self.spec.actions
        traj = pb.Trajectory(
            agent_id=self.agent_id,
            policy_version=self._version,
            observations=[to_tensor(np.stack(o)) for o in self._obs],
            rewards=to_tensor(np.asarray(self._rewards, dtype=np.float32)),
            done=bool(done),
            interrupted=bool(interrupted and not done),
        )
        if a.continuous_size:
            traj.continuous_actions.CopyFrom(to_tensor(np.stack(self._cont).astype(np.float32)))
            traj.continuous_log_probs.CopyFrom(to_tensor(np.stack(self._cont_lp).astype(np.float32)))
        if a.discrete_branches:
            traj.discrete_actions.CopyFrom(to_tensor(np.stack(self._disc).astype(np.int32)))
            traj.discrete_log_probs.CopyFrom(to_tensor(np.stack(self._disc_lp).astype(np.float32)))
            if self._masks:
                traj.action_masks.CopyFrom(to_tensor(np.stack(self._masks)))
        if self._memories:
            if len(self._memories) != len(self._rewards):
                raise ValueError("every step of a recurrent policy needs its memory (add_step(memory=...))")
            traj.memories.CopyFrom(to_tensor(np.stack(self._memories)))
        if next_observations is not None:
            traj.next_observations.extend(to_tensor(observation_array(o, spec.kind == pb.OBSERVATION_KIND_VISUAL)) for o, spec in zip(next_observations, self.spec.observations))
        self._reset()
        return traj
