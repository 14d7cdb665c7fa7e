"""The ``certgate`` command.

``certgate check CERT [--chain PEM]... --host HOST --config TOML [--at TIME] [--json] [--explain]``
    Verify a client certificate the way the middleware would for a request
    to HOST. Prints the decision, tenant, reason and identity fields; a
    refusal's detail says where the path breaks (a missing issuer by name
    and key id, an expired tenant CA). ``--explain`` also lists the other
    tenants the certificate is valid for.
    Exit 0 allowed, 1 rejected, 2 bad usage or bad configuration.

``certgate bundle --config TOML``
    Print the PEM of every tenant root and intermediate: the CA file a TLS
    server loads so that the handshake accepts any tenant's clients (certgate
    then re-verifies each request against the addressed tenant). A
    configuration without any tenant CA is an error (exit 2), not an empty
    bundle.

``check``, ``bundle`` and ``expiry`` take ``--registry URL`` (a tenant
store) instead of ``--config``, and a ``--config`` whose
``[certgate].registry`` names a store works on that store: ``check`` looks
the host up, ``bundle`` and ``expiry`` read the store a page at a time
(:mod:`certgate.stores.scan`; ``expiry`` then lists in tenant order, not
soonest first). ``config check`` of such a file opens the store (it must
exist with the current schema) and reports its tenant count and late CAs.

``certgate config check TOML [--strict]``
    Load a configuration as the middleware would: exit 2 with the errors when
    it is invalid - every CA vetting error of every tenant, not only the
    first (:func:`certgate.config.ca_findings`); otherwise print a summary and
    the warnings (certgate's load-time warnings, CA vetting warnings, tenant
    CAs inside ``expiry_warning_days``, CRLs near or past their nextUpdate),
    exit 0 (1 with ``--strict`` when there are warnings).

``certgate expiry --config TOML [--warning-days 30] [--critical-days 14] [--all] [--json]``
    ``[--crl-warning-days 3] [--crl-critical-days 1]``
    List the tenant roots and intermediates that expire within the warning
    threshold (or have expired), and the CRLs whose nextUpdate is within the
    CRL thresholds (or past), soonest first. Expired CAs are listed even
    when their tenant refuses them at load (``ca_expired = "fail"``). Exit 0
    when there are none, 1 when there are (for cron and monitoring), 2 on
    bad usage or another configuration error.

``certgate tenants add --config TOML ID --host H... --root PEM... [--intermediate PEM]...``
    Append a ``[[tenants]]`` table to the file, after checking that the
    result loads (CA vetting, ids and hosts unique, shared anchors); the
    rest of the file is kept byte for byte (:mod:`certgate.tenantfile`).

``certgate tenants list --config TOML [--json]``
    One line per tenant: id, hosts, roots, intermediates, earliest CA expiry.

``certgate tenants remove --config TOML ID``
    Cut that tenant's ``[[tenants]]`` table out of the file (checked: the
    rest parses to the same data and loads).

``certgate tenants add|list|remove --registry URL ...``, ``certgate tenants show ID --registry URL``
``certgate tenants import --from SOURCE --to URL``, ``certgate tenants export --from URL``
``certgate tenants migrate URL``, ``certgate tenants backup|restore URL FILE``
    The same against a tenant store (``sqlite:///path``), and moving
    tenants between a TOML file, a JSON-lines export and stores: see
    :mod:`certgate.stores.cli`.

``certgate inspect CERT [--json]``
    Print the identity fields of a certificate (PEM or DER) as the app would
    see them - subject, issuer, serial, dates, SANs, SPIFFE ID, fingerprints,
    key, EKU. Nothing is verified: use ``check`` for that.

``certgate pki init-ca --cn NAME --out DIR [--key-type ec256|ec384|rsa4096] [--days N]``
    A new root CA: ``DIR/ca.pem`` and ``DIR/ca.key`` (mode 0600).

``certgate pki issue-client --ca-cert PEM --ca-key PEM --cn NAME --out DIR [--dns D] [--uri U] ...``
    A client certificate and key (``DIR/NAME.pem``, ``DIR/NAME.key``), and with
    ``--p12-passphrase-file`` a PKCS#12 bundle for browsers; usable as
    ``curl --cert DIR/NAME.pem --key DIR/NAME.key``.

``certgate pki revoke --ca-cert PEM --ca-key PEM --cert DEVICE.pem --db revoked.json [--reason R]``
    Record a revocation (serial, date, reason) in the CA's JSON revocation
    database (created on first use); ``--serial HEX`` instead of ``--cert``
    revokes by serial number. ``--reason``: an RFC 5280 reason name
    (``keyCompromise``, ``superseded``, ...; default ``unspecified``). The
    certificate must have been issued by the CA. Revoking twice is not an
    error.

``certgate pki crl --ca-cert PEM --ca-key PEM --db revoked.json --out ca.crl [--days 7] [--der]``
    Write a CRL of the database's revocations signed by the CA (PEM, or DER
    with ``--der``): CRL Number one higher than the last, Authority Key
    Identifier, nextUpdate ``--days`` ahead. List the file in the tenant's
    ``crls`` (or serve it at one of its ``crl_urls``).

``certgate --version``

Text output is escaped with :func:`certgate.text.safe_text`: a certificate
subject, a SAN, a file name or a value echoed from a configuration error
cannot send terminal escape sequences or forge an output line. ``--json``
output is ASCII (``\\uXXXX`` escapes) for the same reason. A printable
character that stdout's encoding cannot hold is written as an escape too,
never a crash.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from . import __version__, pki
from . import pki as pki_module
from .config import (
    MAX_PEM_FILE_BYTES,
    ca_findings,
    close_registry,
    load_config,
    read_regular_file,
    store_spec,
)
from .decision import Decision
from .devpki import CA
from .errors import ConfigError, Rejected
from .expiry import CRL_CRITICAL_DAYS, CRL_WARNING_DAYS, ExpiryItem, ca_expiry
from .gate import CertGate
from .identity import ClientIdentity
from .pem import load_certificate, pem_to_ders
from .pki import CLIENT_KEY_TYPES, KEY_TYPES
from .registry import InMemoryRegistry
from .reload import expiry_report
from .servers.tls import trust_bundle_pem
from .stores import SqlTenantStore, open_store
from .stores.cli import STORE_COMMANDS, store_parsers
from .stores.cli import run as run_store_command
from .stores.scan import bundle_pem, store_expiry, store_of
from .tenant import Tenant
from .tenantfile import add_tenant, read_tenants, remove_tenant
from .text import safe_text
from .vetting import Finding, lenient_dates

EXIT_ALLOWED, EXIT_REJECTED, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # exit 2, as argparse does, but via our path
        self.print_usage(sys.stderr)
        raise SystemExit(f"certgate: error: {message}") from None


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="certgate", description="mutual-TLS client certificates, per tenant")
    parser.add_argument("--version", action="version", version=f"certgate {__version__}")
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
    _config_or_registry(check)
    check.add_argument("--at", help="validation time, ISO 8601 (default: now)")
    check.add_argument("--json", action="store_true", help="print JSON")
    check.add_argument(
        "--explain", action="store_true", help="on a refusal, also try every other tenant"
    )
    bundle = sub.add_parser("bundle", help="print all tenant CAs as one PEM bundle")
    _config_or_registry(bundle)
    config = sub.add_parser("config", help="work with a configuration file")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    config_check = config_sub.add_parser("check", help="validate a configuration")
    config_check.add_argument("config", help="certgate TOML configuration")
    config_check.add_argument("--strict", action="store_true", help="exit 1 on warnings")
    expiry = sub.add_parser("expiry", help="list tenant CAs that expire soon (exit 1 if any)")
    _config_or_registry(expiry)
    expiry.add_argument("--warning-days", type=float, default=30, help="default 30")
    expiry.add_argument("--critical-days", type=float, default=14, help="default 14")
    expiry.add_argument(
        "--crl-warning-days", type=float, default=CRL_WARNING_DAYS, help="CRLs: default 3"
    )
    expiry.add_argument(
        "--crl-critical-days", type=float, default=CRL_CRITICAL_DAYS, help="CRLs: default 1"
    )
    expiry.add_argument("--all", action="store_true", help="list every CA, not only the late")
    expiry.add_argument("--at", help="as of this time, ISO 8601 (default: now)")
    expiry.add_argument("--json", action="store_true", help="print JSON")
    inspect = sub.add_parser("inspect", help="print a certificate's identity fields")
    inspect.add_argument("cert", help="certificate: PEM or DER (the first one is shown)")
    inspect.add_argument("--json", action="store_true", help="print JSON")
    _pki_parsers(sub.add_parser("pki", help="make CAs and client certificates"))
    _tenants_parsers(sub.add_parser("tenants", help="add, list or remove tenants of a TOML file"))
    return parser


def _tenants_parsers(tenants: argparse.ArgumentParser) -> None:
    sub = tenants.add_subparsers(dest="tenants_command", required=True)
    add = sub.add_parser("add", help="add a tenant to a TOML file or a registry URL")
    add.add_argument("id", help="the tenant id")
    _where(add)
    add.add_argument(
        "--host", action="append", required=True, help="a host or *.pattern (repeatable)"
    )
    add.add_argument("--root", action="append", required=True, help="root CA PEM file (repeatable)")
    add.add_argument("--intermediate", action="append", default=[], help="intermediate PEM file")
    add.add_argument("--mode", choices=["enforce", "report"], help="this tenant's mode")
    add.add_argument("--shared-anchors", action="store_true", help="shared_anchors = true")
    add.add_argument(
        "--policy", metavar="JSON", help='its default policy, e.g. \'{"common_name": ["a"]}\''
    )
    add.add_argument("--crl", action="append", default=[], help="CRL file (repeatable)")
    add.add_argument("--crl-url", action="append", default=[], help="CRL URL (repeatable)")
    add.add_argument("--crl-refresh", type=float, help="seconds between CRL URL fetches")
    add.add_argument("--crl-stale", choices=["fail", "warn"], help="a stale CRL fails or warns")
    add.add_argument("--require-crl", action="store_true", help="require_crl = true")
    add.add_argument(
        "--ca-expired", choices=["fail", "warn"], help="an expired CA fails (default) or warns"
    )
    listing = sub.add_parser("list", help="list the tenants of a TOML file or a registry URL")
    _where(listing)
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.add_argument("--after", help="registry URL: only ids after this one (paging)")
    listing.add_argument("--limit", type=int, help="registry URL: at most this many tenants")
    remove = sub.add_parser("remove", help="remove a tenant from a TOML file or a registry URL")
    remove.add_argument("id", help="the tenant id")
    _where(remove)
    store_parsers(sub)


def _config_or_registry(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", help="certgate TOML configuration")
    where.add_argument(
        "--registry", metavar="URL", help="a tenant store instead (sqlite:///path, postgresql://)"
    )


def _where(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", help="certgate TOML configuration")
    where.add_argument("--registry", metavar="URL", help="registry URL (sqlite:///path)")


def _pki_parsers(pki: argparse.ArgumentParser) -> None:
    sub = pki.add_subparsers(dest="pki_command", required=True)
    init = sub.add_parser("init-ca", help="create a self-signed root CA")
    init.add_argument("--cn", required=True, help="the CA's common name")
    init.add_argument("--org", help="organization (O=)")
    init.add_argument("--key-type", default="ec256", choices=sorted(KEY_TYPES))
    init.add_argument("--days", type=int, default=3650, help="validity (default 3650)")
    init.add_argument("--path-length", type=int, help="Basic Constraints pathLen")
    init.add_argument("--out", required=True, help="directory for ca.pem and ca.key")
    init.add_argument("--name", default="ca", help="file name stem (default: ca)")
    init.add_argument("--key-passphrase-file", help="encrypt the CA key with this passphrase")
    init.add_argument("--force", action="store_true", help="overwrite existing files")
    issue = sub.add_parser("issue-client", help="issue a client certificate from a CA")
    issue.add_argument("--ca-cert", required=True, help="the CA certificate (PEM)")
    issue.add_argument("--ca-key", required=True, help="the CA private key (PEM)")
    issue.add_argument("--ca-key-passphrase-file", help="passphrase of an encrypted CA key")
    issue.add_argument("--cn", required=True, help="the client's common name")
    issue.add_argument("--org", help="organization (O=)")
    for option, what in (("dns", "DNS"), ("uri", "URI (e.g. a SPIFFE ID)"), ("email", "e-mail")):
        issue.add_argument(f"--{option}", action="append", default=[], help=f"{what} SAN")
    issue.add_argument("--ip", action="append", default=[], help="IP address SAN")
    issue.add_argument("--key-type", default="ec256", choices=sorted(CLIENT_KEY_TYPES))
    issue.add_argument("--days", type=int, default=365, help="validity (default 365)")
    issue.add_argument("--out", required=True, help="directory for the files")
    issue.add_argument("--name", help="file name stem (default: from the CN)")
    issue.add_argument("--p12-passphrase-file", help="also write NAME.p12 with this passphrase")
    issue.add_argument("--force", action="store_true", help="overwrite existing files")
    revoke = sub.add_parser("revoke", help="record a certificate's revocation")
    _ca_arguments(revoke)
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--cert", help="the certificate to revoke (PEM)")
    which.add_argument("--serial", help="its serial number, hex")
    revoke.add_argument(
        "--reason", default="unspecified", choices=list(pki_module.REVOCATION_REASONS)
    )
    revoke.add_argument("--db", required=True, help="the CA's revocation database (JSON)")
    crl = sub.add_parser("crl", help="write a CRL signed by the CA")
    _ca_arguments(crl)
    crl.add_argument("--db", required=True, help="the CA's revocation database (JSON)")
    crl.add_argument("--out", required=True, help="the CRL file to write")
    crl.add_argument("--days", type=int, default=7, help="nextUpdate in days (default 7)")
    crl.add_argument("--der", action="store_true", help="write DER instead of PEM")


def _ca_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ca-cert", required=True, help="the CA certificate (PEM)")
    parser.add_argument("--ca-key", required=True, help="the CA private key (PEM)")
    parser.add_argument("--ca-key-passphrase-file", help="passphrase of an encrypted CA key")


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


EXPLAIN_MAX_TENANTS = 100_000


def _valid_for(
    gate: CertGate, ders: list[bytes], at: dt.datetime | None, skip: str | None
) -> list[str]:
    """The other tenants (ids) this chain verifies for: a device sent to the
    wrong host, or a CA registered on the wrong tenant. Operator-only: the
    middleware never tries other tenants (that would tell a client who else
    trusts its certificate, and cost a verification per tenant)."""
    when = at or gate.verification.now()
    found: list[str] = []
    for tenant in itertools.islice(_all_tenants(gate.registry), EXPLAIN_MAX_TENANTS):
        if tenant.id == skip:
            continue
        try:
            gate.verifier.verify(tenant, ders, source="cli", now=when)
        except Rejected:
            continue
        found.append(tenant.id)
    return found


def _all_tenants(registry: object) -> Iterator[Tenant]:
    """Every tenant of ``registry``: its ``tenants()``, or a store's, read a
    page at a time (:meth:`~certgate.stores.SqlTenantStore.export`); none
    when it can say neither."""
    tenants = getattr(registry, "tenants", None)
    if callable(tenants):
        yield from tenants()
        return
    store = store_of(registry)
    if store is not None:
        for record in store.export():
            yield record.build(vetted=True)


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
    if "valid_for_tenants" in report:
        _print(f"{'valid_for_tenants:':<20} {_field_text(report['valid_for_tenants'])}")
    for key, value in (report.get("identity") or {}).items():
        if key in ("tenant_id", "fingerprint_sha256"):
            continue
        _print(f"{key + ':':<20} {_field_text(value, ' <- ')}")


def _field_text(value: object, separator: str = ", ") -> str:
    """One output field as one escaped line: a list joined by ``separator``,
    a mapping as ``key=value`` pairs (list values joined by spaces)."""
    if isinstance(value, dict):
        pairs = [f"{k}={_field_text(v, ' ')}" for k, v in value.items() if v]
        return ", ".join(pairs) or "-"
    if isinstance(value, list | tuple):
        return separator.join(safe_text(item) for item in value) or "-"
    return "-" if value is None else safe_text(value)


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
            return _bundle(args)
        if args.command == "config":
            return _config_check(args.config, strict=args.strict)
        if args.command == "expiry":
            return _expiry(args)
        if args.command == "inspect":
            return _inspect(args.cert, as_json=args.json)
        if args.command == "tenants":
            return _tenants(args)
        if args.command == "pki":
            try:
                return _pki(args)
            except ConfigError as exc:  # the operator's input, not a certgate config
                raise ValueError(str(exc)) from None
        if args.registry is not None:  # one-shot: the store itself, no cache or poller
            gate = CertGate(open_store(args.registry))
        else:
            gate = CertGate.from_toml(args.config)
        refresher = getattr(gate.registry, "crl_refresher", None)
        if refresher is not None:  # crl_urls: fetch them now, not in the background
            refresher.refresh()
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
    with _closing(gate):
        decision = gate.check(args.host, ders, at=at)
        report = _report(decision, args.host)
        if args.explain and not decision.allowed:
            report["valid_for_tenants"] = _valid_for(gate, ders, at, decision.tenant_id)
    if args.json:
        # ensure_ascii (the default, made explicit): besides control
        # characters, U+2028/2029 and bidi overrides become \uXXXX escapes.
        print(json.dumps(report, indent=2, ensure_ascii=True))
    else:
        _print_text(report)
    return EXIT_ALLOWED if decision.allowed else EXIT_REJECTED


def _bundle(args: argparse.Namespace) -> int:
    """Every tenant CA as PEM; a tenant store is streamed a page at a time."""
    store = _store_of_args(args)
    if store is None:
        config = args.config
        bundle = trust_bundle_pem(load_config(config).registry.tenants())
        if not bundle.strip():
            raise ConfigError(
                f"{config}: no tenant CA to bundle (the configuration has no tenants)"
            )
        sys.stdout.write(bundle)
        return EXIT_ALLOWED
    with _closing(store):
        written = 0
        for pem in bundle_pem(store):
            sys.stdout.write(pem)
            written += 1
        if not written:
            raise ConfigError(f"{store.where}: no tenant CA to bundle (the store has no tenants)")
    return EXIT_ALLOWED


@contextlib.contextmanager
def _closing(store: object) -> Iterator[None]:
    """Close ``store`` (its connections, a PostgreSQL pool) at the end."""
    try:
        yield
    finally:
        close_registry(store)


def _store_of_args(args: argparse.Namespace) -> SqlTenantStore | None:
    """The tenant store of ``--registry URL``, or the one ``--config``'s
    ``[certgate].registry`` names (opened as it is: never created or
    migrated); ``None`` for a configuration with ``[[tenants]]``."""
    if args.registry is not None:
        return open_store(args.registry)
    spec = store_spec(args.config)
    if spec is None:
        return None
    try:
        return open_store(spec.url)
    except ConfigError as exc:
        raise ConfigError(f"{args.config}: [certgate].registry: {exc}") from None


class _Collect(logging.Handler):
    """Keeps the WARNING (and worse) messages certgate logs while loading."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _config_check(path: str, *, strict: bool) -> int:
    """Load ``path`` as the middleware would; print a summary and the
    warnings (certgate's own load-time warnings and late CAs and CRLs). When
    tenants fail to load, list every CA vetting finding of every tenant (on
    stderr) instead of stopping at the first, and exit 2."""
    findings = ca_findings(path)
    if any(f.level == "error" for f in findings):
        errors = sum(f.level == "error" for f in findings)
        for finding in findings:
            _print(f"{finding.level}: {safe_text(_finding_text(finding, path))}", sys.stderr)
        _error(f"certgate: configuration error: {path}: {errors} error(s) in [[tenants]]")
        return EXIT_USAGE
    collect = _Collect()
    logger = logging.getLogger("certgate")
    logger.addHandler(collect)
    try:
        gate = CertGate.from_toml(path)
    finally:
        logger.removeHandler(collect)
    store = store_of(gate.registry)
    if store is None:
        tenants = list(getattr(gate.registry, "tenants", list)())
        hosts = sum(len(t.hosts) for t in tenants)
        cas = sum(len(t.roots) + len(t.intermediates) for t in tenants)
        summary = f"tenants: {len(tenants)}, host patterns: {hosts}, CA certificates: {cas}"
    else:
        summary = f"tenants: {store.count()} in the store {store.where} (schema up to date)"
    warnings = list(collect.messages)
    report = expiry_report(gate.registry, gate)
    for item in report.items:
        if item.level == "ok" or (item.level == "expired" and item.kind != "crl" and store is None):
            continue  # an expired CA that loaded (ca_expired = "warn") was logged above
        warnings.append(_late_text(item))
    if report.omitted:
        warnings.append(
            f"{report.omitted} more late tenant CAs or CRLs (`certgate expiry --config "
            f"{path}` lists them all)"
        )
    gate.close()
    _print(f"{safe_text(path)}: valid")
    _print(summary)
    for warning in warnings:
        _print(f"warning: {safe_text(warning)}")
    return EXIT_REJECTED if strict and warnings else EXIT_ALLOWED


