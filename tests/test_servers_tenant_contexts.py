"""Per-tenant handshakes (certgate.servers.tenant_contexts) over real TLS:
the handshake verifies a device against the anchors of the tenant its SNI
names, and nothing else."""

from __future__ import annotations

import contextlib
import ssl
import sys
import threading
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from examples.devenv import DevEnv, make_dev_environment

from certgate import CertGate, Tenant
from certgate.asgi import CertGateMiddleware
from certgate.config import load_config
from certgate.devpki import CA
from certgate.errors import ServerSetupError
from certgate.registry import InMemoryRegistry
from certgate.servers.tenant_contexts import TenantContexts
from tests.servers import free_port, serve
from tests.test_servers_sni import echo_app, get_sni, uvicorn_in_thread

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

HANDSHAKE_FAILED = (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> DevEnv:
    return make_dev_environment(tmp_path_factory.mktemp("pki"))


def _launcher(env: DevEnv, port: int, *extra: str) -> list[str]:
    """The FastAPI example through ``python -m certgate.servers.uvicorn``,
    no ``--ssl-ca-certs``: the handshake trusts only what per-tenant
    contexts load."""
    return [
        sys.executable, "-m", "certgate.servers.uvicorn",
        "examples.fastapi_app.app:create_app", "--factory",
        "--host", "127.0.0.1", "--port", str(port),
        "--ssl-certfile", str(env.server_cert), "--ssl-keyfile", str(env.server_key),
        "--ssl-cert-reqs", "1", *extra,
    ]  # fmt: skip


def _reason(response: httpx.Response) -> str:
    return str(response.json()["reason"])


def test_cli_per_tenant_handshake_uses_the_addressed_tenants_anchors(env: DevEnv) -> None:
    port = free_port()
    with serve(_launcher(env, port, "--per-tenant", str(env.config)), env, port):
        ok = get_sni(env, port, "acme-device", "pay.acme.test", "/whoami")
        assert ok.status_code == 200, ok.text
        assert ok.json()["tenant_id"] == "acme"
        assert get_sni(env, port, "globex-device", "api.globex.test", "/whoami").status_code == 200
        # initech devices send only their leaf: the tenant's configured
        # intermediate is in its context
        leaf_only = httpx.Client(verify=_leaf_only(env, "initech-device"), timeout=10)
        with leaf_only:
            response = leaf_only.get(
                f"https://127.0.0.1:{port}/whoami",
                headers={"Host": "initech.test"},
                extensions={"sni_hostname": "initech.test"},
            )
        assert response.json()["tenant_id"] == "initech"
        # A's device to B's host name: refused by the handshake (B's anchors only)
        for identity, sni in [
            ("acme-device", "api.globex.test"),
            ("globex-device", "initech.test"),
            ("initech-device", "eu.acme.test"),
        ]:
            with pytest.raises(HANDSHAKE_FAILED):
                get_sni(env, port, identity, sni, "/whoami")
        # expired: still certgate's 403, not a TLS alert (time checks deferred)
        assert _reason(get_sni(env, port, "acme-expired", "pay.acme.test", "/whoami")) == (
            "expired"
        )
        # the rule for an unknown SNI ("no_anchors"): no certificate reaches
        # certgate, a certificate fails the handshake
        unknown = get_sni(env, port, None, "shop.example.com", "/whoami", check_hostname=False)
        assert _reason(unknown) == "no_certificate"  # certgate's answer, not a TLS alert
        with pytest.raises(HANDSHAKE_FAILED):
            get_sni(env, port, "acme-device", "shop.example.com", "/whoami", check_hostname=False)
        # no SNI at all (a client connecting to the IP address): same rule
        no_sni = get_sni(env, port, None, None, "/whoami", host="pay.acme.test",
                         check_hostname=False)  # fmt: skip
        assert _reason(no_sni) == "no_certificate"
        assert get_sni(env, port, None, None, "/healthz", check_hostname=False).json() == {
            "ok": True
        }
        with pytest.raises(HANDSHAKE_FAILED):
            get_sni(env, port, "acme-device", None, "/whoami", host="pay.acme.test",
                    check_hostname=False)  # fmt: skip


def test_union_bundle_lets_the_cross_tenant_handshake_through(env: DevEnv) -> None:
    """The baseline the per-tenant test is measured against: with the union
    bundle the same cross-tenant connection completes the handshake and only
    certgate's per-request check refuses it."""
    port = free_port()
    with serve(_launcher(env, port, "--ssl-ca-certs", str(env.bundle)), env, port) as server:
        assert server.kind == ""
        response = get_sni(env, port, "acme-device", "api.globex.test", "/whoami")
        assert response.status_code == 403
        assert _reason(response) == "untrusted_chain"


def _leaf_only(env: DevEnv, identity: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(env.server_ca))
    context.load_cert_chain(env.path(f"{identity}.pem"), env.path(f"{identity}.key"))
    return context


def test_refuse_rule_aborts_unknown_and_missing_sni(env: DevEnv) -> None:
    gate = CertGate(load_config(env.config).registry, exempt_paths=["/healthz"])
    app = CertGateMiddleware(echo_app, gate)
    with uvicorn_in_thread(
        app,
        ssl_certfile=str(env.server_cert),
        ssl_keyfile=str(env.server_key),
        per_tenant=gate,
        per_tenant_unknown_sni="refuse",
    ) as server:
        port = server.config.port
        assert get_sni(env, port, "acme-device", "pay.acme.test").status_code == 200
        for sni in ("shop.example.com", None):
            with pytest.raises(HANDSHAKE_FAILED):
                get_sni(env, port, None, sni, "/healthz", check_hostname=False)


# -- many tenants: the LRU bound, and a changed tenant ----------------------


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[CA], CA]:
    """50 tenants t0..t49 (host tN.test, own root), a device key/chain per
    tenant, and a server certificate for all of them."""
    directory = tmp_path_factory.mktemp("many")
    roots = [CA.root(f"Tenant {i} Root", organization=f"T{i}") for i in range(50)]
    for i, root in enumerate(roots):
        root.issue(f"device-{i}").write_files(directory, f"t{i}")
    server_ca = CA.root("many server CA")
    server_ca.server([f"t{i}.test" for i in range(50)] + ["other.test"]).write_files(
        directory, "server"
    )
    (directory / "server-ca.pem").write_bytes(server_ca.cert_pem)
    return directory, roots, server_ca


