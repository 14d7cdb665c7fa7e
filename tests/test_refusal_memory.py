"""Remembered refusals must not keep request data alive (issue 5, item 1).

A refusal that certgate remembers (``untrusted_chain`` and friends, for
``REFUSAL_TTL`` seconds) used to be the raised exception itself, whose
traceback holds the frames of the request - and through them the WSGI environ
or ASGI scope with every header the client sent. A client presenting a
different refused certificate on each connection, with a large header block,
made every worker keep hundreds of KB per connection, up to the size of the
refusal cache.

The end-to-end tests here run the Flask example under gunicorn and the
FastAPI example under uvicorn (certgate's adapter), send a few hundred refused
requests that each carry a distinct client certificate and a large header
block, and measure the worker's resident memory before and after.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import gc
import json
import socket
import ssl
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from examples.devenv import DevEnv

from certgate import CertGate, InMemoryRegistry, Rejected, Tenant
from certgate.cache import MAX_DETAIL_CHARS, REFUSAL_TTL, SWEEP_PER_PUT, Refusal, ValidationCache
from certgate.devpki import CA, IssuedCert, make_key
from certgate.facts import RequestFacts
from certgate.reasons import Reason
from certgate.sources.cloudflare import CERT_HEADER
from tests.conftest import PKI
from tests.servers import Server, free_port, gunicorn_cmd, serve, uvicorn_cmd
from tests.test_cache import tls_facts

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

HEADER_COUNT = 90
"""Padding headers per request: below gunicorn's limit_request_fields (100)."""
HEADER_VALUE_BYTES = 7_900
"""Per padding header: below gunicorn's limit_request_field_size (8190)."""
JUNK_CERTS = 4
JUNK_CERT_BYTES = 12_000
"""Unrelated CA certificates each client sends after its leaf (a junk chain,
as many as certgate accepts from a client,
within OpenSSL's 100 KB limit on a received certificate list)."""
WARMUP = 40
MEASURED = 200
ALLOWED_GROWTH_MB = 8.0
"""Growth of the worker's RSS over ``MEASURED`` refusals. Before the fix each
remembered refusal kept the request alive - about 0.9 MB under gunicorn
(environ with the ~700 KB header block, junk chain) and 0.3 MB under uvicorn
(the presented chain) - so ~180 MB and ~60 MB for this batch; after it, an
entry is a few hundred bytes."""


@dataclass
class MemoryEnv:
    env: DevEnv
    acme: CA
    leaf_key_file: Path

    def client_certs(self, count: int, prefix: str) -> list[Path]:
        """``count`` distinct Acme client certificates (one shared key), each
        in a chain file followed by the same junk certificates."""
        key = make_key("ec")
        self.leaf_key_file.write_bytes(self.acme.issue("k", key=key).key_pem)
        junk = b"".join(ca.cert_pem for ca in _junk_cas())
        files = []
        for n in range(count):
            issued = self.acme.issue(f"{prefix}-{n}", organization="Acme", key=key)
            path = self.env.path(f"{prefix}-{n}-chain.pem")
            path.write_bytes(issued.cert_pem + junk)
            files.append(path)
        return files


def _junk_cas() -> list[CA]:
    """Large CA certificates unrelated to any tenant (a padding extension)."""
    root = CA.root("Junk Root CA", organization="Junk")
    payload = b"j" * JUNK_CERT_BYTES
    octets = b"\x04\x82" + len(payload).to_bytes(2, "big") + payload
    padding = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), octets)
    return [
        root.intermediate(f"Junk CA {n}", organization="Junk", extra_extensions=[(padding, False)])
        for n in range(JUNK_CERTS)
    ]


def _make_env(directory: Path) -> MemoryEnv:
    """Two tenants whose roots sign client certificates directly, a server
    certificate, the handshake bundle and certgate.toml."""
    acme = CA.root("Acme Root CA", organization="Acme")
    globex = CA.root("Globex Root CA", organization="Globex")
    server_ca = CA.root("certgate dev server CA")
    (directory / "acme-root.pem").write_bytes(acme.cert_pem)
    (directory / "globex-root.pem").write_bytes(globex.cert_pem)
    (directory / "server-ca.pem").write_bytes(server_ca.cert_pem)
    server_ca.server(["localhost", "127.0.0.1", "pay.acme.test", "api.globex.test"]).write_files(
        directory, "server"
    )
    (directory / "tenants-bundle.pem").write_bytes(acme.cert_pem + globex.cert_pem)
    (directory / "certgate.toml").write_text(
        '[[tenants]]\nid = "acme"\nhosts = ["pay.acme.test"]\nroots = ["acme-root.pem"]\n\n'
        '[[tenants]]\nid = "globex"\nhosts = ["api.globex.test"]\nroots = ["globex-root.pem"]\n'
    )
    return MemoryEnv(DevEnv(directory), acme, directory / "leaf.key")