def _finding_text(finding: Finding, path: str) -> str:
    """A finding as one line naming the configuration file."""
    return finding.problem if finding.rule == "tenant" else f"{path}: {finding.text()}"


def _late_text(item: ExpiryItem) -> str:
    """A late CA or CRL as a ``config check`` warning."""
    if item.kind == "crl":
        when = (
            "is stale (past its nextUpdate or not yet valid)"
            if item.level == "expired"
            else f"is due for renewal in {item.days_left:.1f} days"
        )
        source = f" ({item.source})" if item.source else ""
        return (
            f"tenant {item.tenant_id!r}: the CRL of {item.subject}{source} {when} "
            f"(nextUpdate {item.not_after:%Y-%m-%d %H:%M} UTC)"
        )
    when = "expired" if item.level == "expired" else f"expires in {item.days_left:.1f} days"
    return (
        f"tenant {item.tenant_id!r}: {item.kind} {item.subject} {when} "
        f"(notAfter {item.not_after:%Y-%m-%d})"
    )


def _expiry(args: argparse.Namespace) -> int:
    store = _store_of_args(args)
    if store is not None:
        with _closing(store):
            return _store_expiry(args, store)
    with lenient_dates():  # list expired CAs, even of tenants that refuse them at load
        tenants = read_tenants(args.config)
        if any(tenant.crl_urls for tenant in tenants):  # fetch them now, to list their CRLs
            from .crlfetch import CrlRefresher  # noqa: PLC0415 - only configs with CRL URLs

            registry = InMemoryRegistry(tenants)
            CrlRefresher(registry).refresh()
            tenants = registry.tenants()
    items = ca_expiry(
        tenants,
        now=_parse_time(args.at) if args.at else None,
        warning_days=args.warning_days,
        critical_days=args.critical_days,
        crl_warning_days=args.crl_warning_days,
        crl_critical_days=args.crl_critical_days,
    )
    late = [item for item in items if item.level != "ok"]
    shown = items if args.all else late
    if args.json:
        report: dict[str, object] = {**_expiry_thresholds(args), "late": len(late)}
        report["items"] = [item.as_dict() for item in shown]
        print(json.dumps(report, indent=2, ensure_ascii=True))
    else:
        if not shown:
            crls = sum(item.kind == "crl" for item in items)
            _print(
                f"all {len(items) - crls} tenant CAs have {args.warning_days:g} days or more left"
                + (
                    f", and all {crls} CRLs {args.crl_warning_days:g} days or more before "
                    "their nextUpdate"
                    if crls
                    else ""
                )
            )
        width = max((len(safe_text(item.tenant_id)) for item in shown), default=0)
        for item in shown:
            _print(_expiry_line(item, width))
    return EXIT_REJECTED if late else EXIT_ALLOWED


