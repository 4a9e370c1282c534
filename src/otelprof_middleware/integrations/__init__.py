"""Framework integrations.  Each one turns a framework's request into a
:class:`~otelprof_middleware.policy.RequestInfo` and drives the shared
:class:`~otelprof_middleware.integrations.lifecycle.RequestProfiling` lifecycle;
none of them knows about encodings or exporters."""