def _tenant(i: int, root: CA) -> Tenant:
    return Tenant(id=f"t{i}", hosts=(f"t{i}.test",), roots=(root.cert,))


def _get(directory: Path, port: int, identity: str, sni: str) -> httpx.Response:
    context = ssl.create_default_context(cafile=str(directory / "server-ca.pem"))
    context.load_cert_chain(directory / f"{identity}-chain.pem", directory / f"{identity}.key")
    with httpx.Client(verify=context, timeout=10) as client:
        return client.get(
            f"https://127.0.0.1:{port}/",
            headers={"Host": sni},
            extensions={"sni_hostname": sni},
        )


@contextlib.contextmanager
def _many_server(
    directory: Path, registry: InMemoryRegistry, max_contexts: int
) -> Iterator[tuple[int, TenantContexts]]:
    app = CertGateMiddleware(echo_app, CertGate(registry))
    with uvicorn_in_thread(
        app,
        ssl_certfile=str(directory / "server.pem"),
        ssl_keyfile=str(directory / "server.key"),
        per_tenant=registry,
        per_tenant_max_contexts=max_contexts,
    ) as server:
        contexts = server.config.ssl_context_factory.contexts
        assert isinstance(contexts, TenantContexts)
        yield server.config.port, contexts


def test_lru_bound_with_50_tenants_and_8_contexts(many: tuple[Path, list[CA], CA]) -> None:
    directory, roots, _ = many
    registry = InMemoryRegistry(_tenant(i, root) for i, root in enumerate(roots))
    with _many_server(directory, registry, 8) as (port, contexts):
        for i in range(50):
            response = _get(directory, port, f"t{i}", f"t{i}.test")
            assert response.status_code == 200, (i, response.text)
            assert len(contexts) <= 8
        assert contexts.built == 50
        assert contexts.cached_tenants() == [f"t{i}" for i in range(42, 50)]
        # a kept context is reused, an evicted one is rebuilt
        assert _get(directory, port, "t49", "t49.test").status_code == 200
        assert contexts.built == 50
        assert _get(directory, port, "t0", "t0.test").status_code == 200
        assert contexts.built == 51
        assert len(contexts) == 8
        # every context holds its own tenant's anchors only
        for i, j in [(0, 1), (7, 49), (49, 0)]:
            with pytest.raises(HANDSHAKE_FAILED):
                _get(directory, port, f"t{i}", f"t{j}.test")


