"""Review r2 (servers and header trust): cross-certified anchors, and the
resumed-session warning on contexts certgate prepared."""

from __future__ import annotations

import logging
import pickle
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from examples.devenv import DevEnv, make_dev_environment

from certgate import CertGate, ConfigError, InMemoryRegistry, Reason, Tenant
from certgate.devpki import CA
from certgate.facts import RequestFacts
from certgate.sources import asgi_tls
from tests.hostile_keys import ca_builder
from tests.servers import Server, free_port, serve, uvicorn_cmd

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ACME = ("pay.acme.test",)
GLOBEX = ("api.globex.test",)


def cross_certificate(subject: CA, issuer: CA) -> x509.Certificate:
    """``subject``'s name and key, certified by ``issuer`` (a cross-certificate)."""
    builder = ca_builder(
        subject.cert.subject,
        issuer.cert.subject,
        subject.key.public_key(),
        x509.random_serial_number(),
    )
    return builder.sign(issuer.key, hashes.SHA256())


def device_facts(host: str, leaf_pem: bytes) -> RequestFacts:
    tls = {"client_cert_chain": [leaf_pem.decode()]}
    return RequestFacts(
        host, "/", "192.0.2.1", {}, asgi_tls.from_scope({"extensions": {"tls": tls}})
    )


@pytest.fixture(scope="module")
def roots() -> tuple[CA, CA]:
    return CA.root("Acme Root CA", organization="Acme"), CA.root(
        "Globex Root CA", organization="Globex"
    )


def test_cross_certified_anchor_of_another_tenant_is_refused(roots: tuple[CA, CA]) -> None:
    """Globex configures a cross-certificate of Acme's root issued by Globex's
    root: every Acme device then verified as a Globex device. It loaded
    before (the check skipped self-signed anchors)."""
    acme, globex = roots
    cross = cross_certificate(acme, globex)
    tenants = [
        Tenant("acme", ACME, (acme.cert,)),
        Tenant("globex", GLOBEX, (globex.cert,), intermediates=(cross,)),
    ]
    with pytest.raises(ConfigError) as exc:
        InMemoryRegistry(tenants)
    message = str(exc.value)
    for part in (
        "'acme'",
        "'globex'",
        "cross-certificate",
        cross.fingerprint(hashes.SHA256()).hex(),
    ):
        assert part in message, message
    registry = InMemoryRegistry([tenants[0]])
    with pytest.raises(ConfigError):
        registry.put(tenants[1])
    assert [t.id for t in registry.tenants()] == ["acme"]


def test_declared_cross_certification_loads_and_is_what_it_says(roots: tuple[CA, CA]) -> None:
    acme, globex = roots
    cross = cross_certificate(acme, globex)
    registry = InMemoryRegistry(
        [
            Tenant("acme", ACME, (acme.cert,), shared_anchors=True),
            Tenant("globex", GLOBEX, (globex.cert,), (cross,), shared_anchors=True),
        ]
    )
    decision = CertGate(registry).decide(device_facts("api.globex.test", acme.issue("a").cert_pem))
    assert decision.reason is None  # the declared sharing: acme's devices on globex


def test_own_cross_certificate_of_a_rotated_root_loads(roots: tuple[CA, CA]) -> None:
    """A tenant's new root cross-signed by its old root (a rotation) is one tenant's business."""
    acme, globex = roots
    new_root = CA.root("Acme Root CA 2027", organization="Acme")
    gate = CertGate(
        InMemoryRegistry(
            [
                Tenant("acme", ACME, (acme.cert,), (cross_certificate(new_root, acme),)),
                Tenant("globex", GLOBEX, (globex.cert,)),
            ]
        )
    )
    device = new_root.issue("after-rotation")
    assert gate.decide(device_facts("pay.acme.test", device.cert_pem)).reason is None
    refused = gate.decide(device_facts("api.globex.test", device.cert_pem))
    assert refused.reason is Reason.UNTRUSTED_CHAIN


# -- the resumed-session warning on a context certgate prepared ----------------


@pytest.fixture(scope="module")
def uvicorn_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env: DevEnv = make_dev_environment(tmp_path_factory.mktemp("r2-resume"))
    port = free_port()
    with serve(uvicorn_cmd(env, port), env, port) as srv:
        yield srv


