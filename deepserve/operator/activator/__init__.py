"""The activator: holds requests for models scaled to zero and splits traffic between versions.

    from deepserve.operator.activator import Activator, ActivatorConfig, Routes

    routes = Routes(seed=1)
    routes.set_model("chat", {"a": 90, "b": 10})
    routes.set_upstreams("chat", "a", ["http://10.0.0.5:8000"])
    activator = Activator(routes, scale_up=lambda model, version: ..., config=ActivatorConfig())
    port = await activator.start("127.0.0.1", 8080)
"""

from deepserve.operator.activator.proxy import (
           VERSION_HEADER,
           Activator,
           ActivatorConfig,
           ActivatorMetrics,
)
from deepserve.operator.activator.routing import Routes, TrafficSplit, VersionRoute

__all__ = ["VERSION_HEADER", "Activator", "ActivatorConfig", "ActivatorMetrics", "Routes", "TrafficSplit",
           "VersionRoute"]