def _expiry_thresholds(args: argparse.Namespace) -> dict[str, float]:
    return {
        "warning_days": args.warning_days,
        "critical_days": args.critical_days,
        "crl_warning_days": args.crl_warning_days,
        "crl_critical_days": args.crl_critical_days,
    }


def _expiry_line(item: ExpiryItem, width: int) -> str:
    source = f"  {safe_text(item.source)}" if item.source else ""
    return (
        f"{item.level:<9} {item.days_left:8.1f} days  {item.not_after:%Y-%m-%d}  "
        f"{safe_text(item.tenant_id):<{width}}  {item.kind:<12}  "
        f"{safe_text(item.subject)}{source}"
    )


def _store_expiry(args: argparse.Namespace, store: SqlTenantStore) -> int:
    """``expiry`` over a tenant store, streamed (a page of the store at a
    time, each item printed as found): in tenant order, CAs then CRLs, not
    soonest first - sorting a million tenants' items would hold them all.
    JSON: the same object as for a TOML file, ``late`` last."""
    items = store_expiry(
        store,
        now=_parse_time(args.at) if args.at else None,
        every=args.all,
        **_expiry_thresholds(args),
    )
    late = 0
    if args.json:
        head = json.dumps(_expiry_thresholds(args), indent=2, ensure_ascii=True)
        sys.stdout.write(head[:-2] + ',\n  "items": [')
        for position, item in enumerate(items):
            late += item.level != "ok"
            text = json.dumps(item.as_dict(), ensure_ascii=True)
            sys.stdout.write(("," if position else "") + "\n    " + text)
        sys.stdout.write(f'\n  ],\n  "late": {late}\n}}\n')
    else:
        for item in items:
            late += item.level != "ok"
            _print(_expiry_line(item, 24))
        if not late:
            _print(
                f"all tenant CAs of {store.where} have {args.warning_days:g} days or more "
                f"left, and all CRLs {args.crl_warning_days:g} days or more before their "
                "nextUpdate"
            )
    return EXIT_REJECTED if late else EXIT_ALLOWED


