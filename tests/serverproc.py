"""Run `ludus-server` as a real subprocess (for crash, signal and restart tests)."""
from __future__ import annotations

import socket
import subprocess
import sys
import threading
from typing import Callable, List, Optional


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, poll: float = 0.02) -> None:
    """Poll `predicate` until true; AssertionError naming `what` if it is still false after `timeout`."""
    stop = threading.Event()
    timer = threading.Timer(timeout, stop.set)
    timer.start()
    try:
        while not predicate():
            assert not stop.wait(poll), f"timed out waiting for {what}"
    finally:
        timer.cancel()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, args: List[str], port: Optional[int] = None, metrics_port: int = -1) -> None:
        self.port = port or free_port()
        self.metrics_port = metrics_port
        cmd = [sys.executable, "-m", "ludus_service.cli", "--host", "127.0.0.1", "--port", str(self.port),
               "--device", "cpu", "--metrics-port", str(metrics_port), "--torch-threads", "1", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: List[str] = []
        self._ready = threading.Event()
        # Drain the pipe continuously: a full pipe would block the server's logging.
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(60):
            self.stop()
            raise RuntimeError("ludus-server did not start:\n" + "".join(self.lines))

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            if "listening on" in line:
                self._ready.set()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def output(self) -> str:
        return "".join(self.lines)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
