"""Framework integrations: thin adapters (ASGI, WSGI, Django, Flask, the
OpenTelemetry instrumentors) over one kit, :mod:`.lifecycle` (the request handle
every adapter subclasses) with :mod:`._http` (URL, headers, response headers),
:mod:`.settings` (framework settings) and :mod:`.threads` (thread-pool hooks).
None of them knows about encodings or exporters; each imports only its own
framework."""