def test_changed_tenant_gets_a_fresh_context(many: tuple[Path, list[CA], CA]) -> None:
    directory, roots, _ = many
    registry = InMemoryRegistry([_tenant(0, roots[0]), _tenant(1, roots[1])])
    with _many_server(directory, registry, 8) as (port, contexts):
        assert _get(directory, port, "t0", "t0.test").status_code == 200
        with pytest.raises(HANDSHAKE_FAILED):
            _get(directory, port, "t1", "t0.test")
        built = contexts.built
        # t0 re-anchored at t1's root ... (shared, so both declare it)
        registry.replace_all(
            [
                Tenant(id="t0", hosts=("t0.test",), roots=(roots[1].cert,), shared_anchors=True),
                Tenant(id="t1", hosts=("t1.test",), roots=(roots[1].cert,), shared_anchors=True),
            ]
        )
        assert _get(directory, port, "t1", "t0.test").status_code == 200
        assert contexts.built == built + 1
        with pytest.raises(HANDSHAKE_FAILED):
            _get(directory, port, "t0", "t0.test")
        # a host that moves to another tenant is looked up again
        registry.put(Tenant(id="t2", hosts=("other.test",), roots=(roots[2].cert,)))
        with pytest.raises(HANDSHAKE_FAILED):
            _get(directory, port, "t2", "t2.test")  # unknown SNI, certificate: no anchors
        assert _get(directory, port, "t2", "other.test").status_code == 200


def test_werkzeug_server_with_per_tenant_contexts(env: DevEnv) -> None:
    from werkzeug.serving import make_server

    from certgate.wsgi import CertGateWSGIMiddleware

    def wsgi_app(environ: MutableMapping[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    gate = CertGate(load_config(env.config).registry)
    contexts = TenantContexts(gate, env.server_cert, env.server_key, unknown_sni="refuse")
    port = free_port()
    server = make_server(
        "127.0.0.1", port, CertGateWSGIMiddleware(wsgi_app, gate),
        threaded=True, ssl_context=contexts.server_context(),
    )  # fmt: skip
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert get_sni(env, port, "acme-device", "pay.acme.test").text == "ok"
        with pytest.raises(HANDSHAKE_FAILED):
            get_sni(env, port, "acme-device", "api.globex.test")
        # Werkzeug's blocking socket sends the alert before closing
        with pytest.raises(httpx.ConnectError, match="UNRECOGNIZED_NAME"):
            get_sni(env, port, None, "shop.example.com", check_hostname=False)
    finally:
        server.shutdown()
        thread.join(10)
    assert sorted(contexts.cached_tenants()) == ["acme", "globex"]


def test_setup_errors(env: DevEnv) -> None:
    class AsyncRegistry:
        async def tenant_for_host(self, host: str) -> Tenant | None:
            return None

        async def tenant_by_id(self, tenant_id: str) -> Tenant | None:
            return None

    with pytest.raises(ServerSetupError, match="synchronous registry"):
        TenantContexts(AsyncRegistry(), env.server_cert, env.server_key)
    registry = load_config(env.config).registry
    with pytest.raises(ServerSetupError, match="unknown_sni"):
        TenantContexts(registry, env.server_cert, env.server_key, unknown_sni="open")  # type: ignore[arg-type]
    contexts = TenantContexts(registry, env.server_cert, env.server_key)
    with pytest.raises(ServerSetupError, match="asks for client"):
        contexts.install(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
