"""The relay's transport engine: TLS on the socket, connection limits and deadlines,
WebSocket framing, agents' lean control sockets, and uvicorn bounded around them.

It is fenced twice. It imports nothing of the relay's business (only itself, the
relay's config and ``backline.common``: an import-linter contract in pyproject.toml),
so it can be read, measured and upgraded on its own; what serves the relay's app on it
is :mod:`backline.relay.serve`. And it is the only place that touches the private parts
of the standard library and of uvicorn (tests/unit/test_private_apis.py scans every
other file): it does so where measured costs or missing hooks left no public way,
and every such dependency is listed below. The same test checks that each one is still
there on the installed versions and fails naming it and its package, so an upgrade of
a pinned dependency (or of Python) that removes one is caught by the test command, not
by a relay in production.

Private APIs this engine relies on (``api`` (package): where, and why):

- ``ssl.SSLSocket._sslobj`` (python): :mod:`.tls_socket` reads, writes and asks
  ``pending`` of OpenSSL's own connection object (``_ssl._SSLSocket``), skipping the
  three layers of checks ``ssl.SSLSocket`` puts in front of each call, per heartbeat
  (falls back to the wrapper, slower, without it).
- ``ssl._ssl.PySSLContext layout`` (python): :mod:`.tls_policy` finds the context's
  ``SSL_CTX`` pointer right after the object header of CPython's ``PySSLContext`` and
  calls OpenSSL's ``SSL_CTX_ctrl`` through ctypes on ``ssl._ssl.__file__`` to set the
  key-exchange groups, until Python 3.15's ``SSLContext.set_groups`` (verified through
  ``SSL_CTX_get_options`` before use; P-256 alone without it).
- ``asyncio.sslproto.SSLProtocol.max_size`` (python): :mod:`.server` shrinks the read
  buffer asyncio's TLS allocates per connection, 256 KiB, to one TLS record (16 KiB),
  on the "loop" engine under plain asyncio.
- ``uvicorn.config.STARTUP_FAILURE`` (uvicorn): :mod:`.server` exits with uvicorn's own
  status when the app's lifespan startup fails, as ``uvicorn.Server.startup`` does.
- ``uvicorn.Server.startup internals`` (uvicorn): :class:`.server.BoundedServer`
  replaces ``startup(sockets)`` to use the relay's own listeners: it relies on
  ``self.lifespan`` (``startup()``, ``shutdown()``, ``should_exit``, ``state``),
  ``self.server_state``, ``self.servers`` (objects with ``close``/``wait_closed``),
  ``self.started`` and ``shutdown(sockets)``, and on ``Config.http_protocol_class``,
  ``Config.loaded``/``load()`` and ``Config.ssl`` (the loaded TLS context).
- ``uvicorn.protocols.http.h11_impl.H11Protocol`` (uvicorn): :mod:`.conn_http`
  subclasses it for read deadlines: overrides ``connection_made``, ``data_received``,
  ``on_response_complete``, ``pause_writing``, ``resume_writing`` and
  ``handle_websocket_upgrade``, and reads ``self.conn`` (its ``h11.Connection``).
- ``uvicorn H11Protocol WebSocket hand-off`` (uvicorn): :mod:`.control_socket` is
  uvicorn's ``ws`` class: on an upgrade, ``H11Protocol`` makes it with
  ``(config=, server_state=, app_state=)``, calls ``connection_made`` and
  ``data_received`` with the request's bytes, then ``transport.set_protocol`` on it;
  it uses ``server_state.connections`` and ``server_state.tasks`` and
  ``config.proxy_headers``/``config.forwarded_allow_ips``.
- ``uvicorn.protocols.websockets.wsproto_impl.WSProtocol`` (uvicorn): :mod:`.ws_limits`
  subclasses it: replaces ``self.conn`` (its wsproto connection) before the handshake,
  sets ``self.buffer.max_length``, overrides ``handle_connect`` and ``handle_close``,
  and uses ``close_sent``, ``queue``, ``transport``, ``scope``, ``client`` and
  ``config.ws_max_size``.
- ``wsproto extension frame hook`` (wsproto): :mod:`.ws_limits` counts message sizes
  in an ``Extension`` whose ``frame_inbound_header(proto, opcode, rsv,
  payload_length)`` wsproto calls before reading a frame's payload, put among the
  handshake answer's ``AcceptConnection.extensions`` in ``WSConnection.send``; it uses
  ``wsproto.frame_protocol`` (``Opcode``, ``CloseReason``, ``RsvBits``) and
  ``wsproto.connection.ConnectionState``, modules outside wsproto's documented API.
- ``websockets.utils.accept_key and apply_mask`` (websockets): :mod:`.wsframes` takes
  the handshake's accept key and the C frame unmasking from websockets' helper
  modules (``websockets.speedups.apply_mask``, else ``websockets.utils.apply_mask``),
  not from its documented API.

Not on the list, though they look it: ``transport._fatal`` in :mod:`.tls_socket` is
our own :class:`~.tls_socket.TLSTransport`'s, not asyncio's; ``h11.Connection.
their_state`` and ``loop.connect_accepted_socket(ssl_shutdown_timeout=...)`` are
documented.
"""
