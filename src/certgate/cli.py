"""The ``certgate`` command.

``certgate check CERT [--chain PEM]... --host HOST --config TOML [--at ISO8601] [--json]``
    Verify a client certificate the way the middleware would for a request
    to HOST. Prints the decision, tenant, reason and identity fields.
    Exit 0 allowed, 1 rejected, 2 bad usage or bad configuration.

``certgate bundle --config TOML``
    Print the PEM of every tenant root and intermediate: the CA file a TLS
    server loads so that the handshake accepts any tenant's clients (certgate
    then re-verifies each request against the addressed tenant).

Text output is escaped with :func:`certgate.text.safe_text`: a certificate
subject, a SAN, a file name or a value echoed from a configuration error
cannot send terminal escape sequences or forge an output line. ``--json``
output is ASCII (``\\uXXXX`` escapes) for the same reason. A printable
character that stdout's encoding cannot hold is written as an escape too,
never a crash.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from .config import MAX_PEM_FILE_BYTES, load_config, read_regular_file
from .decision import Decision
from .errors import ConfigError, Rejected
from .gate import CertGate
from .pem import load_certificate, pem_to_ders
from .servers.tls import trust_bundle_pem
from .text import safe_text

EXIT_ALLOWED, EXIT_REJECTED, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # exit 2, as argparse does, but via our path
        self.print_usage(sys.stderr)
        raise SystemExit(f"certgate: error: {message}") from None


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="certgate", description="mutual-TLS client certificates, per tenant")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="verify a client certificate for a host")
    check.add_argument("cert", help="client certificate: PEM (may include the chain) or DER")
    check.add_argument(
        "--chain",
        action="append",
        default=[],
        metavar="PEM",
        help="intermediate certificates the client sends (repeatable)",
    )
    check.add_argument("--host", required=True, help="the Host the request is addressed to")
    check.add_argument("--config", required=True, help="certgate TOML configuration")
    check.add_argument("--at", help="validation time, ISO 8601 (default: now)")
    check.add_argument("--json", action="store_true", help="print JSON")
    bundle = sub.add_parser("bundle", help="print all tenant CAs as one PEM bundle")
    bundle.add_argument("--config", required=True, help="certgate TOML configuration")
    return parser


def _read_certs(path: str) -> list[bytes]:
    try:
        data = read_regular_file(path, MAX_PEM_FILE_BYTES, "certificate file")
    except ConfigError as exc:  # not the configuration: the operator's input
        raise ValueError(str(exc)) from None
    if b"-----BEGIN" in data:
        return pem_to_ders(data.decode("latin-1"))
    load_certificate(data)  # DER: raise a clear error now if it is not one
    return [data]


def _parse_time(text: str) -> dt.datetime:
    """``--at``: ISO 8601, UTC when no offset is given. A time that exists
    only outside the ``datetime`` range once converted to UTC
    (``9999-12-31T23:59:59-12:00``) is a usage error, not a verdict."""
    when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if when.tzinfo is None:
        return when.replace(tzinfo=dt.UTC)
    try:
        return when.astimezone(dt.UTC)
    except OverflowError:
        raise ValueError(f"--at {text!r} is out of range once converted to UTC") from None


def _report(decision: Decision, host: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "decision": "allowed" if decision.allowed else "rejected",
        "host": host,
        "tenant": decision.tenant_id,
        "reason": decision.reason.value if decision.reason else None,
        "detail": decision.detail or None,
        "fingerprint_sha256": decision.fingerprint,
    }
    if decision.identity is not None:
        out["identity"] = decision.identity.as_dict()
    return out


def _print_text(report: dict[str, Any]) -> None:
    """One ``key: value`` line per field; every value escaped with
    :func:`safe_text`, so one field is always exactly one line."""
    for key in ("decision", "host", "tenant", "reason", "detail", "fingerprint_sha256"):
        if report.get(key) is not None:
            _print(f"{key + ':':<20} {safe_text(report[key])}")
    for key, value in (report.get("identity") or {}).items():
        if key in ("tenant_id", "fingerprint_sha256"):
            continue
        if isinstance(value, dict):
            text = ", ".join(f"{k}={safe_text(v)}" for k, v in value.items() if v) or "-"
        elif isinstance(value, list):
            text = " <- ".join(safe_text(item) for item in value)
        else:
            text = "-" if value is None else safe_text(value)
        _print(f"{key + ':':<20} {text}")


def _print(line: str, stream: TextIO | None = None) -> None:
    """``print(line)``, writing what ``stream``'s encoding cannot hold as
    ``\\uNNNN`` escapes: a printable subject in a script a non-UTF-8
    terminal cannot show must not crash the command (a traceback, exit 1)."""
    stream = stream or sys.stdout
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        line.encode(encoding)
    except UnicodeEncodeError:
        line = line.encode(encoding, "backslashreplace").decode(encoding)
    except LookupError:  # an encoding Python does not know: ASCII is safe
        line = line.encode("ascii", "backslashreplace").decode("ascii")
    print(line, file=stream)


def _error(message: object) -> None:
    _print(safe_text(message), sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        if isinstance(exc.code, str):
            _error(exc.code)
        return EXIT_USAGE if exc.code not in (0, None) else 0
    try:
        if args.command == "bundle":
            sys.stdout.write(trust_bundle_pem(load_config(args.config).registry.tenants()))
            return EXIT_ALLOWED
        gate = CertGate.from_toml(args.config)
        ders = _read_certs(args.cert)
        for chain_file in args.chain:
            ders.extend(_read_certs(chain_file))
        at = _parse_time(args.at) if args.at else None
    except ConfigError as exc:
        _error(f"certgate: configuration error: {exc}")
        return EXIT_USAGE
    except (OSError, ValueError, Rejected) as exc:
        _error(f"certgate: {exc}")
        return EXIT_USAGE
    decision = gate.check(args.host, ders, at=at)
    report = _report(decision, args.host)
    if args.json:
        # ensure_ascii (the default, made explicit): besides control
        # characters, U+2028/2029 and bidi overrides become \uXXXX escapes.
        print(json.dumps(report, indent=2, ensure_ascii=True))
    else:
        _print_text(report)
    return EXIT_ALLOWED if decision.allowed else EXIT_REJECTED


if __name__ == "__main__":
    sys.exit(main())
