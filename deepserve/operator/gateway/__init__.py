"""The OpenAI-compatible front door: API keys, plans, limits, routing, hold-and-wake, a proxy.

How to construct and serve it (the constructor's positional parameters are stable; newer
ones are keyword-only with defaults)::

    from deepserve.operator.gateway.discovery import KubeDiscovery
    from deepserve.operator.gateway.server import Gateway, GatewayConfig
    from deepserve.operator.kube import Kube

    discovery = KubeDiscovery(Kube.from_kubeconfig(None), namespaces=None)  # None: all
    gateway = Gateway(
        authenticator,            # deepserve.operator.tenancy.Authenticator (the key index)
        [],                       # static routes; discovery replaces them every poll
        spend=spend_source,       # optional SpendSource (monthly cap -> 402)
        discovery=discovery,      # started on app startup, stopped on cleanup
        scale_up=discovery.scale_up,  # hold-and-wake asks for scale from zero
        config=GatewayConfig(),   # timeouts, hold queue bounds, token estimate default
    )
    port = await gateway.start("0.0.0.0", 8080, ssl_context=None,  # tls_context(cert, key)
                               admin_port=9090, admin_host="0.0.0.0")  # ... await gateway.stop()

``Gateway.app()`` is the plain aiohttp app, but ``start()`` also sets the idle keep-alive
timeout and cancels handlers whose callers disconnect: serve through it.

Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions``, ``GET /v1/models``,
``/v2/models/<namespace>/<name>/...`` (KServe v2), all behind keys; ``GET /healthz``. On the
admin port (or the public one when no ``admin_port`` is given): ``GET /metrics`` and
``GET /held/<namespace>`` (what ``deepserve operator run --activator NAMESPACE=URL`` reads).
For limits shared across replicas pass ``limiter=RedisLimiter("redis://host:6379/0")``
(``gateway.redis_limits``).
"""
