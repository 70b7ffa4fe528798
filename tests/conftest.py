"""Shared fixtures: a real Ludus server on a free loopback port, and clients connected to it."""
from __future__ import annotations

import os
import sys
from typing import Iterator

import pytest
import torch

from ludus_client import LudusClient
from ludus_service.registry import BehaviorRegistry
from ludus_service.server import RunningServer, start_server

torch.set_num_threads(1)
#: Learner device for the in-process test server: cpu by default; LUDUS_TEST_DEVICE=cuda runs the
#: same tests against a GPU learner (done on a GPU host; CI has none).
TEST_DEVICE = os.environ.get("LUDUS_TEST_DEVICE", "cpu")


@pytest.fixture
def server(tmp_path) -> Iterator[RunningServer]:
    """A real gRPC server (trainer, health, reflection) on 127.0.0.1:<free port>, with its demo
    directory (RecordDemonstration, demo_path) in the test's temporary folder."""
    registry = BehaviorRegistry(device=TEST_DEVICE, seed=0, demo_dir=tmp_path / "demos")
    running = start_server(registry, host="127.0.0.1", port=0)
    yield running
    running.stop(grace=1.0)


@pytest.fixture
def client(server: RunningServer) -> Iterator[LudusClient]:
    with LudusClient(f"127.0.0.1:{server.port}", timeout=30.0) as c:
        c.wait_ready(10)
        yield c
