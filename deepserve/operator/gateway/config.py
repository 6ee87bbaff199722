"""The gateway's configuration: timeouts and bounds, TLS, and the discovery seam."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from deepserve.operator.gateway.hold import HoldConfig
from deepserve.operator.gateway.routing import ModelRoute


@dataclass(frozen=True)
class GatewayConfig:
    """Timeouts and bounds of one gateway process."""

    body_timeout_s: float = 30.0  # a caller must send its whole body within this (else 408)
    keepalive_timeout_s: float = 75.0  # idle connections (also ones that never send) closed;
    # longer than a load balancer's idle timeout (60 s on common ones), so the LB closes first
    upstream_connect_s: float = 5.0
    upstream_read_s: float = 300.0  # longest silence between two upstream chunks
    upstream_keepalive_s: float = 30.0  # idle pooled upstream connections closed after this
    default_max_tokens: int = 256  # token estimate for a request without max_tokens
    pod_load_every_s: float = 1.0  # scrape the pods' queue and KV-cache gauges (0: never)
    hold: HoldConfig = field(default_factory=HoldConfig)


class Discovery(Protocol):
    """Keeps the gateway's routes in step with the cluster (see ``gateway.discovery``)."""

    def start(self, apply: Callable[[list[ModelRoute]], None]) -> None: ...

    def stop(self) -> None: ...


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server TLS context (TLS 1.2 or later) from PEM certificate-chain and key files."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context