def _request_bytes(host: str) -> bytes:
    pad = "p" * HEADER_VALUE_BYTES
    lines = ["GET /whoami HTTP/1.1", f"Host: {host}", "Connection: close"]
    lines += [f"X-Pad-{n}: {n}{pad}" for n in range(HEADER_COUNT)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _host_of(request: bytes) -> str:
    """The Host of ``request``: the SNI a client sends for it (the server
    refuses a Host of another tenant than the SNI: sni_mismatch)."""
    return request.split(b"\r\nHost: ", 1)[1].split(b"\r\n", 1)[0].decode()


def _refused_request(server: Server, cert: Path, key: Path, request: bytes) -> str:
    """Send ``request`` over a TLS connection presenting ``cert``; the reason."""
    context = ssl.create_default_context(cafile=str(server.env.server_ca))
    context.load_cert_chain(cert, key)
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=30) as raw,
        context.wrap_socket(raw, server_hostname=_host_of(request)) as tls,
    ):
        tls.sendall(request)
        chunks = []
        while chunk := tls.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403"), head[:200]
    return str(json.loads(body)["reason"])


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


def _worker_pid(server: Server, kind: str) -> int:
    if kind == "uvicorn":
        return server.proc.pid
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        kids = _children(server.proc.pid)
        if len(kids) == 1:
            return kids[0]
        time.sleep(0.1)
    raise AssertionError(f"gunicorn master {server.proc.pid} has no single worker")


Launcher = Callable[[DevEnv, int], Sequence[str]]
SERVERS: Mapping[str, Launcher] = {"gunicorn": gunicorn_cmd, "uvicorn": uvicorn_cmd}


@pytest.fixture(params=sorted(SERVERS))
def memory_server(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, Server, MemoryEnv]]:
    kind = str(request.param)
    menv = _make_env(tmp_path)
    port = free_port()
    extra = {"CERTGATE_ENV": str(tmp_path), "CERTGATE_WORKERS": "1"}
    with serve(SERVERS[kind](menv.env, port), menv.env, port, extra) as server:
        yield kind, server, menv


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_refused_requests_with_large_headers_do_not_grow_the_worker(
    memory_server: tuple[str, Server, MemoryEnv],
) -> None:
    kind, server, menv = memory_server
    certs = menv.client_certs(WARMUP + MEASURED, kind)
    request = _request_bytes("api.globex.test")  # Acme's certificates: another tenant's host
    worker = _worker_pid(server, kind)

    def refuse(batch: list[Path]) -> None:
        for cert in batch:
            assert _refused_request(server, cert, menv.leaf_key_file, request) == "untrusted_chain"

    refuse(certs[:WARMUP])
    before = _rss_kb(worker)
    refuse(certs[WARMUP:])
    growth_mb = (_rss_kb(worker) - before) / 1024
    per_refusal_kb = growth_mb * 1024 / MEASURED
    print(f"{kind}: RSS growth {growth_mb:.1f} MB over {MEASURED} refusals "
          f"({per_refusal_kb:.1f} KB each)")  # fmt: skip
    # Each refusal was remembered (a distinct certificate, a distinct entry):
    # the check is that the entries hold no request data, not that there are none.
    assert "reason=untrusted_chain" in server.log_text()
    assert growth_mb < ALLOWED_GROWTH_MB, (
        f"{kind} worker grew {growth_mb:.1f} MB over {MEASURED} refused requests "
        f"({per_refusal_kb:.0f} KB per refusal): refusals keep request data alive"
    )


# -- the same property without a server: what a cache entry may reference ---


class _Headers(dict[str, list[str]]):
    """A header mapping that can be weakly referenced."""


