"""Helpers of the tenant store tests: stores in temporary files, request facts."""

from __future__ import annotations

import base64
import datetime as dt
import os
import pwd
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from certgate import RequestFacts, Tenant
from certgate.devpki import CA, IssuedCert
from certgate.stores import open_store
from certgate.stores.sqlite import SqliteRegistry, sqlite_url

PROXY_PEER = "10.20.30.40"
CLOUDFLARE = {"trusted_proxies": ["10.0.0.0/8"], "header_sources": ["cloudflare"]}
"""The gate options under which :func:`leaf_facts` requests are trusted."""
ROOT = Path(__file__).resolve().parent.parent
WAIT = 20.0
"""Seconds a test waits for an outage or a change to show (a failure means
"never", not "slow": the figures are measured in bench/bench_scale.py)."""

CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def wait_for(predicate: Callable[[], bool], seconds: float = WAIT) -> bool:
    """Whether ``predicate()`` held within ``seconds`` (asked every 10 ms)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def new_store(tmp_path: Path, name: str = "tenants.db") -> SqliteRegistry:
    """A new, empty store in ``tmp_path``."""
    return SqliteRegistry(tmp_path / name, create=True)


def url_of(store: SqliteRegistry) -> str:
    return sqlite_url(store.path)


def leaf_facts(host: str, leaf: IssuedCert) -> RequestFacts:
    """``leaf`` forwarded by a trusted Cloudflare peer (leaf only)."""
    return RequestFacts(
        host=host,
        path="/api",
        peer=PROXY_PEER,
        headers={"cf-client-cert-der-base64": [base64.b64encode(leaf.der).decode()]},
        transport=None,
    )


def reissued(ca: CA, days: int = 365) -> x509.Certificate:
    """``ca``'s certificate re-issued: same subject and key, other dates."""
    return (
        x509.CertificateBuilder()
        .subject_name(ca.cert.subject)
        .issuer_name(ca.cert.subject)
        .public_key(ca.key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(ca.cert.not_valid_before_utc)
        .not_valid_after(ca.cert.not_valid_after_utc + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(CA_KEY_USAGE, critical=True)
        .sign(ca.key, hashes.SHA256())
    )


def cross_certificate(subject: CA, issuer: CA) -> x509.Certificate:
    """A CA certificate with ``subject``'s name and key, signed by ``issuer``."""
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject.cert.subject)
        .issuer_name(issuer.cert.subject)
        .public_key(subject.key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(CA_KEY_USAGE, critical=True)
        .sign(issuer.key, hashes.SHA256())
    )


def related_cas() -> list[x509.Certificate]:
    """CA certificates with every relation the write-time anchor rule knows:
    a vendor root, a regional CA and two customer CAs below it, a re-issued
    vendor root, a look-alike (same name, other key), a bridge CA with a
    cross-certificate of a customer CA, and two unrelated roots."""
    vendor = CA.root("Vendor Root CA", organization="Vendor")
    regional = vendor.intermediate("Vendor EU CA", organization="Vendor", path_length=2)
    acme = regional.intermediate("Vendor CA for Acme", organization="Vendor", path_length=0)
    globex = regional.intermediate("Vendor CA for Globex", organization="Vendor", path_length=0)
    bridge = CA.root("Bridge CA", organization="Bridge")
    lookalike = CA.root("Vendor Root CA", organization="Vendor")
    return [
        vendor.cert,
        regional.cert,
        acme.cert,
        globex.cert,
        reissued(vendor),
        lookalike.cert,
        bridge.cert,
        cross_certificate(acme, bridge),
        CA.root("Lone Root A").cert,
        CA.root("Lone Root B").cert,
    ]


def describe(tenants: dict[str, Tenant]) -> list[str]:
    """The tenants' anchors in one line each (for an assertion's message)."""
    return [
        f"{t.id} shared={t.shared_anchors} roots={[c.subject.rfc4514_string() for c in t.roots]} "
        f"inters={[c.subject.rfc4514_string() for c in t.intermediates]}"
        for t in tenants.values()
    ]


# -- the isolation matrix's tenants ---------------------------------------------

ISOLATION_TENANTS = {
    # a wildcard tenant and an exact host under the same suffix owned by another
    "shop": ("*.shop.test", "shop.test"),
    "vip": ("vip.shop.test",),
    "acme": ("pay.acme.test", "*.acme.test"),
    "hooli": ("hooli.test", "192.0.2.10"),
}
REQUEST_HOSTS = {
    "shop": ("a.shop.test", "shop.test", "VIP2.shop.test"),
    "vip": ("vip.shop.test", "VIP.Shop.Test:443"),
    "acme": ("pay.acme.test", "x.acme.test"),
    "hooli": ("hooli.test", "192.0.2.10"),
}
UNKNOWN = ("a.vip.shop.test", "acme.test", "a.b.acme.test", "evil.test", "192.0.2.11")
CELLS = [
    (client, owner, host)
    for client in ISOLATION_TENANTS
    for owner, hosts in REQUEST_HOSTS.items()
    for host in hosts
]


def isolation_store(url: str) -> dict[str, IssuedCert]:
    """The isolation tenants written to a new store at ``url``; a device of each."""
    store = open_store(url, create=True)
    devices = {}
    for tenant_id, hosts in ISOLATION_TENANTS.items():
        root = CA.root(f"{tenant_id} root")
        issuing = root.intermediate(f"{tenant_id} issuing")
        store.put(Tenant(tenant_id, hosts, (root.cert,), (issuing.cert,)))
        devices[tenant_id] = issuing.issue(f"device-of-{tenant_id}")
    store.close()  # type: ignore[attr-defined]
    return devices


# -- worker processes -------------------------------------------------------------


class Worker:
    """``python -m tests.store_worker ...`` in another process; its stdout
    lines read by a thread (a hung worker fails the test after a timeout
    instead of hanging it). ``user``: run it as that system user (root only);
    :meth:`send` writes a line to its stdin."""

    def __init__(self, *args: str, user: str | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.store_worker", *args],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            user=user,
            group=None if user is None else pwd.getpwnam(user).pw_gid,
            extra_groups=None if user is None else [],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        stdout = self.proc.stdout
        assert stdout is not None

        def pump() -> None:
            for line in stdout:
                self._lines.put(line)

        threading.Thread(target=pump, daemon=True).start()

    def next(self, timeout: float = 30) -> list[str]:
        try:
            return self._lines.get(timeout=timeout).split()
        except queue.Empty:
            raise AssertionError(f"the worker said nothing in {timeout} s: {self.stop()}") from None

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def stop(self) -> str:
        """Ends the worker; the end of its stderr."""
        self.proc.kill()
        self.proc.wait()
        return self.proc.stderr.read()[-2000:] if self.proc.stderr is not None else ""


def watch_changes(worker: Worker, changes: list[tuple[Callable[[], object], str]]) -> list[float]:
    """Makes each change in turn and waits for ``worker`` (a ``watch``) to
    report the expected reason; the latencies, write to decision."""
    assert worker.next()[0] == "ready"
    latencies = []
    for change, expected in changes:
        time.sleep(0.3)  # the watcher is warm: cached tenant, remembered decision
        written = time.monotonic()
        change()
        line = worker.next()
        assert line[:2] == ["changed", expected], (line, worker.stop())
        latencies.append(float(line[2]) - written)
    return latencies
