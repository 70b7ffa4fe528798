"""The Node.js client (client/node) against a real ludus-server process.

The example trains a JS corridor simulator end to end: RegisterBehavior, GetPolicy, SubmitTrajectories
with per-trajectory acknowledgements, WatchPolicy for each new version, GetPolicy again with a SHA-256
check. Independently of the example's own report, the Python SDK asks the server (DescribeBehavior)
what it received, and the JS policy evaluation is compared with the Python SDK's LocalPolicy. The
example also survives the trainer being SIGKILLed and resumed from its checkpoint on the same port.

Without node/npm these tests skip, unless LUDUS_REQUIRE_TOOLCHAINS=1 (CI: .ci/run), where they fail.
node_modules is installed with `npm ci` from the committed lockfile, or reused when it already
matches that lockfile (client/node/node_modules is git-ignored).
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess

import numpy as np
import pytest

from ludus_client import LudusClient, LocalPolicy
from ludus_client.onnx_policy import OnnxPolicy
from ludus_service.checkpoint import checkpoint_files, load_checkpoint
from serverproc import ServerProcess, wait_until

ROOT = pathlib.Path(__file__).resolve().parents[1]
NODE_DIR = ROOT / "client" / "node"
EXAMPLE = NODE_DIR / "examples" / "train_corridor.js"
# Generous: the development machine shares 2 cores among several test runs.
NPM_TIMEOUT_S = 600
EXAMPLE_TIMEOUT_S = 600


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("LUDUS_REQUIRE_TOOLCHAINS") == "1":
            pytest.fail(f"{tool} is not installed but LUDUS_REQUIRE_TOOLCHAINS=1")
        pytest.skip(f"{tool} is not installed")
    return path


def _node_modules_match_lockfile() -> bool:
    """npm records what it installed in node_modules/.package-lock.json; equal package entries mean
    the installed tree is exactly the committed lockfile's."""
    installed = NODE_DIR / "node_modules" / ".package-lock.json"
    if not installed.exists():
        return False
    wanted = json.loads((NODE_DIR / "package-lock.json").read_text())["packages"]
    wanted.pop("", None)  # the root project itself is not in node_modules
    return json.loads(installed.read_text()).get("packages") == wanted


