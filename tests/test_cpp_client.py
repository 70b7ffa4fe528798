"""The C++ client (client/cpp) built with CMake against the system's gRPC, run against a real
ludus-server process.

The example trains a C++ corridor simulator end to end: RegisterBehavior, GetPolicy, acting with the
fetched policy in C++, SubmitTrajectories with per-trajectory acknowledgements, WatchPolicy for each
new version, GetPolicy again with a SHA-256 check. Independently of the example's own report, the
Python SDK asks the server (DescribeBehavior, GetPolicy) what it received and served, and the C++
policy evaluation is compared with the Python SDK's LocalPolicy on the same policy file. The example
also survives its server being SIGKILLed and resumed from a checkpoint (ReliableTrajectoryStream,
ReliablePolicyWatch), and gives up when the server stays away.

Without cmake / protoc / grpc_cpp_plugin / a C++ compiler / grpc++ these tests skip, unless
LUDUS_REQUIRE_TOOLCHAINS=1 (CI: .ci/run), where they fail. The build directory client/cpp/build
(git-ignored) is reused, so only the first run pays for the cold build.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess

import numpy as np
import pytest

from ludus_client import BehaviorSpec, LocalPolicy, LudusClient, LudusError, TrajectoryBuilder
from ludus_service.checkpoint import checkpoint_files, load_checkpoint
from serverproc import ServerProcess, wait_until

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCE_DIR = ROOT / "client" / "cpp"
BUILD_DIR = SOURCE_DIR / "build"
# Generous: a cold build of the generated stubs on 2 cores shared with other test runs takes minutes.
BUILD_TIMEOUT_S = 1200
RUN_TIMEOUT_S = 600


def _missing(what: str) -> None:
    if os.environ.get("LUDUS_REQUIRE_TOOLCHAINS") == "1":
        pytest.fail(f"{what} is not installed but LUDUS_REQUIRE_TOOLCHAINS=1")
    pytest.skip(f"{what} is not installed")


def _check_toolchain() -> str:
    for tool in ("cmake", "protoc", "grpc_cpp_plugin"):
        if shutil.which(tool) is None:
            _missing(tool)
    if not any(shutil.which(cxx) for cxx in ("c++", "g++", "clang++")):
        _missing("a C++ compiler")
    # Debian/Ubuntu find gRPC through pkg-config; without pkg-config, CMake looks for gRPCConfig.cmake
    # and a missing gRPC shows up as a configure failure below.
    pkg_config = shutil.which("pkg-config")
    if pkg_config and subprocess.run([pkg_config, "--exists", "grpc++", "protobuf"]).returncode != 0:
        _missing("grpc++ / protobuf development files (libgrpc++-dev, libprotobuf-dev)")
    return shutil.which("cmake")


def _run(cmd, timeout: float) -> None:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{out.stdout[-6000:]}\n{out.stderr[-6000:]}"


@pytest.fixture(scope="module")
def cpp_bin() -> pathlib.Path:
    cmake = _check_toolchain()
    # Configuring an existing build directory only re-checks; the build recompiles what changed.
    _run([cmake, "-S", SOURCE_DIR, "-B", BUILD_DIR, "-DCMAKE_BUILD_TYPE=Release"], BUILD_TIMEOUT_S)
    _run([cmake, "--build", BUILD_DIR, "-j2"], BUILD_TIMEOUT_S)
    return BUILD_DIR


@pytest.fixture(scope="module")
def server():
    proc = ServerProcess([])
    yield proc
    proc.stop()


def _summary(out: subprocess.CompletedProcess) -> dict:
    assert out.returncode == 0, f"exit {out.returncode}\nstdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cpp_example_trains_and_receives_new_policy_versions(cpp_bin, server):
    steps = 512  # buffer_size 128: the example waits for a new version after each full buffer
    out = subprocess.run([cpp_bin / "ludus_cpp_example", "--target", server.target, "--steps", str(steps),
                          "--behavior", "CppCorridorTest", "--wait-s", "300"],
                         capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    summary = _summary(out)

    assert summary["initial_version"] == 1
    assert summary["steps_submitted"] == steps
    assert summary["steps_accepted"] == steps and summary["steps_dropped"] == 0
    # Each version acts for 128..143 steps (a full buffer, then the rest of the trajectory piece of at
    # most 16 steps), so 512 steps span exactly four versions, each swapped in from WatchPolicy.
    assert summary["acted_with_versions"] == [1, 2, 3, 4]
    watched = summary["watched_versions"]
    assert watched[0] == 2 and watched == sorted(set(watched))
    assert summary["fetched_version"] == watched[-1] > 1
    assert summary["sha256_ok"] is True

    # The server's own account, read through the Python SDK.
    with LudusClient(server.target) as client:
        described = client.describe("CppCorridorTest")
        assert described.total_steps == steps
        assert described.policy_version >= summary["fetched_version"]
        blob = client.get_policy("CppCorridorTest", summary["fetched_version"])
    assert len(blob.data) == summary["fetched_size"]
    assert blob.sha256 == summary["fetched_sha256"]


def test_cpp_policy_evaluation_matches_python_sdk(cpp_bin, server, tmp_path):
    """ludus::MlpPolicy (deterministic) gives LocalPolicy's actions and log-probabilities on a trained,
    normalising, hybrid (continuous + two discrete branches) policy."""
    name = "CppProbeTest"
    spec = BehaviorSpec.vector(obs_size=3, continuous_size=2, discrete_branches=[3, 2])
    rng = np.random.default_rng(0)
    with LudusClient(server.target) as client:
        client.register(name, spec, settings={"hyperparameters": {"batch_size": 32, "buffer_size": 64},
                                              "network_settings": {"normalize": True, "hidden_units": 16}})
        # 64 steps of off-centre observations: one update, and a normaliser far from mean 0 / var 1.
        builder = TrajectoryBuilder(spec, "probe-agent")
        for _ in range(64):
            builder.add_step([rng.normal(3.0, 2.0, 3).astype(np.float32)], rng.normal(size=2).astype(np.float32),
                             np.array([rng.integers(3), rng.integers(2)]), np.full(2, -1.0, np.float32),
                             np.full(2, -0.9, np.float32), float(rng.normal()), 1)
        client.submit(name, [builder.build([rng.normal(3.0, 2.0, 3).astype(np.float32)], done=False)])
        wait_until(lambda: client.describe(name).policy_version >= 2, 120, "the update after 64 steps")
        blob = client.get_policy(name)
    policy_file = tmp_path / "policy.safetensors"
    policy_file.write_bytes(blob.data)

    observations = rng.normal(3.0, 3.0, (6, 3)).astype(np.float32)
    lines = "".join(" ".join(repr(float(v)) for v in row) + "\n" for row in observations)
    out = subprocess.run([cpp_bin / "ludus_policy_probe", policy_file], input=lines, capture_output=True,
                         text=True, timeout=RUN_TIMEOUT_S)
    assert out.returncode == 0, out.stderr
    got = [json.loads(line) for line in out.stdout.splitlines()]
    want = LocalPolicy.from_bytes(blob.data).act([observations], deterministic=True)
    assert len(got) == len(observations)
    np.testing.assert_allclose([g["continuous"] for g in got], want.continuous_actions, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose([g["continuous_log_probs"] for g in got], want.continuous_log_probs, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal([g["discrete"] for g in got], want.discrete_actions)
    np.testing.assert_allclose([g["discrete_log_probs"] for g in got], want.discrete_log_probs, rtol=1e-4, atol=1e-5)


def test_cpp_example_reports_server_errors(cpp_bin, server):
    """A request the server rejects ends the example with exit 1 and the server's message."""
    out = subprocess.run([cpp_bin / "ludus_cpp_example", "--target", server.target, "--behavior", "bad name!"],
                         capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "error: INVALID_ARGUMENT" in out.stderr and "behavior_name" in out.stderr
    assert out.stdout == ""


def _example(cpp_bin: pathlib.Path, target: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([cpp_bin / "ludus_cpp_example", "--target", target, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(example: subprocess.Popen) -> subprocess.CompletedProcess:
    try:
        out, err = example.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        example.kill()
        out, err = example.communicate()
    return subprocess.CompletedProcess(example.args, example.returncode, out, err)


def test_cpp_example_survives_sigkill_and_resume_of_the_server(cpp_bin, tmp_path):
    """Like test_production's SIGKILL + --resume test, for the C++ client: the trainer dies mid-run and
    comes back from its checkpoint on the same port; the example, never restarted, reconnects by itself
    (ReliableTrajectoryStream resends the unacknowledged trajectory, ReliablePolicyWatch reopens and
    delivers the resumed server's policy), reaches its step target, and training goes on."""
    name = "CppResume"
    ckpt = tmp_path / "checkpoints"
    config = tmp_path / "ludus.yaml"  # the example's settings leave checkpoint_interval at ML-Agents' 500000
    config.write_text(f"behaviors:\n  {name}:\n    checkpoint_interval: 256\n")
    server_args = ["--checkpoint-dir", str(ckpt), "--seed", "0", "--config", str(config)]
    steps = 12_000  # a few seconds of acting; the server is killed at its first checkpoint (~300 steps)
    first = ServerProcess(server_args)
    second = None
    example = _example(cpp_bin, first.target, "--steps", str(steps), "--behavior", name, "--wait-s", "120")
    try:
        wait_until(lambda: checkpoint_files(ckpt / name) or example.poll() is not None, 120, "the first checkpoint")
        assert example.poll() is None, f"the example ended before the server was killed:\n{_finish(example)}"
        first.proc.send_signal(signal.SIGKILL)
        first.wait(10)
        _, saved = checkpoint_files(ckpt / name)[-1]
        _, meta = load_checkpoint(saved)
        saved_version, saved_steps = meta["trainer"]["policy_version"], meta["accepted_steps"]

        second = ServerProcess([*server_args, "--resume"], port=first.port)
        summary = _summary(_finish(example))
        with LudusClient(second.target) as client:
            final = client.describe(name)
    finally:
        if example.poll() is None:
            example.kill()
            example.wait()
        first.stop()
        if second is not None:
            second.stop()

    assert summary["steps_submitted"] == steps  # the step target, with the same process throughout
    assert summary["steps_accepted"] + summary["steps_dropped"] == steps  # one acknowledgement per trajectory
    assert summary["reconnects"] > 0 and summary["watch_reconnects"] > 0
    assert summary["sha256_ok"] is True
    # Training continued on the resumed server, with the example's steps, and the example followed it.
    assert final.policy_version > saved_version and final.total_steps > saved_steps
    assert saved_version < summary["fetched_version"] <= final.policy_version
    assert summary["acted_with_versions"][-1] > saved_version


def test_cpp_example_gives_up_when_the_server_stays_away(cpp_bin):
    """No server comes back: after --give-up-s seconds of failures the streams stop retrying and the
    example exits 1 with the last transient error."""
    server = ServerProcess([])  # its own process: this test kills it
    example = _example(cpp_bin, server.target, "--steps", "100000000", "--behavior", "CppGiveUp", "--no-sync",
                       "--give-up-s", "2")
    try:
        with LudusClient(server.target) as client:
            def submitting() -> bool:
                try:
                    return client.describe("CppGiveUp").total_steps > 0
                except LudusError:  # not registered yet
                    return example.poll() is not None
            wait_until(submitting, 60, "the example's first trajectories")
        assert example.poll() is None, f"the example ended early:\n{_finish(example)}"
        server.proc.send_signal(signal.SIGKILL)
        server.wait(10)
        out = _finish(example)
    finally:
        if example.poll() is None:
            example.kill()
            example.wait()
        server.stop()
    assert out.returncode == 1, out
    assert "error: UNAVAILABLE: gave up after" in out.stderr, out.stderr
    assert out.stdout == ""
    # It kept retrying for the whole --give-up-s window (its own account), not the default 300 s.
    failing_for = float(re.search(r"gave up after ([0-9.]+) s of failures", out.stderr).group(1))
    assert 2.0 <= failing_for < 300, out.stderr
