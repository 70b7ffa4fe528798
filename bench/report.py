"""results.md (Markdown tables, targets first) and PNG plots from the recorded measurements."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional

from bench.common import Recorder

TARGETS = {
    "learning": "return >= SB3's at <= 0.6x SB3's wall-clock",
    "remote_tax": "service / in-process wall-clock <= 1.15",
    "ingestion": "Ludus accepted steps/s >= 50% of the bare gRPC sink",
    "estimate_latency": "EstimateValues p50 <= 3 ms (1,000 steps, 1 caller)",
}


def _f(value: Optional[float], digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _table(header: List[str], rows: List[List[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _by_name(rec: Recorder, section: str) -> Dict[str, Dict[str, Any]]:
    return {r["name"]: r for r in rec.section_records(section)}


# -- targets ---------------------------------------------------------------------------------------
def targets(rec: Recorder) -> List[List[str]]:
    rows: List[List[str]] = []
    for r in rec.section_records("learning"):
        if not r["name"].endswith("/summary"):
            continue
        m = r["metrics"]
        env = r["params"]["env"]
        diff = m["ludus_final_return_mean"] - m["sb3_final_return_mean"]
        noise = max(m["sb3_final_return_std"], m["ludus_final_return_std"])
        ret_ok = "yes" if diff >= 0 else ("within seed noise" if -diff <= noise else "no")
        ratio = m["wallclock_ratio_geomean"]
        rows.append([f"learning {env}", TARGETS["learning"],
                     f"return {_f(m['ludus_final_return_mean'], 1)} vs SB3 {_f(m['sb3_final_return_mean'], 1)} ({ret_ok}); "
                     f"wall-clock ratio {_f(ratio)} ({int(m['seeds'])} seed(s))",
                     "PASS" if diff >= 0 and ratio <= 0.6 else ("PASS (return within noise)" if ret_ok != "no" and ratio <= 0.6 else "FAIL")])
    tax = _by_name(rec, "remote_tax").get("summary")
    if tax and "tax_service" in tax["metrics"]:
        t = tax["metrics"]["tax_service"]
        extra = f"; same-process gRPC {_f(tax['metrics']['tax_service_same_process'])}" if "tax_service_same_process" in tax["metrics"] else ""
        rows.append(["remote tax", TARGETS["remote_tax"], f"{_f(t)} (ludus-server subprocess){extra}", "PASS" if t <= 1.15 else "FAIL"])
    ratios = [r for r in rec.section_records("ingestion") if r["name"].endswith("/ratio")]
    if ratios:
        vals = [r["metrics"]["ratio_ludus_over_sink"] for r in ratios]
        worst = min(ratios, key=lambda r: r["metrics"]["ratio_ludus_over_sink"])
        rows.append(["ingestion", TARGETS["ingestion"],
                     f"{_f(min(vals))}–{_f(max(vals))} of the sink over {len(vals)} configs (worst: {worst['params']['obs']} x{worst['params']['clients']})",
                     "PASS" if min(vals) >= 0.5 else "FAIL"])
    est = _by_name(rec, "estimate_latency").get("grpc/c1")
    if est:
        p50 = est["metrics"]["p50_ms"]
        rows.append(["EstimateValues", TARGETS["estimate_latency"], f"p50 {_f(p50)} ms, p99 {_f(est['metrics']['p99_ms'])} ms",
                     "PASS" if p50 <= 3.0 else "FAIL"])
    return rows


# -- sections --------------------------------------------------------------------------------------
def _learning(rec: Recorder) -> str:
    out = []
    summary = [r for r in rec.section_records("learning") if r["name"].endswith("/summary")]
    if summary:
        rows = []
        for r in summary:
            m = r["metrics"]
            rows.append([r["params"]["env"], r["params"]["steps"], int(m["seeds"]),
                         f"{_f(m['sb3_final_return_mean'], 1)} ± {_f(m['sb3_final_return_std'], 1)}",
                         f"{_f(m['ludus_final_return_mean'], 1)} ± {_f(m['ludus_final_return_std'], 1)}",
                         _f(m["sb3_seconds_mean"], 1), _f(m["ludus_seconds_mean"], 1), _f(m["wallclock_ratio_geomean"])])
        out.append(_table(["env", "steps", "seeds", "SB3 return (last 20 ep.)", "Ludus return (last 20 ep.)",
                           "SB3 s", "Ludus s", "wall-clock Ludus/SB3 (geomean)"], rows))
    runs = [r for r in rec.section_records("learning") if "/ratio/" not in r["name"] and not r["name"].endswith("/summary")]
    if runs:
        rows = [[r["params"]["env"], r["params"]["seed"], r["params"]["side"], r["params"]["order"] + 1,
                 _f(r["metrics"]["final_mean_return"], 1), _f(r["metrics"]["seconds"], 1), _f(r["metrics"]["steps_per_s"], 0),
                 int(r["metrics"]["episodes"]), int(r["metrics"]["updates"])] for r in runs]
        out.append("Per run:\n\n" + _table(["env", "seed", "side", "ran", "final return", "seconds", "env steps/s", "episodes", "updates"], rows))
    return "\n\n".join(out)


def _remote_tax(rec: Recorder) -> str:
    runs = [r for r in rec.section_records("remote_tax") if r["name"] != "summary"]
    out = []
    if runs:
        rows = [[r["params"]["variant"], r["params"]["rep"], r["params"]["order"] + 1, _f(r["metrics"]["seconds"]),
                 _f(r["metrics"]["steps_per_s"], 0), int(r["metrics"]["updates"])] for r in runs]
        out.append(_table(["variant", "rep", "ran", "seconds", "env steps/s", "updates"], rows))
    s = _by_name(rec, "remote_tax").get("summary")
    if s:
        m = s["metrics"]
        rows = [[v, _f(m.get(f"{v}_seconds_mean")), _f(m.get(f"tax_{v}")) if v != "inprocess" else "1 (baseline)"]
                for v in ("inprocess", "service", "service_same_process") if f"{v}_seconds_mean" in m]
        out.append(_table(["variant", "mean seconds", "tax (geomean of paired ratios)"], rows))
    return "\n\n".join(out)


def _ingestion(rec: Recorder) -> str:
    recs = _by_name(rec, "ingestion")
    keys = []
    for r in rec.section_records("ingestion"):
        k = (r["params"]["obs"], r["params"]["clients"])
        if k not in keys:
            keys.append(k)
    rows = []
    for obs, n in keys:
        sink = recs.get(f"{obs}/c{n}/sink")
        lud = recs.get(f"{obs}/c{n}/ludus")
        trn = recs.get(f"{obs}/c{n}/ludus_training")
        any_r = sink or lud or trn
        if any_r is None or "payload_bytes" not in any_r["params"]:
            continue
        s_rate = sink["metrics"]["accepted_steps_per_s"] if sink else None
        l_rate = lud["metrics"]["accepted_steps_per_s"] if lud else None
        t_rate = trn["metrics"]["accepted_steps_per_s"] if trn else None
        t_proc = trn["metrics"].get("processed_steps_per_s") if trn else None

        def ratio(x):
            return _f(x / s_rate) if s_rate and x else "–"

        rows.append([obs, _f(any_r["params"]["payload_bytes"] / 1024, 1), n, _f(s_rate, 0), _f(l_rate, 0), ratio(l_rate),
                     _f(t_rate, 0), _f(t_proc, 0), ratio(t_proc),
                     _f(sink["metrics"]["accepted_mb_per_s"], 0) if sink else "–", _f(lud["metrics"]["accepted_mb_per_s"], 0) if lud else "–"])
    if not rows:
        return ""
    return _table(["obs", "message KiB (64 steps)", "clients", "sink steps/s", "Ludus steps/s (inference)", "Ludus / sink",
                   "training: accepted steps/s", "training: processed steps/s", "training processed / sink",
                   "sink MB/s", "Ludus MB/s"], rows)


def _estimate(rec: Recorder) -> str:
    rows = []
    for r in rec.section_records("estimate_latency"):
        m = r["metrics"]
        rows.append([r["params"]["path"], r["params"]["callers"], _f(m["p50_ms"]), _f(m["p90_ms"]), _f(m["p99_ms"]), _f(m["mean_ms"]),
                     _f(m.get("calls_per_s"), 0), int(m["calls"])])
    if not rows:
        return ""
    return _table(["path", "callers", "p50 ms", "p90 ms", "p99 ms", "mean ms", "calls/s (all callers)", "calls"], rows)


def _update(rec: Recorder) -> str:
    rows = []
    for r in rec.section_records("update_throughput"):
        p, m = r["params"], r["metrics"]
        network = f"{p['layers']}x{p['hidden']} {p['activation']}"
        obs = p.get("obs")
        if "image" in p:  # a camera through a visual encoder, then the MLP
            network, obs = f"{p['encoder']} + {network}", "x".join(str(d) for d in p["image"]) + " uint8"
        rows.append([r["name"].split("/")[0], p["impl"], network, obs, p["batch"], p["buffer"], p["epochs"],
                     f"{p['device']} ({p['device_name']})", _f(m["samples_per_s"], 0), _f(m["minibatches_per_s"], 0), _f(m["update_seconds"])])
    if not rows:
        return ""
    return _table(["case", "impl", "network", "obs", "batch", "buffer", "epochs", "device", "samples/s", "minibatches/s", "update s"], rows)


def _profile(rec: Recorder) -> str:
    out = []
    for proc in ("server", "client"):
        recs = [r for r in rec.section_records("profile") if r["params"].get("process") == proc]
        if not recs:
            continue
        busy = next((r for r in recs if r["name"].endswith("/busy")), None)
        head = f"**{proc}**"
        if busy:
            head += (f": {_f(busy['metrics']['busy_seconds'], 1)} s of busy samples over a {_f(busy['params']['run_seconds'], 1)} s run "
                     f"({_f(100 * busy['metrics']['busy_fraction_of_run'], 0)}% of one core)")
        parts = [head]
        for kind, title in (("thread", "threads"), ("inclusive", "inclusive (function and what it calls)"), ("self", "self time")):
            rows = [[r["params"]["item"].replace("|", "\\|"), _f(100 * r["metrics"]["share"], 1), _f(r["metrics"]["seconds"], 2)]
                    for r in recs if r["params"].get("kind") == kind]
            if rows:
                parts.append(f"{title}:\n\n" + _table(["item", "% of busy samples", "seconds"], rows))
        out.append("\n\n".join(parts))
    return "\n\n".join(out)


SECTION_TITLES = {
    "learning": ("1. Learning: Ludus vs Stable-Baselines3 PPO", _learning),
    "remote_tax": ("2. Remote tax: service vs in-process learner", _remote_tax),
    "ingestion": ("3. Ingestion: SubmitTrajectories vs a bare gRPC sink", _ingestion),
    "estimate_latency": ("4. EstimateValues latency (1,000 steps x 64 floats)", _estimate),
    "update_throughput": ("5. PPO update throughput", _update),
    "profile": ("6. Profile of the Ludus CartPole learning run (py-spy)", _profile),
    "sac": ("7. SAC: Ludus vs Stable-Baselines3 SAC (Pendulum-v1)", lambda rec: __import__("bench.sac", fromlist=["render"]).render(rec)),
}


def machine_lines(machine: Dict[str, Any]) -> str:
    return (f"CPU {machine['cpu_model']}, {machine['cores']} cores ({machine['cores_usable']} usable), GPU {machine['gpu'] or 'none'}, "
            f"Python {machine['python']}, torch {machine['torch']}, grpcio {machine['grpcio']}, numpy {machine['numpy']}, "
            f"stable-baselines3 {machine.get('stable_baselines3')}; {machine['platform']}")


def write_markdown(rec: Recorder, sections: List[str], seconds: float, plots: List[str]) -> Path:
    from bench.common import machine_info

    lines = [f"# Ludus benchmark results ({rec.mode})", "",
             f"Machine: {machine_lines(machine_info())}.", "",
             f"Total wall-clock: {seconds:.0f} s. Every comparison ran both sides in the same run, alternating order; "
             "each run in a fresh process with one torch thread.", ""]
    trows = targets(rec)
    if trows:
        lines += ["## Targets", "", _table(["what", "target", "measured", "verdict"], trows), ""]
    for name in sections:
        title, render = SECTION_TITLES[name]
        body = render(rec)
        lines += [f"## {title}", ""]
        lines += [body if body else "_no measurements_", ""]
        for plot in plots:
            if plot.startswith(name):
                lines += [f"![{plot}]({plot})", ""]
        for note in rec.notes.get(name, []):
            lines.append(f"- {note}")
        if rec.notes.get(name):
            lines.append("")
    path = rec.out_dir / "results.md"
    path.write_text("\n".join(lines))
    return path


# -- plots -----------------------------------------------------------------------------------------
def write_plots(rec: Recorder) -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    written: List[str] = []
    colors = {"sb3": "tab:blue", "ludus": "tab:orange"}
    for env, sides in rec.side.get("learning_curves", {}).items():
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for side, runs in sides.items():
            ends = [run["curve"][-1][0] for run in runs if run["curve"]]
            if not ends:
                continue
            grid = np.linspace(0, max(ends), 200)
            interp = []
            for run in runs:
                c = np.asarray(run["curve"], dtype=float)
                if len(c) == 0:
                    continue
                ax.plot(c[:, 0], c[:, 1], color=colors.get(side), alpha=0.25, lw=0.8)
                interp.append(np.interp(grid, c[:, 0], c[:, 1], left=np.nan, right=c[-1, 1]))
            if interp:
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    mean = np.nanmean(np.vstack(interp), axis=0)
                ax.plot(grid, mean, color=colors.get(side), lw=2.2, label=f"{'SB3 PPO' if side == 'sb3' else 'Ludus (gRPC)'} ({len(runs)} seed(s))")
        ax.set_xlabel("env steps")
        ax.set_ylabel("mean training return (last 20 episodes)")
        ax.set_title(f"{env}: Ludus vs Stable-Baselines3 PPO, same hyperparameters")
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
        name = f"learning_{env}.png"
        fig.tight_layout()
        fig.savefig(rec.out_dir / name, dpi=110)
        plt.close(fig)
        written.append(name)

    ing = _by_name(rec, "ingestion")
    keys = []
    for r in rec.section_records("ingestion"):
        if "target" in r["params"]:
            k = (r["params"]["obs"], r["params"]["clients"])
            if k not in keys:
                keys.append(k)
    if keys:
        fig, ax = plt.subplots(figsize=(9, 4.2))
        x = np.arange(len(keys))
        width = 0.27
        for j, (label, key, metric) in enumerate((("bare gRPC sink", "sink", "accepted_steps_per_s"),
                                                  ("Ludus, inference: true", "ludus", "accepted_steps_per_s"),
                                                  ("Ludus training (critic on), processed", "ludus_training", "processed_steps_per_s"))):
            vals = [ing.get(f"{o}/c{n}/{key}", {}).get("metrics", {}).get(metric, 0.0) for o, n in keys]
            ax.bar(x + (j - 1) * width, vals, width, label=label)
        ax.set_xticks(x, [f"{o.replace('img84x84x3_uint8', '84x84x3 uint8')}\n{n} client(s)" for o, n in keys], fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("env steps / s")
        ax.set_title("SubmitTrajectories ingestion vs bare gRPC sink (64-step messages)")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(rec.out_dir / "ingestion.png", dpi=110)
        plt.close(fig)
        written.append("ingestion.png")
    return written