@pytest.fixture(scope="module")
def node() -> str:
    node_bin = _require("node")
    npm_bin = _require("npm")
    if not _node_modules_match_lockfile():
        out = subprocess.run([npm_bin, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, capture_output=True,
                             text=True, timeout=NPM_TIMEOUT_S)
        assert out.returncode == 0, f"npm ci failed:\n{out.stdout}\n{out.stderr}"
    return node_bin


@pytest.fixture(scope="module")
def ludus_server():
    proc = ServerProcess([])
    yield proc
    proc.stop()


def _run_example(node: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([node, str(EXAMPLE), *args], cwd=NODE_DIR, capture_output=True, text=True,
                          timeout=EXAMPLE_TIMEOUT_S)


def test_node_example_trains_and_receives_new_policy_versions(node, ludus_server):
    steps = 768  # three rollouts of buffer_size 256: three updates, versions 2, 3 and 4
    out = _run_example(node, "--target", ludus_server.target, "--steps", str(steps), "--behavior", "NodeCorridorTest",
                       "--timeout", "300")
    assert out.returncode == 0, f"example failed:\n{out.stderr}\n{out.stdout}\nserver:\n{ludus_server.output()}"
    summary = json.loads(out.stdout.strip().splitlines()[-1])

    assert summary["initial_version"] == 1 and summary["initial_sha256_ok"] is True
    # On-policy: the example waits, after each full buffer, for WatchPolicy to push the new version.
    assert summary["versions_seen"] == [2, 3, 4]
    assert summary["fetched_version"] == 4 and summary["sha256_ok"] is True
    assert summary["steps_submitted"] == steps and summary["steps_accepted"] == steps and summary["steps_dropped"] == 0

    # What the server itself says it received, asked through the Python SDK.
    with LudusClient(ludus_server.target, timeout=60) as client:
        described = client.describe("NodeCorridorTest")
        fetched = client.get_policy("NodeCorridorTest", summary["fetched_version"])
    assert described.total_steps == steps
    assert described.policy_version == 4
    assert list(described.spec.actions.discrete_branches) == [2]
    assert fetched.sha256 == summary["fetched_sha256"]


def test_node_policy_evaluation_matches_python_local_policy(node, ludus_server, tmp_path):
    """The JS MLP (client/node/src/policy.js) gives the same greedy actions and log-probabilities as
    the Python SDK for every corridor observation of a trained policy."""
    out = _run_example(node, "--target", ludus_server.target, "--steps", "256", "--behavior", "NodeCorridorEval")
    assert out.returncode == 0, out.stderr
    with LudusClient(ludus_server.target, timeout=60) as client:
        blob = client.get_policy("NodeCorridorEval")
    (tmp_path / "policy.safetensors").write_bytes(blob.data)
    observations = np.eye(7, dtype=np.float32)
    script = (
        "const fs = require('fs'); const { loadPolicy } = require('./src/policy');"
        f"const p = loadPolicy(fs.readFileSync({json.dumps(str(tmp_path / 'policy.safetensors'))}));"
        f"const obs = {json.dumps(observations.tolist())};"
        "console.log(JSON.stringify({version: p.version, acts: obs.map((o) => p.act([o], {deterministic: true}))}));"
    )
    js = subprocess.run([node, "-e", script], cwd=NODE_DIR, capture_output=True, text=True, timeout=120)
    assert js.returncode == 0, js.stderr
    result = json.loads(js.stdout)
    expected = LocalPolicy.from_bytes(blob.data).act([observations], deterministic=True)
    assert result["version"] == blob.version == 2
    assert [a["discrete"][0] for a in result["acts"]] == expected.discrete_actions[:, 0].tolist()
    np.testing.assert_allclose([a["discreteLogProbs"][0] for a in result["acts"]], expected.discrete_log_probs[:, 0],
                               rtol=1e-4, atol=1e-5)


def test_node_fetches_the_onnx_model_engines_run(node, ludus_server):
    """getPolicy(..., {format: 'onnx'}) gives the same bytes as the Python client's ONNX fetch."""
    out = _run_example(node, "--target", ludus_server.target, "--steps", "256", "--behavior", "NodeCorridorOnnx")
    assert out.returncode == 0, out.stderr
    script = (
        "const { LudusClient } = require('./src/ludus');"
        f"const c = new LudusClient({json.dumps(ludus_server.target)});"
        "c.getPolicy('NodeCorridorOnnx', 0, {format: 'onnx'}).then((b) => {"
        "  console.log(JSON.stringify({version: b.version, sha256: b.sha256, size: b.data.length, format: b.format})); c.close(); })"
        ".catch((e) => { console.error(String(e)); process.exit(1); });"
    )
    js = subprocess.run([node, "-e", script], cwd=NODE_DIR, capture_output=True, text=True, timeout=120)
    assert js.returncode == 0, js.stderr
    result = json.loads(js.stdout)
    with LudusClient(ludus_server.target, timeout=60) as client:
        blob = client.get_policy("NodeCorridorOnnx", version=result["version"], format="onnx")
    assert (result["sha256"], result["size"], result["format"]) == (blob.sha256, len(blob.data), "onnx")
    assert OnnxPolicy.from_bytes(blob.data).version == result["version"]


def test_node_example_reports_grpc_errors_with_their_status(node, ludus_server):
    out = _run_example(node, "--target", ludus_server.target, "--steps", "256", "--behavior", "not a valid name!")
    assert out.returncode == 1
    assert "gRPC INVALID_ARGUMENT (3)" in out.stderr and "behavior_name" in out.stderr, out.stderr


def test_node_tensor_codec_agrees_with_numpy(node):
    """encodeTensor writes the bytes numpy's little-endian dtypes write; decodeTensor reads numpy's
    bytes back and rejects a byte length that does not match the shape (DATA_LOSS)."""
    floats = np.array([[1.5, -2.25, 3.0e-8], [np.pi, -0.0, 65504.0]], dtype="<f4")
    ints = np.array([0, -1, 2**31 - 1, -(2**31)], dtype="<i4")
    script = (
        "const { encodeTensor, decodeTensor } = require('./src/ludus');"
        f"const f = encodeTensor({json.dumps(floats.ravel().tolist())}, [2, 3], 'FLOAT32');"
        f"const i = encodeTensor({json.dumps(ints.tolist())}, [4], 'INT32');"
        f"const back = decodeTensor({{dtype: 'DATA_TYPE_INT32', shape: [4], raw_data: Buffer.from('{ints.tobytes().hex()}', 'hex')}}, 'ints');"
        "let error = null;"
        "try { decodeTensor({dtype: 'DATA_TYPE_FLOAT32', shape: [2], raw_data: Buffer.alloc(7)}, 'trajectory.rewards'); }"
        "catch (e) { error = {code: e.codeName, message: e.message}; }"
        "console.log(JSON.stringify({f: f.raw_data.toString('hex'), fdtype: f.dtype, fshape: f.shape,"
        " i: i.raw_data.toString('hex'), back: Array.from(back.data), error}));"
    )
    js = subprocess.run([node, "-e", script], cwd=NODE_DIR, capture_output=True, text=True, timeout=120)
    assert js.returncode == 0, js.stderr
    result = json.loads(js.stdout)
    assert result["f"] == floats.tobytes().hex() and result["fdtype"] == "DATA_TYPE_FLOAT32" and result["fshape"] == [2, 3]
    assert result["i"] == ints.tobytes().hex()
    assert result["back"] == ints.tolist()
    assert result["error"]["code"] == "DATA_LOSS"
    assert "trajectory.rewards: raw_data has 7 bytes but shape [2] x DATA_TYPE_FLOAT32 needs 8" in result["error"]["message"]


def test_node_example_survives_sigkill_and_resume_of_the_trainer(node, tmp_path):
    """Modelled on test_production.py::test_sigkill_mid_training_then_resume_and_the_client_carries_on:
    the trainer is SIGKILLed mid-run and restarted with --resume on the same port; the Node example
    (ReliableTrajectoryStream, reconnecting WatchPolicy, retried GetPolicy) carries on by itself and
    reaches its step target, and the resumed server keeps training on what it sends."""
    ckpt = tmp_path / "checkpoints"
    behavior = "NodeCorridorRestart"
    steps = 256 * 16  # far more than happen before the kill: the example is still running when it comes
    first = ServerProcess(["--checkpoint-dir", str(ckpt), "--seed", "0"])
    second = None
    stdout_path, stderr_path = tmp_path / "example.out", tmp_path / "example.err"
    with open(stdout_path, "w") as stdout, open(stderr_path, "w") as stderr:
        example = subprocess.Popen([node, str(EXAMPLE), "--target", first.target, "--steps", str(steps), "--behavior", behavior,
                                    "--checkpoint-interval", "256", "--timeout", "60"],
                                   cwd=NODE_DIR, stdout=stdout, stderr=stderr, text=True)
    try:
        wait_until(lambda: any(step >= 512 for step, _ in checkpoint_files(ckpt / behavior)) or example.poll() is not None,
                   60, "a checkpoint at step >= 512")
        assert example.poll() is None, f"the example ended before the kill:\n{stderr_path.read_text()}"
        first.proc.send_signal(signal.SIGKILL)
        first.wait(10)
        _, saved = checkpoint_files(ckpt / behavior)[-1]
        _, meta = load_checkpoint(saved)
        saved_version = meta["trainer"]["policy_version"]

        second = ServerProcess(["--checkpoint-dir", str(ckpt), "--resume", "--seed", "0"], port=first.port)
        returncode = example.wait(timeout=90)
        out, err = stdout_path.read_text(), stderr_path.read_text()
        assert returncode == 0, f"example failed:\n{err}\n{out}\nserver:\n{second.output()}"
        summary = json.loads(out.strip().splitlines()[-1])
        assert summary["ok"] is True and summary["sha256_ok"] is True
        assert summary["steps_submitted"] == steps
        # Every trajectory acknowledged exactly once, by the old or the new server (some of those sent
        # with a version newer than the checkpoint's are dropped as unknown_policy_version).
        assert summary["steps_accepted"] + summary["steps_dropped"] == steps
        # The kill broke both open streams; each was reopened.
        assert summary["reconnects"] > 0 and summary["submit_reconnects"] > 0 and summary["watch_reconnects"] > 0, summary
        assert "reconnect 1" in err

        with LudusClient(second.target, timeout=60) as client:
            described = client.describe(behavior)
        assert described.policy_version > saved_version  # training went on after the resume
        assert described.policy_version >= summary["fetched_version"] > saved_version
    finally:
        if example.poll() is None:
            example.kill()
            example.wait(10)
        first.stop()
        if second is not None:
            second.stop()
