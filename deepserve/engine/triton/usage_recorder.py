"""One usage event per finished, cancelled or failed request, into the durable spool."""

from __future__ import annotations

import logging
import os
import uuid
from typing import Any

from deepserve.engine.options import EngineOptions
from deepserve.engine.runtime import GenerationChunk
from deepserve.engine.usage import NAME_MATCH

log = logging.getLogger(__name__)
_STATUS = {"stop": "ok", "length": "ok", "cancelled": "cancelled", "error": "error"}


class UsageRecorder:
    """Writes :class:`deepserve.engine.usage.UsageEvent` s; ships them when an endpoint is set.

    With no spool directory configured it does nothing (local demos).
    """

    def __init__(self, spool: Any | None, shipper: Any | None, model: str, version: str,
                 namespace: str, account: str) -> None:
        self.spool, self.shipper = spool, shipper
        self.model, self.version, self.namespace, self.account = model, version, namespace, account

    @classmethod
    def from_options(cls, options: EngineOptions, model: str, version: str) -> UsageRecorder:
        """Open the spool in ``options.usage_spool_dir`` and start a shipper if configured.

        The shipper's bearer token (the model's write credential, a Secret the operator
        mounts) is read from the file ``DEEPSERVE_USAGE_TOKEN_FILE`` names, before every
        batch. The variable holds a path only: a token is never taken from the environment.
        """
        spool = shipper = None
        if options.usage_spool_dir:
            from deepserve.engine.usage import UsageShipper, UsageSpool

            spool = UsageSpool(options.usage_spool_dir)
            if options.usage_endpoint:
                token_file = os.environ.get("DEEPSERVE_USAGE_TOKEN_FILE") or None
                if token_file is None:
                    log.warning("no DEEPSERVE_USAGE_TOKEN_FILE: usage is spooled, and the billing "
                                "endpoint will refuse it (401) until a write credential is mounted")
                shipper = UsageShipper(spool, options.usage_endpoint, token_file=token_file)
                shipper.start()
        return cls(spool, shipper, model, version, options.namespace or "default",
                   options.billing_account or "default")

    def record(self, chunk: GenerationChunk, tenant: str | None, precision: str) -> None:
        """Append the event for ``chunk`` (a final chunk); failures are logged, never raised."""
        if self.spool is None or chunk.stats is None:
            return
        from deepserve.engine.usage import UsageEvent

        stats = chunk.stats
        request_id = chunk.request_id
        if not NAME_MATCH(request_id):  # client ids are untrusted; keep them deterministic
            request_id = str(uuid.uuid5(uuid.NAMESPACE_URL, request_id))
        try:
            self.spool.append(UsageEvent.create(
                model=self.model, version=self.version, namespace=self.namespace,
                account=self.account, tenant=tenant, request_id=request_id,
                prompt_tokens=stats.prompt_tokens, generated_tokens=stats.generated_tokens,
                compute_ms=float(stats.compute_ms), precision=precision,
                started_at=stats.started_at, ended_at=stats.ended_at,
                status=_STATUS.get(chunk.finish_reason or "", "error"),
                ttft_ms=None if stats.time_to_first_token_s is None
                else stats.time_to_first_token_s * 1000.0))
        except Exception:
            log.exception("could not record usage for request %s", chunk.request_id)

    def close(self) -> None:
        """Stop the shipper, giving it a moment to flush."""
        if self.shipper is not None:
            self.shipper.stop(flush_timeout=5)
