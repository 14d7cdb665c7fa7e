"""Server adapters: getting the client certificate out of TLS servers.

* :mod:`certgate.servers.tls` - SSLContext helpers for any server
  (request a client certificate, load the tenants' CAs, defer time checks
  to certgate, accept issuing-CA anchors, turn session tickets off);
* :mod:`certgate.servers.uvicorn` - fills the ASGI ``tls`` extension under
  uvicorn (h11, httptools and the WebSocket protocols);
* :mod:`certgate.servers.gunicorn` - the ``ssl_context`` hook for gunicorn.

Werkzeug's server needs no adapter: pass
:func:`certgate.servers.tls.client_auth_context` as ``ssl_context``.
"""
