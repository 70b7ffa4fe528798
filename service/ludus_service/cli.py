"""`ludus-server`: start the trainer service."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import List, Optional

import torch

from ludus_service import __version__
from ludus_service.device import resolve_device
from ludus_service.errors import LudusError
from ludus_service.registry import DEFAULT_MAX_REPLAY_BUFFER_BYTES, BehaviorRegistry
from ludus_service.security import SecurityConfigError, add_security_args, security_from_args
from ludus_service.server import DEFAULT_MAX_MESSAGE_BYTES, start_server
from ludus_service.settings import ServerConfig, load_config


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ludus-server", description="Ludus: train RL agents for external simulators over gRPC.")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=50051, help="gRPC port (default 50051; 0 picks a free one)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto: CUDA when torch sees it)")
    p.add_argument("--config", help="ML-Agents-style YAML (behaviors:, default_settings:)")
    p.add_argument("--seed", type=int, default=None, help="seed torch and the minibatch shuffling (reproducible runs)")
    p.add_argument("--torch-threads", type=int, default=None, help="torch intra-op threads (default: half the cores, at least 1)")
    p.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES, help="largest gRPC message accepted or sent")
    p.add_argument("--grace", type=float, default=10.0, help="seconds to finish in-flight RPCs on SIGTERM/SIGINT")
    p.add_argument("--metrics-port", type=int, default=9090, help="Prometheus /metrics port (default 9090; 0 picks a free one; -1 disables)")
    p.add_argument("--checkpoint-dir", default=None, help="folder for checkpoints (per behaviour; every checkpoint_interval steps and at shutdown)")
    p.add_argument("--resume", action="store_true", help="restore every behaviour from its latest checkpoint in --checkpoint-dir")
    p.add_argument("--initialize-from", default=None, help="checkpoint folder of an earlier run: new behaviours start from its weights (step reset)")
    p.add_argument("--max-queued-steps", type=int, default=None, help="per-behaviour intake bound in steps (default max(2*buffer_size, 8192))")
    p.add_argument("--intake-timeout", type=float, default=10.0, help="seconds a full intake holds a submission before RESOURCE_EXHAUSTED")
    p.add_argument("--drain-seconds", type=float, default=1.0, help="on SIGTERM, seconds health reports NOT_SERVING before the port closes")
    p.add_argument("--inference", action="store_true",
                   help="serve every behaviour untrained (like mlagents-learn --inference): trajectories are counted, "
                        "no value estimation or updates; with --resume, serves the checkpointed policies")
    p.add_argument("--demo-dir", default="demos",
                   help="folder of .demo files: `demo_path` settings (GAIL, behavioral_cloning) are relative to it and "
                        "RecordDemonstration writes into it (default ./demos)")
    p.add_argument("--max-replay-buffer-bytes", type=int, default=DEFAULT_MAX_REPLAY_BUFFER_BYTES,
                   help="largest SAC replay buffer per behaviour (buffer_size x bytes per step; default 4 GiB): a larger "
                        "buffer_size is RESOURCE_EXHAUSTED at RegisterBehavior")
    p.add_argument("--log-level", default="INFO")
    add_security_args(p)  # --auth-token-file, --tls-cert, --tls-key, --tls-client-ca (ludus_service.security)
    p.add_argument("--version", action="version", version=f"ludus-server {__version__}")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("ludus-server")
    try:
        device = resolve_device(args.device)
    except ValueError as err:
        log.error("%s", err)
        return 2
    config = ServerConfig()
    if args.config:
        try:
            with open(args.config, encoding="utf-8") as fh:
                config = load_config(fh.read())
        except (OSError, LudusError) as err:
            log.error("--config %s: %s", args.config, err)
            return 2
    torch.set_num_threads(args.torch_threads or max(1, (os.cpu_count() or 2) // 2))
    if args.resume and not args.checkpoint_dir:
        log.error("--resume needs --checkpoint-dir")
        return 2
    try:
        security = security_from_args(args)
    except SecurityConfigError as err:
        log.error("%s", err)
        return 2
    registry = BehaviorRegistry(config, device, args.seed, checkpoint_dir=args.checkpoint_dir, initialize_from=args.initialize_from,
                                max_queued_steps=args.max_queued_steps, intake_timeout=args.intake_timeout,
                                force_inference=args.inference, demo_dir=args.demo_dir,
                                max_replay_buffer_bytes=args.max_replay_buffer_bytes)
    if args.resume:
        try:
            restored = registry.resume()
        except LudusError as err:  # e.g. a demonstration a checkpointed behaviour trains on is gone
            log.error("--resume: %s", err)
            return 2
        log.info("resumed %d behaviour(s): %s", len(restored), ", ".join(restored) or "none found")
    metrics_note = ""
    if args.metrics_port >= 0:
        _, metrics_port = registry.metrics.serve(args.metrics_port, args.host)
        metrics_note = f", metrics on :{metrics_port}/metrics"
    running = start_server(registry, args.host, args.port, max_message_bytes=args.max_message_bytes, security=security)
    # The exact line tests and scripts wait for.
    print(f"ludus-server listening on {args.host}:{running.port} (device {device}{metrics_note})", flush=True)
    log.info("gRPC port security: %s", security.describe())
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("shutting down (grace %.1fs)", args.grace)
    running.stop(args.grace, drain_seconds=args.drain_seconds)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
