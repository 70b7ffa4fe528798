"""The benchmark suite runs end to end (`python -m bench.run --smoke`, a few hundred steps of everything)
and writes well-formed results: results.jsonl (one record per measurement, finite numbers, machine
info) and results.md."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

import matplotlib  # noqa: F401  - the bench extra (make installs it): fail loudly if it is missing
import stable_baselines3  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
RECORD_FIELDS = {"section", "name", "metrics", "params", "machine", "mode", "time"}
MACHINE_FIELDS = {"cpu_model", "cores", "torch", "gpu"}
MEASURED_SECTIONS = {"learning", "remote_tax", "ingestion", "estimate_latency", "update_throughput"}


@pytest.mark.timeout(300)
def test_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--smoke", "--out", str(out)], cwd=str(REPO),
                          capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, f"bench.run --smoke failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    jsonl, md = out / "results.jsonl", out / "results.md"
    assert jsonl.exists() and md.exists()
    records = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    assert records
    for record in records:
        assert set(record) == RECORD_FIELDS, record
        assert record["mode"] == "smoke"
        assert MACHINE_FIELDS <= set(record["machine"]), record["machine"]
        assert record["metrics"], record["name"]
        for key, value in record["metrics"].items():
            assert isinstance(value, (int, float)) and not isinstance(value, bool), (record["name"], key, value)
            assert math.isfinite(value), (record["name"], key, value)
    sections = {r["section"] for r in records}
    assert MEASURED_SECTIONS <= sections, sections
    names = {r["name"] for r in records}
    assert {"CartPole-v1/sb3/seed0", "CartPole-v1/ludus/seed0", "CartPole-v1/summary"} <= names
    assert "summary" in {r["name"] for r in records if r["section"] == "remote_tax"}
    assert any(n.endswith("/ratio") for n in names), "ingestion Ludus/sink ratio missing"
    text = md.read_text()
    assert "## Targets" in text and "Learning" in text
    assert (out / "learning_CartPole-v1.png").exists()