def _tenants(args: argparse.Namespace) -> int:
    """``tenants add``, ``list`` and ``remove`` of a TOML file; every
    ``tenants`` command of a registry URL (:mod:`certgate.stores.cli`)."""
    if getattr(args, "registry", None) is not None or args.tenants_command in STORE_COMMANDS:
        return run_store_command(args)
    if args.tenants_command == "list" and (args.after is not None or args.limit is not None):
        raise ValueError("--after and --limit page a registry URL (--registry), not a TOML file")
    spec = store_spec(args.config)
    if spec is not None:  # [[tenants]] would be refused beside it
        raise ConfigError(
            f"{args.config}: its tenants are in the store that [certgate].registry names "
            f"({spec.label}): use --registry URL instead of --config"
        )
    if args.tenants_command == "list":
        return _tenants_list(args.config, as_json=args.json)
    if args.tenants_command == "remove":
        remove_tenant(args.config, args.id)
        _print(
            f"removed tenant {safe_text(args.id)} from {safe_text(args.config)}; "
            "reload or restart to apply"
        )
        return EXIT_ALLOWED
    tenant = add_tenant(args.config, _tenant_entry(args))
    _print(
        f"added tenant {safe_text(tenant.id)} to {safe_text(args.config)}: hosts "
        f"{_field_text(list(tenant.hosts))}, {len(tenant.roots)} root(s), "
        f"{len(tenant.intermediates)} intermediate(s); reload or restart to apply"
    )
    for warning in (f.text() for f in tenant.ca_warnings):
        _print(f"warning: {safe_text(warning)}")
    return EXIT_ALLOWED