def test_a_remembered_refusal_references_no_request_data() -> None:
    acme = CA.root("Acme Root CA", organization="Acme")
    globex = CA.root("Globex Root CA", organization="Globex")
    registry = InMemoryRegistry(
        [
            Tenant("acme", ("pay.acme.test",), (acme.cert,)),
            Tenant("globex", ("api.globex.test",), (globex.cert,)),
        ]
    )
    gate = CertGate(registry, trusted_proxies=["10.0.0.0/8"], header_sources=["cloudflare"])
    leaf = acme.issue("device")
    headers = _Headers({CERT_HEADER: [base64.b64encode(leaf.der).decode()]})
    alive = weakref.ref(headers)
    facts = RequestFacts("api.globex.test", "/", "10.0.0.1", headers, None)
    first = gate.decide(facts)
    assert first.reason is Reason.UNTRUSTED_CHAIN
    assert len(gate.refusals) == 1
    del facts, headers
    gc.collect()
    assert alive() is None, "the refusal cache keeps the request's headers alive"
    # ... and the remembered refusal still answers, with its fingerprint.
    again = gate.decide(
        RequestFacts(
            "api.globex.test",
            "/",
            "10.0.0.1",
            {CERT_HEADER: [base64.b64encode(leaf.der).decode()]},
            None,
        )
    )
    assert again.reason is Reason.UNTRUSTED_CHAIN
    assert again.fingerprint == first.fingerprint is not None
    assert gate.refusals.hits == 1


def test_an_allowed_request_leaves_nothing_of_itself_in_the_cache() -> None:
    acme = CA.root("Acme Root CA", organization="Acme")
    gate = CertGate(
        InMemoryRegistry([Tenant("acme", ("pay.acme.test",), (acme.cert,))]),
        trusted_proxies=["10.0.0.0/8"],
        header_sources=["cloudflare"],
    )
    headers = _Headers({CERT_HEADER: [base64.b64encode(acme.issue("device").der).decode()]})
    alive = weakref.ref(headers)
    decision = gate.decide(RequestFacts("pay.acme.test", "/", "10.0.0.1", headers, None))
    assert decision.allowed
    assert len(gate.cache) == 1
    del headers
    gc.collect()
    assert alive() is None


# -- expired refusals do not pile up ------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


def test_expired_refusals_are_dropped_as_new_ones_arrive(pki: PKI) -> None:
    clock = _Clock()
    gate = CertGate(pki.registry(), clock=clock)
    globex = pki["globex"].host

    issued: dict[str, IssuedCert] = {}

    def refuse(name: str) -> None:
        client = issued.setdefault(name, pki["acme"].client(name))
        decision = gate.decide(tls_facts(globex, client))
        assert decision.reason is Reason.UNTRUSTED_CHAIN

    for n in range(20):
        refuse(f"early-{n}")
    assert len(gate.refusals) == 20
    clock.now += dt.timedelta(seconds=REFUSAL_TTL)  # all twenty expire
    for n in range(3):
        refuse(f"late-{n}")
    # Old code kept all 23 until the size bound pushed them out.
    assert len(gate.refusals) == 3
    # A hit does not reorder the refusal cache (every entry lives equally
    # long): the oldest entry stays first in line to expire.
    refuse("late-0")
    assert gate.refusals.hits == 1
    clock.now += dt.timedelta(seconds=REFUSAL_TTL)
    refuse("later")
    assert len(gate.refusals) == 1


def test_sweep_per_put_is_bounded() -> None:
    cache: ValidationCache[str] = ValidationCache(100, lru=False)
    for n in range(20):
        cache.put(b"k%d" % n, "v", expires_at=10.0, now=0.0)
    cache.put(b"new", "v", expires_at=50.0, now=20.0)
    assert len(cache) == 20 - SWEEP_PER_PUT + 1
    cache.put(b"new2", "v", expires_at=50.0, now=20.0)
    cache.put(b"new3", "v", expires_at=50.0, now=20.0)
    assert len(cache) == 3
    assert cache.get(b"new", 20.0) == "v"


def test_a_refusal_record_is_bounded_and_detached() -> None:
    huge = "x" * 100_000
    rejected = Rejected(Reason.UNTRUSTED_CHAIN, huge, "ab" * 32)
    try:
        raise rejected
    except Rejected:
        pass
    record = Refusal.of(rejected)
    assert record.reason is Reason.UNTRUSTED_CHAIN
    assert record.detail == "x" * MAX_DETAIL_CHARS
    assert record.fingerprint == "ab" * 32
    assert record.detail is not huge
    fresh = record.rejected()
    assert fresh is not rejected
    assert fresh.__traceback__ is None
    assert (fresh.reason, fresh.detail, fresh.fingerprint) == record
