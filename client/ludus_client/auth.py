"""Client side of Ludus deployment security: bearer token and TLS / mutual TLS channels (torch-free).

The token travels as the metadata `authorization: Bearer <token>` on every call, added by a client
interceptor, so every stub call made through the channel carries it (unary calls, server and
bidirectional streams, TrajectoryStream's direct stub use) on TLS and plaintext channels alike.
(gRPC refuses call credentials on a plaintext channel; an interceptor has no such restriction.
Off loopback, use TLS: a token sent in plaintext can be read on the path.)
"""
from __future__ import annotations

import collections
import os
from typing import Optional, Sequence, Tuple

import grpc

#: Environment variable read for the token when none is passed (same name as the server's).
TOKEN_ENV = "LUDUS_AUTH_TOKEN"


def resolve_token(token: Optional[str]) -> Optional[str]:
    """`token` if given ('' = explicitly none), else LUDUS_AUTH_TOKEN, stripped; None when absent or empty."""
    if token is None:
        token = os.environ.get(TOKEN_ENV)
    token = (token or "").strip()
    return token or None


def read_token_file(path: str) -> str:
    """The token stored in a file (surrounding whitespace stripped); ValueError if it is empty."""
    with open(path, encoding="utf-8") as fh:
        token = fh.read().strip()
    if not token:
        raise ValueError(f"token file {path} is empty")
    return token


class _CallDetails(
    collections.namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")),
    grpc.ClientCallDetails,
):
    pass


class BearerTokenInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds `authorization: Bearer <token>` to every call."""

    def __init__(self, token: str) -> None:
        self._header: Tuple[str, str] = ("authorization", f"Bearer {token}")

    def _details(self, d: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = [m for m in (d.metadata or ()) if m[0] != "authorization"]
        metadata.append(self._header)
        return _CallDetails(d.method, d.timeout, metadata, d.credentials,
                            getattr(d, "wait_for_ready", None), getattr(d, "compression", None))

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)


def make_channel(
    target: str,
    options: Sequence[Tuple[str, object]] = (),
    tls: bool = False,
    root_certificates: Optional[bytes] = None,
    client_cert_chain: Optional[bytes] = None,
    client_private_key: Optional[bytes] = None,
    tls_server_name: Optional[str] = None,
) -> grpc.Channel:
    """A plaintext channel, or a TLS one (system roots unless `root_certificates`; a client
    certificate for mutual TLS; `tls_server_name` overrides the name checked in the server's
    certificate, e.g. when dialling an IP address)."""
    if (client_cert_chain is None) != (client_private_key is None):
        raise ValueError("mutual TLS needs both client_cert_chain and client_private_key")
    if not (tls or root_certificates or client_cert_chain or tls_server_name):
        return grpc.insecure_channel(target, options=list(options))
    options = list(options)
    if tls_server_name:
        options.append(("grpc.ssl_target_name_override", tls_server_name))
    credentials = grpc.ssl_channel_credentials(root_certificates, client_private_key, client_cert_chain)
    return grpc.secure_channel(target, credentials, options=options)
