"""Prometheus metrics (prometheus-client), named by Prometheus conventions.

One `ludus_` prefix, base units (`_seconds`, `_bytes`), `_total` counters, bounded labels: the
behaviour name (registered behaviours only; "" for requests naming an unknown one), the RPC method,
the status code, a fixed set of reasons, and ML-Agents' statistic names. Never agent ids.
Each server owns its CollectorRegistry, so several servers (tests) can live in one process.
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector, start_http_server
from prometheus_client.core import GaugeMetricFamily

#: Updates take from tens of milliseconds (CartPole) to minutes (large visual networks).
UPDATE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
REJECT_REASONS = ("invalid", "stale_policy_version", "unknown_policy_version", "backpressure")


class _CudaMemoryCollector:
    """Device memory in use, read at scrape time (only when the learner is on CUDA)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily("ludus_device_memory_allocated_bytes", "Memory held by torch tensors on the learner device.", labels=["device"])
        if self.device.type == "cuda" and torch.cuda.is_available():
            family.add_metric([str(self.device)], float(torch.cuda.memory_allocated(self.device)))
        yield family


class ServerMetrics:
    def __init__(self, device: Optional[torch.device] = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.rpc_started = Counter("ludus_rpc_started_total", "RPCs started, by method.", ["method"], registry=r)
        self.rpc_handled = Counter("ludus_rpc_handled_total", "RPCs completed, by method and gRPC status code.", ["method", "code"], registry=r)
        self.rpc_duration = Histogram("ludus_rpc_duration_seconds", "RPC latency (whole stream for streaming RPCs).", ["method"], buckets=FAST_BUCKETS, registry=r)
        self.trajectories_accepted = Counter("ludus_trajectories_accepted_total", "Trajectories accepted for training.", ["behavior"], registry=r)
        self.steps_accepted = Counter("ludus_env_steps_accepted_total", "Environment steps accepted for training.", ["behavior"], registry=r)
        self.trajectories_rejected = Counter("ludus_trajectories_rejected_total", "Trajectories rejected or dropped, by reason.", ["behavior", "reason"], registry=r)
        self.steps_rejected = Counter("ludus_env_steps_rejected_total", "Environment steps rejected or dropped, by reason.", ["behavior", "reason"], registry=r)
        self.steps_trained = Counter("ludus_env_steps_processed_total", "Environment steps processed into the update buffer.", ["behavior"], registry=r)
        self.buffer_steps = Gauge("ludus_update_buffer_steps", "Steps waiting in the update buffer.", ["behavior"], registry=r)
        self.buffer_capacity = Gauge("ludus_update_buffer_capacity_steps", "buffer_size: steps that trigger an update.", ["behavior"], registry=r)
        self.queue_steps = Gauge("ludus_intake_queue_steps", "Accepted steps not yet processed by the learner.", ["behavior"], registry=r)
        self.update_duration = Histogram("ludus_update_duration_seconds", "Duration of one policy update (all epochs).", ["behavior"], buckets=UPDATE_BUCKETS, registry=r)
        self.value_estimation = Histogram("ludus_value_estimation_duration_seconds", "Duration of one trajectory's value estimation.", ["behavior"], buckets=FAST_BUCKETS, registry=r)
        self.policy_version = Gauge("ludus_policy_version", "Current policy version.", ["behavior"], registry=r)
        self.training_stat = Gauge("ludus_training_statistic", "Latest update statistics under ML-Agents' names (losses, entropy, learning rate, rewards).", ["behavior", "statistic"], registry=r)
        self.checkpoints = Counter("ludus_checkpoints_written_total", "Checkpoints written.", ["behavior"], registry=r)
        self.behaviors = Gauge("ludus_behaviors", "Registered behaviours.", registry=r)
        self.replay_buffer_steps = Gauge("ludus_replay_buffer_steps", "Steps held in an off-policy (SAC) replay buffer.", ["behavior"], registry=r)
        self.replay_buffer_bytes = Gauge("ludus_replay_buffer_bytes", "Memory preallocated by an off-policy (SAC) replay buffer.", ["behavior"], registry=r)
        # The standard process_* (CPU seconds, resident memory, open fds) and python_info series.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        if device is not None:
            r.register(_CudaMemoryCollector(device))

    def serve(self, port: int, addr: str = "0.0.0.0"):
        """Start the /metrics HTTP endpoint; returns the bound port."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        return server, server.server_port

    def for_behavior(self, name: str) -> "BehaviorMetrics":
        return BehaviorMetrics(self, name)


class BehaviorMetrics:
    """Metrics of one behaviour, labels bound once."""

    def __init__(self, server: ServerMetrics, name: str) -> None:
        self.server = server
        self.name = name
        self.trajectories_accepted = server.trajectories_accepted.labels(name)
        self.steps_accepted = server.steps_accepted.labels(name)
        self.steps_processed = server.steps_trained.labels(name)
        self.buffer_steps = server.buffer_steps.labels(name)
        self.queue_steps = server.queue_steps.labels(name)
        self.update_duration = server.update_duration.labels(name)
        self.value_estimation = server.value_estimation.labels(name)
        self.policy_version = server.policy_version.labels(name)
        self.checkpoints = server.checkpoints.labels(name)
        for reason in REJECT_REASONS:  # export zeros so dashboards and rate() see the series from the start
            server.trajectories_rejected.labels(name, reason)
            server.steps_rejected.labels(name, reason)

    def set_capacity(self, steps: int) -> None:
        self.server.buffer_capacity.labels(self.name).set(steps)

    def watch_replay_buffer(self, replay) -> None:
        """Report a replay buffer's fill and footprint, read at scrape time (no learner-thread work)."""
        self.server.replay_buffer_steps.labels(self.name).set_function(lambda: replay.num_experiences)
        self.server.replay_buffer_bytes.labels(self.name).set_function(lambda: replay.nbytes)

    def rejected(self, reason: str, steps: int) -> None:
        self.server.trajectories_rejected.labels(self.name, reason).inc()
        self.server.steps_rejected.labels(self.name, reason).inc(steps)

    def accepted(self, steps: int) -> None:
        self.trajectories_accepted.inc()
        self.steps_accepted.inc(steps)

    def training_stats(self, stats: Dict[str, float]) -> None:
        for key, value in stats.items():
            self.server.training_stat.labels(self.name, key).set(value)
