"""A throwaway multi-tenant mTLS environment on disk, for the demo, the
example servers and the end-to-end tests.

    python examples/devenv.py DIR      # writes the PKI and DIR/certgate.toml

Tenants (hosts -> trust):

* ``acme``    ``pay.acme.test``, ``*.acme.test`` -> Acme Root CA. Devices are
  issued by the *Acme Issuing CA* intermediate, which is NOT configured on
  the tenant: devices send it in their TLS chain.
* ``globex``  ``api.globex.test`` -> Globex Root CA (devices issued by the root).
* ``initech`` ``initech.test`` -> Initech Root CA, with the *Initech Issuing
  CA* intermediate configured on the tenant: devices send only their leaf.

Client identities written: ``acme-device``, ``globex-device``,
``initech-device``, ``acme-expired`` (expired yesterday) and
``rogue-device`` (issued by a CA no tenant trusts). Each has ``NAME.pem``,
``NAME.key`` and ``NAME-chain.pem`` (leaf + intermediates).

``python examples/devenv.py --vendor DIR`` writes the *vendor PKI* variant
instead (:func:`make_vendor_environment`): one device vendor's root issues an
issuing CA per customer, and each tenant is anchored at its own customer's
issuing CA - the isolating setup for a shared vendor root.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from certgate.devpki import CA

HOSTS = {
    "acme": ["pay.acme.test", "*.acme.test"],
    "globex": ["api.globex.test"],
    "initech": ["initech.test"],
}
SERVER_NAMES = [
    "localhost",
    "127.0.0.1",
    "pay.acme.test",
    "*.acme.test",
    "api.globex.test",
    "initech.test",
]


@dataclass(frozen=True)
class DevEnv:
    directory: Path

    def path(self, name: str) -> Path:
        return self.directory / name

    @property
    def config(self) -> Path:
        return self.directory / "certgate.toml"

    @property
    def bundle(self) -> Path:
        """Every tenant CA: what the TLS server loads for the handshake."""
        return self.directory / "tenants-bundle.pem"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    @property
    def server_ca(self) -> Path:
        """The CA clients use to verify the server."""
        return self.directory / "server-ca.pem"

    def client(self, name: str) -> tuple[Path, Path]:
        """(chain PEM, key) of a client identity, for ``load_cert_chain``."""
        return self.directory / f"{name}-chain.pem", self.directory / f"{name}.key"


ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fastapi_uvicorn_cmd(
    env: DevEnv, port: int, *extra: str, launcher: str = "certgate.servers.uvicorn"
) -> list[str]:
    """Serve the FastAPI example over TLS with uvicorn's CLI flags.

    ``launcher``: ``certgate.servers.uvicorn`` (uvicorn's CLI with certgate's
    protocols and deferred time checks) or ``uvicorn`` (plain uvicorn).
    """
    return [
        sys.executable, "-m", launcher, "examples.fastapi_app.app:create_app", "--factory",
        "--host", "127.0.0.1", "--port", str(port),
        "--ssl-certfile", str(env.server_cert), "--ssl-keyfile", str(env.server_key),
        "--ssl-ca-certs", str(env.bundle), "--ssl-cert-reqs", "1",
        *extra,
    ]  # fmt: skip


@contextlib.contextmanager
def running(
    cmd: Sequence[str], port: int, log: Path, extra_env: Mapping[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``cmd`` from the repository root until the block ends; wait (30 s at
    most) until it accepts connections on ``port``. Output goes to ``log``."""
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **(extra_env or {})}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            list(cmd), cwd=ROOT, env=environ, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited ({proc.returncode}): {log.read_text()}")
                with contextlib.suppress(OSError):
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server did not start within 30 s: {log.read_text()}")
                time.sleep(0.1)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def make_dev_environment(
    directory: str | Path, *, exempt: tuple[str, ...] = ("/healthz",)
) -> DevEnv:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    acme_root = CA.root("Acme Root CA", organization="Acme")
    acme_issuing = acme_root.intermediate("Acme Issuing CA", organization="Acme")
    globex_root = CA.root("Globex Root CA", organization="Globex")
    initech_root = CA.root("Initech Root CA", organization="Initech")
    initech_issuing = initech_root.intermediate("Initech Issuing CA", organization="Initech")
    rogue_root = CA.root("Rogue Root CA", organization="Rogue")
    server_root = CA.root("certgate dev server CA")

    for name, ca in [
        ("acme-root", acme_root),
        ("acme-issuing", acme_issuing),
        ("globex-root", globex_root),
        ("initech-root", initech_root),
        ("initech-issuing", initech_issuing),
        ("server-ca", server_root),
    ]:
        (out / f"{name}.pem").write_bytes(ca.cert_pem)

    acme_issuing.issue(
        "sensor-17", organization="Acme", uri=["spiffe://acme.test/device/sensor-17"]
    ).write_files(out, "acme-device")
    globex_root.issue("till-3", organization="Globex").write_files(out, "globex-device")
    initech_issuing.issue("printer-9", organization="Initech").write_files(out, "initech-device")
    acme_issuing.issue(
        "sensor-old",
        organization="Acme",
        not_before=now - dt.timedelta(days=90),
        not_after=now - dt.timedelta(days=1),
    ).write_files(out, "acme-expired")
    rogue_root.issue("intruder", organization="Rogue").write_files(out, "rogue-device")
    server_root.server(SERVER_NAMES).write_files(out, "server")

    bundle = b"".join(
        ca.cert_pem for ca in (acme_root, acme_issuing, globex_root, initech_root, initech_issuing)
    )
    (out / "tenants-bundle.pem").write_bytes(bundle)
    exempt_list = ", ".join(f'"{p}"' for p in exempt)
    (out / "certgate.toml").write_text(f"""\
# Written by examples/devenv.py - a throwaway development PKI.
[certgate]
exempt_paths = [{exempt_list}]

[[tenants]]
id = "acme"
hosts = ["pay.acme.test", "*.acme.test"]
roots = ["acme-root.pem"]
# no intermediates: Acme devices send the Acme Issuing CA in their chain

[[tenants]]
id = "globex"
hosts = ["api.globex.test"]
roots = ["globex-root.pem"]

[[tenants]]
id = "initech"
hosts = ["initech.test"]
roots = ["initech-root.pem"]
intermediates = ["initech-issuing.pem"]
""")
    return DevEnv(out)