def _get(
    port: int, context: ssl.SSLContext, session: ssl.SSLSession | None
) -> tuple[int, bool, ssl.SSLSession | None]:
    with (
        socket.create_connection(("127.0.0.1", port), 10) as raw,
        context.wrap_socket(raw, server_hostname="initech.test", session=session) as tls,
    ):
        tls.sendall(b"GET /whoami HTTP/1.1\r\nHost: initech.test\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
        return int(data.split(b" ", 2)[1]), bool(tls.session_reused), tls.session


def test_leaf_only_device_resuming_from_the_session_cache_is_not_a_lost_chain(
    uvicorn_server: Server,
) -> None:
    """Initech's intermediate is configured on the tenant, so its devices may
    send only their leaf. On certgate's own context (tickets off) a TLS 1.2
    session resumed from the server's cache keeps the chain; a leaf alone is
    what the client sent. certgate logged "a resumed TLS session showed only
    the client's leaf ... Turn session tickets off" for it - advice that does
    not apply (tickets are off) about a chain that was never lost."""
    context = uvicorn_server.client_context("initech-device", chain=False)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    session = None
    results = []
    for _ in range(3):
        status, reused, session = _get(uvicorn_server.port, context, session)
        results.append((status, reused))
    assert [s for s, _ in results] == [200, 200, 200], results
    assert any(r for _, r in results[1:]), f"no TLS 1.2 resumption happened: {results}"
    # uvicorn logs each request after the app ran; certgate's warning would be
    # written before that, in connection_made
    log = uvicorn_server.log_text()
    assert log.count("GET /whoami") >= 3, log
    assert "resumed TLS session" not in log, log


def test_resumed_leaf_only_session_on_a_ticket_context_is_still_logged(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, roots: tuple[CA, CA]
) -> None:
    """The warning stays for a context that still allows tickets."""
    from certgate.sources import ssl_socket

    monkeypatch.setattr(ssl_socket, "_warned", type(ssl_socket._warned)())
    leaf = roots[0].issue("d").der

    class Conn:
        session_reused = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # tickets on (the default)

        def getpeercert(self, binary_form: bool = False) -> bytes:
            return leaf

    with caplog.at_level(logging.WARNING, logger="certgate"):
        assert ssl_socket.peer_chain_der(Conn()) == [leaf]
    assert any("resumed TLS session" in r.getMessage() for r in caplog.records)


# -- uvicorn: the prepared context in every process, and plain HTTP -------------


def test_cli_with_workers_prepares_every_workers_context(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """``python -m certgate.servers.uvicorn ... --workers 2``: the context was
    prepared by patching ``create_ssl_context`` in the parent only, so the
    workers (spawned processes) used uvicorn's own context: an expired
    certificate failed the handshake instead of getting 403 ``expired``."""
    env = make_dev_environment(tmp_path_factory.mktemp("r2-workers"))
    port = free_port()
    with serve(uvicorn_cmd(env, port, "--workers", "2"), env, port) as srv:
        for _ in range(4):  # new connections, spread over the workers
            response = srv.get("acme-expired", "pay.acme.test")
            assert response.status_code == 403, response.text
            assert response.json()["reason"] == "expired"
        assert srv.get("acme-device", "pay.acme.test").status_code == 200


def _app(scope: object, receive: object, send: object) -> None:
    raise AssertionError("not called")


def test_config_without_tls_serves_plain_http() -> None:
    """``run(app, port=...)`` behind a trusted proxy (plain HTTP, certgate's
    protocols for the socket peer) failed at start-up: certgate always set
    ``ssl_context_factory``, which makes uvicorn want a certificate file."""
    from certgate.servers import uvicorn as adapter

    config = adapter.config(_app, host="127.0.0.1", port=free_port())
    config.load()
    assert config.ssl is None


def test_config_prepares_a_callers_own_context_factory(tmp_path: Path) -> None:
    """A caller's own ``ssl_context_factory`` replaced certgate's: its context
    kept tickets and lacked the partial-chain and time flags."""
    from certgate.servers import uvicorn as adapter

    env = make_dev_environment(tmp_path)
    config = adapter.config(
        _app,
        ssl_certfile=str(env.server_cert),
        ssl_keyfile=str(env.server_key),
        ssl_ca_certs=str(env.bundle),
        ssl_context_factory=_own_factory,
    )
    pickle.dumps(config.ssl_context_factory)  # uvicorn pickles the Config into workers
    config.load()
    assert config.ssl is not None
    assert config.ssl.verify_flags & ssl.VERIFY_X509_PARTIAL_CHAIN
    assert config.ssl.num_tickets == 0
    assert config.ssl.options & ssl.OP_NO_TICKET


def _own_factory(config: object, default: object) -> ssl.SSLContext:
    assert callable(default)
    context = default()
    assert isinstance(context, ssl.SSLContext)
    return context
