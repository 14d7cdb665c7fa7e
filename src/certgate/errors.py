"""Exception types raised by certgate.

:class:`Rejected` is raised inside certgate's pipeline and always turned into
a 4xx/503 answer by the adapters; it never escapes an ASGI or WSGI app.
:class:`RegistryTimeout` is the :class:`Rejected` of a trust registry
lookup that did not answer in time (see :mod:`certgate.lookups`).
:class:`ClientCertificateRefused` is the :class:`Rejected` a route-level
check raises. :class:`ServerSetupError` is raised by server adapters and
framework helpers wired in a way that cannot work.
:class:`ConfigError` is raised at start-up (or by the CLI) for a bad
configuration: certgate refuses to start rather than run half-configured.
"""

from __future__ import annotations

from .reasons import Reason


class CertgateError(Exception):
    """Base class of every exception certgate raises on purpose."""


class ConfigError(CertgateError, ValueError):
    """The configuration is unusable. The message says what to fix.

    Also a ``ValueError``: a bad argument to a certgate constructor is one.
    """


class Rejected(CertgateError):
    """A request (or a certificate) was refused for ``reason``.

    ``detail`` is for logs and the operator CLI only. It is never sent to the
    client, because it may describe the tenant's trust configuration.
    ``fingerprint`` identifies the refused certificate in logs.
    """

    def __init__(self, reason: Reason, detail: str = "", fingerprint: str | None = None) -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail
        self.fingerprint = fingerprint
        """Hex SHA-256 of the refused leaf, when it was decoded (for logs)."""


class RegistryTimeout(Rejected):
    """A trust registry lookup did not answer within ``timeout`` seconds
    (``registry_timeout``): ``trust_store_unavailable``, fail closed."""

    def __init__(self, timeout: float, detail: str = "") -> None:
        super().__init__(
            Reason.TRUST_STORE_UNAVAILABLE,
            detail or f"registry lookup timed out after {timeout:g} s",
        )
        self.timeout = timeout


class ClientCertificateRefused(Rejected):
    """A route-level check (a FastAPI dependency, a Starlette decorator)
    refused the request. :class:`~certgate.asgi.CertGateMiddleware` answers
    it with the gate's refusal format, as it answers its own refusals (see
    :mod:`certgate.starlette` for apps without the middleware)."""


class ServerSetupError(CertgateError, ValueError, RuntimeError):
    """A server adapter (:mod:`certgate.servers`) or a framework helper was
    set up in a way that cannot work; the message says what to fix.

    Also a ``ValueError`` and a ``RuntimeError`` (what these raised before)."""


class TrustStoreUnavailable(Rejected):
    """A tenant store (a database) could not answer - unreachable, locked,
    removed, corrupt, or too long without news of its changes:
    ``trust_store_unavailable`` (503), fail closed. ``detail`` says what
    failed (for the log)."""

    def __init__(self, detail: str) -> None:
        super().__init__(Reason.TRUST_STORE_UNAVAILABLE, detail)