def _tenant_entry(args: argparse.Namespace) -> dict[str, Any]:
    """The ``[[tenants]]`` table of ``tenants add``: file names relative to
    the configuration's directory when they are inside it, else absolute."""
    base = Path(os.path.abspath(args.config)).parent

    def files(names: list[str]) -> list[str]:
        out = []
        for name in names:
            absolute = Path(os.path.abspath(name))
            inside = os.path.commonpath([absolute, base]) == str(base)
            out.append(absolute.relative_to(base).as_posix() if inside else str(absolute))
        return out

    entry: dict[str, Any] = {"id": args.id, "hosts": list(args.host), "roots": files(args.root)}
    if args.intermediate:
        entry["intermediates"] = files(args.intermediate)
    if args.shared_anchors:
        entry["shared_anchors"] = True
    if args.mode:
        entry["mode"] = args.mode
    if args.policy is not None:
        try:
            policy = json.loads(args.policy)
        except ValueError as exc:
            raise ValueError(f"--policy is not JSON: {exc}") from None
        if not isinstance(policy, dict):
            raise ValueError("--policy must be a JSON object")
        entry["policy"] = policy
    if args.crl:
        entry["crls"] = files(args.crl)
    if args.crl_url:
        entry["crl_urls"] = list(args.crl_url)
    if args.crl_refresh is not None:
        entry["crl_refresh"] = args.crl_refresh
    if args.crl_stale:
        entry["crl_stale"] = args.crl_stale
    if args.require_crl:
        entry["require_crl"] = True
    if args.ca_expired:
        entry["ca_expired"] = args.ca_expired
    return entry


