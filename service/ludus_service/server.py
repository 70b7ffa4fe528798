"""Assembles the gRPC server: trainer service, standard health checking and reflection."""
from __future__ import annotations

import logging
import time
from concurrent import futures
from dataclasses import dataclass
from typing import Optional

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ludus.v1 import trainer_pb2 as pb
from ludus.v1 import trainer_pb2_grpc as pb_grpc
from ludus_service.registry import BehaviorRegistry
from ludus_service.security import SecurityConfig
from ludus_service.servicer import TrainerServicer

log = logging.getLogger(__name__)

TRAINER_SERVICE = pb.DESCRIPTOR.services_by_name["Trainer"].full_name  # "ludus.v1.Trainer"
#: Large visual trajectories must pass: raise gRPC's 4 MiB default on both ends (the SDK uses the same).
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    registry: BehaviorRegistry
    health: health.HealthServicer

    def stop(self, grace: Optional[float] = 5.0, drain_seconds: float = 0.0) -> None:
        """Graceful shutdown: health NOT_SERVING and new trainer RPCs refused (UNAVAILABLE, which
        clients retry) while the port stays open for `drain_seconds`; then in-flight RPCs get
        `grace` seconds; then every behaviour finishes accepted work (an update in flight
        included) and writes its checkpoint."""
        self.health.enter_graceful_shutdown()
        self.registry.shutting_down = True
        if drain_seconds > 0:
            time.sleep(drain_seconds)
        self.server.stop(grace).wait()
        self.registry.close()


def start_server(
    registry: BehaviorRegistry,
    host: str = "0.0.0.0",
    port: int = 50051,
    max_workers: int = 64,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    security: Optional[SecurityConfig] = None,
) -> RunningServer:
    """`security` (ludus_service.security): TLS / mutual TLS and bearer-token auth; None = plaintext, no auth."""
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),
        *KEEPALIVE_OPTIONS,
    ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rpc"), options=options,
                         interceptors=security.interceptors() if security else None)
    pb_grpc.add_TrainerServicer_to_server(TrainerServicer(registry), server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (TRAINER_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    credentials = security.server_credentials() if security else None
    bound = server.add_secure_port(f"{host}:{port}", credentials) if credentials else server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"could not bind {host}:{port}")
    server.start()
    for service in ("", TRAINER_SERVICE):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, bound, registry, health_servicer)
