"""Generated stubs do not drift from proto/, the SDK imports without torch, the CLI starts and stops."""
from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_generated_stubs_match_proto(tmp_path):
    """`make proto` output must be committed: regenerate into a temp dir and compare byte for byte."""
    env = {**os.environ, "PYTHON": sys.executable}
    subprocess.run(["bash", str(ROOT / "scripts/gen_proto.sh"), str(tmp_path)], check=True, env=env)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert generated, "protoc generated nothing"
    for rel in generated:
        committed = ROOT / "client" / rel
        assert committed.exists(), f"{rel} is generated but not committed: run `make proto`"
        assert committed.read_bytes() == (tmp_path / rel).read_bytes(), f"{rel} drifted from proto/: run `make proto`"


def test_client_sdk_imports_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
        "import ludus_client, ludus_client.gym_runner, ludus_client.stream\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_ludus_server_cli_serves_health_and_exits_cleanly_on_sigterm():
    proc = subprocess.Popen(
        [sys.executable, "-m", "ludus_service.cli", "--host", "127.0.0.1", "--port", "0", "--device", "cpu", "--grace", "2", "--metrics-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        line = proc.stdout.readline()
        assert "listening on 127.0.0.1:" in line, line
        port = int(line.split("127.0.0.1:")[1].split()[0])
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for service in ("", "ludus.v1.Trainer"):
                assert stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_ludus_server_rejects_a_bad_config(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("behaviors:\n  X:\n    hyperparameters:\n      bach_size: 3\n")
    out = subprocess.run([sys.executable, "-m", "ludus_service.cli", "--port", "0", "--config", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "behaviors.X.hyperparameters.bach_size" in out.stderr
