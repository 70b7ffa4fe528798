"""Shared helpers of the benchmark suite: machine info, records, subprocess workers and servers.

Every measurement is one record (a JSON object): {"section", "name", "metrics": {name: number},
"params": {...}, "machine": {...}, "mode", "time"}. Metrics are plain finite numbers; anything
else (curves, notes) goes into params or a side file.
"""
from __future__ import annotations

import json
import math
import os
import platform
import queue
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Environment for every worker and server process: one BLAS/OpenMP thread, so runs on the 2-core
#: machine do not oversubscribe and both sides of a comparison get the same threading.
SINGLE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "PYTHONUNBUFFERED": "1",
    "PYTHONWARNINGS": "ignore",
}


def worker_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = dict(os.environ)
    env.update(SINGLE_THREAD_ENV)
    # Make `bench` importable from worker processes whatever their working directory.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    if extra:
        env.update(extra)
    return env


# -- machine --------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


_MACHINE: Optional[Dict[str, Any]] = None


def machine_info() -> Dict[str, Any]:
    """CPU model, cores, torch version, GPU name (None without CUDA), library versions."""
    global _MACHINE
    if _MACHINE is None:
        import grpc
        import numpy
        import torch

        info: Dict[str, Any] = {
            "cpu_model": cpu_model(),
            "cores": os.cpu_count(),
            "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "grpcio": grpc.__version__,
            "numpy": numpy.__version__,
        }
        try:
            import stable_baselines3

            info["stable_baselines3"] = stable_baselines3.__version__
        except ImportError:
            info["stable_baselines3"] = None
        _MACHINE = info
    return _MACHINE


# -- records --------------------------------------------------------------------------------------
RECORD_FIELDS = ("section", "name", "metrics", "params", "machine", "mode", "time")


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


