"""Throughput of a FastAPI endpoint behind certgate, in process: no
dependency, the pre-issue-6 plain ``def`` dependency (run in FastAPI's thread
pool), and ``certgate.fastapi.client_identity`` (a coroutine function).

    .venv/bin/python bench/bench_dependency.py

httpx's ASGITransport, 16 concurrent clients, median of 5 interleaved rounds
of 2000 requests; figures are relative to the bare endpoint of the same run.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import httpx
from fastapi import Depends, FastAPI
from starlette.requests import HTTPConnection

from certgate.asgi import identity_from_scope
from certgate.fastapi import client_identity, install
from certgate.testing import TestPKI, with_client_cert


def old_sync_dependency(connection: HTTPConnection) -> Any:
    """What certgate.starlette.client_identity was before issue 6."""
    return identity_from_scope(connection.scope)


def build() -> Any:
    pki = TestPKI()
    app = FastAPI()
    install(app, pki.gate(), openapi=False)

    @app.get("/bare")
    async def bare() -> Any:
        return {}

    @app.get("/sync")
    async def sync_dep(identity: Any = Depends(old_sync_dependency)) -> Any:  # noqa: B008
        return {}

    @app.get("/async")
    async def async_dep(identity: Any = Depends(client_identity)) -> Any:  # noqa: B008
        return {}

    return with_client_cert(app, pki.issue_client("bench"))


async def rate(app: Any, path: str, requests: int, concurrency: int = 16) -> float:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:

        async def worker(count: int) -> None:
            for _ in range(count):
                response = await client.get(path)
                assert response.status_code == 200, response.text

        start = time.perf_counter()
        await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency)))
        return requests / (time.perf_counter() - start)


async def main() -> None:
    app = build()
    await rate(app, "/bare", 400)  # warm up (verification cache, imports)
    results: dict[str, list[float]] = {"/bare": [], "/sync": [], "/async": []}
    for _ in range(5):
        for path, rates in results.items():
            rates.append(await rate(app, path, 2000))
    bare = statistics.median(results["/bare"])
    for path, rates in results.items():
        median = statistics.median(rates)
        print(f"{path:7s} {median:8.0f} req/s  {median / bare:.2f} of bare")


if __name__ == "__main__":
    asyncio.run(main())
