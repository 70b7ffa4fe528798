"""Deployment security: bearer-token auth, TLS and mutual TLS, on real servers and real channels.

The test PKI (a CA, a server certificate for localhost / 127.0.0.1, client certificates, and an
untrusted CA) is made here with `cryptography`; EC keys keep it fast.
"""
from __future__ import annotations

import argparse
import datetime
import ipaddress
import logging
import os
import signal
import subprocess
import sys
from typing import Dict, Iterator, Optional

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from ludus.v1 import trainer_pb2 as pb
from ludus_client import BehaviorSpec, LudusClient, LudusError, TrajectoryBuilder
from ludus_client.stream import TrajectoryStream
from ludus_service import cli, healthcheck
from ludus_service.registry import BehaviorRegistry
from ludus_service.security import TOKEN_ENV, SecurityConfig, SecurityConfigError, load_token, security_from_args
from ludus_service.server import RunningServer, start_server

TEST_DEVICE = os.environ.get("LUDUS_TEST_DEVICE", "cpu")  # as in conftest.py
TOKEN = "s3cret-token_0123456789"
SPEC = BehaviorSpec.vector(4, discrete_branches=[3])
SETTINGS = {"hyperparameters": {"batch_size": 32, "buffer_size": 4096}, "network_settings": {"hidden_units": 16}}


# -- test PKI --------------------------------------------------------------------------------------
def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _make_ca(cn: str):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _issue(ca_key, ca_cert, cn: str, server: bool):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                              critical=False))
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return _pem_key(key), cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki() -> Dict[str, bytes]:
    ca_key, ca_cert = _make_ca("Ludus Test CA")
    other_key, other_cert = _make_ca("Untrusted CA")
    server_key, server_cert = _issue(ca_key, ca_cert, "localhost", server=True)
    client_key, client_cert = _issue(ca_key, ca_cert, "simulator-1", server=False)
    rogue_key, rogue_cert = _issue(other_key, other_cert, "rogue", server=False)
    return {"ca": ca_cert.public_bytes(serialization.Encoding.PEM), "other_ca": other_cert.public_bytes(serialization.Encoding.PEM),
            "server_key": server_key, "server_cert": server_cert, "client_key": client_key, "client_cert": client_cert,
            "rogue_key": rogue_key, "rogue_cert": rogue_cert}


# -- helpers ---------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _no_token_in_env(monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)


def _serve(security: Optional[SecurityConfig]) -> RunningServer:
    return start_server(BehaviorRegistry(device=TEST_DEVICE, seed=0), host="127.0.0.1", port=0, security=security)


@pytest.fixture
def token_server() -> Iterator[RunningServer]:
    running = _serve(SecurityConfig(token=TOKEN))
    yield running
    running.stop(grace=0.5)


@pytest.fixture
def tls_server(pki) -> Iterator[RunningServer]:
    running = _serve(SecurityConfig(token=TOKEN, tls_cert=pki["server_cert"], tls_key=pki["server_key"]))
    yield running
    running.stop(grace=0.5)


@pytest.fixture
def mtls_server(pki) -> Iterator[RunningServer]:
    running = _serve(SecurityConfig(tls_cert=pki["server_cert"], tls_key=pki["server_key"], tls_client_ca=pki["ca"]))
    yield running
    running.stop(grace=0.5)


def _trajectory(policy, agent: str, length: int = 8) -> pb.Trajectory:
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(length, 4)).astype(np.float32)
    out = policy.act([obs], rng=rng)
    builder = TrajectoryBuilder(SPEC, agent)
    for i in range(length):
        builder.add_step([obs[i]], out.continuous_actions[i], out.discrete_actions[i],
                         out.continuous_log_probs[i], out.discrete_log_probs[i], 1.0, policy.version)
    return builder.build([obs[-1]])


def _exercise(client: LudusClient, name: str = "Secure") -> None:
    """RegisterBehavior, GetPolicy, a submit (bidi stream), TrajectoryStream and WatchPolicy."""
    registration = client.register(name, SPEC, SETTINGS)
    assert registration.policy_version == 1
    policy = client.get_local_policy(name)
    acks = client.submit(name, [_trajectory(policy, "a0")])
    assert [a.accepted_steps for a in acks] == [8]
    stream = TrajectoryStream(client, name)
    stream.submit(_trajectory(policy, "a1"))
    stream.close(timeout=20)
    assert stream.accepted_steps == 8
    watch = client.watch_policy(name, after_version=0)
    try:
        assert next(watch).version == 1
    finally:
        watch.cancel()
    assert client.describe(name).total_steps == 16


def _health(channel: grpc.Channel, timeout: float = 5.0) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout).status


