"""TrajectoryStream: pipelined, loss-free trajectory submission on one long-lived stream.

`submit()` returns as soon as the trajectory is queued (it blocks only while `max_in_flight`
trajectories await acknowledgement), so a simulator keeps stepping while the service learns.
Every trajectory stays in `pending` until the server acknowledges it; if the stream breaks with a
transient status (UNAVAILABLE, server restarting; RESOURCE_EXHAUSTED, intake full), the stream is
reopened with exponential backoff and unacknowledged trajectories are sent again, in order.
A permanent error (e.g. INVALID_ARGUMENT) is raised from the next `submit()` / `flush()`.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable, Deque, Optional

import grpc

from ludus.v1 import trainer_pb2 as pb
from ludus_client.client import LudusClient, LudusError

TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED)


class _Attempt:
    def __init__(self) -> None:
        self.sent = 0
        self.acked = 0
        self.dead = False


class TrajectoryStream:
    def __init__(
        self,
        client: LudusClient,
        behavior_name: str,
        max_in_flight: int = 64,
        on_ack: Optional[Callable[[pb.SubmitTrajectoriesResponse], None]] = None,
        max_backoff: float = 10.0,
        give_up_after: float = 300.0,
    ) -> None:
        self.client = client
        self.behavior_name = behavior_name
        self.max_in_flight = max_in_flight
        self.on_ack = on_ack
        self.max_backoff = max_backoff
        self.give_up_after = give_up_after
        self.latest: Optional[pb.SubmitTrajectoriesResponse] = None
        self.accepted_steps = 0
        self.dropped_steps = 0
        self.reconnects = 0
        self._pending: Deque[pb.SubmitTrajectoriesRequest] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._error: Optional[LudusError] = None
        self._attempt = _Attempt()
        self._thread = threading.Thread(target=self._run, name=f"submit-{behavior_name}", daemon=True)
        self._thread.start()

    # -- public ------------------------------------------------------------------------------------
    def submit(self, trajectory: pb.Trajectory) -> None:
        request = pb.SubmitTrajectoriesRequest(behavior_name=self.behavior_name, trajectory=trajectory)
        with self._cond:
            self._cond.wait_for(lambda: self._error is not None or len(self._pending) < self.max_in_flight)
            self._raise_if_failed()
            self._pending.append(request)
            self._cond.notify_all()

    def flush(self, timeout: Optional[float] = None) -> None:
        """Wait until every submitted trajectory is acknowledged."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._error is not None or not self._pending, timeout):
                raise TimeoutError(f"{len(self._pending)} trajectories still unacknowledged")
            self._raise_if_failed()

    def close(self, timeout: Optional[float] = 60.0) -> None:
        try:
            self.flush(timeout)
        finally:
            with self._cond:
                self._closing = True
                self._cond.notify_all()
            self._thread.join(timeout=5)

    @property
    def unacknowledged(self) -> int:
        return len(self._pending)

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    # -- background --------------------------------------------------------------------------------
    def _requests(self, attempt: _Attempt):
        while True:
            with self._cond:
                self._cond.wait_for(lambda: attempt.dead or self._closing or attempt.sent - attempt.acked < len(self._pending))
                if attempt.dead or (self._closing and attempt.sent - attempt.acked >= len(self._pending)):
                    return
                request = self._pending[attempt.sent - attempt.acked]
                attempt.sent += 1
            yield request

    def _run(self) -> None:
        backoff = 0.2
        failing_since: Optional[float] = None
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closing or self._pending)
                if self._closing and not self._pending:
                    return
                attempt = self._attempt = _Attempt()
            call = self.client.stub.SubmitTrajectories(self._requests(attempt), wait_for_ready=True)
            try:
                for response in call:
                    with self._cond:
                        self._pending.popleft()
                        attempt.acked += 1
                        self.latest = response
                        self.accepted_steps += response.accepted_steps
                        self.dropped_steps += response.dropped_steps
                        self._cond.notify_all()
                    backoff, failing_since = 0.2, None
                    if self.on_ack is not None:
                        self.on_ack(response)
            except grpc.RpcError as err:
                with self._cond:
                    attempt.dead = True
                    self._cond.notify_all()
                now = time.monotonic()
                failing_since = failing_since or now
                if err.code() in TRANSIENT and now - failing_since < self.give_up_after and not self._closing:
                    self.reconnects += 1
                    time.sleep(backoff)
                    backoff = min(backoff * 2, self.max_backoff)
                    continue
                with self._cond:
                    self._error = LudusError.from_rpc(err)
                    self._cond.notify_all()
                return
            with self._cond:
                attempt.dead = True
                self._cond.notify_all()
