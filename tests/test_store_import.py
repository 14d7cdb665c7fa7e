"""Bulk import into a tenant store (SQLite and a real PostgreSQL): the fast
path (batches written and checked as a whole, certificate facts and clean
CA sets remembered per import) refuses exactly what one-at-a-time writes
refuse, with the same messages, within one batch and across batches; the
change counter and log are right afterwards; and the CLI's progress bar."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from certgate import ConfigError, certmemo, vetting
from certgate.devpki import CA
from certgate.stores import SqlTenantStore, TenantRecord, open_store
from certgate.stores.cli import Progress, records_from_jsonl, records_from_jsonl_parallel
from certgate.stores.records import _pem
from certgate.stores.sqlite import sqlite_url
from tests.store_helpers import cross_certificate

Factory = Callable[[], SqlTenantStore]


@pytest.fixture(scope="module")
def roots() -> list[CA]:
    return [CA.root(f"Import Root {i}") for i in range(6)]


@pytest.fixture(params=["sqlite", "postgresql"])
def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    """Makes fresh, empty stores of one kind (each call another one)."""
    made: list[SqlTenantStore] = []
    count = [0]

    def make() -> SqlTenantStore:
        count[0] += 1
        if request.param == "sqlite":
            url = sqlite_url(tmp_path / f"s{count[0]}.db")
        else:
            server = request.getfixturevalue("pg_server")
            url = server.create_database()
        store = open_store(url, create=True)
        made.append(store)
        return store

    yield make
    for store in made:
        close = getattr(store, "close", None)
        if close is not None:
            close()


def record(
    tenant_id: str, hosts: tuple[str, ...], *roots: CA, shared: bool = False
) -> TenantRecord:
    return TenantRecord(
        id=tenant_id,
        hosts=hosts,
        roots=tuple(root.der for root in roots),
        shared_anchors=shared,
    )


def one_at_a_time_error(make: Factory, records: list[TenantRecord]) -> str:
    """The message of the first put() that fails, writing ``records`` in order."""
    store = make()
    for item in records:
        try:
            store.put(item)
        except ConfigError as exc:
            return str(exc)
    raise AssertionError("every put succeeded")


def import_error(store: SqlTenantStore, records: list[TenantRecord], batch: int) -> str:
    with pytest.raises(ConfigError) as caught:
        store.import_tenants(records, batch=batch)
    return str(caught.value)


def bad_cases(roots: list[CA]) -> dict[str, list[TenantRecord]]:
    """Imports that must fail, each at its last tenant."""
    leaf = roots[5].issue("not a CA")
    crossed = cross_certificate(roots[1], roots[0])
    return {
        "bad CA": [
            record("a", ("a.test",), roots[0]),
            TenantRecord(id="b", hosts=("b.test",), roots=(leaf.der,)),
        ],
        "shared anchor": [
            record("a", ("a.test",), roots[0]),
            record("b", ("b.test",), roots[1]),
            record("c", ("c.test",), roots[0]),
        ],
        "declared on one side only": [
            record("a", ("a.test",), roots[2], shared=True),
            record("b", ("b.test",), roots[2]),
        ],
        "duplicate host": [
            record("a", ("a.test", "*.a.test"), roots[0]),
            record("b", ("b.test",), roots[1]),
            record("c", ("*.a.test",), roots[2]),
        ],
        "issued anchor": [
            record("a", ("a.test",), roots[0]),
            TenantRecord(
                id="b",
                hosts=("b.test",),
                roots=(crossed.public_bytes(Encoding.DER),),
            ),
        ],
    }


@pytest.mark.parametrize(
    "case",
    ["bad CA", "shared anchor", "declared on one side only", "duplicate host", "issued anchor"],
)
def test_import_refuses_what_put_refuses_with_the_same_message(
    new_store: Factory, roots: list[CA], case: str
) -> None:
    """Within one batch (everything in it) and across batches (one tenant
    per batch): the error is put()'s, the batch is rolled back, earlier
    batches stay. (A tenant whose CAs fail vetting is refused before it
    joins a batch: the tenants read before it are stored first, as before.)"""
    records = bad_cases(roots)[case]
    expected = one_at_a_time_error(new_store, records)
    last = len(records) - 1
    for batch, before_batch in ((100, 0), (1, last)):
        store = new_store()
        message = import_error(store, records, batch=batch)
        assert message.startswith(expected), (message, expected)
        stored = last if case == "bad CA" else before_batch
        where = "it" if case == "bad CA" else "this batch"
        assert f"import stopped: {stored} tenants stored before {where};" in message
        assert store.count() == stored
        assert store.change_position() == stored


def test_a_clash_with_a_stored_tenant_is_refused(new_store: Factory, roots: list[CA]) -> None:
    """A host and an anchor already stored (an earlier import): refused in
    the next import's batch, with put()'s message."""
    store = new_store()
    store.import_tenants([record("a", ("a.test", "*.a.test"), roots[0])])
    for clash in (record("z", ("*.a.test",), roots[3]), record("z", ("z.test",), roots[0])):
        try:
            store.put(clash)
        except ConfigError as exc:
            expected = str(exc)
        else:
            raise AssertionError("put accepted a clash")
        message = import_error(store, [record("y", ("y.test",), roots[4]), clash], batch=50)
        assert message.startswith(expected)
        assert store.count() == 1


def test_counter_and_change_log_after_an_import(new_store: Factory, roots: list[CA]) -> None:
    store = new_store()
    records = [record(f"t{i}", (f"t{i}.test",), roots[0], shared=True) for i in range(25)]
    result = store.import_tenants(records, batch=10)
    assert (result.read, result.written, result.unchanged) == (25, 25, 0)
    assert store.change_position() == 25
    assert store.changes_since(0) == (25, frozenset(f"t{i}" for i in range(25)))
    assert store.changes_since(20) == (25, frozenset(f"t{i}" for i in range(20, 25)))
    versions = {r.id: r.version for r in store.export()}
    assert sorted(versions.values()) == list(range(1, 26))  # each tenant its own change
    # again, with one tenant changed: only that one is written and logged
    records[7] = record("t7", ("t7.test", "x7.test"), roots[0], shared=True)
    again = store.import_tenants(records, batch=10)
    assert (again.written, again.unchanged) == (1, 24)
    assert store.changes_since(25) == (26, frozenset({"t7"}))
    got = store.get("t7")
    assert got is not None
    assert got.version == 26
    assert got.hosts == ("t7.test", "x7.test")


def test_a_shared_ca_is_vetted_once_per_import(
    new_store: Factory, roots: list[CA], monkeypatch: pytest.MonkeyPatch
) -> None:
    """40 tenants on one CA: vetted once; the memo ends with the import."""
    calls: list[str] = []
    real = vetting.vet_cas

    def counting(tenant_id: str, *args: object, **kwargs: object) -> object:
        calls.append(tenant_id)
        return real(tenant_id, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(vetting, "vet_cas", counting)
    store = new_store()
    records = [record(f"t{i}", (f"t{i}.test",), roots[1], shared=True) for i in range(40)]
    records.append(record("own", ("own.test",), roots[2]))
    store.import_tenants(records, batch=16)
    assert sorted(calls) == ["own", "t0"]
    assert certmemo.active() is None
    store.import_tenants([record("t40", ("t40.test",), roots[1], shared=True)])
    assert sorted(calls) == ["own", "t0", "t40"]  # a new import vets again


def test_a_ca_with_findings_is_vetted_for_every_tenant(
    new_store: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CA set with a warning is not remembered: each tenant gets its warning."""
    import datetime as dt

    expired = CA.root(
        "Expired Import Root",
        not_before=dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
        not_after=dt.datetime(2021, 1, 1, tzinfo=dt.UTC),
    )
    calls: list[str] = []
    real = vetting.vet_cas

    def counting(tenant_id: str, *args: object, **kwargs: object) -> object:
        calls.append(tenant_id)
        return real(tenant_id, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(vetting, "vet_cas", counting)
    records = [
        TenantRecord(
            id=f"e{i}",
            hosts=(f"e{i}.test",),
            roots=(expired.der,),
            shared_anchors=True,
            ca_expired="warn",
        )
        for i in range(3)
    ]
    new_store().import_tenants(records)
    assert calls == ["e0", "e1", "e2"]


def test_a_tenant_named_twice_in_a_batch(new_store: Factory, roots: list[CA]) -> None:
    store = new_store()
    result = store.import_tenants(
        [record("a", ("a.test",), roots[0]), record("a", ("a2.test",), roots[0])], batch=10
    )
    assert result.written == 2
    got = store.get("a")
    assert got is not None
    assert got.hosts == ("a2.test",)
    assert store.list(host="a.test") == []


def test_hosts_moving_between_tenants_of_one_batch(new_store: Factory, roots: list[CA]) -> None:
    """Tenant b takes the host a gives up in the same batch (a listed
    first, then b): stored as one-at-a-time writes would."""
    store = new_store()
    store.import_tenants([record("a", ("a.test", "m.test"), roots[0])])
    store.import_tenants(
        [record("a", ("a.test",), roots[0]), record("b", ("m.test",), roots[1])], batch=10
    )
    assert [s.id for s in store.list(host="m.test")] == ["b"]


# -- the CLI's progress bar ---------------------------------------------------------


def _jsonl(path: Path, roots: list[CA], count: int) -> Path:
    with path.open("w") as out:
        for i in range(count):
            line = {
                "id": f"t{i}",
                "hosts": [f"t{i}.test"],
                "roots": [_pem("CERTIFICATE", roots[0].der)],
                "shared_anchors": True,
            }
            out.write(json.dumps(line) + "\n")
    return path


def test_cli_progress_only_on_a_terminal_or_when_asked(tmp_path: Path, roots: list[CA]) -> None:
    source = _jsonl(tmp_path / "t.jsonl", roots, 30)
    base = [sys.executable, "-m", "certgate", "tenants", "import", "--from", str(source)]
    quiet = subprocess.run(
        [*base, "--to", sqlite_url(tmp_path / "a.db")], capture_output=True, text=True, check=True
    )
    assert "imported 30 tenant(s)" in quiet.stdout
    assert quiet.stderr == ""  # standard error is not a terminal: no bar
    shown = subprocess.run(
        [*base, "--to", sqlite_url(tmp_path / "b.db"), "--progress"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "30/30 tenants" in shown.stderr


def test_progress_bar_draws_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    bar = Progress(10, stream=stream)
    bar.update(10)
    bar.close()
    assert "\r[" in stream.getvalue()
    assert "10/10 tenants" in stream.getvalue()


@pytest.mark.parametrize(
    "case", ["shared anchor", "declared on one side only", "duplicate host", "issued anchor"]
)
def test_the_batch_path_refuses_on_its_own(new_store: Factory, roots: list[CA], case: str) -> None:
    """The whole-batch write refuses by itself (the one-at-a-time rerun only
    words the error): nothing is stored."""
    store = new_store()
    pending = [(item, item.build()) for item in bad_cases(roots)[case]]
    session = store.session()
    with pytest.raises(ConfigError), session.transaction():
        store._write_batch(session, pending)
    assert store.count() == 0


def test_the_parallel_reader_yields_the_same_records_and_error(
    tmp_path: Path, roots: list[CA]
) -> None:
    """A large file is parsed by a second process: same records, same order,
    and a bad line raises the same error after the records before it."""
    source = _jsonl(tmp_path / "t.jsonl", roots, 1200)
    assert list(records_from_jsonl_parallel(str(source))) == list(records_from_jsonl(str(source)))
    with source.open("a") as out:
        out.write('{"id": "bad one", "hosts": ["x.test"], "roots": []}\n')
    got: list[TenantRecord] = []
    with pytest.raises(ConfigError) as parallel:
        got.extend(records_from_jsonl_parallel(str(source)))
    with pytest.raises(ConfigError) as serial:
        list(records_from_jsonl(str(source)))
    assert str(parallel.value) == str(serial.value)
    assert "line 1201" in str(parallel.value)
    assert len(got) == 1200


def test_cli_import_through_the_reader_process(
    tmp_path: Path,
    roots: list[CA],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import argparse

    from certgate.stores import cli

    monkeypatch.setattr(cli, "PARALLEL_MIN_LINES", 10)
    source = _jsonl(tmp_path / "t.jsonl", roots, 30)
    with source.open("a") as out:
        out.write('{"id": "t5", "hosts": ["t5.test"], "roots": []}\n')
    parser = argparse.ArgumentParser()
    cli.store_parsers(parser.add_subparsers(dest="tenants_command"))
    url = sqlite_url(tmp_path / "p.db")
    args = parser.parse_args(["import", "--from", str(source), "--to", url, "--batch", "7"])
    assert cli.run(args) == 2
    err = capsys.readouterr().err
    assert "line 31" in err
    assert "import stopped: 30 tenants stored before it" in err
    assert open_store(url).count() == 30