def _code(fn) -> grpc.StatusCode:
    with pytest.raises((LudusError, grpc.RpcError)) as info:
        fn()
    return info.value.code if isinstance(info.value, LudusError) else info.value.code()


# -- bearer token ----------------------------------------------------------------------------------
def test_missing_or_wrong_token_is_unauthenticated(token_server):
    target = f"127.0.0.1:{token_server.port}"
    with LudusClient(target, timeout=10, token="") as anonymous:
        with pytest.raises(LudusError) as info:
            anonymous.list_behaviors()
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert "missing bearer token" in info.value.details
        # streaming RPCs are guarded too (bidi and server-streaming)
        with pytest.raises(LudusError) as info:
            anonymous.submit("X", [pb.Trajectory(agent_id="a")])
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(LudusError) as info:
            next(anonymous.watch_policy("X"))
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
    with LudusClient(target, timeout=10, token="not-the-token") as wrong:
        with pytest.raises(LudusError) as info:
            wrong.register("Nope", SPEC)
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert "invalid bearer token" in info.value.details
    assert token_server.registry.names() == []  # the refused RegisterBehavior changed nothing
    # other schemes and prefix tricks are refused
    with grpc.insecure_channel(target) as channel:
        list_behaviors = channel.unary_unary("/ludus.v1.Trainer/ListBehaviors", request_serializer=pb.ListBehaviorsRequest.SerializeToString,
                                             response_deserializer=pb.ListBehaviorsResponse.FromString)
        for header in (f"Basic {TOKEN}", TOKEN, f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer "):
            assert _code(lambda: list_behaviors(pb.ListBehaviorsRequest(), metadata=[("authorization", header)], timeout=5)) \
                == grpc.StatusCode.UNAUTHENTICATED, header
        assert list_behaviors(pb.ListBehaviorsRequest(), metadata=[("authorization", f"bearer {TOKEN}")], timeout=5).behavior_names == []


def test_right_token_works_for_every_kind_of_call(token_server):
    with LudusClient(f"127.0.0.1:{token_server.port}", timeout=30, token=TOKEN) as client:
        _exercise(client)
        assert client.list_behaviors() == ["Secure"]


def test_client_takes_the_token_from_the_environment(token_server, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, f"  {TOKEN}\n")
    with LudusClient(f"127.0.0.1:{token_server.port}", timeout=10) as client:
        assert client.list_behaviors() == []


def test_health_and_reflection_need_no_token(token_server):
    with grpc.insecure_channel(f"127.0.0.1:{token_server.port}") as channel:
        assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        services = {s.name for r in responses for s in r.list_services_response.service}
        assert "ludus.v1.Trainer" in services
    assert healthcheck.main(["--target", f"127.0.0.1:{token_server.port}", "-q"]) == 0
    assert healthcheck.main(["--target", f"127.0.0.1:{token_server.port}", "--service", "ludus.v1.Trainer", "-q"]) == 0


# -- TLS -------------------------------------------------------------------------------------------
def test_tls_client_works_and_plaintext_client_fails(tls_server, pki):
    port = tls_server.port
    with LudusClient(f"127.0.0.1:{port}", timeout=30, token=TOKEN, root_certificates=pki["ca"]) as client:
        _exercise(client)
    # dialling by another name, verifying the certificate's "localhost"
    with LudusClient(f"127.0.0.1:{port}", timeout=10, token=TOKEN, root_certificates=pki["ca"], tls_server_name="localhost") as client:
        assert client.list_behaviors() == ["Secure"]
    with LudusClient(f"localhost:{port}", timeout=10, token=TOKEN, root_certificates=pki["ca"]) as client:
        assert client.list_behaviors() == ["Secure"]
    # TLS still needs the token
    with LudusClient(f"127.0.0.1:{port}", timeout=10, token="", root_certificates=pki["ca"]) as client:
        assert _code(client.list_behaviors) == grpc.StatusCode.UNAUTHENTICATED
    # plaintext to a TLS port: no connection
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        assert _code(lambda: _health(channel)) == grpc.StatusCode.UNAVAILABLE
    # a CA that did not sign the server certificate: no connection
    with LudusClient(f"127.0.0.1:{port}", token=TOKEN, root_certificates=pki["other_ca"]) as client:
        assert _code(lambda: _health(client.channel)) == grpc.StatusCode.UNAVAILABLE
    target = f"127.0.0.1:{port}"
    assert healthcheck.main(["--target", target, "--tls-ca", "/nonexistent.pem", "-q"]) == 1


def test_healthcheck_over_tls(tls_server, pki, tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_bytes(pki["ca"])
    assert healthcheck.main(["--target", f"127.0.0.1:{tls_server.port}", "--tls-ca", str(ca), "-q"]) == 0
    assert healthcheck.main(["--target", f"127.0.0.1:{tls_server.port}", "--timeout", "1", "-q"]) == 1  # plaintext to TLS


def test_mutual_tls_requires_a_trusted_client_certificate(mtls_server, pki):
    target = f"127.0.0.1:{mtls_server.port}"
    with LudusClient(target, timeout=30, root_certificates=pki["ca"], client_cert_chain=pki["client_cert"],
                     client_private_key=pki["client_key"]) as client:
        _exercise(client)
    with LudusClient(target, root_certificates=pki["ca"]) as no_cert:
        assert _code(lambda: _health(no_cert.channel)) == grpc.StatusCode.UNAVAILABLE
    with LudusClient(target, root_certificates=pki["ca"], client_cert_chain=pki["rogue_cert"], client_private_key=pki["rogue_key"]) as rogue:
        assert _code(lambda: _health(rogue.channel)) == grpc.StatusCode.UNAVAILABLE


# -- configuration ---------------------------------------------------------------------------------
def _args(**kw) -> argparse.Namespace:
    base = dict(auth_token_file=None, tls_cert=None, tls_key=None, tls_client_ca=None)
    base.update(kw)
    return argparse.Namespace(**base)


def test_token_sources(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(f"\n  {TOKEN}  \n")
    assert load_token(None, {}) is None
    assert load_token(None, {TOKEN_ENV: f" {TOKEN} "}) == TOKEN
    assert load_token(str(token_file), {TOKEN_ENV: "from-env"}) == TOKEN  # the file wins
    empty = tmp_path / "empty"
    empty.write_text("  \n")
    with pytest.raises(SecurityConfigError, match="empty"):
        load_token(str(empty), {})
    with pytest.raises(SecurityConfigError, match="empty"):
        load_token(None, {TOKEN_ENV: "   "})
    with pytest.raises(SecurityConfigError, match="no-such-file"):
        load_token(str(tmp_path / "no-such-file"), {})
    with pytest.raises(SecurityConfigError, match="printable ASCII"):
        load_token(None, {TOKEN_ENV: "two words"})


def test_security_from_args(tmp_path, pki):
    for name in ("server_cert", "server_key", "ca"):
        (tmp_path / name).write_bytes(pki[name])
    p = lambda n: str(tmp_path / n)  # noqa: E731
    assert not security_from_args(_args(), {}).tls and security_from_args(_args(), {}).interceptors() == []
    config = security_from_args(_args(tls_cert=p("server_cert"), tls_key=p("server_key"), tls_client_ca=p("ca")), {TOKEN_ENV: TOKEN})
    assert config.tls and config.mutual_tls and config.token == TOKEN and config.describe() == "mutual TLS, bearer-token auth"
    assert config.server_credentials() is not None
    with pytest.raises(SecurityConfigError, match="--tls-key"):
        security_from_args(_args(tls_cert=p("server_cert")), {})
    with pytest.raises(SecurityConfigError, match="--tls-client-ca"):
        security_from_args(_args(tls_client_ca=p("ca")), {})


def test_ludus_server_cli_with_token_and_tls(tmp_path, pki, caplog):
    """The flags reach the real process: TLS port, token required, health open; a bad token file exits 2."""
    for name in ("server_cert", "server_key"):
        (tmp_path / name).write_bytes(pki[name])
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "empty").write_text("")
    base = [sys.executable, "-m", "ludus_service.cli", "--host", "127.0.0.1", "--port", "0", "--device", "cpu",
            "--metrics-port", "-1", "--torch-threads", "1", "--grace", "1", "--drain-seconds", "0"]
    # a bad setting stops the server before it starts (in-process: it exits before binding anything)
    with caplog.at_level(logging.ERROR):
        assert cli.main(base[3:] + ["--auth-token-file", str(tmp_path / "empty")]) == 2
        assert cli.main(base[3:] + ["--tls-cert", str(tmp_path / "server_cert")]) == 2
    assert "is empty" in caplog.text and "--tls-key" in caplog.text, caplog.text
    proc = subprocess.Popen([*base, "--auth-token-file", str(tmp_path / "token"), "--tls-cert", str(tmp_path / "server_cert"),
                             "--tls-key", str(tmp_path / "server_key")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()
        assert "listening on 127.0.0.1:" in line, line
        target = f"127.0.0.1:{int(line.split('127.0.0.1:')[1].split()[0])}"
        with LudusClient(target, timeout=10, token=TOKEN, root_certificates=pki["ca"]) as client:
            assert client.list_behaviors() == []
            assert _health(client.channel) == health_pb2.HealthCheckResponse.SERVING
        with LudusClient(target, timeout=10, token="", root_certificates=pki["ca"]) as anonymous:
            assert _code(anonymous.list_behaviors) == grpc.StatusCode.UNAUTHENTICATED
            assert _health(anonymous.channel) == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
