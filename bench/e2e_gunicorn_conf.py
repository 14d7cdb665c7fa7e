"""gunicorn settings of the end-to-end benchmark (one sync worker).

Environment: ``BENCH_BIND``, ``BENCH_TLS`` (``1``: TLS asking for client
certificates, through certgate's ``ssl_context`` hook), ``BENCH_PKI`` (the
PKI directory), ``BENCH_PROFILE`` (a path: cProfile the worker, written when
it exits). The app is ``e2e_server:flask_app()`` (``BENCH_APP`` chooses bare
or certgate). Both variants load the same hooks and TLS settings.
"""

from __future__ import annotations

import cProfile
import logging
import os
import ssl
import sys
from typing import Any

from certgate.servers.gunicorn import on_starting, ssl_context  # noqa: F401
from certgate.servers.gunicorn import post_worker_init as _certgate_post_worker_init

bind = os.environ["BENCH_BIND"]
workers = 1
worker_class = "sync"
accesslog = None
loglevel = "warning"
backlog = 2048

_pki = os.environ["BENCH_PKI"]
if os.environ.get("BENCH_TLS") == "1":
    certfile = os.path.join(_pki, "server.pem")
    keyfile = os.path.join(_pki, "server.key")
    ca_certs = os.path.join(_pki, "tenants-bundle.pem")
    cert_reqs = ssl.CERT_OPTIONAL

_profiler: cProfile.Profile | None = None


def post_worker_init(worker: Any) -> None:
    global _profiler  # noqa: PLW0603 - one per worker process
    _certgate_post_worker_init(worker)
    # certgate's refusals are WARNING records: a real deployment writes them
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    if os.environ.get("BENCH_PROFILE"):
        _profiler = cProfile.Profile()
        _profiler.enable()


def worker_exit(server: Any, worker: Any) -> None:
    if _profiler is not None:
        _profiler.disable()
        _profiler.dump_stats(os.environ["BENCH_PROFILE"])
