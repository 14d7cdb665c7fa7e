"""The end-to-end benchmark's load generator: HTTP/1.1 over TCP or TLS, a
different client certificate per connection (TLS) or per request (the
Cloudflare header, sent by the generator acting as the trusted proxy).

One process, one uvloop event loop, ``inflight`` connections each with one
request outstanding (no pipelining). Requests are pre-built bytes (a per-tenant
prefix plus the client's pre-built certificate header lines); responses are
parsed only as far as the status, ``Content-Length`` and ``Connection:
close``. A connection carries ``per_conn`` requests (1: a connection per
request; the last request says ``Connection: close``) or fewer when the
server closes it (gunicorn's sync worker closes after every response).

TLS: every connection gets an ``SSLContext`` holding its client's
certificate and key (the ``ssl`` module loads them from files only, about
0.8 ms per context, so contexts are built before the timed window:
:meth:`Material.prepare`; a context built inside the window counts as a
*stall*). The client does not verify the server (``CERT_NONE``: the
generator's handshake work is kept small) and never resumes a session.

Latency: from the start of the request (of the connection, for its first
request: connect and handshake included) to the last byte of the response.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import ssl
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from e2e_pki import TENANTS, Client, tenant_host

HOST = "127.0.0.1"
PATH = b"/api/whoami"
SMALL_SET = 5000
"""Client sets up to this size keep every TLS context once built."""


@dataclass(frozen=True)
class Plan:
    port: int
    source: str  # "header": certificate in the Cloudflare header; "tls": in the handshake
    refused: bool  # address each request to another tenant's host
    per_conn: int  # requests per connection (1: connection per request)
    inflight: int = 32

    @property
    def tls(self) -> bool:
        return self.source == "tls"


@dataclass
class Sample:
    requests: int = 0
    elapsed: float = 0.0
    statuses: Counter[int] = field(default_factory=Counter)
    latencies_ns: list[int] = field(default_factory=list)
    connections: int = 0
    errors: int = 0
    stalls: int = 0
    gen_cpu_s: float = 0.0

    @property
    def rate(self) -> float:
        return self.requests / self.elapsed if self.elapsed > 0 else 0.0


def _request_prefix(host: str) -> bytes:
    return (
        b"GET " + PATH + b" HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
        b"User-Agent: certgate-bench/1.0\r\nAccept: application/json\r\n"
    )


_PROXY_LINES = (
    b"X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\n"
    b"Cf-Connecting-Ip: 203.0.113.7\r\nCf-Ray: 8a1b2c3d4e5f6789-AMS\r\n"
)


class Material:
    """Pre-built request bytes and TLS contexts for a client set, and the
    rotation cursor (carried across samples by the caller)."""

    def __init__(self, clients: Sequence[Client]) -> None:
        self.clients = clients
        self.count = len(clients)
        self.prefixes = [_request_prefix(tenant_host(t)) for t in range(TENANTS)]
        self.cert_lines = [
            b"Cf-Client-Cert-Der-Base64: "
            + base64.b64encode(c.der)
            + b"\r\nCf-Client-Cert-Sha256: "
            + hashlib.sha256(c.der).hexdigest().encode()
            + b"\r\n"
            for c in clients
        ]
        self.contexts: dict[int, ssl.SSLContext] = {}
        handle, name = tempfile.mkstemp(
            prefix="certgate-bench-",
            suffix=".pem",
            dir="/dev/shm" if Path("/dev/shm").is_dir() else None,
        )
        os.close(handle)
        self.pem_path = Path(name)

    def close(self) -> None:
        self.pem_path.unlink(missing_ok=True)

    def request(self, index: int, plan: Plan, last: bool) -> bytes:
        tenant = index % TENANTS
        if plan.refused:
            tenant = (tenant + 1) % TENANTS
        parts = [self.prefixes[tenant]]
        if not plan.tls:
            parts += [_PROXY_LINES, self.cert_lines[index]]
        if last:
            parts.append(b"Connection: close\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    def build_context(self, index: int) -> ssl.SSLContext:
        self.pem_path.write_bytes(self.clients[index].pem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.load_cert_chain(self.pem_path)
        return context

    def prepare(self, start: int, n: int) -> None:
        """Build the contexts of the next ``n`` clients from ``start`` (untimed)."""
        if self.count > SMALL_SET:
            keep = {(start + k) % self.count for k in range(n)}
            for index in [i for i in self.contexts if i not in keep]:
                del self.contexts[index]
        for k in range(min(n, self.count)):
            index = (start + k) % self.count
            if index not in self.contexts:
                self.contexts[index] = self.build_context(index)


class _Conn(asyncio.Protocol):
    __slots__ = ("buf", "closing", "need", "status", "transport", "waiter")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.need = -1
        self.status = 0
        self.closing = False
        self.waiter: asyncio.Future[tuple[int, bool]] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if self.need < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            self.status = int(head[9:12])
            at = head.find(b"\r\ncontent-length:")
            length = 0
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17 : stop if stop >= 0 else len(head)])
            self.closing = b"\r\nconnection: close" in head
            self.need = end + 4 + length
        if len(buf) >= self.need:
            del buf[: self.need]
            self.need = -1
            waiter = self.waiter
            if waiter is not None and not waiter.done():
                waiter.set_result((self.status, self.closing))

    def connection_lost(self, exc: Exception | None) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result((0, True))


class Generator:
    """Runs one load sample (or a warm-up) against one server."""

    def __init__(self, plan: Plan, material: Material, cursor: int) -> None:
        self.plan = plan
        self.material = material
        self.cursor = cursor
        self.sample = Sample()
        self.stop = False
        self.window_start = 0
        self.window_end = 0
        self.max_requests = 0
        self.completed = 0

    def _next(self) -> int:
        index = self.cursor % self.material.count
        self.cursor += 1
        return index

    def _context(self, index: int) -> ssl.SSLContext:
        context = self.material.contexts.get(index)
        if context is None:
            context = self.material.build_context(index)
            if self.material.count <= SMALL_SET:
                self.material.contexts[index] = context
            self.sample.stalls += 1
        return context

    def _record(self, t0: int, t1: int, status: int) -> None:
        if status == 0:
            self.sample.errors += 1
            return
        self.completed += 1
        if self.max_requests and self.completed >= self.max_requests:
            self.stop = True
        if t0 < self.window_start or (self.window_end and t1 > self.window_end):
            return  # started before, or finished after, the timed window
        self.sample.requests += 1
        self.sample.statuses[status] += 1
        self.sample.latencies_ns.append(t1 - t0)

    async def _slot(self) -> None:
        loop = asyncio.get_running_loop()
        plan, material = self.plan, self.material
        while not self.stop:
            index = self._next()
            t0 = time.perf_counter_ns()
            context = self._context(index) if plan.tls else None
            try:
                transport, conn = await loop.create_connection(
                    _Conn, HOST, plan.port, ssl=context, server_hostname="" if context else None
                )
            except (OSError, ssl.SSLError):
                self.sample.errors += 1
                await asyncio.sleep(0.001)
                continue
            self.sample.connections += 1
            sent = 0
            try:
                while True:
                    sent += 1
                    last = sent >= plan.per_conn or self.stop
                    conn.waiter = loop.create_future()
                    transport.write(material.request(index, plan, last))
                    status, closing = await conn.waiter
                    t1 = time.perf_counter_ns()
                    self._record(t0, t1, status)
                    if last or closing or status == 0 or self.stop:
                        break
                    if not plan.tls:  # a proxy forwards another client on the same connection
                        index = self._next()
                    t0 = t1
            finally:
                transport.close()

    async def _run(self, duration: float | None) -> None:
        cpu0 = time.process_time()
        self.window_start = time.perf_counter_ns()
        tasks = [asyncio.create_task(self._slot()) for _ in range(self.plan.inflight)]
        if duration is not None:
            await asyncio.sleep(duration)
            self.window_end = time.perf_counter_ns()
            self.stop = True
            self.sample.elapsed = (self.window_end - self.window_start) / 1e9
        done, pending = await asyncio.wait(tasks, timeout=10)
        if duration is None:
            self.sample.elapsed = (time.perf_counter_ns() - self.window_start) / 1e9
        for task in pending:
            task.cancel()
        for task in done:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        self.sample.gen_cpu_s = time.process_time() - cpu0


def run_sample(
    loop: asyncio.AbstractEventLoop,
    plan: Plan,
    material: Material,
    cursor: int,
    *,
    duration: float | None = None,
    max_requests: int = 0,
) -> tuple[Sample, int]:
    """One sample of ``duration`` seconds (or ``max_requests`` requests, for a
    warm-up); returns it and the new cursor."""
    generator = Generator(plan, material, cursor)
    generator.max_requests = max_requests
    loop.run_until_complete(generator._run(duration))
    return generator.sample, generator.cursor
