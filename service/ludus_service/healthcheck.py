"""`ludus-healthcheck`: ask a Ludus server's standard gRPC health service whether it is SERVING.

Exit status 0 when the status is SERVING, 1 otherwise (NOT_SERVING, unreachable, timeout), so it
fits a container HEALTHCHECK or a Kubernetes exec probe. The health service needs no bearer token.
For a TLS server pass the CA (and, for mutual TLS, a client certificate); every option also has an
environment variable, so a container image's fixed HEALTHCHECK can be pointed at a TLS port by
setting e.g. LUDUS_HEALTHCHECK_TLS_CA at `docker run` time. Imports no torch (starts fast).
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
from typing import List, Optional

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def _env(name: str, default: Optional[str] = None) -> Optional[str]:
    return os.environ.get(f"LUDUS_HEALTHCHECK_{name}") or default


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ludus-healthcheck", description="Exit 0 if the Ludus server's gRPC health check reports SERVING.")
    p.add_argument("--target", default=_env("TARGET", "127.0.0.1:50051"), help="HOST:PORT (env LUDUS_HEALTHCHECK_TARGET; default 127.0.0.1:50051)")
    p.add_argument("--service", default=_env("SERVICE", ""), help="service to check: '' = the server as a whole (default), or ludus.v1.Trainer")
    p.add_argument("--timeout", type=float, default=float(_env("TIMEOUT", "5")), help="seconds (default 5)")
    p.add_argument("--tls-ca", default=_env("TLS_CA"), help="connect with TLS trusting this PEM CA (env LUDUS_HEALTHCHECK_TLS_CA)")
    p.add_argument("--tls-cert", default=_env("TLS_CERT"), help="client certificate for mutual TLS (env LUDUS_HEALTHCHECK_TLS_CERT)")
    p.add_argument("--tls-key", default=_env("TLS_KEY"), help="client private key for mutual TLS (env LUDUS_HEALTHCHECK_TLS_KEY)")
    p.add_argument("--tls-server-name", default=_env("TLS_SERVER_NAME"),
                   help="name expected in the server certificate (env LUDUS_HEALTHCHECK_TLS_SERVER_NAME)")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing")
    return p.parse_args(argv)


def _channel(args: argparse.Namespace) -> grpc.Channel:
    if not (args.tls_ca or args.tls_cert or args.tls_server_name):
        return grpc.insecure_channel(args.target)
    read = lambda path: pathlib.Path(path).read_bytes() if path else None  # noqa: E731
    credentials = grpc.ssl_channel_credentials(read(args.tls_ca), read(args.tls_key), read(args.tls_cert))
    options = [("grpc.ssl_target_name_override", args.tls_server_name)] if args.tls_server_name else []
    return grpc.secure_channel(args.target, credentials, options=options)


def check(args: argparse.Namespace) -> str:
    """The health status name (e.g. "SERVING"); raises grpc.RpcError / OSError on failure."""
    with _channel(args) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout, wait_for_ready=True)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        status = check(args)
    except grpc.RpcError as err:
        status = f"{err.code().name}: {err.details()}"
    except (OSError, ValueError) as err:
        status = f"error: {err}"
    if not args.quiet:
        print(f"{args.target} {args.service or '(server)'}: {status}")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
