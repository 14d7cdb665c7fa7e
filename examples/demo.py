"""certgate end to end: a multi-tenant FastAPI app over real mutual TLS.

    python3 dev.py demo            # run the scenarios, print the table, exit 0/1
    python3 dev.py demo --serve    # ...then keep serving and print curl commands

1. makes a throwaway dev PKI (three tenants; Acme devices present an
   intermediate, Initech's intermediate is configured on the tenant),
2. starts the FastAPI example under uvicorn with certgate's TLS adapter on a
   free loopback port (``python -m certgate.servers.uvicorn``),
3. makes real HTTPS requests with real client certificates (httpx), and
4. prints what each request got, and whether that is what certgate promises.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from examples.devenv import (  # noqa: E402
    DevEnv,
    fastapi_uvicorn_cmd,
    free_port,
    make_dev_environment,
    running,
)


@dataclass(frozen=True)
class Case:
    client: str | None  # dev identity name, or None for no certificate
    host: str
    path: str
    expected: str  # "200", "403 <reason>", or "TLS refused"
    headers: tuple[tuple[str, str], ...] = ()
    label: str = ""
    method: str = "GET"


def cases(env: DevEnv) -> list[Case]:
    forged = _der_b64(env.path("acme-device.pem"))
    return [
        Case("acme-device", "pay.acme.test", "/whoami", "200", label="own tenant"),
        Case("acme-device", "eu.acme.test", "/whoami", "200", label="own tenant, wildcard host"),
        Case("globex-device", "api.globex.test", "/whoami", "200", label="own tenant"),
        Case(
            "initech-device",
            "initech.test",
            "/whoami",
            "200",
            label="leaf only; intermediate configured",
        ),
        Case(
            "acme-device",
            "api.globex.test",
            "/whoami",
            "403 untrusted_chain",
            label="another tenant's host",
        ),
        Case(
            "globex-device",
            "pay.acme.test",
            "/whoami",
            "403 untrusted_chain",
            label="another tenant's host",
        ),
        Case(None, "pay.acme.test", "/whoami", "403 no_certificate", label="no certificate"),
        Case("acme-expired", "pay.acme.test", "/whoami", "403 expired", label="expired"),
        Case(
            "acme-device",
            "shop.example.com",
            "/whoami",
            "403 unknown_tenant",
            label="host of no tenant",
        ),
        Case(
            None,
            "pay.acme.test",
            "/whoami",
            "403 no_certificate",
            headers=(("Cf-Client-Cert-Der-Base64", forged),),
            label="forged Cloudflare header",
        ),
        Case(None, "pay.acme.test", "/healthz", "200", label="exempt path"),
        Case(None, "pay.acme.test", "/", "200", label="public page, anonymous"),
        Case("globex-device", "api.globex.test", "/", "200", label="public page, identified"),
        Case(
            "acme-device",
            "pay.acme.test",
            "/telemetry",
            "200",
            method="POST",
            label="route rule: Acme sensor SPIFFE ID",
        ),
        Case(
            "globex-device",
            "api.globex.test",
            "/telemetry",
            "403 policy_denied",
            method="POST",
            label="route rule: not a sensor",
        ),
        Case(
            "rogue-device", "pay.acme.test", "/whoami", "TLS refused", label="CA no tenant trusts"
        ),
    ]


def _der_b64(pem_path: Path) -> str:
    import base64  # noqa: PLC0415

    der = ssl.PEM_cert_to_DER_cert(pem_path.read_text())
    return base64.b64encode(der).decode()


@contextlib.contextmanager
def fastapi_server(env: DevEnv, port: int) -> Iterator[subprocess.Popen[bytes]]:
    cmd = fastapi_uvicorn_cmd(env, port, "--log-level", "warning")
    log = env.directory / "server.log"
    with running(cmd, port, log, {"CERTGATE_CONFIG": str(env.config)}) as proc:
        yield proc


def run_case(env: DevEnv, port: int, case: Case) -> tuple[str, str]:
    """Returns (got, detail) for one request."""
    context = ssl.create_default_context(cafile=str(env.server_ca))
    if case.client is not None:
        chain, key = env.client(case.client)
        context.load_cert_chain(chain, key)
    headers = {"Host": case.host, **dict(case.headers)}
    try:
        with httpx.Client(verify=context, timeout=10) as client:
            url = f"https://127.0.0.1:{port}{case.path}"
            response = client.request(case.method, url, headers=headers)
    except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError) as exc:
        return "TLS refused", type(exc).__name__
    if response.status_code == 200:
        body = response.json()
        who = body.get("common_name") and f"{body['tenant_id']}: {body['common_name']}"
        return "200", who or json.dumps(body, separators=(",", ":"))
    reason = response.json().get("reason", "?")
    return f"{response.status_code} {reason}", ""


def print_table(rows: list[tuple[Case, str, str]]) -> bool:
    header = ("client", "host", "path", "expected", "got", "identity / note")
    table = [header] + [
        (c.client or "(none)", c.host, c.path, c.expected, got, detail or c.label)
        for c, got, detail in rows
    ]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    ok_all = True
    for index, row in enumerate(table):
        mark = "  "
        if index:
            ok = rows[index - 1][1] == rows[index - 1][0].expected
            ok_all &= ok
            mark = "ok" if ok else "!!"
        print(mark, "  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)))
    return ok_all


def print_server_log(env: DevEnv) -> None:
    """What the server logged on the ``certgate`` logger: reason, tenant,
    source and fingerprint of each refusal - never certificate or key text."""
    lines = [
        line
        for line in (env.directory / "server.log").read_text(errors="replace").splitlines()
        if line.startswith("certgate:")
    ]
    print("\nThe server's certgate log lines:")
    for line in lines:
        print("  " + line.split(" detail=")[0])


def print_curl(env: DevEnv, port: int) -> None:
    d = env.directory
    resolve = " ".join(
        f"--resolve {h}:{port}:127.0.0.1"
        for h in ("pay.acme.test", "api.globex.test", "initech.test")
    )
    base = f"curl --cacert {d}/server-ca.pem {resolve}"
    print("\nTry it by hand (Ctrl-C stops the server):\n")
    print(
        f"  {base} --cert {d}/acme-device-chain.pem --key {d}/acme-device.key "
        f"https://pay.acme.test:{port}/whoami"
    )
    print(
        f"  {base} --cert {d}/acme-device-chain.pem --key {d}/acme-device.key "
        f"https://api.globex.test:{port}/whoami"
    )
    print(f"  {base} https://pay.acme.test:{port}/whoami")
    print(
        f"  {base} --cert {d}/initech-device.pem --key {d}/initech-device.key "
        f"https://initech.test:{port}/whoami"
    )
    print(
        f"\n  certgate check {d}/acme-device-chain.pem --host pay.acme.test "
        f"--config {d}/certgate.toml"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description="certgate end-to-end demo")
    parser.add_argument(
        "--serve",
        action="store_true",
        help="keep the server running afterwards and print curl commands",
    )
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    parser.add_argument("--dir", help="where to write the dev PKI (default: a temp dir)")
    args = parser.parse_args()

    workdir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="certgate-demo-"))
    env = make_dev_environment(workdir)
    port = args.port or free_port()
    print(
        f"certgate demo: dev PKI in {workdir}; FastAPI + uvicorn over TLS on "
        f"https://127.0.0.1:{port}\n"
    )
    try:
        with fastapi_server(env, port) as proc:
            rows = []
            for case in cases(env):
                got, detail = run_case(env, port, case)
                rows.append((case, got, detail))
            print()
            ok = print_table(rows)
            passed = sum(1 for c, got, _ in rows if got == c.expected)
            print(f"\n{passed} of {len(rows)} requests answered as expected.")
            print_server_log(env)
            if args.serve:
                print_curl(env, port)
                with contextlib.suppress(KeyboardInterrupt):
                    proc.wait()
    finally:
        if not args.dir and not args.serve:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
