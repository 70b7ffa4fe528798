"""A bare gRPC bytes sink: the transport's ceiling for the ingestion benchmark.

`python -m bench.sink [--port 0]` serves one stream-stream method, /bench.Sink/Submit, through a
generic handler with no (de)serialisers: each request arrives as raw bytes and is answered with a
fixed small ack (the size of a typical SubmitTrajectoriesResponse), one per request, like Ludus's
SubmitTrajectories. Same thread pool and message-size options as ludus_service.server.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from concurrent import futures

import grpc

SERVICE = "bench.Sink"
METHOD = f"/{SERVICE}/Submit"
ACK = b"\x08\x40\x20\x01\x30\x40"  # 6 bytes, like SubmitTrajectoriesResponse(accepted_steps=64, policy_version=1, total_steps=64)
MAX_MESSAGE_BYTES = 256 * 1024 * 1024


def _submit(request_iterator, context):
    for request in request_iterator:
        yield ACK


def start_sink(host: str = "127.0.0.1", port: int = 0, max_workers: int = 64):
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="sink"), options=options)
    handler = grpc.method_handlers_generic_handler(SERVICE, {
        "Submit": grpc.stream_stream_rpc_method_handler(_submit, request_deserializer=None, response_serializer=None),
    })
    server.add_generic_rpc_handlers((handler,))
    bound = server.add_insecure_port(f"{host}:{port}")
    server.start()
    return server, bound


def main() -> int:
    p = argparse.ArgumentParser(prog="bench.sink")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args()
    server, port = start_sink(args.host, args.port)
    print(f"sink listening on {args.host}:{port}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(1).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
