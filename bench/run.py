"""`python -m bench.run --short|--full|--smoke [--only NAME[,NAME]] [--out DIR]`

Writes DIR/results.jsonl (one JSON object per measurement, with machine info), DIR/results.md
(Markdown tables, targets first), DIR/*.png (plots) and DIR/curves.json (learning curves).
--short: < 10 min on 2 cores. --full: every env, 3 seeds, longer windows (an hour or more).
--smoke: a few hundred steps of everything (< 60 s), used by tests/test_bench_smoke.py.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from pathlib import Path
from typing import List, Optional

from bench.common import REPO_ROOT, Recorder, log, machine_info, server_flags

#: Sections too long for --short's 10 minutes.
FULL_ONLY_SECTIONS = ("sac",)
SECTIONS = {
    "learning": "bench.learning",
    "remote_tax": "bench.remote_tax",
    "ingestion": "bench.ingestion",
    "estimate_latency": "bench.estimate_latency",
    "update_throughput": "bench.update_throughput",
    "profile": "bench.profiling",
    "sac": "bench.sac",
}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description="Ludus benchmark suite")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--short", action="store_const", const="short", dest="mode", help="reduced suite, < 10 min on 2 cores (default)")
    mode.add_argument("--full", action="store_const", const="full", dest="mode", help="everything: 3 envs x 3 seeds, longer windows")
    mode.add_argument("--smoke", action="store_const", const="smoke", dest="mode", help="a few hundred steps of everything (< 60 s)")
    p.add_argument("--only", default=None, help=f"comma-separated sections to run ({', '.join(SECTIONS)})")
    p.add_argument("--out", default=str(REPO_ROOT / "bench" / "results"), help="output directory (default bench/results)")
    p.add_argument("--report-only", action="store_true", help="measure nothing: write the report and plots of the run in --out again")
    args = p.parse_args(argv)
    args.mode = args.mode or "short"
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    # SAC's 20k-step Pendulum pair alone takes ~10 min on 2 cores: --full, --smoke or --only sac.
    names = [n for n in SECTIONS if not (args.mode == "short" and n in FULL_ONLY_SECTIONS)]
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in SECTIONS]
        if unknown:
            print(f"unknown section(s) {unknown}; valid: {', '.join(SECTIONS)}", file=sys.stderr)
            return 2
    if args.report_only:
        return _report_only(Path(args.out), names)
    rec = Recorder(Path(args.out), args.mode)
    log(f"mode {args.mode}, sections {', '.join(names)}, out {rec.out_dir}")
    log(f"machine: {json.dumps(machine_info())}")
    log(f"ludus-server flags: {' '.join(server_flags()) or '(none)'}")
    started = time.perf_counter()
    failed: List[str] = []
    for name in names:
        t0 = time.perf_counter()
        try:
            importlib.import_module(SECTIONS[name]).run_section(rec, args.mode)
        except Exception as err:  # noqa: BLE001 - one broken section must not lose the others' results
            failed.append(name)
            rec.note(name, f"section FAILED: {type(err).__name__}: {str(err)[:800]}")
            traceback.print_exc()
        if any("FAILED" in n for n in rec.notes.get(name, [])) and name not in failed:
            failed.append(name)
        log(f"section {name}: {time.perf_counter() - t0:.0f}s")
    seconds = time.perf_counter() - started
    (rec.out_dir / "curves.json").write_text(json.dumps(rec.side))
    (rec.out_dir / "run.json").write_text(json.dumps({"seconds": seconds, "sections": names, "mode": args.mode}))
    from bench import report

    try:
        plots = report.write_plots(rec)
    except Exception as err:  # noqa: BLE001
        plots = []
        rec.note("learning", f"plots failed: {type(err).__name__}: {err}")
        failed.append("plots")
    md = report.write_markdown(rec, names, seconds, plots)
    log(f"done in {seconds:.0f}s: {rec.path}, {md}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def _report_only(out_dir: Path, names: List[str]) -> int:
    """Rewrite results.md and the plots from results.jsonl, curves.json and notes.json."""
    from bench import report

    static = {name: list(getattr(importlib.import_module(SECTIONS[name]), "NOTES", [])) for name in names}
    rec = Recorder.load(out_dir, {k: v for k, v in static.items() if v})
    if not rec.records:
        print(f"no results in {out_dir}", file=sys.stderr)
        return 2
    ran = [name for name in names if rec.section_records(name)]
    seconds = float(json.loads((out_dir / "run.json").read_text())["seconds"]) if (out_dir / "run.json").exists() else float("nan")
    md = report.write_markdown(rec, ran, seconds, report.write_plots(rec))
    log(f"report written: {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
