"""A registered behaviour: its trainer, its policy versions, and the intake that feeds the trainer.

Intake is a bounded queue drained by one learner thread per behaviour, so many clients can stream
into one behaviour while the trainer sees trajectories one at a time, each applied whole. The queue
is bounded in steps: when full, `submit` waits (flow control) and then answers RESOURCE_EXHAUSTED
instead of growing memory. EstimateValues and Update take the same lock as the learner thread.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Deque, Dict, List, Optional, Tuple

import numpy as np
import torch

from ludus_service.errors import InvalidArgument, ResourceExhausted
from ludus_service.policy_store import PolicyStore
from ludus_service.settings import TrainerSettings
from ludus_service.spec import BehaviorSpec
from ludus_service.trainer import PPOTrainer
from ludus_service.validation import BatchData, TrajectoryData

log = logging.getLogger(__name__)


@dataclass
class SubmitResult:
    accepted_steps: int
    dropped_steps: int
    stale: bool
    policy_version: int
    total_steps: int
    latest_stats: Dict[str, float] = field(default_factory=dict)


class Behavior:
    def __init__(
        self,
        name: str,
        spec: BehaviorSpec,
        settings: TrainerSettings,
        explicit_settings: Optional[dict] = None,
        device: torch.device | str = "cpu",
        seed: Optional[int] = None,
        max_queued_steps: Optional[int] = None,
        intake_timeout: float = 10.0,
    ) -> None:
        self.name = name
        self.spec = spec
        self.settings = settings
        #: The settings a client passed at registration, used to check idempotent re-registration.
        self.explicit_settings = explicit_settings or {}
        self.trainer = PPOTrainer(spec, settings, device, seed)
        self.store = PolicyStore(name)
        self.max_queued_steps = max_queued_steps or max(2 * settings.hyperparameters.buffer_size, 8192)
        self.intake_timeout = intake_timeout
        self.dropped_stale_steps = 0
        self.accepted_steps = 0
        self._lock = threading.RLock()  # guards the trainer
        self._intake = threading.Condition()
        self._queue: Deque[TrajectoryData] = deque()
        self._queued_steps = 0
        self._busy = False
        self._stopping = False
        self._publish()
        self._worker = threading.Thread(target=self._learn_loop, name=f"learner-{name}", daemon=True)
        self._worker.start()

    # -- versions ----------------------------------------------------------------------------------
    @property
    def policy_version(self) -> int:
        return self.trainer.policy_version

    @property
    def signal_names(self) -> List[str]:
        return self.trainer.optimizer.signal_names

    def _publish(self) -> None:
        tensors, architecture = self.trainer.optimizer.actor.export()
        self.store.publish(self.trainer.policy_version, self.trainer.step, tensors, architecture)

    # -- intake ------------------------------------------------------------------------------------
    def submit(self, traj: TrajectoryData, field_name: str = "trajectory") -> SubmitResult:
        current = self.trainer.policy_version
        if traj.policy_version > current:
            raise InvalidArgument(f"{field_name}.policy_version", f"{traj.policy_version} is newer than the current version {current}")
        if current - traj.policy_version > self.settings.max_policy_lag:
            with self._intake:
                self.dropped_stale_steps += traj.length
            return SubmitResult(0, traj.length, True, current, self.accepted_steps, self.trainer.latest_stats)
        with self._intake:
            has_room = lambda: self._stopping or self._queued_steps == 0 or self._queued_steps + traj.length <= self.max_queued_steps
            if not self._intake.wait_for(has_room, timeout=self.intake_timeout):
                raise ResourceExhausted(f"{field_name}", f"intake of behaviour {self.name!r} is full ({self._queued_steps} steps queued); retry later")
            if self._stopping:
                raise ResourceExhausted(f"{field_name}", f"behaviour {self.name!r} is shutting down")
            self._queue.append(traj)
            self._queued_steps += traj.length
            self.accepted_steps += traj.length
            total = self.accepted_steps
            self._intake.notify_all()
        return SubmitResult(traj.length, 0, False, self.trainer.policy_version, total, self.trainer.latest_stats)

    def _learn_loop(self) -> None:
        while True:
            with self._intake:
                self._intake.wait_for(lambda: self._queue or self._stopping)
                if not self._queue:
                    return
                traj = self._queue.popleft()
                self._busy = True
            try:
                with self._lock:
                    self.trainer.process_trajectory(traj)
                    if self.trainer.ready_to_update():
                        started = time.perf_counter()
                        stats = self.trainer.update_policy()
                        self._publish()
                        log.info("%s: policy version %d after %.2fs update, %s", self.name, self.trainer.policy_version,
                                 time.perf_counter() - started, {k: round(v, 4) for k, v in stats.items()})
            except Exception:  # validated input should never fail here; keep the learner alive regardless
                log.exception("%s: failed to process a trajectory of agent %r", self.name, traj.agent_id)
            finally:
                with self._intake:
                    self._queued_steps -= traj.length
                    self._busy = False
                    self._intake.notify_all()

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Block until every accepted trajectory has been processed (tests, shutdown, benchmarks)."""
        with self._intake:
            return self._intake.wait_for(lambda: not self._queue and not self._busy, timeout)

    @property
    def queued_steps(self) -> int:
        return self._queued_steps

    # -- direct optimizer access -------------------------------------------------------------------
    def estimate_values(self, observations: List[np.ndarray], next_observations: Optional[List[np.ndarray]], done: bool, agent_id: str):
        with self._lock:
            values, bootstrap, memories = self.trainer.estimate_values(observations, next_observations, done, agent_id)
            return values, bootstrap, memories, self.trainer.policy_version

    def update(self, batch: BatchData, num_sequences: int) -> Tuple[Dict[str, float], int]:
        expected = batch.length  # sequence_length 1: one sequence per step
        if num_sequences != expected:
            raise InvalidArgument("num_sequences", f"must equal the batch's {batch.length} steps / sequence_length 1 = {expected}, got {num_sequences}")
        with self._lock:
            stats = self.trainer.update_from_batch(batch, num_sequences)
            self._publish()
            return stats, self.trainer.policy_version

    def close(self) -> None:
        with self._intake:
            self._stopping = True
            self._intake.notify_all()
        self._worker.join(timeout=30)
        self.store.close()