@dataclass
class Recorder:
    """Collects records and appends each to results.jsonl as soon as it is measured."""

    out_dir: Path
    mode: str
    records: List[Dict[str, Any]] = field(default_factory=list)
    notes: Dict[str, List[str]] = field(default_factory=dict)
    side: Dict[str, Any] = field(default_factory=dict)  # curves etc. -> side.json

    def __post_init__(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.out_dir / "results.jsonl"
        self.path.write_text("")

    def add(self, section: str, name: str, metrics: Dict[str, float], params: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        bad = {k: v for k, v in metrics.items() if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v)}
        if bad:
            # A metric that could not be measured is left out (and said so), never written as NaN.
            self.note(section, f"{name}: metrics not measured: {sorted(bad)}")
            metrics = {k: v for k, v in metrics.items() if k not in bad}
        record = {
            "section": section,
            "name": name,
            "metrics": {k: float(v) for k, v in metrics.items()},
            "params": _clean(params or {}),
            "machine": machine_info(),
            "mode": self.mode,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        self.records.append(record)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        return record

    def note(self, section: str, text: str) -> None:
        self.notes.setdefault(section, []).append(text)
        (self.out_dir / "notes.json").write_text(json.dumps(self.notes, indent=1))

    @classmethod
    def load(cls, out_dir: Path, section_notes: Dict[str, List[str]]) -> "Recorder":
        """A finished run's records, curves and notes, to write its report again (--report-only).
        Runs from before notes.json existed get each section's static notes."""
        records = [json.loads(line) for line in (out_dir / "results.jsonl").read_text().splitlines() if line.strip()]
        rec = cls.__new__(cls)
        rec.out_dir, rec.path = out_dir, out_dir / "results.jsonl"
        rec.mode = records[0]["mode"] if records else "short"
        rec.records = records
        notes_path, curves_path = out_dir / "notes.json", out_dir / "curves.json"
        rec.notes = json.loads(notes_path.read_text()) if notes_path.exists() else {k: list(v) for k, v in section_notes.items()}
        rec.side = json.loads(curves_path.read_text()) if curves_path.exists() else {}
        return rec

    def section_records(self, section: str) -> List[Dict[str, Any]]:
        return [r for r in self.records if r["section"] == section]


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- statistics -----------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


def geomean(values: Sequence[float]) -> float:
    vals = [v for v in values if v > 0 and math.isfinite(v)]
    if not vals:
        return float("nan")
    return math.exp(sum(math.log(v) for v in vals) / len(vals))


# -- subprocess workers ---------------------------------------------------------------------------
class WorkerError(RuntimeError):
    pass


def run_worker(target: str, kwargs: Dict[str, Any], timeout: float = 3600.0, env: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """Run `module:function(**kwargs)` in a fresh Python process (bench.worker) and return its dict.

    A fresh process per run isolates torch's thread pool, imported state and memory; every worker
    gets the same single-thread environment.
    """
    cmd = [sys.executable, "-m", "bench.worker", target, json.dumps(kwargs)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env or worker_env(), cwd=str(REPO_ROOT))
    lines = [l for l in proc.stdout.splitlines() if l.startswith("BENCH_RESULT ")]
    if proc.returncode != 0 or not lines:
        raise WorkerError(f"{target} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}\n{proc.stdout[-2000:]}")
    return json.loads(lines[-1][len("BENCH_RESULT "):])


# -- servers in subprocesses ----------------------------------------------------------------------
#: Optional `ludus-server` flags the benchmark wants when the CLI has them: no Prometheus endpoint
#: (its default fixed port would collide between servers), no drain pause and a short grace at stop.
OPTIONAL_SERVER_FLAGS = (["--metrics-port", "-1"], ["--drain-seconds", "0"], ["--grace", "2"])
SERVER_FLAGS_ENV = "BENCH_LUDUS_SERVER_FLAGS"


def server_flags() -> List[str]:
    """The optional flags this checkout's CLI accepts (detected once, then passed on via the environment)."""
    cached = os.environ.get(SERVER_FLAGS_ENV)
    if cached is not None:
        return json.loads(cached)
    import contextlib
    import io

    flags: List[str] = []
    try:
        from ludus_service import cli
    except Exception:  # noqa: BLE001 - a machine without the server's extras (e.g. only the trainer is needed)
        return flags

    for option in OPTIONAL_SERVER_FLAGS:
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                cli.parse_args(list(option))
            flags += option
        except SystemExit:
            pass
    os.environ[SERVER_FLAGS_ENV] = json.dumps(flags)
    return flags


class ServerProcess:
    """A server in its own process; `port` is read from the line it prints once listening.

    Default: `ludus-server` (python -m ludus_service.cli) on 127.0.0.1, CPU, one torch thread (what
    the CLI picks by default on a 2-core machine), quiet logging.
    """

    def __init__(self, cmd: Optional[List[str]] = None, seed: Optional[int] = 0, torch_threads: int = 1,
                 pattern: str = r"listening on [^\s]*:(\d+)", startup_timeout: float = 60.0,
                 wrap: Optional[List[str]] = None) -> None:
        if cmd is None:
            cmd = [sys.executable, "-m", "ludus_service.cli", "--host", "127.0.0.1", "--port", "0", "--device", "cpu",
                   "--torch-threads", str(torch_threads), "--log-level", "WARNING", *server_flags()]
            if seed is not None:
                cmd += ["--seed", str(seed)]
        self.cmd = (wrap or []) + cmd
        self.pattern = re.compile(pattern)
        self.startup_timeout = startup_timeout
        self.proc: Optional[subprocess.Popen] = None
        self.port = 0
        self._stderr_path: Optional[str] = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "ServerProcess":
        import tempfile

        err = tempfile.NamedTemporaryFile(prefix="bench-server-", suffix=".log", delete=False)
        self._stderr_path = err.name
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=worker_env(), cwd=str(REPO_ROOT))
        err.close()
        lines: "queue.Queue[Optional[str]]" = queue.Queue()

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=max(0.05, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            match = self.pattern.search(line)
            if match:
                self.port = int(match.group(1))
                return self
        tail = self.stderr_tail()
        self.stop()
        raise WorkerError(f"server {' '.join(self.cmd)} did not start:\n{tail}")

    def stderr_tail(self, chars: int = 3000) -> str:
        try:
            return Path(self._stderr_path).read_text(errors="replace")[-chars:] if self._stderr_path else ""
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._stderr_path:
            try:
                os.unlink(self._stderr_path)
            except OSError:
                pass
            self._stderr_path = None

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def set_torch_threads(n: int = 1) -> None:
    import torch

    torch.set_num_threads(n)
