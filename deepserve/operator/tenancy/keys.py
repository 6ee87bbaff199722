"""API keys: minting, the salted hash that is all we store, and the key Secret's shape.

A key is ``ds-<key_id>-<secret>``. ``key_id`` is 12 lowercase base32 characters (60 random
bits, public: it names the Secret); ``secret`` is 32 random bytes, base64url without
padding. Only ``HMAC-SHA256(salt, secret)`` with a random 16-byte salt per key is stored.
A slow hash (scrypt, PBKDF2) protects low-entropy passwords; these secrets carry 256 bits
of entropy, so one HMAC is as safe against a stolen Secret and costs ~1 µs per request
instead of the tens of milliseconds a slow hash would add to every call.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

KEY_PREFIX = "ds"
ALGORITHM = "hmac-sha256"
SECRET_TYPE = "deepserve.io/api-key"
TENANT_LABEL = "deepserve.io/tenant"
KEY_ID_LABEL = "deepserve.io/key-id"
KEY_MARK_LABEL = "deepserve.io/api-key"
KEY_SELECTOR = f"{KEY_MARK_LABEL}=true"
DEFAULT_NAMESPACE = "deepserve-system"
_KEY_ID = re.compile(r"^[a-z2-7]{12}$")
_SECRET = re.compile(r"^[A-Za-z0-9_-]{43}$")
_DURATION = re.compile(r"^(0|[1-9][0-9]{0,5})([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class KeyRecord:
    """What a key Secret holds: never the key, only its salt and hash."""

    key_id: str
    tenant: str
    salt: bytes
    digest: bytes
    created: datetime
    expires: datetime | None

    def live(self, now: datetime) -> bool:
        """True until the key's expiry (keys without one never expire)."""
        return self.expires is None or now < self.expires

    def matches(self, secret: str) -> bool:
        """Constant-time check of a presented secret against the stored hash."""
        return hmac.compare_digest(hash_secret(self.salt, secret), self.digest)


def new_key() -> tuple[str, str, str]:
    """A fresh key: ``(key, key_id, secret)``; the key is shown to its owner once."""
    key_id = base64.b32encode(secrets.token_bytes(8)).decode().lower()[:12]
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    return f"{KEY_PREFIX}-{key_id}-{secret}", key_id, secret


def split_key(presented: str) -> tuple[str, str] | None:
    """``(key_id, secret)`` of a well-formed key, else None."""
    prefix, _, rest = presented.partition("-")
    key_id, _, secret = rest.partition("-")
    if prefix != KEY_PREFIX or not _KEY_ID.match(key_id) or not _SECRET.match(secret):
        return None
    return key_id, secret


def hash_secret(salt: bytes, secret: str) -> bytes:
    """HMAC-SHA256 of the secret keyed by the per-key salt."""
    return hmac.new(salt, secret.encode(), hashlib.sha256).digest()


def parse_duration(text: str, field: str = "--expires", allow_zero: bool = False) -> timedelta | None:
    """``30d``, ``12h``, ``90m``, ``45s`` -> timedelta; ``never`` -> None; else ValueError naming ``field``."""
    if text == "never":
        return None
    m = _DURATION.match(text)
    if not m or (int(m.group(1)) == 0 and not allow_zero):
        raise ValueError(f"{field}: {text!r} is not a duration like 30d, 12h, 90m, 45s or never")
    return timedelta(seconds=int(m.group(1)) * _UNIT_S[m.group(2)])


def secret_name(key_id: str) -> str:
    """Name of the Secret holding key ``key_id``."""
    return f"ds-key-{key_id}"


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_key_secret(tenant: str, key_id: str, secret: str, namespace: str, now: datetime,
                     expires: datetime | None) -> dict[str, Any]:
    """The Secret manifest of a new key (salt and hash only; the key is not in it)."""
    salt = secrets.token_bytes(16)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": SECRET_TYPE,
        "metadata": {
            "name": secret_name(key_id),
            "namespace": namespace,
            "labels": {TENANT_LABEL: tenant, KEY_ID_LABEL: key_id, KEY_MARK_LABEL: "true",
                       "app.kubernetes.io/part-of": "deepserve"},
        },
        "stringData": {
            "algorithm": ALGORITHM,
            "salt": salt.hex(),
            "hash": hash_secret(salt, secret).hex(),
            "created": _iso(now),
            "expires": _iso(expires) if expires else "",
        },
    }


def _parse_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def record_from_secret(obj: dict[str, Any]) -> KeyRecord | None:
    """The key record of a key Secret; None when it is malformed (such a key is never accepted)."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    try:
        data = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
        if data.get("algorithm") != ALGORITHM:
            return None
        return KeyRecord(
            key_id=labels[KEY_ID_LABEL],
            tenant=labels[TENANT_LABEL],
            salt=bytes.fromhex(data["salt"]),
            digest=bytes.fromhex(data["hash"]),
            created=_parse_time(data["created"]),
            expires=_parse_time(data["expires"]) if data.get("expires") else None,
        )
    except (KeyError, ValueError):
        return None


def format_time(t: datetime | None) -> str:
    """RFC 3339 UTC, or ``never``."""
    return _iso(t) if t else "never"
