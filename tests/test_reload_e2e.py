"""Hot reload end to end: real uvicorn servers (certgate's adapter, mutual
TLS) in their own processes, real client certificates over httpx with SNI
equal to the Host, and configuration files changed under them.

* revocation without a restart: issue (``certgate pki``), allow, revoke,
  publish the CRL the tenant names, and the same certificate is ``403
  revoked`` - same process; a new tenant becomes reachable (per-tenant
  handshakes follow the file too); a broken file keeps the last good
  configuration; SIGHUP reloads;
* reload under concurrent requests: threads send requests for tenants A and
  B while the file flips between two valid versions whose sets of valid
  certificates for B are disjoint, and whose refusal formats differ - every
  response must be right for the one version that answered it, with no 5xx;
* several worker processes: each watches the files and reloads itself.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from examples.devenv import free_port, running

from certgate.devpki import CA

ROOT = Path(__file__).resolve().parents[1]
ACME = "acme.reload.test"
GLOBEX = "globex.reload.test"
A = "a.reload.test"
B = "b.reload.test"


@dataclass
class Site:
    """A configuration directory with a server CA and certgate.toml."""

    dir: Path

    @property
    def config(self) -> Path:
        return self.dir / "certgate.toml"

    def write(self, name: str, text: str) -> None:
        """Replace ``name`` atomically (what an operator's deploy should do)."""
        tmp = self.dir / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.dir / name)

    def certgate(self, *args: str) -> None:
        """Run the ``certgate`` command line (the operator's tool)."""
        done = subprocess.run(
            [sys.executable, "-m", "certgate", *args],
            cwd=self.dir,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr

    def client(self, cert: str, key: str) -> httpx.Client:
        context = ssl.create_default_context(cafile=str(self.dir / "server-ca.pem"))
        context.load_cert_chain(self.dir / cert, self.dir / key)
        return httpx.Client(verify=context, timeout=10)


def get(client: httpx.Client, port: int, host: str, path: str = "/") -> httpx.Response:
    return client.get(
        f"https://127.0.0.1:{port}{path}",
        headers={"Host": host},
        extensions={"sni_hostname": host},
    )


def make_site(directory: Path, names: list[str]) -> Site:
    site = Site(directory)
    server_ca = CA.root("reload test server CA")
    (directory / "server-ca.pem").write_bytes(server_ca.cert_pem)
    server_ca.server(["localhost", *names]).write_files(directory, "server")
    return site


def eventually(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.05)


@contextmanager
def uvicorn(
    site: Site, *extra: str, env: dict[str, str] | None = None
) -> Iterator[tuple[int, subprocess.Popen[bytes], Path]]:
    port = free_port()
    log = site.dir / f"server-{port}.log"
    cmd = [
        sys.executable, "-m", "certgate.servers.uvicorn", "tests.reload_app:create_app",
        "--factory", "--host", "127.0.0.1", "--port", str(port),
        "--ssl-certfile", str(site.dir / "server.pem"),
        "--ssl-keyfile", str(site.dir / "server.key"),
        "--ssl-cert-reqs", "1", "--log-level", "info", *extra,
    ]  # fmt: skip
    variables = {"CERTGATE_CONFIG": str(site.config), **(env or {})}
    with running(cmd, port, log, variables) as proc:
        yield port, proc, log


def acme_tenant(extra: str = "") -> str:
    return (
        f'[[tenants]]\nid = "acme"\nhosts = ["{ACME}"]\nroots = ["acme/ca.pem"]\n'
        f'crls = ["acme/ca.crl"]\n{extra}\n'
    )


GLOBEX_TENANT = f'[[tenants]]\nid = "globex"\nhosts = ["{GLOBEX}"]\nroots = ["globex/ca.pem"]\n'


def test_revoke_and_add_a_tenant_without_a_restart(tmp_path: Path) -> None:
    site = make_site(tmp_path, [ACME, GLOBEX])
    acme = ("--ca-cert", "acme/ca.pem", "--ca-key", "acme/ca.key")
    site.certgate("pki", "init-ca", "--cn", "Acme Devices Root", "--out", "acme/")
    site.certgate("pki", "issue-client", *acme, "--cn", "sensor-17", "--out", "acme/")
    site.certgate("pki", "issue-client", *acme, "--cn", "sensor-18", "--out", "acme/")
    crl = ("--db", "acme/revoked.json", "--out", "acme/ca.crl")
    site.certgate("pki", "crl", *acme, *crl)  # no revocation yet
    settings = '[certgate]\nwatch_interval = 0.2\nexempt_paths = ["/version"]\n'
    site.write("certgate.toml", settings + acme_tenant())

    with (
        uvicorn(site, "--per-tenant", str(site.config), env={"RELOAD_ON_SIGHUP": "1"}) as (
            port,
            proc,
            log,
        ),
        site.client("acme/sensor-17.pem", "acme/sensor-17.key") as sensor17,
        site.client("acme/sensor-18.pem", "acme/sensor-18.key") as sensor18,
    ):
        first = get(sensor17, port, ACME)
        assert first.status_code == 200
        assert first.json()["cn"] == "sensor-17"
        pid = first.json()["pid"]

        # revoke: the operator's two commands write the CRL file the tenant names
        site.certgate("pki", "revoke", *acme, "--cert", "acme/sensor-17.pem", "--db", crl[1])
        site.certgate("pki", "crl", *acme, *crl)
        eventually(lambda: get(sensor17, port, ACME).status_code == 403, "sensor-17 refused")
        refused = get(sensor17, port, ACME)
        assert refused.json()["reason"] == "revoked"
        allowed = get(sensor18, port, ACME)
        assert allowed.status_code == 200
        assert allowed.json()["pid"] == pid  # the same process: no restart
        assert allowed.json()["version"] >= 1
        assert proc.poll() is None

        # a new tenant: unknown to the handshake before, reachable after
        site.certgate("pki", "init-ca", "--cn", "Globex Devices Root", "--out", "globex/")
        globex = ("--ca-cert", "globex/ca.pem", "--ca-key", "globex/ca.key")
        site.certgate("pki", "issue-client", *globex, "--cn", "till-3", "--out", "globex/")
        with site.client("globex/till-3.pem", "globex/till-3.key") as till:
            with pytest.raises(httpx.HTTPError):  # no tenant for that SNI: no anchors
                get(till, port, GLOBEX)
            site.write("certgate.toml", settings + acme_tenant() + GLOBEX_TENANT)

            def reachable() -> bool:
                try:
                    return get(till, port, GLOBEX).status_code == 200
                except httpx.HTTPError:
                    return False

            eventually(reachable, "the new tenant reachable")
            assert get(till, port, GLOBEX).json()["tenant"] == "globex"

        # a broken file: logged, and the last good configuration keeps serving
        version = get(sensor18, port, ACME, "/version").json()["version"]
        site.write("certgate.toml", settings + acme_tenant('roots = ["acme/ca.pem"]'))
        eventually(lambda: "failed, still serving" in log.read_text(), "the failure logged")
        assert "Cannot overwrite a value" in log.read_text()  # the parser's reason, logged
        assert get(sensor18, port, ACME).status_code == 200
        assert get(sensor17, port, ACME).json()["reason"] == "revoked"
        assert get(sensor18, port, ACME, "/version").json()["version"] == version

        # SIGHUP: a file the watch no longer reads (watch_interval = 0) is read on the signal
        quiet = '[certgate]\nexempt_paths = ["/version"]\n'
        site.write("certgate.toml", quiet + acme_tenant())
        eventually(
            lambda: get(sensor18, port, ACME, "/version").json()["version"] == version + 1,
            "the fixed file reloaded by the watch",
        )
        site.write("certgate.toml", quiet.replace('"]', '", "/open"]') + acme_tenant())
        time.sleep(0.5)  # no watch now: nothing reloads by itself
        assert get(sensor18, port, ACME, "/version").json()["version"] == version + 1
        proc.send_signal(signal.SIGHUP)
        eventually(
            lambda: get(sensor18, port, ACME, "/version").json()["version"] == version + 2,
            "the SIGHUP reload",
        )
        assert get(sensor18, port, ACME, "/open").json()["cn"] is None  # exempt now
        assert proc.poll() is None
        assert get(sensor18, port, ACME).json()["pid"] == pid


# -- reload under concurrent requests --------------------------------------


def flip_config(version: int) -> str:
    """Two valid versions: B trusts root b1 (problem+json refusals) or b2
    (plain-text refusals); A is the same in both."""
    fmt = "problem+json" if version == 1 else "text"
    return (
        f'[certgate]\nwatch_interval = 0.1\nexempt_paths = ["/version"]\n'
        f'refusal_format = "{fmt}"\n'
        f'[[tenants]]\nid = "a"\nhosts = ["{A}"]\nroots = ["a.pem"]\n'
        f'[[tenants]]\nid = "b"\nhosts = ["{B}"]\nroots = ["b{version}.pem"]\n'
    )


def at_least(read: Callable[[], int], value: int) -> Callable[[], bool]:
    return lambda: read() >= value


def judge(who: str, response: httpx.Response) -> str | None:
    """What is wrong with ``response`` to device ``who`` (``None``: right
    for the version that answered it)."""
    status = response.status_code
    kind = response.headers.get("content-type", "")
    if status >= 500:
        return f"{who}: {status}"
    if who == "a":
        ok = status == 200 and response.json()["tenant"] == "a"
        return None if ok else f"a: {status} {response.text[:100]}"
    mine = "problem+json" if who == "b1" else "text"
    if status == 200:
        body = response.json()
        if body["tenant"] != "b" or body["format"] != mine:
            return f"{who} allowed under the other version: {body}"
        return None
    if status != 403:
        return f"{who}: {status}"
    if who == "b1":  # refused: only version 2 (text) refuses b1's certificates
        ok = kind.startswith("text/plain") and "untrusted_chain" in response.text
    else:
        ok = kind == "application/problem+json" and response.json()["reason"] == "untrusted_chain"
    return None if ok else f"{who} refused under its own version: {kind} {response.text[:100]}"


def test_reload_under_concurrent_requests_decides_each_under_one_version(
    tmp_path: Path,
) -> None:
    site = make_site(tmp_path, [A, B])
    roots = {name: CA.root(f"{name} Root") for name in ("a", "b1", "b2")}
    for name, ca in roots.items():
        (tmp_path / f"{name}.pem").write_bytes(ca.cert_pem)
        ca.issue(f"{name}-device").write_files(tmp_path, f"{name}-device")
    (tmp_path / "bundle.pem").write_bytes(b"".join(ca.cert_pem for ca in roots.values()))
    site.write("certgate.toml", flip_config(1))
    targets = {"a": A, "b1": B, "b2": B}
    results: Counter[str] = Counter()
    wrong: list[str] = []
    stop = threading.Event()

    def hammer(port: int) -> None:
        clients = {
            who: site.client(f"{who}-device-chain.pem", f"{who}-device.key") for who in targets
        }
        try:
            while not stop.is_set() and len(wrong) < 20:
                for who, client in clients.items():
                    response = get(client, port, targets[who])
                    problem = judge(who, response)
                    if problem is not None:
                        wrong.append(problem)
                    results[f"{who}:{response.status_code}"] += 1
        except Exception as exc:  # noqa: BLE001 - a transport error is a failure too
            wrong.append(repr(exc))
        finally:
            for client in clients.values():
                client.close()

    with uvicorn(site, "--ssl-ca-certs", str(tmp_path / "bundle.pem")) as (port, proc, log):
        with site.client("a-device-chain.pem", "a-device.key") as probe:

            def version() -> int:
                return int(get(probe, port, A, "/version").json()["version"])

            threads = [threading.Thread(target=hammer, args=(port,)) for _ in range(6)]
            for thread in threads:
                thread.start()
            try:
                for flip in range(1, 13):
                    site.write("certgate.toml", flip_config(2 if flip % 2 else 1))
                    eventually(at_least(version, flip), f"reload {flip}")
                    time.sleep(0.1)
            finally:
                stop.set()
                for thread in threads:
                    thread.join(30)
        assert proc.poll() is None
        assert "Traceback" not in log.read_text()
    assert wrong == []
    # both versions answered: b1 and b2 were each allowed and each refused
    for key in ("a:200", "b1:200", "b1:403", "b2:200", "b2:403"):
        assert results[key] > 0, results
    assert sum(results.values()) > 100, results


# -- several worker processes ----------------------------------------------


def test_every_worker_process_reloads_by_itself(tmp_path: Path) -> None:
    site = make_site(tmp_path, [A])
    root = CA.root("a Root")
    (tmp_path / "a.pem").write_bytes(root.cert_pem)
    root.issue("a-device").write_files(tmp_path, "a-device")
    state = tmp_path / "state"
    state.mkdir()
    tenant = f'[[tenants]]\nid = "a"\nhosts = ["{A}"]\nroots = ["a.pem"]\n'
    site.write("certgate.toml", "[certgate]\nwatch_interval = 0.2\n" + tenant)
    extra = ("--workers", "2", "--ssl-ca-certs", str(tmp_path / "a.pem"))
    with uvicorn(site, *extra, env={"RELOAD_STATE_DIR": str(state)}) as (port, proc, _log):

        def versions() -> dict[str, str]:
            return {p.name: p.read_text() for p in state.iterdir() if not p.name.startswith(".")}

        eventually(lambda: len(versions()) == 2, "both workers loaded")
        assert set(versions().values()) == {"0"}
        site.write(
            "certgate.toml", '[certgate]\nwatch_interval = 0.2\nexempt_paths = ["/open"]\n' + tenant
        )
        eventually(lambda: set(versions().values()) == {"1"}, "both workers reloaded")
        assert len(versions()) == 2
        context = ssl.create_default_context(cafile=str(tmp_path / "server-ca.pem"))
        for _ in range(8):  # new connections, whichever worker takes them
            with httpx.Client(verify=context, timeout=10) as anonymous:
                response = get(anonymous, port, A, "/open")
            assert response.status_code == 200
            assert str(response.json()["pid"]) in versions()
        assert proc.poll() is None
