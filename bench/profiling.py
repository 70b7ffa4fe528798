"""Section `profile`: where the Ludus side of the CartPole learning run spends its time.

py-spy samples both processes of the learning section's Ludus run (same settings): the
`ludus-server` (attached by pid) and the client (gym_runner, started under py-spy). Non-blocking
sampling at 250 Hz, idle threads left out, so the samples are CPU/GIL-busy time. Results: share of
samples per thread, the top functions by self time and by inclusive time, per process; the raw
collapsed stacks are kept next to the results (profile_server.txt, profile_client.txt; feed them
to flamegraph.pl or speedscope).
"""
from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from bench.common import REPO_ROOT, Recorder, ServerProcess, log, worker_env
from bench.learning import ENV_HYPER, PPOHyper, ludus_settings

RATE = 250
TOP = 12
_LINE = re.compile(r":\d+\)$")
#: Frames that say nothing about where time goes (thread/runner scaffolding).
_SCAFFOLD = ("_bootstrap", "_bootstrap_inner", "Thread.run", "run (threading.py)", "_run_module_as_main", "_run_code",
             "<module>", "main (bench/worker.py)", "_worker (concurrent/futures/thread.py)")


def py_spy() -> Optional[str]:
    candidate = Path(sys.executable).with_name("py-spy")
    return str(candidate) if candidate.exists() else shutil.which("py-spy")


def _frame(raw: str) -> str:
    """'update (/x/y/ludus_service/trainer.py:140)' -> 'update (ludus_service/trainer.py)'."""
    raw = _LINE.sub(")", raw.strip())
    m = re.match(r"^(.*) \((.*)\)$", raw)
    if not m:
        return raw
    func, path = m.groups()
    parts = Path(path).parts
    for anchor in ("site-packages", "lib", "service", "client", "main"):
        if anchor in parts:
            idx = len(parts) - 1 - list(reversed(parts)).index(anchor)
            tail = parts[idx + 1:]
            if tail:
                path = "/".join(tail)
                break
    if path.startswith("python3"):
        path = "/".join(Path(path).parts[1:])
    return f"{func} ({path})"


def parse_collapsed(path: Path) -> Tuple[Counter, Counter, Counter, int, int]:
    """(samples per thread, self samples per frame, inclusive samples per frame, total, import samples).

    Samples taken while a module is being imported (process start-up, torch's lazy imports) are
    counted apart and left out of the tables: they are start-up cost, not steady-state work.
    """
    lines = []
    names: Dict[str, str] = {}
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        tid, thread = "?", "?"
        m = re.match(r"^thread \((\d+)\):?\s*(.*)$", frames[0]) if frames else None
        if m:
            tid, thread = m.group(1), m.group(2).strip()
            frames = frames[1:]
            if thread:
                names[tid] = re.sub(r"_\d+$", "", thread)  # rpc_3 -> rpc
        if frames and frames[0].startswith("process "):
            frames = frames[1:]
        lines.append((tid, frames, int(count)))
    threads: Counter = Counter()
    self_c: Counter = Counter()
    incl: Counter = Counter()
    total = imports = 0
    for tid, frames, n in lines:
        if any("_find_and_load" in f for f in frames):
            imports += n
            continue
        funcs = [_frame(f) for f in frames]
        total += n
        threads[names.get(tid, "MainThread" if tid == "?" else f"thread {tid}")] += n
        if funcs:
            self_c[funcs[-1]] += n
        for name in set(funcs):
            if not any(s in name for s in _SCAFFOLD):
                incl[name] += n
    return threads, self_c, incl, total, imports


def _client_cmd(server: str, steps: int, hyper: Dict[str, Any]) -> List[str]:
    kwargs = {"env_id": "CartPole-v1", "steps": steps, "seed": 0, "hyper": hyper, "server": server}
    return [sys.executable, "-m", "bench.worker", "bench.learning:ludus_worker", json.dumps(kwargs)]