def make_vendor_environment(directory: str | Path) -> DevEnv:
    """A vendor PKI shared by two tenants, each anchored at its issuing CA.

    ``Vendor Root CA`` issues ``Vendor Issuing CA for Acme`` and ``... for
    Globex``. Tenant ``acme`` (``pay.acme.test``, ``*.acme.test``) trusts only
    the Acme issuing CA, tenant ``globex`` (``api.globex.test``) only the
    Globex one. Devices ``acme-device`` and ``globex-device`` send their leaf,
    their issuing CA and the vendor root (``NAME-chain.pem``). The handshake
    bundle (``tenants-bundle.pem``, what ``certgate bundle`` prints) holds the
    two issuing CAs and not the vendor root, so the server's context must
    accept a non-self-signed anchor (``VERIFY_X509_PARTIAL_CHAIN``).
    ``vendor-root.pem`` is written for the deliberately wrong configuration.
    """
    from certgate.config import load_config  # noqa: PLC0415
    from certgate.servers.tls import trust_bundle_pem  # noqa: PLC0415

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    vendor = CA.root("Vendor Root CA", organization="Vendor")
    server_root = CA.root("certgate dev server CA")
    (out / "vendor-root.pem").write_bytes(vendor.cert_pem)
    (out / "server-ca.pem").write_bytes(server_root.cert_pem)
    server_root.server(SERVER_NAMES).write_files(out, "server")
    for tenant, name in (("acme", "Acme"), ("globex", "Globex")):
        issuing = vendor.intermediate(f"Vendor Issuing CA for {name}", organization="Vendor")
        (out / f"{tenant}-issuing.pem").write_bytes(issuing.cert_pem)
        device = issuing.issue(f"{tenant}-device-1", organization=name)
        paths = device.write_files(out, f"{tenant}-device")
        paths["chain"].write_bytes(device.chain_pem + vendor.cert_pem)
    (out / "certgate.toml").write_text(f"""\
# Written by examples/devenv.py --vendor: one vendor root, an issuing CA per
# customer, each tenant anchored at its own customer's issuing CA.
[[tenants]]
id = "acme"
hosts = {json.dumps(HOSTS["acme"])}
roots = ["acme-issuing.pem"]

[[tenants]]
id = "globex"
hosts = {json.dumps(HOSTS["globex"])}
roots = ["globex-issuing.pem"]
""")
    bundle = trust_bundle_pem(load_config(out / "certgate.toml").registry.tenants())
    (out / "tenants-bundle.pem").write_text(bundle)
    return DevEnv(out)


if __name__ == "__main__":
    arguments = sys.argv[1:]
    vendor_pki = arguments[:1] == ["--vendor"]
    if vendor_pki:
        arguments = arguments[1:]
    if len(arguments) != 1:
        sys.exit("usage: python examples/devenv.py [--vendor] DIR")
    env = (make_vendor_environment if vendor_pki else make_dev_environment)(arguments[0])
    print(f"wrote {env.config} and the dev PKI in {env.directory}")
