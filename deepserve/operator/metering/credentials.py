"""Who may write usage and who may read bills: two separate credentials.

* **Read** (exports, spend, reconcile, summary, metrics): one bearer token, read from a
  file (``--token-file``). It cannot ingest.
* **Write** (``POST /v1/usage/events``): a token scoped to one model's pods,
  ``dsw1:<namespace>/<model>:<mac>`` where ``mac`` is HMAC-SHA256 (RFC 2104) of
  ``<namespace>/<model>`` under the ingest key (a file, ``--ingest-key-file``). The
  operator mints one per model and mounts it into that model's pods only, so a
  compromised pod can write usage of its own model and nothing else; nothing to store or
  look up per model. It cannot read exports. The billing server takes any callable
  ``token -> WriteScope | None`` instead (e.g. one checking a projected ServiceAccount
  token with TokenReview); this package imports no Kubernetes client.

A model part ``*`` (every model of a namespace; ``*/*``: every model) is for development
stacks, whose local runner plays every pod with one environment: it is accepted only when
the server is started with ``allow_wildcard`` (``--dev-wildcard-ingest``, which the chart
never passes).
Secrets are read from files, never from argv or the environment.

**Rotation.** The key file is a mounted Secret that the kubelet updates in place. The
operator (:class:`IngestKeyFile`) re-reads it and re-mints every model's Secret; the billing
server (:func:`file_write_auth`) re-reads it too and keeps accepting tokens of the previous
key for ``grace_s`` (default 15 minutes: one operator resync plus the kubelet's Secret sync,
~1-2 minutes each, with a wide margin), so no usage is refused while new tokens propagate.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

PREFIX = "dsw1"
_DNS = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


class CredentialError(ValueError):
    """A credential is malformed or unreadable; ``field`` names which."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclasses.dataclass(frozen=True)
class WriteScope:
    """What a write credential may ingest: one model (``model == "*"``: a namespace)."""

    namespace: str
    model: str

    def allows(self, namespace: str, model: str) -> bool:
        """Whether usage of ``namespace/model`` may be written with this credential."""
        return (self.namespace == "*" or namespace == self.namespace) and (
            self.model == "*" or model == self.model)


WriteAuth = Callable[[str], WriteScope | None]


def _mac(key: bytes, namespace: str, model: str) -> str:
    return hmac.new(key, f"{namespace}/{model}".encode(), hashlib.sha256).hexdigest()


def mint_write_token(key: bytes, namespace: str, model: str) -> str:
    """The write token of ``namespace/model`` under ``key`` (raises CredentialError)."""
    if len(key) < 16:
        raise CredentialError("ingest key", "must be at least 16 bytes")
    if not _DNS.match(namespace) and not (namespace == model == "*"):
        raise CredentialError("namespace", f"must be a DNS name, got {namespace!r}")
    if model != "*" and not _DNS.match(model):
        raise CredentialError("model", f"must be a DNS name or '*', got {model!r}")
    return f"{PREFIX}:{namespace}/{model}:{_mac(key, namespace, model)}"


def hmac_write_auth(key: bytes, *, allow_wildcard: bool = False) -> WriteAuth:
    """A verifier of :func:`mint_write_token` tokens (constant-time comparison)."""
    if len(key) < 16:
        raise CredentialError("ingest key", "must be at least 16 bytes")

    def verify(token: str) -> WriteScope | None:
        parts = token.split(":")
        if len(parts) != 3 or parts[0] != PREFIX or parts[1].count("/") != 1:
            return None
        namespace, model = parts[1].split("/")
        if model == "*" and not allow_wildcard:
            return None
        if not hmac.compare_digest(parts[2].encode(), _mac(key, namespace, model).encode()):
            return None
        return WriteScope(namespace, model)

    return verify


def read_secret_file(path: str | Path, field: str) -> str:
    """The stripped text of a secret file; raises CredentialError naming ``field``."""
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise CredentialError(field, f"cannot read {path}: {err.__class__.__name__}") from None
    if not text:
        raise CredentialError(field, f"{path} is empty")
    return text


def key_id(key: bytes) -> str:
    """A non-secret name of ``key`` (16 hex digits of an HMAC under it): which key minted a
    Secret, without revealing anything that helps forge a token."""
    return hmac.new(key, b"deepserve usage key id", hashlib.sha256).hexdigest()[:16]


class IngestKeyFile:
    """The ingest key, read from a file and re-read at most every ``refresh_s`` seconds.

    ``current()`` returns the key now in the file; when the file turns unreadable or empty
    the last good key stays (a Secret being swapped by the kubelet is briefly absent) and
    the error is kept in ``error``. The key is never logged.
    """

    def __init__(self, path: str | Path, refresh_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic, field: str = "ingest key") -> None:
        self.path, self.refresh_s, self._clock, self.field = Path(path), refresh_s, clock, field
        self._lock = threading.Lock()
        self.error: str | None = None
        self._key = self._read()  # raises CredentialError: the first read must work
        self._previous: tuple[bytes, float] | None = None  # (key, when it was replaced)
        self._read_at = clock()

    def _read(self) -> bytes:
        key = read_secret_file(self.path, self.field).encode()
        if len(key) < 16:
            raise CredentialError(self.field, f"{self.path} must hold at least 16 bytes")
        return key

    def current(self) -> bytes:
        """The key now in effect (re-read when ``refresh_s`` has passed)."""
        with self._lock:
            now = self._clock()
            if now - self._read_at >= self.refresh_s:
                self._read_at = now
                try:
                    key = self._read()
                except CredentialError as err:
                    self.error = str(err)
                else:
                    self.error = None
                    if not hmac.compare_digest(key, self._key):
                        self._previous, self._key = (self._key, now), key
            return self._key

    def previous(self, within_s: float) -> bytes | None:
        """The key replaced less than ``within_s`` seconds ago, if any."""
        with self._lock:
            if self._previous is None or self._clock() - self._previous[1] > within_s:
                return None
            return self._previous[0]


def file_write_auth(keys: IngestKeyFile, *, allow_wildcard: bool = False,
                    grace_s: float = 900.0) -> WriteAuth:
    """A verifier following ``keys`` through rotations: tokens of the current key, and of
    the key it replaced for ``grace_s`` seconds after the change was seen."""
    verifiers: dict[bytes, WriteAuth] = {}

    def verifier(key: bytes) -> WriteAuth:
        found = verifiers.get(key)
        if found is None:
            if len(verifiers) > 4:
                verifiers.clear()
            found = verifiers[key] = hmac_write_auth(key, allow_wildcard=allow_wildcard)
        return found

    def verify(token: str) -> WriteScope | None:
        scope = verifier(keys.current())(token)
        if scope is None and (old := keys.previous(grace_s)) is not None:
            scope = verifier(old)(token)
        return scope

    return verify
