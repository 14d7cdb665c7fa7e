"""certgate: per-tenant mutual-TLS client-certificate authentication for
ASGI and WSGI apps.

The core is :class:`CertGate` (facts in, decision out); the adapters are
:class:`certgate.asgi.CertGateMiddleware`,
:class:`certgate.wsgi.CertGateWSGIMiddleware`, :mod:`certgate.starlette`,
:mod:`certgate.flask` and :mod:`certgate.servers.uvicorn`.
"""

from __future__ import annotations

from .config import TomlRegistry, load_config
from .decision import Decision
from .errors import CertgateError, ConfigError, RegistryTimeout, Rejected
from .facts import Presented, RequestFacts
from .gate import CertGate
from .identity import ClientIdentity, SubjectAltNames
from .reasons import Reason
from .registry import AsyncTrustRegistry, InMemoryRegistry, TrustRegistry
from .tenant import Tenant

__version__ = "0.1.0"

__all__ = [
    "AsyncTrustRegistry",
    "CertGate",
    "CertgateError",
    "ClientIdentity",
    "ConfigError",
    "Decision",
    "InMemoryRegistry",
    "Presented",
    "Reason",
    "RegistryTimeout",
    "Rejected",
    "RequestFacts",
    "SubjectAltNames",
    "Tenant",
    "TomlRegistry",
    "TrustRegistry",
    "load_config",
]
