"""certgate: per-tenant mutual-TLS client-certificate authentication for
ASGI and WSGI apps.

The core is :class:`CertGate` (facts in, decision out), built from
:mod:`certgate.trust` (header trust), :mod:`certgate.verification` (cached
verification), :mod:`certgate.policy` (authorization), :mod:`certgate.rollout`
(path access and report-only modes) and :mod:`certgate.events` (the
observer point; :mod:`certgate.prometheus` for metrics). The adapters are
:class:`certgate.asgi.CertGateMiddleware`,
:class:`certgate.wsgi.CertGateWSGIMiddleware`, :mod:`certgate.starlette`,
:mod:`certgate.fastapi`, :mod:`certgate.flask` and the server adapters in
:mod:`certgate.servers`; :mod:`certgate.testing` helps test apps.
"""

from __future__ import annotations

from .config import TomlRegistry, load_config
from .decision import Decision
from .errors import (
    CertgateError,
    ClientCertificateRefused,
    ConfigError,
    RegistryTimeout,
    Rejected,
    ServerSetupError,
)
from .facts import Presented, RequestFacts
from .gate import CertGate
from .identity import ClientIdentity, SubjectAltNames
from .reasons import Reason
from .registry import AsyncTrustRegistry, InMemoryRegistry, TrustRegistry
from .rollout import Access, Mode, Route
from .tenant import Tenant

__version__ = "0.1.0"

__all__ = [
    "Access",
    "AsyncTrustRegistry",
    "CertGate",
    "CertgateError",
    "ClientCertificateRefused",
    "ClientIdentity",
    "ConfigError",
    "Decision",
    "InMemoryRegistry",
    "Mode",
    "Presented",
    "Reason",
    "RegistryTimeout",
    "Rejected",
    "RequestFacts",
    "Route",
    "ServerSetupError",
    "SubjectAltNames",
    "Tenant",
    "TomlRegistry",
    "TrustRegistry",
    "load_config",
]
