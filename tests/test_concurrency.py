"""Many clients feed one behaviour at once: every acknowledged step is trained on, none is lost,
and updates happen while intake continues."""
from __future__ import annotations

import threading

import numpy as np

from ludus_client import BehaviorSpec, LudusClient, TrajectoryBuilder
from ludus_client.stream import TrajectoryStream

SETTINGS = {"hyperparameters": {"batch_size": 64, "buffer_size": 256, "num_epoch": 1},
            "network_settings": {"hidden_units": 16}, "max_policy_lag": 1000}


def _feed(target: str, name: str, spec: BehaviorSpec, worker: int, trajectories: int, length: int, errors: list) -> None:
    try:
        with LudusClient(target) as client:
            policy = client.get_local_policy(name)
            stream = TrajectoryStream(client, name, max_in_flight=8)
            rng = np.random.default_rng(worker)
            for t in range(trajectories):
                builder = TrajectoryBuilder(spec, f"w{worker}-a{t % 3}")
                obs = rng.normal(size=(length, 4)).astype(np.float32)
                out = policy.act([obs], rng=rng)
                for i in range(length):
                    builder.add_step([obs[i]], out.continuous_actions[i], out.discrete_actions[i],
                                     out.continuous_log_probs[i], out.discrete_log_probs[i], 1.0, policy.version)
                stream.submit(builder.build([obs[-1]], done=t % 2 == 0))
            stream.close()
            assert stream.accepted_steps == trajectories * length, (stream.accepted_steps, stream.dropped_steps)
    except Exception as err:  # surfaced in the main thread
        errors.append(err)


def test_concurrent_streams_into_one_behaviour(server, client):
    spec = BehaviorSpec.vector(4, discrete_branches=[3])
    client.register("Crowd", spec, SETTINGS)
    workers, per_worker, length = 6, 20, 10
    errors: list = []
    threads = [threading.Thread(target=_feed, args=(f"127.0.0.1:{server.port}", "Crowd", spec, w, per_worker, length, errors))
               for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    behavior = server.registry.get("Crowd")
    assert behavior.wait_idle(60)
    total = workers * per_worker * length
    state = client.describe("Crowd")
    assert state.total_steps == total
    assert behavior.trainer.step == total  # every accepted step was processed by the trainer
    assert state.queued_steps == 0
    # 10-step trajectories reach buffer_size 256 at 260 steps; each update trains on the whole buffer
    per_update = -(-256 // length) * length
    assert state.policy_version == 1 + total // per_update
    assert state.buffered_steps == total % per_update
    assert "Losses/Policy Loss" in state.latest_update_stats
