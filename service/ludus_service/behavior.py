"""A registered behaviour: its trainer, its policy versions, the intake feeding the trainer, and its
checkpoints.

Intake is a bounded queue drained by one learner thread per behaviour, so many clients can stream
into one behaviour while the trainer sees trajectories one at a time, each applied whole. The queue
is bounded in steps: when full, `submit` waits (flow control) and then answers RESOURCE_EXHAUSTED
instead of growing memory. EstimateValues and Update take the same lock as the learner thread.
On close, everything already accepted is processed before the final checkpoint, so an orderly
shutdown loses nothing that was acknowledged.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Deque, Dict, List, Optional, Tuple

import numpy as np
import torch

from ludus_service.buffer import AgentBuffer
from ludus_service.checkpoint import remove_stale_temp_files, save_checkpoint
from ludus_service.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from ludus_service.metrics import BehaviorMetrics, ServerMetrics
from ludus_service.policy_store import PolicyStore
from ludus_service.settings import TrainerSettings, resolve_settings, settings_to_dict
from ludus_service.spec import ActionSpec, BehaviorSpec, ObservationSpec
from ludus_service.sac_trainer import SACTrainer
from ludus_service.trainer import PPOTrainer
from ludus_service.validation import BatchData, TrajectoryData, check_sequence_layout

log = logging.getLogger(__name__)

STALE = "stale_policy_version"
UNKNOWN_VERSION = "unknown_policy_version"


@dataclass
class SubmitResult:
    accepted_steps: int
    dropped_steps: int
    drop_reason: Optional[str]
    policy_version: int
    total_steps: int
    latest_stats: Dict[str, float] = field(default_factory=dict)


def spec_to_dict(spec: BehaviorSpec) -> Dict[str, Any]:
    return dataclasses.asdict(spec)


def spec_from_dict(data: Dict[str, Any]) -> BehaviorSpec:
    observations = tuple(ObservationSpec(o["name"], tuple(o["shape"]), o["kind"], o["observation_type"]) for o in data["observations"])
    a = data["actions"]
    return BehaviorSpec(observations, ActionSpec(a["continuous_size"], tuple(a["discrete_branches"])))


class Behavior:
    def __init__(
        self,
        name: str,
        spec: BehaviorSpec,
        settings: TrainerSettings,
        explicit_settings: Optional[dict] = None,
        device: torch.device | str = "cpu",
        seed: Optional[int] = None,
        metrics: Optional[BehaviorMetrics] = None,
        checkpoint_dir: Optional[Path] = None,
        max_queued_steps: Optional[int] = None,
        intake_timeout: float = 10.0,
        restore: Optional[Tuple[Dict[str, torch.Tensor], dict]] = None,
        initial_weights: Optional[Dict[str, torch.Tensor]] = None,
        demonstrations: Optional[Dict[str, AgentBuffer]] = None,
    ) -> None:
        self.name = name
        self.spec = spec
        self.settings = settings
        #: The settings a client passed at registration, used to check idempotent re-registration.
        self.explicit_settings = explicit_settings or {}
        trainer_class = SACTrainer if settings.trainer_type == "sac" else PPOTrainer
        self.trainer = trainer_class(spec, settings, device, seed, demonstrations=demonstrations)
        self.store = PolicyStore(name, spec=spec, network=settings.network_settings)
        self.metrics = metrics or ServerMetrics().for_behavior(name)
        self.checkpoint_dir = checkpoint_dir / name if checkpoint_dir is not None else None
        self.max_queued_steps = max_queued_steps or max(2 * settings.hyperparameters.buffer_size, 8192)
        self.intake_timeout = intake_timeout
        self.dropped_stale_steps = 0
        self.accepted_steps = 0
        if initial_weights is not None:
            self.trainer.load_weights(initial_weights)
        if restore is not None:
            tensors, meta = restore
            self.trainer.load_state(tensors, meta["trainer"])
            self.accepted_steps = int(meta["accepted_steps"])
            self.dropped_stale_steps = int(meta["dropped_stale_steps"])
        self._last_checkpoint_step = self.trainer.step
        self._lock = threading.RLock()  # guards the trainer
        self._intake = threading.Condition()
        self._queue: Deque[TrajectoryData] = deque()
        self._queued_steps = 0
        self._busy = False
        self._stopping = False
        if self.checkpoint_dir is not None:
            remove_stale_temp_files(self.checkpoint_dir)
        self.metrics.set_capacity(settings.hyperparameters.buffer_size)
        if isinstance(self.trainer, SACTrainer):
            self.metrics.watch_replay_buffer(self.trainer.replay)
        self._publish()
        self._worker = threading.Thread(target=self._learn_loop, name=f"learner-{name}", daemon=True)
        self._worker.start()

    @classmethod
    def from_checkpoint(cls, tensors: Dict[str, torch.Tensor], meta: dict, inference: Optional[bool] = None, **kwargs) -> "Behavior":
        """Rebuild a behaviour exactly as checkpointed (--resume); `inference` overrides the
        checkpointed mode (`ludus-server --resume --inference` serves a trained policy untrained)."""
        settings = resolve_settings(meta["settings"])
        if inference is not None:
            settings = dataclasses.replace(settings, inference=inference)
        return cls(meta["behavior_name"], spec_from_dict(meta["spec"]), settings, meta.get("explicit_settings") or {},
                   restore=(tensors, meta), **kwargs)

    # -- versions ----------------------------------------------------------------------------------
    @property
    def policy_version(self) -> int:
        return self.trainer.policy_version

    @property
    def memory_size(self) -> int:
        """Memory size of the recurrent networks (0: not recurrent)."""
        return self.trainer.optimizer.critic.memory_size

    @property
    def signal_names(self) -> List[str]:
        return self.trainer.optimizer.signal_names

    def _publish(self) -> None:
        tensors, architecture = self.trainer.optimizer.actor.export()
        self.store.publish(self.trainer.policy_version, self.trainer.step, tensors, architecture)
        self.metrics.policy_version.set(self.trainer.policy_version)

    # -- intake ------------------------------------------------------------------------------------
    def _drop(self, traj: TrajectoryData, reason: str) -> SubmitResult:
        with self._intake:
            self.dropped_stale_steps += traj.length
        self.metrics.rejected(reason, traj.length)
        return SubmitResult(0, traj.length, reason, self.trainer.policy_version, self.accepted_steps, self.trainer.latest_stats)

    def submit(self, traj: TrajectoryData, field_name: str = "trajectory") -> SubmitResult:
        current = self.trainer.policy_version
        if traj.policy_version > current:
            # Only possible after a restart from an older checkpoint: the acting policy is unknown here.
            return self._drop(traj, UNKNOWN_VERSION)
        if getattr(self.trainer, "on_policy", True) and current - traj.policy_version > self.settings.max_policy_lag:
            return self._drop(traj, STALE)
        if self.settings.inference:
            return self._record_inference(traj)
        with self._intake:
            has_room = lambda: self._stopping or self._queued_steps == 0 or self._queued_steps + traj.length <= self.max_queued_steps
            if not self._intake.wait_for(has_room, timeout=self.intake_timeout) or self._stopping:
                self.metrics.rejected("backpressure", traj.length)
                why = "is shutting down" if self._stopping else f"intake is full ({self._queued_steps} steps queued)"
                raise ResourceExhausted(field_name, f"behaviour {self.name!r} {why}; retry later")
            self._queue.append(traj)
            self._queued_steps += traj.length
            self.accepted_steps += traj.length
            total = self.accepted_steps
            self.metrics.queue_steps.set(self._queued_steps)
            self._intake.notify_all()
        self.metrics.accepted(traj.length)
        return SubmitResult(traj.length, 0, None, self.trainer.policy_version, total, self.trainer.latest_stats)

    def _record_inference(self, traj: TrajectoryData) -> SubmitResult:
        """Inference mode: counted and summarised on the caller's thread, no queue, no learner work."""
        with self._lock:
            stats = self.trainer.record_inference(traj, self.accepted_steps)
            self.accepted_steps += traj.length
            total = self.accepted_steps
        if stats is not None:
            self.metrics.training_stats(stats)
        self.metrics.accepted(traj.length)
        return SubmitResult(traj.length, 0, None, self.trainer.policy_version, total, self.trainer.latest_stats)

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
                    started = time.perf_counter()
                    self.trainer.process_trajectory(traj)
                    self.metrics.value_estimation.observe(time.perf_counter() - started)
                    self.metrics.steps_processed.inc(traj.length)
                    while self.trainer.ready_to_update():  # SAC: one capped burst of gradient steps per call
                        self._run_update()
                        if self._queue:  # take queued trajectories between bursts; the rest stays owed
                            break
                    self.metrics.buffer_steps.set(self.trainer.buffered_steps)
            except Exception:  # validated input should never fail here; keep the learner alive regardless
                log.exception("%s: failed to process a trajectory of agent %r", self.name, traj.agent_id)
            finally:
                with self._intake:
                    self._queued_steps -= traj.length
                    self.metrics.queue_steps.set(self._queued_steps)
                    self._busy = False
                    self._intake.notify_all()

    def _run_update(self) -> None:
        started = time.perf_counter()
        stats = self.trainer.update_policy()
        elapsed = time.perf_counter() - started
        self._publish()
        self.metrics.update_duration.observe(elapsed)
        self.metrics.training_stats(stats)
        log.info("%s: policy version %d after a %.2fs update", self.name, self.trainer.policy_version, elapsed)
        interval = self.settings.checkpoint_interval
        if self.checkpoint_dir is not None and self.trainer.step // interval > self._last_checkpoint_step // interval:
            self.checkpoint()

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Block until every accepted trajectory has been processed (tests, shutdown, benchmarks)."""
        with self._intake:
            return self._intake.wait_for(lambda: not self._queue and not self._busy, timeout)

    @property
    def queued_steps(self) -> int:
        return self._queued_steps

    # -- checkpoints -------------------------------------------------------------------------------
    def checkpoint(self) -> Optional[Path]:
        """Write a checkpoint now (no-op without a checkpoint directory, and in inference mode:
        nothing trainable changed, and the checkpoint of the trained run stays the latest)."""
        if self.checkpoint_dir is None or self.settings.inference:
            return None
        with self._lock:
            meta = {
                "behavior_name": self.name,
                "spec": spec_to_dict(self.spec),
                "settings": settings_to_dict(self.settings),
                "explicit_settings": self.explicit_settings,
                "accepted_steps": self.accepted_steps,
                "dropped_stale_steps": self.dropped_stale_steps,
                "trainer": self.trainer.state_metadata(),
            }
            path = save_checkpoint(self.checkpoint_dir, self.trainer.step, self.trainer.state_tensors(), meta,
                                   self.settings.keep_checkpoints)
            self._last_checkpoint_step = self.trainer.step
        self.metrics.checkpoints.inc()
        log.info("%s: checkpoint %s", self.name, path)
        return path

    # -- direct optimizer access -------------------------------------------------------------------
    def estimate_values(self, observations: List[np.ndarray], next_observations: Optional[List[np.ndarray]], done: bool, agent_id: str,
                        interrupted: bool = False):
        with self._lock:
            values, bootstrap, memories = self.trainer.estimate_values(observations, next_observations, done, agent_id, interrupted)
            return values, bootstrap, memories, self.trainer.policy_version

    def signal_rewards(self, observations: List[np.ndarray], next_observations: Optional[List[np.ndarray]], done: bool,
                       continuous_actions: Optional[np.ndarray] = None, discrete_actions: Optional[np.ndarray] = None,
                       rewards: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
        """Per-step reward of every signal whose inputs are given (read-only; see PPOTrainer.signal_rewards)."""
        with self._lock:
            return self.trainer.signal_rewards(observations, next_observations, done, continuous_actions, discrete_actions, rewards)

    def evaluate_signals(self, traj: TrajectoryData) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
        """SubmitTrajectories with evaluate_signals: per-signal rewards and critic values of one
        trajectory, read-only (recurrent critics start from a zero memory: the training run's
        memories are not disturbed)."""
        with self._lock:
            rewards = self.trainer.signal_rewards(traj.observations, traj.next_observations, traj.done,
                                                  traj.continuous_actions, traj.discrete_actions, traj.rewards)
            values = self.trainer.value_snapshot(traj.observations)
        return rewards, values

    def update(self, batch: BatchData, num_sequences: int) -> Tuple[Dict[str, float], int]:
        if self.settings.inference:
            raise FailedPrecondition("behavior_name", f"behaviour {self.name!r} is in inference mode (inference: true); it is not trained")
        seq = self.trainer.optimizer.sequence_length
        if batch.length % seq:
            raise InvalidArgument("batch", f"has {batch.length} rows, not whole sequences of sequence_length {seq}")
        expected = batch.length // seq
        if num_sequences != expected:
            raise InvalidArgument("num_sequences", f"must equal the batch's {batch.length} steps / sequence_length {seq} = {expected}, got {num_sequences}")
        check_sequence_layout(batch, seq)
        with self._lock:
            stats = self.trainer.update_from_batch(batch, num_sequences)
            self._publish()
            self.metrics.training_stats(stats)
            return stats, self.trainer.policy_version

    def close(self, checkpoint: bool = True) -> None:
        """Stop intake, finish what was accepted (including an update in flight), checkpoint."""
        with self._intake:
            self._stopping = True
            self._intake.notify_all()
        self._worker.join()
        if checkpoint:
            try:
                self.checkpoint()
            except OSError:
                log.exception("%s: final checkpoint failed", self.name)
        self.store.close()