def _tenants_list(config: str, *, as_json: bool) -> int:
    with lenient_dates():  # an inventory shows a tenant with an expired CA too
        tenants = read_tenants(config)
    rows = [_tenant_row(tenant) for tenant in tenants]
    if as_json:
        print(json.dumps({"tenants": rows}, indent=2, ensure_ascii=True))
        return EXIT_ALLOWED
    table = [("id", "hosts", "roots", "intermediates", "earliest CA expiry")]
    for row in rows:
        table.append(
            (
                safe_text(row["id"]),
                _field_text(row["hosts"]),
                str(row["roots"]),
                str(row["intermediates"]),
                row["earliest_ca_expiry"] or "-",
            )
        )
    widths = [max(len(line[column]) for line in table) for column in range(5)]
    for line in table:
        _print(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        )
    return EXIT_ALLOWED


def _tenant_row(tenant: Tenant) -> dict[str, Any]:
    cas = tenant.roots + tenant.intermediates
    earliest = min((cert.not_valid_after_utc for cert in cas), default=None)
    return {
        "id": tenant.id,
        "hosts": list(tenant.hosts),
        "roots": len(tenant.roots),
        "intermediates": len(tenant.intermediates),
        "earliest_ca_expiry": earliest.strftime("%Y-%m-%dT%H:%M:%SZ") if earliest else None,
        "mode": tenant.mode,
        "crls": len(tenant.crls),
        "crl_urls": list(tenant.crl_urls),
    }