def plan(mode: str) -> Dict[str, Any]:
    if mode == "smoke":
        return {"steps": 512, "hyper": {"n_steps": 256, "batch_size": 64}}
    if mode == "short":
        return {"steps": 16384, "hyper": {}}
    return {"steps": 51200, "hyper": {}}


def run_section(rec: Recorder, mode: str) -> None:
    spy = py_spy()
    if spy is None:
        rec.note("profile", "py-spy is not installed (pip install py-spy): profile skipped")
        return
    p = plan(mode)
    hyper = asdict(PPOHyper(**{**asdict(ENV_HYPER["CartPole-v1"]), **p["hyper"]}))
    out_dir = rec.out_dir
    server_raw, client_raw = out_dir / "profile_server.txt", out_dir / "profile_client.txt"
    common = ["-f", "raw", "--threads", "--nonblocking", "--rate", str(RATE)]
    log(f"profile: Ludus CartPole-v1 run of {p['steps']} steps under py-spy (server and client)")
    with ServerProcess(seed=0) as server:
        assert server.proc is not None
        # Register first (same name and settings as the run: the run's own registration is then a
        # no-op), so the profile shows the training run, not behaviour creation.
        from ludus_client import LudusClient
        from ludus_client.gym_runner import spec_from_spaces
        import gymnasium as gym

        env = gym.make("CartPole-v1")
        with LudusClient(server.address) as client:
            client.wait_ready(30)
            client.register("CartPole_v1", spec_from_spaces(env.observation_space, env.action_space),
                            ludus_settings(PPOHyper(**hyper), p["steps"]))
        env.close()
        attach = subprocess.Popen([spy, "record", "--pid", str(server.proc.pid), "-o", str(server_raw), *common],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)  # let py-spy attach before the run starts
        started = time.perf_counter()
        client = subprocess.run([spy, "record", "-o", str(client_raw), *common, "--", *_client_cmd(server.address, p["steps"], hyper)],
                                capture_output=True, text=True, env=worker_env(), cwd=str(REPO_ROOT), timeout=3600)
        wall = time.perf_counter() - started
        attach.send_signal(signal.SIGINT)
        try:
            _, err = attach.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            attach.kill()
            err = ""
    if client.returncode != 0 or not client_raw.exists():
        rec.note("profile", f"client run failed under py-spy: {client.stderr[-800:]}")
        return
    if not server_raw.exists():
        rec.note("profile", f"py-spy could not attach to the server (ptrace not permitted?): {err[-400:]}")
    result_line = [l for l in client.stdout.splitlines() if l.startswith("BENCH_RESULT ")]
    run_seconds = json.loads(result_line[-1][len("BENCH_RESULT "):])["seconds"] if result_line else wall
    for proc_name, path in (("server", server_raw), ("client", client_raw)):
        if not path.exists():
            continue
        threads, self_c, incl, total, imports = parse_collapsed(path)
        if total == 0:
            continue
        base = {"process": proc_name, "rate_hz": RATE, "run_seconds": run_seconds, "total_samples": total, "steps": p["steps"],
                "import_samples_excluded": imports}
        rec.add("profile", f"{proc_name}/busy", {"busy_seconds": total / RATE, "busy_fraction_of_run": total / RATE / max(run_seconds, 1e-9)}, base)
        for thread, n in threads.most_common(6):
            rec.add("profile", f"{proc_name}/thread/{thread}", {"share": n / total, "seconds": n / RATE}, {**base, "kind": "thread", "item": thread})
        for frame, n in self_c.most_common(TOP):
            rec.add("profile", f"{proc_name}/self/{frame}", {"share": n / total, "seconds": n / RATE}, {**base, "kind": "self", "item": frame})
        for frame, n in incl.most_common(TOP + 8):
            rec.add("profile", f"{proc_name}/inclusive/{frame}", {"share": n / total, "seconds": n / RATE}, {**base, "kind": "inclusive", "item": frame})
