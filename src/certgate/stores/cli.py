"""``certgate tenants`` commands against a registry URL (``sqlite:///path``).

    certgate tenants import --from SOURCE --to URL [--batch N] [--progress] [--quiet]
        SOURCE: a TOML configuration (every tenant is loaded and checked as
        certgate would load it), a JSON-lines export (``-``: standard input)
        or another registry URL. Tenants are written in batched
        transactions; a progress bar goes to standard error when it is a
        terminal (or with ``--progress``).
    certgate tenants export --from URL [--out FILE]
        One JSON object per line (certificates and CRLs as PEM), in id order.
    certgate tenants add ID --registry URL --host H... --root PEM... [--intermediate PEM]...
        [--crl FILE]... [--mode M] [--shared-anchors] [--policy JSON] [--ca-expired warn]
    certgate tenants remove ID --registry URL
    certgate tenants list --registry URL [--json] [--after ID] [--limit N]
    certgate tenants show ID --registry URL [--json]
    certgate tenants migrate URL
    certgate tenants backup URL FILE
    certgate tenants restore URL FILE

Every write vets the tenant (its CAs - :mod:`certgate.vetting` - and CRLs,
the anchor-sharing rule, hosts unique) before anything is stored;
``import``, ``add`` and ``migrate`` create the store and bring its schema up
to date when needed. Exit status 0 on success, 2 on bad usage or a refused
tenant (the message names it and the rule). ``add``, ``list`` and
``remove`` with ``--config TOML`` work on a TOML file instead
(:mod:`certgate.cli`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from queue import Empty
from typing import Any, TextIO

from cryptography import x509
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.serialization import Encoding

from .. import certmemo
from ..config import MAX_PEM_FILE_BYTES, read_regular_file
from ..crl import MAX_CRL_BYTES, load_crls
from ..errors import ConfigError
from ..text import safe_text
from . import SqlTenantStore, open_store
from .records import TenantRecord

EXIT_OK = 0
EXIT_USAGE = 2

MAX_EXPORT_LINE = 16 * 1024 * 1024
"""Longest JSON line an import reads (one tenant)."""


STORE_COMMANDS = frozenset({"import", "export", "show", "migrate", "backup", "restore"})
"""``tenants`` sub-commands that only exist for registry URLs."""


def store_parsers(sub: Any) -> None:
    """Add the registry-URL-only ``tenants`` sub-commands (``sub``: the
    ``tenants`` parser's sub-parsers; ``add``, ``list`` and ``remove`` are
    :mod:`certgate.cli`'s, with ``--registry``)."""
    imp = sub.add_parser("import", help="import tenants into a registry URL")
    imp.add_argument(
        "--from", dest="source", required=True, help="TOML file, .jsonl file, -, or registry URL"
    )
    imp.add_argument("--to", dest="target", required=True, help="registry URL (sqlite:///path)")
    imp.add_argument("--batch", type=int, default=500, help="tenants per transaction (500)")
    imp.add_argument(
        "--progress",
        action="store_true",
        help="a progress bar even when standard error is not a terminal (a line every 10 s)",
    )
    imp.add_argument("--quiet", action="store_true", help="no progress bar")
    exp = sub.add_parser("export", help="export a registry's tenants as JSON lines")
    exp.add_argument("--from", dest="source", required=True, help="registry URL")
    exp.add_argument("--out", help="file to write (default: standard output)")
    show = sub.add_parser("show", help="show one tenant of a registry URL")
    show.add_argument("id", help="the tenant id")
    show.add_argument("--registry", required=True, help="registry URL")
    show.add_argument("--json", action="store_true", help="print JSON")
    migrate = sub.add_parser("migrate", help="create a store or bring its schema up to date")
    migrate.add_argument("url", help="registry URL")
    backup = sub.add_parser("backup", help="write a consistent copy of a SQLite store")
    backup.add_argument("url", help="registry URL (sqlite:///path)")
    backup.add_argument("file", help="the copy to write (must not exist)")
    restore = sub.add_parser("restore", help="replace a SQLite store's content with a backup, live")
    restore.add_argument("url", help="registry URL (sqlite:///path)")
    restore.add_argument("file", help="the backup to restore")


_OPENED: ContextVar[list[SqlTenantStore] | None] = ContextVar("certgate_cli_stores", default=None)


def _open(url: str, *, create: bool = False) -> SqlTenantStore:
    """:func:`~certgate.stores.open_store`, closed when the running command
    ends (:func:`run`)."""
    store = open_store(url, create=create)
    opened = _OPENED.get()
    if opened is not None:
        opened.append(store)
    return store


def _close_all(stores: list[SqlTenantStore]) -> None:
    """Close every store a command opened (a PostgreSQL pool left open would
    be collected later, possibly inside one of its own worker threads)."""
    for store in reversed(stores):
        close = getattr(store, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                close()


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``tenants`` command (``args.tenants_command``); every
    store it opens is closed before it returns."""
    opened: list[SqlTenantStore] = []
    token = _OPENED.set(opened)
    try:
        return _run(args)
    finally:
        _OPENED.reset(token)
        _close_all(opened)


def _run(args: argparse.Namespace) -> int:
    try:
        command = args.tenants_command
        if command == "import":
            return _import(
                args.source,
                args.target,
                batch=args.batch,
                quiet=args.quiet,
                progress=getattr(args, "progress", False),
            )
        if command == "export":
            return _export(args.source, args.out)
        if command == "add":
            return _add(args)
        if command == "remove":
            store = _open(args.registry)
            if not store.remove(args.id):
                _error(f"certgate: no tenant {safe_text(args.id)!s} in {store.where}")
                return EXIT_USAGE
            _print(f"removed tenant {safe_text(args.id)} from {store.where}")
            return EXIT_OK
        if command == "list":
            return _list(args)
        if command == "show":
            return _show(args.registry, args.id, as_json=args.json)
        if command == "migrate":
            store = _open(args.url, create=True)
            _print(f"{store.where}: schema up to date, {store.count()} tenant(s)")
            return EXIT_OK
        if command == "backup":
            return _backup(args.url, args.file)
        if command == "restore":
            return _restore(args.url, args.file)
    except ConfigError as exc:
        _error(f"certgate: {exc}")
        return EXIT_USAGE
    except (OSError, ValueError) as exc:
        _error(f"certgate: {exc}")
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - a database error: say it, no traceback
        _error(f"certgate: {type(exc).__name__}: {exc}")
        return EXIT_USAGE
    raise AssertionError(command)


# -- import and export --------------------------------------------------------------


def _import(source: str, target: str, *, batch: int, quiet: bool, progress: bool = False) -> int:
    """Import ``source`` into ``target``; a progress bar on standard error
    when it is a terminal, or with ``progress`` (never with ``quiet``)."""
    if "://" in source:
        origin = _open(source)
        total: int | None = origin.count()
        records: Iterator[TenantRecord] = origin.export()
    elif source.endswith(".toml"):
        items = records_from_toml(source)
        total = len(items)
        records = iter(items)
    else:
        total = None if source == "-" else _count_lines(source)
        if total is not None and total >= PARALLEL_MIN_LINES and (os.cpu_count() or 1) > 1:
            records = records_from_jsonl_parallel(source)
        else:
            records = records_from_jsonl(source)
    store = _open(target, create=True)
    bar = Progress(total, enabled=not quiet and (progress or sys.stderr.isatty()))
    started = time.monotonic()
    try:
        result = store.import_tenants(records, batch=batch, progress=bar.update)
    finally:
        bar.close()
    seconds = time.monotonic() - started
    _print(
        f"imported {result.read} tenant(s) into {store.where} in {seconds:.1f} s: "
        f"{result.written} written, {result.unchanged} unchanged"
    )
    return EXIT_OK


def records_from_toml(path: str) -> list[TenantRecord]:
    """The tenants of a TOML configuration, loaded (and so checked) exactly as
    certgate loads them, as records with their policies in TOML form."""
    from ..config import _read_toml, load_config  # noqa: PLC0415

    config = load_config(path)
    try:
        tenants = config.registry.tenants()
    finally:
        config.registry.close()
    raw = _read_toml(Path(path)).get("tenants", [])
    policies = {entry.get("id"): entry.get("policy") for entry in raw if isinstance(entry, dict)}
    return [TenantRecord.of(tenant, policies.get(tenant.id)) for tenant in tenants]


def records_from_jsonl(source: str) -> Iterator[TenantRecord]:
    """The records of a JSON-lines export (``-``: standard input); a line
    that is not a tenant raises :class:`ConfigError` naming it."""
    stream: TextIO = sys.stdin if source == "-" else open(source, encoding="utf-8")  # noqa: SIM115
    name = "<stdin>" if source == "-" else source
    try:
        for number, line in enumerate(_bounded_lines(stream, name), 1):
            if not line.strip():
                continue
            where = f"{safe_text(name, 200)}: line {number}"
            try:
                data = json.loads(line)
            except ValueError as exc:
                raise ConfigError(f"{where}: not JSON: {exc}") from None
            yield TenantRecord.from_json(data, where)
    finally:
        if stream is not sys.stdin:
            stream.close()


PARALLEL_MIN_LINES = 20_000
"""A JSON-lines file of at least this many lines is read and parsed by a
second process (:func:`records_from_jsonl_parallel`)."""

_CHUNK = 500
"""Records the reader process sends at a time."""


def records_from_jsonl_parallel(source: str) -> Iterator[TenantRecord]:
    """:func:`records_from_jsonl` of the file ``source``, read, parsed and
    checked (JSON, PEM) in a second process while this one vets and writes
    (two cores for a bulk import). The same records in the same order, and
    the same :class:`ConfigError` at the same place: the records before a
    bad line are yielded first."""
    context = multiprocessing.get_context("spawn")  # no fork of a process with threads
    queue: Any = context.Queue(maxsize=16)
    reader = context.Process(
        target=_read_into, args=(source, queue), name="certgate-import-reader", daemon=True
    )
    reader.start()
    try:
        while True:
            try:
                kind, payload = queue.get(timeout=1.0)
            except Empty:
                if not reader.is_alive():
                    raise ConfigError(
                        f"{safe_text(source, 200)}: the reader process ended without an answer "
                        f"(exit code {reader.exitcode})"
                    ) from None
                continue
            if kind == "records":
                yield from payload
            elif kind == "error":
                raise ConfigError(payload)
            elif kind == "oserror":
                raise OSError(payload)
            else:
                return
    finally:
        if reader.is_alive():
            reader.terminate()
        reader.join(5.0)
        queue.close()


def _read_into(source: str, queue: Any) -> None:
    """The reader process: send ``("records", [...])`` chunks, then
    ``("done", None)`` or the error that stopped the reading."""
    chunk: list[TenantRecord] = []
    try:
        with certmemo.remembering():
            for record in records_from_jsonl(source):
                chunk.append(record)
                if len(chunk) >= _CHUNK:
                    queue.put(("records", chunk))
                    chunk = []
    except ConfigError as exc:
        queue.put(("records", chunk))
        queue.put(("error", str(exc)))
    except (OSError, ValueError) as exc:
        queue.put(("records", chunk))
        queue.put(("oserror", str(exc)))
    else:
        queue.put(("records", chunk))
        queue.put(("done", None))
    queue.close()
    queue.join_thread()


def _bounded_lines(stream: TextIO, name: str) -> Iterator[str]:
    while True:
        line = stream.readline(MAX_EXPORT_LINE + 1)
        if not line:
            return
        if len(line) > MAX_EXPORT_LINE:
            raise ConfigError(f"{safe_text(name, 200)}: a line longer than {MAX_EXPORT_LINE} bytes")
        yield line


def _count_lines(path: str) -> int:
    count = 0
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            count += block.count(b"\n")
    return count


def _export(source: str, out: str | None) -> int:
    store = _open(source)
    stream: TextIO = sys.stdout if out is None else open(out, "x", encoding="utf-8")  # noqa: SIM115
    count = 0
    try:
        for record in store.export():
            stream.write(json.dumps(record.to_json(), ensure_ascii=True, separators=(",", ":")))
            stream.write("\n")
            count += 1
    finally:
        if stream is not sys.stdout:
            stream.close()
    _error(f"exported {count} tenant(s) from {store.where}")
    return EXIT_OK


# -- one tenant ---------------------------------------------------------------------


def _add(args: argparse.Namespace) -> int:
    policy = None
    if args.policy is not None:
        try:
            policy = json.loads(args.policy)
        except ValueError as exc:
            raise ConfigError(f"--policy is not JSON: {exc}") from None
        if not isinstance(policy, dict):
            raise ConfigError("--policy must be a JSON object")
    where = f"tenant {safe_text(args.id)!r}"
    refresh = getattr(args, "crl_refresh", None)
    roots: list[bytes] = []
    inters: list[bytes] = []
    sources: list[str] = []  # roots, then intermediates: one name per certificate
    for names, found, role in (
        (args.root, roots, "root"),
        (args.intermediate, inters, "intermediate"),
    ):
        for name in names:
            ders = _pem_file(name, f"{where}: {role}")
            found.extend(ders)
            sources.extend([name] * len(ders))
    record = TenantRecord(
        id=args.id,
        hosts=tuple(args.host),
        roots=tuple(roots),
        intermediates=tuple(inters),
        crls=tuple(_crl_file(name, where) for name in args.crl),
        crl_labels=tuple(f"{where}: CRL file {safe_text(name, 200)}" for name in args.crl),
        shared_anchors=args.shared_anchors,
        mode=args.mode,
        policy=policy,
        crl_urls=tuple(getattr(args, "crl_url", None) or ()),
        crl_refresh=3600.0 if refresh is None else refresh,
        crl_stale=getattr(args, "crl_stale", None) or "fail",
        require_crl=bool(getattr(args, "require_crl", False)),
        ca_expired=getattr(args, "ca_expired", None) or "fail",
        ca_sources=tuple(sources),
    )
    store = _open(args.registry, create=True)
    version = store.put(record)
    what = "unchanged" if version == 0 else f"version {version}"
    _print(
        f"stored tenant {safe_text(record.id)} in {store.where} ({what}): hosts "
        f"{', '.join(record.hosts)}, {len(record.roots)} root(s), "
        f"{len(record.intermediates)} intermediate(s), {len(record.crls)} CRL(s); "
        "running gates see it within 2 s"
    )
    return EXIT_OK


def _pem_file(name: str, where: str) -> list[bytes]:
    """The DER of every certificate in a PEM file (one file may hold several)."""
    data = read_regular_file(name, MAX_PEM_FILE_BYTES, "PEM file")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ConfigError(
            f"{where}: {safe_text(name, 300)} holds no valid PEM certificate"
        ) from None
    return [cert.public_bytes(Encoding.DER) for cert in certs]


def _crl_file(name: str, where: str) -> bytes:
    """The DER of the one CRL (PEM or DER) in a file."""
    data = read_regular_file(name, MAX_CRL_BYTES, "CRL file")
    crls = load_crls(data, f"{where}: CRL file {safe_text(name, 200)}")
    if len(crls) != 1:
        raise ConfigError(f"{where}: CRL file {safe_text(name, 200)} holds {len(crls)} CRLs, not 1")
    return crls[0].public_bytes(Encoding.DER)


def _list(args: argparse.Namespace) -> int:
    store = _open(args.registry)
    rows = store.list(after=args.after, limit=args.limit)
    if args.json:
        print(
            json.dumps(
                {
                    "tenants": [
                        {
                            "id": row.id,
                            "hosts": list(row.hosts),
                            "mode": row.mode,
                            "shared_anchors": row.shared_anchors,
                            "version": row.version,
                            "updated": row.updated,
                        }
                        for row in rows
                    ]
                },
                indent=2,
                ensure_ascii=True,
            )
        )
        return EXIT_OK
    table = [("id", "hosts", "mode", "version", "updated")]
    table += [
        (row.id, ", ".join(row.hosts), row.mode or "-", str(row.version), row.updated)
        for row in rows
    ]
    widths = [max(len(line[column]) for line in table) for column in range(5)]
    for line in table:
        _print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
    return EXIT_OK


def _show(url: str, tenant_id: str, *, as_json: bool) -> int:
    store = _open(url)
    record = store.get(tenant_id)
    if record is None:
        _error(f"certgate: no tenant {safe_text(tenant_id)} in {store.where}")
        return EXIT_USAGE
    report = describe(record)
    if as_json:
        print(json.dumps(report, indent=2, ensure_ascii=True))
        return EXIT_OK
    for key in ("id", "version", "created", "updated", "mode", "shared_anchors"):
        value = report[key]
        _print(f"{key + ':':<16} {'-' if value is None else safe_text(value)}")
    _print(f"{'hosts:':<16} {', '.join(report['hosts'])}")
    for role in ("roots", "intermediates"):
        for cert in report[role]:
            _print(
                f"{role[:-1] + ':':<16} {safe_text(cert['subject'])}  not after "
                f"{cert['not_after']}  SHA-256 {cert['sha256']}"
            )
    for crl in report["crls"]:
        _print(
            f"{'crl:':<16} {safe_text(crl['issuer'])}  next update {crl['next_update']}  "
            f"{crl['revoked']} revoked"
        )
    if report["policy"] is not None:
        _print(f"{'policy:':<16} {json.dumps(report['policy'], ensure_ascii=True)}")
    return EXIT_OK


def describe(record: TenantRecord) -> dict[str, Any]:
    """What ``tenants show`` prints of a record (JSON data)."""

    def cert_facts(der: bytes) -> dict[str, str]:
        cert = x509.load_der_x509_certificate(der)
        return {
            "subject": cert.subject.rfc4514_string(),
            "not_after": cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "sha256": cert.fingerprint(SHA256()).hex(),
        }

    crls = []
    for der in record.crls:
        crl = x509.load_der_x509_crl(der)
        next_update = crl.next_update_utc
        crls.append(
            {
                "issuer": crl.issuer.rfc4514_string(),
                "next_update": next_update.strftime("%Y-%m-%dT%H:%M:%SZ") if next_update else None,
                "revoked": len(crl),
            }
        )
    return {
        "id": record.id,
        "version": record.version,
        "created": record.created,
        "updated": record.updated,
        "mode": record.mode,
        "shared_anchors": record.shared_anchors,
        "hosts": list(record.hosts),
        "roots": [cert_facts(der) for der in record.roots],
        "intermediates": [cert_facts(der) for der in record.intermediates],
        "crls": crls,
        "policy": record.policy,
    }


def _backup(url: str, file: str) -> int:
    store: SqlTenantStore = _open(url)
    backup = getattr(store, "backup", None)
    if backup is None:
        raise ConfigError(f"{store.where}: back up this store with its own tools")
    backup(file)
    _print(f"wrote a consistent copy of {store.where} to {safe_text(file)}")
    return EXIT_OK


def _restore(url: str, file: str) -> int:
    store: SqlTenantStore = _open(url, create=True)
    restore = getattr(store, "restore", None)
    if restore is None:
        raise ConfigError(f"{store.where}: restore this store with its own tools")
    restore(file)
    _print(
        f"restored {store.where} from {safe_text(file)}: {store.count()} tenant(s); running "
        "gates drop their caches within 2 s"
    )
    return EXIT_OK


# -- output ---------------------------------------------------------------------------


class Progress:
    """A progress bar on standard error: redrawn in place at most 5 times a
    second on a terminal, a plain line every 10 seconds otherwise."""

    def __init__(self, total: int | None, *, enabled: bool = True, stream: TextIO | None = None):
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self.started = time.monotonic()
        self._shown = self.started
        self._done = 0

    def update(self, done: int) -> None:
        self._done = done
        now = time.monotonic()
        if not self.enabled or now - self._shown < (0.2 if self.tty else 10.0):
            return
        self._shown = now
        self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = max(now - self.started, 1e-9)
        rate = self._done / elapsed
        if self.total:
            share = min(self._done / self.total, 1.0)
            filled = int(share * 30)
            left = (self.total - self._done) / rate if rate > 0 else 0.0
            text = (
                f"[{'#' * filled}{'.' * (30 - filled)}] {self._done:,}/{self.total:,} tenants "
                f"{share:4.0%}  {rate:,.0f}/s  ETA {left:,.0f} s"
            )
        else:
            text = f"{self._done:,} tenants  {rate:,.0f}/s"
        if self.tty:
            self.stream.write(f"\r{text}\x1b[K")
        else:
            self.stream.write(f"{text}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw(time.monotonic())
            if self.tty:
                self.stream.write("\n")
            self.stream.flush()


def _print(line: str, stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        line.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        line = line.encode("ascii", "backslashreplace").decode("ascii")
    print(line, file=stream)


def _error(message: object) -> None:
    _print(safe_text(message), sys.stderr)
