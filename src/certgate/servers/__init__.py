"""Server adapters: getting the client certificate out of TLS servers.

* :mod:`certgate.servers.tls` - SSLContext helpers for any server
  (request a client certificate, load the tenants' CAs, defer time checks
  to certgate, accept issuing-CA anchors, turn session tickets off);
* :mod:`certgate.servers.uvicorn` - fills the ASGI ``tls`` extension under
  uvicorn (h11, httptools and the WebSocket protocols);
* :mod:`certgate.servers.gunicorn` - gunicorn's ``ssl_context`` hook, and the
  ``on_starting``/``post_worker_init`` hooks that refuse underscore header
  mapping.

Werkzeug's server needs no adapter: pass
:func:`certgate.servers.tls.client_auth_context` as ``ssl_context``.
"""
