"""The end-to-end benchmark's PKI, generated once and cached under bench/.cache/.

* ``bench/.cache/pki/``: one EC P-256 root CA per tenant (``tenant{t}-root.pem``
  and its key), the TLS server's certificate (EC, for 127.0.0.1), the
  handshake bundle (every tenant root), and two certgate configurations:
  ``certgate-header.toml`` (Cloudflare header source believed from
  127.0.0.1) and ``certgate-tls.toml`` (TLS transport only).
* ``bench/.cache/clients-{count}.pickle``: ``count`` distinct EC P-256 client
  certificates (each with its own key), certificate ``i`` issued by tenant
  ``i % TENANTS``'s root, keyed by the PKI's id so a regenerated PKI
  invalidates them. Regenerated when they expire within two days (they are
  valid 90 days).

Refused traffic needs no other certificates: a request presenting tenant
``t``'s certificate to tenant ``t + 1``'s host is refused by certgate
(``untrusted_chain``), while the TLS handshake (union bundle) accepts it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import multiprocessing
import pickle
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certgate.devpki import CA, make_key

CACHE = Path(__file__).resolve().parent / ".cache"
TENANTS = 4
STATS_PATH = "/_bench/stats"


def tenant_id(t: int) -> str:
    return f"tenant{t}"


def tenant_host(t: int) -> str:
    return f"api.tenant{t}.bench.test"


def common_name(i: int) -> str:
    return f"device-{i:06d}"


@dataclass(frozen=True)
class Pki:
    directory: Path
    pki_id: str

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    @property
    def bundle(self) -> Path:
        return self.directory / "tenants-bundle.pem"

    def config(self, source: str) -> Path:
        """``source``: ``header`` or ``tls``."""
        return self.directory / f"certgate-{source}.toml"

    def root(self, t: int) -> CA:
        cert = x509.load_pem_x509_certificate((self.directory / f"tenant{t}-root.pem").read_bytes())
        key = serialization.load_pem_private_key(
            (self.directory / f"tenant{t}-root.key").read_bytes(), None
        )
        return CA(cert=cert, key=key, is_root=True)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Client:
    """One client certificate: DER, PEM of certificate + key (for the TLS
    client), and the tenant that issued it."""

    index: int
    tenant: int
    der: bytes
    pem: bytes


def _config_text(source: str) -> str:
    head = "[certgate]\n"
    head += f'exempt_paths = ["{STATS_PATH}"]\n'
    if source == "header":
        head += 'trusted_proxies = ["127.0.0.1/32"]\nheader_sources = ["cloudflare"]\n'
    tenants = "".join(
        f'\n[[tenants]]\nid = "{tenant_id(t)}"\nhosts = ["{tenant_host(t)}"]\n'
        f'roots = ["tenant{t}-root.pem"]\n'
        for t in range(TENANTS)
    )
    return head + tenants


def ensure_pki() -> Pki:
    directory = CACHE / "pki"
    marker = directory / "pki-id"
    if marker.exists():
        return Pki(directory, marker.read_text().strip())
    directory.mkdir(parents=True, exist_ok=True)
    bundle = b""
    for t in range(TENANTS):
        root = CA.root(f"bench tenant {t} root CA", key_type="ec")
        (directory / f"tenant{t}-root.pem").write_bytes(root.cert_pem)
        (directory / f"tenant{t}-root.key").write_bytes(
            root.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        bundle += root.cert_pem
    (directory / "tenants-bundle.pem").write_bytes(bundle)
    server_ca = CA.root("bench server CA", key_type="ec")
    issued = server_ca.server(["127.0.0.1", "localhost"])
    issued.write_files(directory, "server")
    for source in ("header", "tls"):
        (directory / f"certgate-{source}.toml").write_text(_config_text(source))
    pki_id = hashlib.sha256(bundle).hexdigest()[:16]
    marker.write_text(pki_id + "\n")
    return Pki(directory, pki_id)


def _issue_range(args: tuple[str, int, int]) -> list[tuple[bytes, bytes]]:
    directory, start, stop = args
    pki = Pki(Path(directory), "")
    roots = [pki.root(t) for t in range(TENANTS)]
    out: list[tuple[bytes, bytes]] = []
    for i in range(start, stop):
        key = make_key("ec")
        leaf = roots[i % TENANTS].issue(common_name(i), key=key, organization="bench")
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        out.append((leaf.der, key_pem))
    return out


def load_clients(pki: Pki, count: int, *, log: bool = True) -> list[Client]:
    """``count`` distinct client certificates, from the cache or generated."""
    path = CACHE / f"clients-{count}.pickle"
    meta_path = CACHE / f"clients-{count}.json"
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    if path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("pki_id") == pki.pki_id and dt.datetime.fromisoformat(meta["not_after"]) > soon:
            pairs: list[tuple[bytes, bytes]] = pickle.loads(path.read_bytes())
            return _clients(pairs)
    if log:
        print(f"generating {count} client certificates (cached in {path}) ...", flush=True)
    chunk = 2000
    ranges = [(str(pki.directory), s, min(s + chunk, count)) for s in range(0, count, chunk)]
    with multiprocessing.get_context("spawn").Pool() as pool:
        pairs = [pair for part in pool.map(_issue_range, ranges) for pair in part]
    if len({der for der, _ in pairs}) != count:
        raise SystemExit("bench: generated client certificates are not distinct")
    not_after = min(
        x509.load_der_x509_certificate(der).not_valid_after_utc for der, _ in pairs[:10]
    )
    path.write_bytes(pickle.dumps(pairs, protocol=pickle.HIGHEST_PROTOCOL))
    meta_path.write_text(json.dumps({"pki_id": pki.pki_id, "not_after": not_after.isoformat()}))
    return _clients(pairs)


def _clients(pairs: list[tuple[bytes, bytes]]) -> list[Client]:
    return [
        Client(i, i % TENANTS, der, ssl.DER_cert_to_PEM_cert(der).encode() + key_pem)
        for i, (der, key_pem) in enumerate(pairs)
    ]
