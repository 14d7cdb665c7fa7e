"""certgate.servers.uvicorn refuses protocol classes that would not record
the TLS facts and the socket peer."""

from __future__ import annotations

from typing import Any

import pytest

from certgate.servers import uvicorn as adapter


async def _app(scope: Any, receive: Any, send: Any) -> None:
    return None


@pytest.mark.parametrize("ws", ["websockets", "wsproto", "auto", "some.module:Protocol"])
def test_config_refuses_unwrapped_websocket_protocols(ws: str) -> None:
    with pytest.raises(ValueError, match="TLS-aware protocol classes"):
        adapter.config(_app, ws=ws)


@pytest.mark.parametrize("http", ["h11", "httptools", "auto"])
def test_config_refuses_unwrapped_http_protocols(http: str) -> None:
    with pytest.raises(ValueError, match="TLS-aware protocol classes"):
        adapter.config(_app, http=http)


def test_config_accepts_certgate_classes_by_object_or_name() -> None:
    assert adapter.H11TLSProtocol is not None
    config = adapter.config(
        _app, http=adapter.H11TLSProtocol, ws="certgate.servers.uvicorn:AutoWebSocketsTLSProtocol"
    )
    assert config.http is adapter.H11TLSProtocol
    assert adapter.config(_app, ws="none").ws == "none"
    default = adapter.config(_app)
    assert default.http is adapter.AutoTLSProtocol
    assert default.ws is adapter.AutoWebSocketsTLSProtocol


def test_cli_refuses_unwrapped_websocket_protocol() -> None:
    with pytest.raises(SystemExit, match="--ws='websockets' is not one of certgate's"):
        adapter.main(["app:app", "--ws", "websockets"])


def test_setup_errors_belong_to_certgates_hierarchy() -> None:
    from certgate.errors import CertgateError, ServerSetupError
    from certgate.servers.tls import client_auth_context

    with pytest.raises(ServerSetupError, match="TLS-aware protocol classes") as info:
        adapter.config(_app, http="h11")
    assert isinstance(info.value, CertgateError)
    with pytest.raises(CertgateError, match="needs ca_file or ca_pem"):
        client_auth_context("server.pem", "server.key")
