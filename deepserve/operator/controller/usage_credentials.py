"""Which per-model usage write-credential Secrets to (re)apply, and when.

The operator holds the ingest key (a mounted file, re-read by
:class:`~deepserve.operator.metering.credentials.IngestKeyFile`), mints each model's token
from it and applies the Secret built by
:func:`~deepserve.operator.builders.usage_credential.build_usage_credential_secret`.

The operator may create and patch Secrets but never get, list or watch them (the chart's
RBAC), so it cannot see drift: a Secret is re-applied when the key changed (rotation),
when the model's uid changed (recreated), on the first reconcile after a start, and every
``refresh_s`` seconds (a hand-deleted or edited Secret is restored within that time).
Neither the key nor a token is ever logged; only the key's non-secret id is.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from deepserve.operator.builders.context import ModelRef
from deepserve.operator.builders.usage_credential import (
    ANNOTATION_KEY_ID,
    build_usage_credential_secret,
)
from deepserve.operator.metering.credentials import IngestKeyFile, key_id, mint_write_token

log = logging.getLogger(__name__)


@dataclass
class UsageCredentials:
    """Per-process memory of the write-credential Secrets applied (kept in the controller state)."""

    keys: IngestKeyFile
    refresh_s: float = 300.0
    _applied: dict[tuple[str, str], tuple[str, str, float]] = field(default_factory=dict)  # -> (key id, uid, when)
    _key_id: str = ""
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def wanted(self, model: ModelRef, clock: float) -> tuple[dict[str, Any], bool] | None:
        """(the Secret to apply for ``model`` now, whether it changes anything this process
        knows of), or None when the last one applied still holds. A periodic refresh of an
        unchanged Secret is not a change (no Event)."""
        key = self.keys.current()
        kid = key_id(key)
        with self._guard:
            if kid != self._key_id:
                if self._key_id:
                    log.info("ingest key changed (id %s -> %s): re-minting every model's usage credential",
                             self._key_id, kid)
                self._key_id = kid
            seen = self._applied.get((model.namespace, model.name))
        if seen is not None and seen[:2] == (kid, model.uid) and clock - seen[2] < self.refresh_s:
            return None
        changed = seen is None or seen[:2] != (kid, model.uid)
        return build_usage_credential_secret(model, mint_write_token(key, model.namespace, model.name),
                                             kid), changed

    def applied(self, obj: dict[str, Any], uid: str, clock: float) -> None:
        """Remember that ``obj`` (from :meth:`wanted`) was written."""
        md = obj["metadata"]
        kid = md["annotations"][ANNOTATION_KEY_ID]
        with self._guard:
            self._applied[(md["namespace"], md["ownerReferences"][0]["name"])] = (kid, uid, clock)

    def forget(self, namespace: str, name: str) -> None:
        """Drop memory of a deleted model (its Secret goes with it: ownerReference)."""
        with self._guard:
            self._applied.pop((namespace, name), None)
