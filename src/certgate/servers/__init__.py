"""Server adapters: getting the client certificate out of TLS servers.

* :mod:`certgate.servers.tls` - SSLContext helpers for any server
  (request a client certificate, load the tenants' CAs, defer time checks
  to certgate, accept issuing-CA anchors, turn session tickets off);
* :mod:`certgate.servers.uvicorn` - fills the ASGI ``tls`` extension under
  uvicorn (h11, httptools and the WebSocket protocols);
* :mod:`certgate.servers.gunicorn` - gunicorn's ``ssl_context`` hook (and
  ``PerTenantSSLContext``), and the ``on_starting``/``post_worker_init``
  hooks that refuse underscore header mapping;
* :mod:`certgate.servers.uvicorn_worker` - ``gunicorn -k
  certgate.servers.uvicorn_worker.UvicornWorker``;
* :mod:`certgate.servers.hypercorn` - the same scope keys under hypercorn's
  asyncio worker;
* :mod:`certgate.servers.tenant_contexts` - per-tenant handshakes: the
  ``SSLContext`` chosen by SNI.

Every context these helpers prepare records the client's SNI
(:mod:`certgate.sni`).

Werkzeug's server needs no adapter: pass
:func:`certgate.servers.tls.client_auth_context` (or
``TenantContexts(...).server_context()``) as ``ssl_context``.
"""