def _inspect(path: str, *, as_json: bool) -> int:
    der = _read_certs(path)[0]
    cert = load_certificate(der)
    identity = ClientIdentity.build("-", "file", cert, der, (cert,))
    report = identity.as_dict()
    for key in ("tenant_id", "source", "chain"):
        report.pop(key)
    report.update(_certificate_facts(cert))
    report["verified"] = False
    if as_json:
        print(json.dumps(report, indent=2, ensure_ascii=True))
        return EXIT_ALLOWED
    for key, value in report.items():
        _print(f"{key + ':':<20} {_field_text(value)}")
    return EXIT_ALLOWED


def _key_text(cert: x509.Certificate) -> str:
    """``RSA 2048``, ``EC secp256r1``...; a key ``cryptography`` cannot load
    (an unknown curve or algorithm) is described, not a crash: inspecting
    an odd certificate is what ``inspect`` is for."""
    try:
        key = cert.public_key()
    except (UnsupportedAlgorithm, ValueError) as exc:
        return f"unsupported ({exc})"
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}"
    return type(key).__name__


def _certificate_facts(cert: x509.Certificate) -> dict[str, Any]:
    """What ``inspect`` adds to the identity fields: key, CA flag, EKU."""
    key_text = _key_text(cert)
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except (x509.ExtensionNotFound, ValueError):
        is_ca = False
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        eku = [getattr(oid, "_name", None) or oid.dotted_string for oid in usages]
    except (x509.ExtensionNotFound, ValueError):
        eku = []
    return {"key": key_text, "ca": is_ca, "extended_key_usage": eku}


