"""What the ingest endpoint trusts: the credential's model, known owners, a sane clock.

Every event of a batch written with a model's write credential must be that model's: one
that is not refuses the whole batch (:class:`CredentialRefused`, HTTP 403, nothing
written). Events that are well formed but cannot be billed as they stand are
**quarantined** — kept in the ledger, not billed, listed by ``GET /v1/usage/quarantine``
and re-billable with ``deepserve billing release`` — never silently dropped:

* unknown owner: the ledger has a model registry (``set_owners``) and the event's
  namespace/model is not in it, or its account is not that model's owner;
* clock skew: ``ended_at`` more than ``max_future_s`` after the server's clock (default
  5 minutes), or older than ``max_age_s`` (default 400 days: beyond any open bill).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from deepserve.operator.metering.base import LedgerError
from deepserve.operator.metering.credentials import WriteScope
from deepserve.operator.metering.wire import Row

_US = 1_000_000


class CredentialRefused(LedgerError):
    """The credential may not write this event (HTTP 403); nothing was written."""


@dataclasses.dataclass(frozen=True)
class IngestPolicy:
    """Bounds on an event's end time relative to the server's clock (seconds)."""

    max_future_s: float = 300.0
    max_age_s: float | None = 400 * 86_400.0

    def __post_init__(self) -> None:
        if not self.max_future_s >= 0:
            raise ValueError("max_future_s: must not be negative")
        if self.max_age_s is not None and not self.max_age_s > 0:
            raise ValueError("max_age_s: must be positive or None")


@dataclasses.dataclass(frozen=True)
class IngestTrust:
    """How one batch is screened: the writer's scope (None: a trusted local import) and
    the clock policy."""

    scope: WriteScope | None = None
    policy: IngestPolicy = IngestPolicy()

    def check_scope(self, rows: Sequence[Row]) -> None:
        """Raise CredentialRefused naming the first event of another model."""
        scope = self.scope
        if scope is None:
            return
        for i, r in enumerate(rows):
            if not scope.allows(r[1], r[2]):
                field = "namespace" if r[1] != scope.namespace else "model"
                raise CredentialRefused(
                    field, f"this credential writes usage of {scope.namespace}/{scope.model} "
                    f"only, not {r[1]}/{r[2]}", index=i, event_id=r[0])

    def reasons(self, rows: Sequence[Row], owners: Mapping[tuple[str, str], str] | None,
                now_us: int) -> list[str | None]:
        """Why each row must be quarantined (None: bill it). ``owners`` maps the batch's
        (namespace, model) pairs to their account; None means no registry is kept."""
        latest = now_us + int(self.policy.max_future_s * _US)
        age = self.policy.max_age_s
        earliest = None if age is None else now_us - int(age * _US)
        out: list[str | None] = []
        for r in rows:
            why = None
            ended = r[13]
            if ended > latest:
                why = (f"clock skew: ended_at is {(ended - now_us) / _US:.0f} s in the future "
                       f"(bound {self.policy.max_future_s:.0f} s)")
            elif earliest is not None and ended < earliest:
                why = f"clock skew: ended_at is older than {(age or 0) / 86_400:.0f} days"
            elif owners is not None:
                owner = owners.get((r[1], r[2]))
                if owner is None:
                    why = f"unknown owner: no model {r[1]}/{r[2]} is registered"
                elif owner != r[4]:
                    why = f"unknown owner: account {r[4]!r} does not own {r[1]}/{r[2]}"
            out.append(why)
        return out
