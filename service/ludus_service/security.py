"""Deployment security for `ludus-server`: bearer-token authentication and TLS / mutual TLS.

Both are off by default (plaintext port, no authentication), which suits a trusted loopback or a
private network. For anything else:

* Token: every RPC must carry the metadata `authorization: Bearer <token>`; a missing or wrong token
  is answered UNAUTHENTICATED. The standard health service (`/grpc.health.v1.Health/`) and server
  reflection (`/grpc.reflection.`) stay reachable without a token, so load balancers, container
  health checks and `grpcurl list` work. The token comes from `--auth-token-file PATH` or the
  environment variable LUDUS_AUTH_TOKEN (the file wins if both are set); surrounding whitespace is
  stripped; an empty token is an error.
* TLS: `--tls-cert` + `--tls-key` (PEM) serve TLS; `--tls-client-ca` additionally requires every
  client to present a certificate signed by that CA (mutual TLS).

A token sent over a plaintext port can be read by anyone on the path: use TLS with it off loopback.
"""
from __future__ import annotations

import argparse
import hmac
import os
from dataclasses import dataclass
from typing import Callable, List, Mapping, Optional, Sequence

import grpc

#: Environment variable holding the bearer token (server and client SDK alike).
TOKEN_ENV = "LUDUS_AUTH_TOKEN"
#: RPC method prefixes that need no token: standard health checking and server reflection.
UNAUTHENTICATED_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class SecurityConfigError(ValueError):
    """A bad security setting (unreadable file, empty token, key without certificate, ...)."""


def _check_token(token: str, source: str) -> str:
    token = token.strip()
    if not token:
        raise SecurityConfigError(f"{source}: the token is empty")
    if any(not (0x21 <= ord(c) <= 0x7E) for c in token):
        raise SecurityConfigError(f"{source}: the token must be printable ASCII without spaces (it travels as gRPC metadata)")
    return token


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as err:
        raise SecurityConfigError(f"{what} {path}: {err.strerror or err}") from None
    if not data.strip():
        raise SecurityConfigError(f"{what} {path}: the file is empty")
    return data


def load_token(token_file: Optional[str] = None, environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The bearer token from `token_file`, else from LUDUS_AUTH_TOKEN, else None (auth off)."""
    if token_file:
        return _check_token(_read(token_file, "--auth-token-file").decode("utf-8", "replace"), f"--auth-token-file {token_file}")
    env = os.environ if environ is None else environ
    if TOKEN_ENV in env:
        return _check_token(env[TOKEN_ENV], TOKEN_ENV)
    return None


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Answers UNAUTHENTICATED unless the call carries `authorization: Bearer <token>`."""

    def __init__(self, token: str, exempt_prefixes: Sequence[str] = UNAUTHENTICATED_PREFIXES) -> None:
        self._expected = token.encode("ascii")
        self._exempt = tuple(exempt_prefixes)

    def _authorized(self, metadata) -> bool:
        values = [v for k, v in (metadata or ()) if k == "authorization"]
        if len(values) != 1:
            return False
        value = values[0].decode("latin-1") if isinstance(values[0], bytes) else values[0]
        scheme, _, presented = value.partition(" ")
        if scheme.lower() != "bearer":
            return False
        # Constant-time comparison of bytes (compare_digest on str accepts ASCII only).
        return hmac.compare_digest(presented.strip().encode("utf-8", "replace"), self._expected)

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method or ""
        if method.startswith(self._exempt):
            return continuation(handler_call_details)
        authorized = self._authorized(handler_call_details.invocation_metadata)
        handler = continuation(handler_call_details)
        if authorized or handler is None:  # None: unknown method, gRPC answers UNIMPLEMENTED
            return handler
        has_header = any(k == "authorization" for k, _ in (handler_call_details.invocation_metadata or ()))
        message = ("invalid bearer token" if has_header else
                   "missing bearer token: send metadata 'authorization: Bearer <token>' (the server's LUDUS_AUTH_TOKEN / --auth-token-file)")
        return _deny(handler, message)


def _deny(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that aborts with UNAUTHENTICATED without reading or
    parsing the request (request_deserializer=None keeps the request as raw bytes)."""

    def abort(_request, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    serializer = handler.response_serializer
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort, None, serializer)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort, None, serializer)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort, None, serializer)
    return grpc.unary_unary_rpc_method_handler(abort, None, serializer)


@dataclass
class SecurityConfig:
    """What `start_server(..., security=)` needs. All None = plaintext, no authentication."""

    token: Optional[str] = None
    tls_cert: Optional[bytes] = None  # PEM certificate chain of the server
    tls_key: Optional[bytes] = None  # PEM private key of the server
    tls_client_ca: Optional[bytes] = None  # PEM CA bundle; set = mutual TLS (client certificates required)

    def __post_init__(self) -> None:
        if self.token is not None:
            self.token = _check_token(self.token, "token")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise SecurityConfigError("TLS needs both a certificate (--tls-cert) and its private key (--tls-key)")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise SecurityConfigError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def mutual_tls(self) -> bool:
        return self.tls_client_ca is not None

    def interceptors(self) -> List[grpc.ServerInterceptor]:
        return [BearerTokenInterceptor(self.token)] if self.token else []

    def server_credentials(self) -> Optional[grpc.ServerCredentials]:
        """grpc.ssl_server_credentials for add_secure_port, or None for a plaintext port."""
        if not self.tls:
            return None
        return grpc.ssl_server_credentials(
            [(self.tls_key, self.tls_cert)],
            root_certificates=self.tls_client_ca,
            require_client_auth=self.mutual_tls,
        )

    def describe(self) -> str:
        transport = "mutual TLS" if self.mutual_tls else "TLS" if self.tls else "plaintext"
        return f"{transport}, {'bearer-token auth' if self.token else 'no auth'}"


def add_security_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("security (all off by default: plaintext, no authentication)")
    g.add_argument("--auth-token-file", default=None, metavar="PATH",
                   help=f"require 'authorization: Bearer <token>' on every RPC except health and reflection; "
                        f"the token is this file's content (or env {TOKEN_ENV}; the file wins)")
    g.add_argument("--tls-cert", default=None, metavar="PEM", help="serve TLS with this certificate chain (needs --tls-key)")
    g.add_argument("--tls-key", default=None, metavar="PEM", help="private key of --tls-cert")
    g.add_argument("--tls-client-ca", default=None, metavar="PEM",
                   help="mutual TLS: require client certificates signed by this CA bundle")


def security_from_args(args: argparse.Namespace, environ: Optional[Mapping[str, str]] = None) -> SecurityConfig:
    """SecurityConfig from parsed `add_security_args` options (and LUDUS_AUTH_TOKEN). Raises SecurityConfigError."""
    if bool(args.tls_cert) != bool(args.tls_key):
        raise SecurityConfigError("TLS needs both --tls-cert and --tls-key")
    if args.tls_client_ca and not args.tls_cert:
        raise SecurityConfigError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
    reader: Callable[[Optional[str], str], Optional[bytes]] = lambda path, what: _read(path, what) if path else None
    return SecurityConfig(
        token=load_token(args.auth_token_file, environ),
        tls_cert=reader(args.tls_cert, "--tls-cert"),
        tls_key=reader(args.tls_key, "--tls-key"),
        tls_client_ca=reader(args.tls_client_ca, "--tls-client-ca"),
    )
