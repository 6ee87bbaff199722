"""Write credentials are one model's; quarantine keeps what it holds and re-bills it once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from deepserve.operator.metering.credentials import (
    CredentialError,
    WriteScope,
    hmac_write_auth,
    mint_write_token,
    read_secret_file,
)
from deepserve.operator.metering.trust import CredentialRefused, IngestPolicy, IngestTrust

from .conftest import T0, build_event

pytestmark = pytest.mark.unit
KEY = b"unit-test-ingest-key-0123456789"


def test_a_token_verifies_only_for_its_model_and_key() -> None:
    verify = hmac_write_auth(KEY)
    token = mint_write_token(KEY, "prod", "chat")
    assert verify(token) == WriteScope("prod", "chat")
    assert verify(mint_write_token(b"another-key-0123456789", "prod", "chat")) is None
    forged = token.replace("prod/chat", "prod/other")  # same mac, other model
    assert verify(forged) is None
    for bad in ("", "x", token + ":x", "dsw1:prod:abc", token.replace("dsw1", "dsw2")):
        assert verify(bad) is None
    wildcard = mint_write_token(KEY, "*", "*")
    assert verify(wildcard) is None
    assert hmac_write_auth(KEY, allow_wildcard=True)(wildcard) == WriteScope("*", "*")
    with pytest.raises(CredentialError, match="namespace"):
        mint_write_token(KEY, "Prod!", "chat")
    with pytest.raises(CredentialError, match="ingest key"):
        hmac_write_auth(b"short")


def test_secret_files_are_read_stripped_and_empty_ones_refused(tmp_path: Path) -> None:
    (tmp_path / "t").write_text("  tok \n")
    assert read_secret_file(tmp_path / "t", "token-file") == "tok"
    (tmp_path / "e").write_text("\n")
    with pytest.raises(CredentialError, match="token-file"):
        read_secret_file(tmp_path / "e", "token-file")
    with pytest.raises(CredentialError, match="token-file: cannot read"):
        read_secret_file(tmp_path / "missing", "token-file")


def test_scope_refuses_the_batch_naming_the_field(ledger) -> None:
    trust = IngestTrust(WriteScope("prod", "chat"))
    with pytest.raises(CredentialRefused) as err:
        ledger.ingest([build_event(0), build_event(1, model="embed")], trust=trust)
    assert (err.value.field, err.value.index) == ("model", 1)
    assert ledger.event_count() == 0 and ledger.quarantine_count() == 0


def test_quarantine_holds_then_releases_once(ledger) -> None:
    ledger.set_owners({("prod", "chat"): "acme"})
    now = T0 + timedelta(hours=2)
    trust = IngestTrust(WriteScope("prod", "*"), IngestPolicy(max_future_s=300, max_age_s=None))
    events = [build_event(0), build_event(1, account="globex"), build_event(2, model="embed"),
              build_event(3, started_at=now, ended_at=now + timedelta(minutes=6))]
    result = ledger.ingest(events, now=now, trust=trust)
    assert result.accepted == [events[0].event_id]
    assert result.quarantined == [e.event_id for e in events[1:]]
    assert ledger.event_count() == 1 and ledger.quarantine_count() == 3
    again = ledger.ingest(events, now=now, trust=trust)
    assert again.duplicates == [events[0].event_id] and ledger.quarantine_count() == 3
    released = ledger.release_quarantined()
    assert sorted(released.accepted) == sorted(e.event_id for e in events[1:])
    assert ledger.event_count() == 4 and ledger.quarantine_count() == 0
    rows = ledger.usage_rows(T0, T0 + timedelta(hours=3))
    assert sum(r.requests for r in rows) == 4
    # once billed, the same ids are duplicates, not quarantined again
    later = ledger.ingest(events, now=now, trust=trust)
    assert later.quarantined == [] and len(later.duplicates) == 4


def test_the_default_policy_bounds_both_ends() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    trust = IngestTrust()
    from deepserve.operator.metering.ledger import _event_row
    rows = [_event_row(build_event(0, started_at=t, ended_at=t), 0) for t in (
        now, now + timedelta(minutes=4), now + timedelta(minutes=6), now - timedelta(days=399),
        now - timedelta(days=401))]
    from deepserve.operator.metering.base import to_us
    reasons = trust.reasons(rows, None, to_us(now))
    assert [r is None for r in reasons] == [True, True, False, True, False]