def _passphrase(path: str | None) -> bytes | None:
    """The first line of ``path`` (a passphrase file), or ``None``."""
    if path is None:
        return None
    data = read_regular_file(path, 4096, "passphrase file").splitlines()
    if not data or not data[0]:
        raise ConfigError(f"{path}: empty passphrase")
    return data[0]


def _stem(common_name: str) -> str:
    stem = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in common_name)
    return stem.strip("._") or "client"


def _revocation_command(args: argparse.Namespace) -> int:
    """``pki revoke`` and ``pki crl``."""
    ca = pki.load_ca(args.ca_cert, args.ca_key, _passphrase(args.ca_key_passphrase_file))
    db_path = Path(args.db)
    with pki.locked(db_path):  # read, change and write the database as one step
        return _revocation_locked(args, ca, db_path)


def _revocation_locked(args: argparse.Namespace, ca: CA, db_path: Path) -> int:
    db = pki.read_revocations(db_path, ca)
    if args.pki_command == "crl":
        crl = pki.make_crl(ca, db, days=args.days)
        pki.write_crl(Path(args.out), crl, der=args.der)
        pki.write_revocations(db_path, db)
        _print(
            f"wrote {safe_text(args.out)}: CRL number {db['crl_number']}, "
            f"{len(db['revoked'])} revoked, next update {crl.next_update_utc}"
        )
        return EXIT_ALLOWED
    cert = None
    serial = None
    if args.cert is not None:
        cert = load_certificate(_read_certs(args.cert)[0])
    else:
        try:
            serial = int(args.serial.removeprefix("0x").replace(":", ""), 16)
        except ValueError:
            raise ConfigError(f"--serial {args.serial!r:.80} is not a hex number") from None
    added = pki.revoke(ca, db, cert=cert, serial=serial, reason=args.reason)
    if added:
        pki.write_revocations(db_path, db)
    entry = db["revoked"][-1] if added else None
    what = f"serial {entry['serial']}" if entry else "that certificate"
    _print(
        f"revoked {what} ({args.reason}) in {safe_text(db_path)}; run `certgate pki crl`"
        if added
        else f"{what} was already revoked in {safe_text(db_path)}"
    )
    return EXIT_ALLOWED


def _pki(args: argparse.Namespace) -> int:
    if args.pki_command in ("revoke", "crl"):
        return _revocation_command(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.pki_command == "init-ca":
        ca = pki.init_ca(
            args.cn,
            organization=args.org,
            key_type=args.key_type,
            days=args.days,
            path_length=args.path_length,
        )
        cert_path, key_path = out / f"{args.name}.pem", out / f"{args.name}.key"
        pki.write_private_key(
            key_path, ca.key, passphrase=_passphrase(args.key_passphrase_file), force=args.force
        )
        pki.write_certificate(cert_path, ca.cert_pem, force=args.force)
        _print(f"wrote {safe_text(cert_path)} and {safe_text(key_path)}")
        return EXIT_ALLOWED
    ca = pki.load_ca(args.ca_cert, args.ca_key, _passphrase(args.ca_key_passphrase_file))
    issued = pki.issue_client(
        ca,
        args.cn,
        dns=args.dns,
        uri=args.uri,
        email=args.email,
        ip=args.ip,
        organization=args.org,
        key_type=args.key_type,
        days=args.days,
    )
    stem = args.name or _stem(args.cn)
    paths = [out / f"{stem}.pem", out / f"{stem}.key"]
    p12 = _passphrase(args.p12_passphrase_file)
    pki.write_private_key(paths[1], issued.key, force=args.force)
    pki.write_certificate(paths[0], issued.chain_pem, force=args.force)
    if p12 is not None:
        paths.append(out / f"{stem}.p12")
        pki.write_pkcs12(paths[2], issued, p12, force=args.force)
    _print("wrote " + ", ".join(safe_text(p) for p in paths))
    return EXIT_ALLOWED


if __name__ == "__main__":
    sys.exit(main())
