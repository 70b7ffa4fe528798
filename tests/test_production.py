"""Surviving crashes and shutdowns: SIGKILL + --resume, SIGTERM during an update, back-pressure,
and the Prometheus endpoint. Real server processes, real signals, real clients."""
from __future__ import annotations

import signal
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from ludus.v1 import trainer_pb2 as pb
from ludus.v1 import trainer_pb2_grpc as pb_grpc
from ludus_client import BehaviorSpec, LudusClient, LudusError, TrajectoryBuilder
from ludus_client.gym_runner import run
from ludus_client.stream import TrajectoryStream
from ludus_client.policy import LocalPolicy
from ludus_service.checkpoint import checkpoint_files, load_checkpoint
from ludus_service.registry import BehaviorRegistry
from ludus_service.server import start_server
from ludus_service.validation import parse_trajectory
from serverproc import ServerProcess, wait_until

SMALL_PPO = {"hyperparameters": {"batch_size": 128, "buffer_size": 256, "num_epoch": 3, "learning_rate": 1e-3},
             "network_settings": {"hidden_units": 32, "activation": "tanh"}, "time_horizon": 32}


def _trajectories(spec: BehaviorSpec, policy, count: int, length: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for t in range(count):
        builder = TrajectoryBuilder(spec, f"agent-{t % 4}")
        obs = rng.normal(size=(length + 1, spec.observations[0].shape[0])).astype(np.float32)
        out = policy.act([obs[:-1]], rng=rng)
        for i in range(length):
            builder.add_step([obs[i]], out.continuous_actions[i], out.discrete_actions[i], out.continuous_log_probs[i],
                             out.discrete_log_probs[i], float(rng.normal()), policy.version)
        yield builder.build([obs[-1]])


def test_sigkill_mid_training_then_resume_and_the_client_carries_on(tmp_path: Path):
    ckpt = tmp_path / "checkpoints"
    settings = {**SMALL_PPO, "checkpoint_interval": 512, "keep_checkpoints": 3}
    first = ServerProcess(["--checkpoint-dir", str(ckpt), "--seed", "0"])
    result, errors = {}, []

    def train() -> None:
        try:
            result["run"] = run("CartPole-v1", first.target, steps=8000, num_envs=4, behavior_name="Pole", settings=settings,
                                seed=0, progress=False, version_timeout=90)
        except Exception as err:  # surfaced below
            errors.append(err)

    runner = threading.Thread(target=train)
    runner.start()
    second = None
    try:
        wait_until(lambda: any(step >= 1024 for step, _ in checkpoint_files(ckpt / "Pole")) or not runner.is_alive(),
                   120, "a checkpoint at step >= 1024")
        assert runner.is_alive(), f"the client stopped before a checkpoint appeared: {errors}"
        first.proc.send_signal(signal.SIGKILL)
        first.wait(10)
        _, saved = checkpoint_files(ckpt / "Pole")[-1]
        _, meta = load_checkpoint(saved)
        saved_version, saved_step = meta["trainer"]["policy_version"], meta["trainer"]["global_step"]

        second = ServerProcess(["--checkpoint-dir", str(ckpt), "--resume", "--seed", "0"], port=first.port)
        with LudusClient(second.target) as client:
            state = client.describe("Pole")
        assert state.policy_version >= saved_version  # restored, not restarted from 1
        assert state.total_steps >= meta["accepted_steps"] and saved_step >= 1024
        runner.join(timeout=240)
        assert not runner.is_alive() and not errors, errors
        assert result["run"].env_steps >= 8000  # the client never restarted; it reconnected by itself
        with LudusClient(second.target) as client:
            final = client.describe("Pole")
        assert final.policy_version > saved_version  # training continued after the resume
        second.proc.send_signal(signal.SIGTERM)  # orderly end: final checkpoint, no stray temp file
        assert second.wait(60) == 0
    finally:
        first.stop()
        if second is not None:
            second.stop()
    files = sorted((ckpt / "Pole").iterdir())
    assert files and all(f.name.startswith("checkpoint-") and f.suffix == ".safetensors" for f in files), files
    for f in files:
        load_checkpoint(f)  # every file left behind is complete and readable
    assert len(files) <= 3  # keep_checkpoints


def test_sigterm_during_an_update_finishes_it_checkpoints_and_exits_zero(tmp_path: Path):
    ckpt = tmp_path / "checkpoints"
    server = ServerProcess(["--checkpoint-dir", str(ckpt), "--drain-seconds", "1.5", "--grace", "5"])
    spec = BehaviorSpec.vector(8, discrete_branches=[3])
    slow = {"hyperparameters": {"batch_size": 64, "buffer_size": 2048, "num_epoch": 40}, "network_settings": {"hidden_units": 256}}
    try:
        with LudusClient(server.target) as client:
            client.register("Slow", spec, slow)
            policy = client.get_local_policy("Slow")
            acks = client.submit("Slow", _trajectories(spec, policy, 32, 64))
            assert sum(a.accepted_steps for a in acks) == 2048
            # All processed: the update is now running.
            wait_until(lambda: client.describe("Slow").buffered_steps >= 2048, 60, "the buffer to fill")
        server.proc.send_signal(signal.SIGTERM)
        seen, refused = [], None
        with grpc.insecure_channel(server.target, options=[("grpc.enable_retries", 0)]) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            trainer = pb_grpc.TrainerStub(channel)
            while True:
                try:
                    seen.append(health.Check(health_pb2.HealthCheckRequest(service="ludus.v1.Trainer"), timeout=1).status)
                except grpc.RpcError:
                    break  # the port is closed
                if seen[-1] == health_pb2.HealthCheckResponse.NOT_SERVING and refused is None:
                    try:
                        trainer.ListBehaviors(pb.ListBehaviorsRequest(), timeout=1)
                        refused = False
                    except grpc.RpcError as err:
                        refused = err.code()
                time.sleep(0.05)
        assert health_pb2.HealthCheckResponse.NOT_SERVING in seen, seen
        assert refused == grpc.StatusCode.UNAVAILABLE  # new RPCs are refused while draining
        assert server.wait(60) == 0
    finally:
        server.stop()
    _, latest = checkpoint_files(ckpt / "Slow")[-1]
    _, meta = load_checkpoint(latest)
    assert meta["trainer"]["policy_version"] == 2  # the update in flight completed before exit
    assert meta["accepted_steps"] == 2048 and meta["trainer"]["global_step"] == 2048


def test_flooding_one_behaviour_is_pushed_back_and_loses_nothing():
    registry = BehaviorRegistry(device="cpu", seed=0, max_queued_steps=96, intake_timeout=0.2)
    running = start_server(registry, host="127.0.0.1", port=0)
    spec = BehaviorSpec.vector(16, discrete_branches=[4])
    heavy = {"hyperparameters": {"batch_size": 64, "buffer_size": 256, "num_epoch": 15}, "network_settings": {"hidden_units": 256},
             "max_policy_lag": 10_000}
    target = f"127.0.0.1:{running.port}"
    try:
        with LudusClient(target) as client:
            client.register("Flood", spec, heavy)
            policy = client.get_local_policy("Flood")
        behavior = registry.get("Flood")
        peak, sampling = [0], threading.Event()

        def sample() -> None:
            while not sampling.is_set():
                peak[0] = max(peak[0], behavior.queued_steps)
                time.sleep(0.001)

        sampler = threading.Thread(target=sample)
        sampler.start()
        exhausted = []

        def busy_learner(seconds: float) -> threading.Thread:
            """Hold the learner (as a long update would), so the intake fills deterministically."""
            holding = threading.Event()

            def hold() -> None:
                with behavior._lock:
                    holding.set()
                    time.sleep(seconds)

            thread = threading.Thread(target=hold)
            thread.start()
            holding.wait()
            return thread

        def raw_flood(seed: int) -> None:  # plain submit calls: back-pressure shows as RESOURCE_EXHAUSTED
            with LudusClient(target) as client:
                for traj in _trajectories(spec, policy, 30, 32, seed):
                    try:
                        client.submit("Flood", [traj])
                    except LudusError as err:
                        exhausted.append(err.code)

        blocker = busy_learner(1.5)
        threads = [threading.Thread(target=raw_flood, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        blocker.join()
        for t in threads:
            t.join(timeout=120)
        assert exhausted and set(exhausted) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        before = behavior.accepted_steps
        # The SDK's stream backs off and resends: every trajectory is eventually accepted.
        with LudusClient(target) as client:
            blocker = busy_learner(1.5)
            stream = TrajectoryStream(client, "Flood", max_in_flight=32)
            for traj in _trajectories(spec, policy, 60, 32, 99):
                stream.submit(traj)
            blocker.join()
            stream.close(timeout=120)
        sampling.set()
        sampler.join()
        assert stream.accepted_steps == 60 * 32 and stream.reconnects > 0
        assert behavior.accepted_steps - before == 60 * 32
        assert peak[0] <= 96  # intake memory stayed bounded
        assert behavior.wait_idle(120) and behavior.trainer.step == behavior.accepted_steps  # nothing accepted was lost
    finally:
        running.stop(grace=1.0)


def test_metrics_endpoint_reports_a_training_run():
    registry = BehaviorRegistry(device="cpu", seed=0)
    _, metrics_port = registry.metrics.serve(0, "127.0.0.1")
    running = start_server(registry, host="127.0.0.1", port=0)
    try:
        run("CartPole-v1", f"127.0.0.1:{running.port}", steps=1600, num_envs=4, behavior_name="Pole",
            settings=SMALL_PPO, seed=0, progress=False)
        with LudusClient(f"127.0.0.1:{running.port}") as client:
            bad = next(_trajectories(BehaviorSpec.vector(4, discrete_branches=[2]), client.get_local_policy("Pole"), 1, 5))
            bad.rewards.raw_data = b"\x00\x00\xc0\x7f" * 5  # NaN rewards
            with pytest.raises(LudusError):
                client.submit("Pole", [bad])
        registry.get("Pole").wait_idle()
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    finally:
        running.stop(grace=1.0)
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
            assert "agent" not in " ".join(s.labels), s  # bounded labels only

    def value(name, **labels):
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("ludus_rpc_started_total", method="RegisterBehavior") >= 1
    assert value("ludus_rpc_handled_total", method="RegisterBehavior", code="OK") >= 1
    assert value("ludus_rpc_handled_total", method="SubmitTrajectories", code="INVALID_ARGUMENT") == 1
    assert value("ludus_env_steps_accepted_total", behavior="Pole") >= 1600
    assert value("ludus_trajectories_accepted_total", behavior="Pole") > 10
    assert value("ludus_trajectories_rejected_total", behavior="Pole", reason="invalid") == 1
    assert value("ludus_policy_version", behavior="Pole") >= 5
    assert value("ludus_update_duration_seconds_count", behavior="Pole") >= 4
    assert value("ludus_value_estimation_duration_seconds_count", behavior="Pole") > 10
    assert value("ludus_update_buffer_capacity_steps", behavior="Pole") == 256
    assert ("ludus_training_statistic", (("behavior", "Pole"), ("statistic", "Losses/Policy Loss"))) in samples
    assert value("ludus_training_statistic", behavior="Pole", statistic="Policy/Learning Rate") > 0
    assert value("ludus_rpc_duration_seconds_count", method="GetPolicy") >= 1
    assert value("ludus_behaviors") == 1
    assert value("process_resident_memory_bytes") > 0


def test_initialize_from_starts_a_new_run_from_old_weights(tmp_path: Path):
    """--initialize-from (and ML-Agents' init_path): weights carried over; step, version and Adam reset."""
    spec = BehaviorSpec.vector(4, discrete_branches=[2])
    old = BehaviorRegistry(device="cpu", seed=0, checkpoint_dir=tmp_path / "old")
    behavior, _ = old.register("Pole", spec.to_proto(), SMALL_PPO)
    tensors, arch = behavior.trainer.optimizer.actor.export()
    local = LocalPolicy(tensors, arch, behavior.policy_version)
    for traj in _trajectories(spec, local, 10, 32):
        behavior.submit(parse_trajectory(traj, spec))
    assert behavior.wait_idle(60) and behavior.policy_version == 2
    old.close()  # final checkpoint
    trained = behavior.trainer.optimizer.actor.export()[0]

    fresh = BehaviorRegistry(device="cpu", seed=1, checkpoint_dir=tmp_path / "new", initialize_from=tmp_path / "old")
    new, created = fresh.register("Pole", spec.to_proto(), SMALL_PPO)
    assert created and new.policy_version == 1 and new.trainer.step == 0 and new.accepted_steps == 0
    for key, value in new.trainer.optimizer.actor.export()[0].items():
        np.testing.assert_array_equal(value, trained[key])
    assert not new.trainer.optimizer.adam.state  # optimizer starts afresh
    fresh.close(checkpoint=False)

    by_path = BehaviorRegistry(device="cpu", seed=2)
    other, _ = by_path.register("Other", spec.to_proto(), {**SMALL_PPO, "init_path": str(tmp_path / "old" / "Pole")})
    np.testing.assert_array_equal(other.trainer.optimizer.actor.export()[0]["body.0.weight"], trained["body.0.weight"])
    with pytest.raises(Exception, match="init_path"):
        by_path.register("Missing", spec.to_proto(), {**SMALL_PPO, "init_path": str(tmp_path / "nowhere")})
    by_path.close(checkpoint=False)
