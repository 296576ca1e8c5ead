"""Optional API keys: who may call the inference and metadata routes and RPCs.

With `API_KEYS` set to a file (one key per line; blank lines and `#` comments ignored: e.g. a mounted
Kubernetes Secret), every such call must carry `Authorization: Bearer KEY` (gRPC: the metadata
`authorization: Bearer KEY`). Only sha256 digests of the keys are kept in memory, and a presented key
is compared with each of them in constant time (`hmac.compare_digest`). The file is read again on
SIGHUP and whenever its modification time or size changes (looked at no more than once a second), so
keys rotate without a restart; a file that becomes unreadable or empty keeps the keys already loaded
(a failed rotation must neither open the door nor lock every client out) and says so in the log.
Keys never appear in a log line or a metric: checks are counted by outcome only.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from transformer import metrics
from transformer.errors import Unauthorized

log = logging.getLogger(__name__)

BEARER = "bearer "
RECHECK_S = 1.0  # the file's mtime and size are looked at no more often than this


class ApiKeyFileError(RuntimeError):
    """The keys file cannot be used at start-up; the message says which file and why."""


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def read_key_digests(path: Path) -> tuple[bytes, ...]:
    """The digests of the keys in `path` (one per line, `#` comments and blank lines skipped)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    keys = {line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")}
    return tuple(sorted(_digest(key) for key in keys))


@dataclass(frozen=True, slots=True)
class _FileStamp:
    mtime_ns: int
    size: int
    inode: int


def _stamp(path: Path) -> _FileStamp | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return _FileStamp(status.st_mtime_ns, status.st_size, status.st_ino)


class ApiKeys:
    """The keys of one file, reloaded when it changes; `check` says accepted, missing or wrong."""

    def __init__(self, path: Path, clock=time.monotonic):
        self.path = Path(path)
        self._clock = clock
        self._stamp = _stamp(self.path)
        try:
            self._digests = read_key_digests(self.path)
        except (OSError, UnicodeDecodeError) as error:
            raise ApiKeyFileError(f"API_KEYS: cannot read {self.path}: {error}") from error
        if not self._digests:
            raise ApiKeyFileError(f"API_KEYS: {self.path} holds no key (one key per line)")
        self._next_look = clock() + RECHECK_S
        self._outcomes = {outcome: metrics.API_KEY_CHECKS.labels(outcome=outcome)
                          for outcome in ("accepted", "missing", "wrong")}
        metrics.API_KEYS_LOADED.set(len(self._digests))
        log.info("API keys: %d loaded from %s; inference and metadata need 'Authorization: Bearer KEY'",
                 len(self._digests), self.path)

    @property
    def count(self) -> int:
        return len(self._digests)

    def reload(self, reason: str = "SIGHUP") -> bool:
        """Read the file again; True when the keys in use are now the file's."""
        self._stamp = _stamp(self.path)
        try:
            digests = read_key_digests(self.path)
        except (OSError, UnicodeDecodeError) as error:
            log.warning("API keys: %s: cannot read %s (%s); keeping the %d keys loaded", reason, self.path,
                        type(error).__name__, len(self._digests))
            metrics.API_KEY_RELOADS.labels(result="failed").inc()
            return False
        if not digests:
            log.warning("API keys: %s: %s holds no key; keeping the %d keys loaded", reason, self.path,
                        len(self._digests))
            metrics.API_KEY_RELOADS.labels(result="failed").inc()
            return False
        self._digests = digests
        metrics.API_KEYS_LOADED.set(len(digests))
        metrics.API_KEY_RELOADS.labels(result="loaded").inc()
        log.info("API keys: %s: %d loaded from %s", reason, len(digests), self.path)
        return True

    def _reload_if_changed(self) -> None:
        now = self._clock()
        if now < self._next_look:
            return
        self._next_look = now + RECHECK_S
        stamp = _stamp(self.path)
        if stamp is not None and stamp != self._stamp:
            self.reload("file changed")

    def check(self, authorization: str | None) -> str:
        """'accepted', 'missing' (no `Bearer` credentials) or 'wrong'; counted by outcome."""
        self._reload_if_changed()
        outcome = self._outcome(authorization)
        self._outcomes[outcome].inc()
        return outcome

    def _outcome(self, authorization: str | None) -> str:
        if not authorization or not authorization[:len(BEARER)].lower() == BEARER:
            return "missing"
        presented = authorization[len(BEARER):].strip()
        if not presented:
            return "missing"
        digest = _digest(presented)
        accepted = False
        for known in self._digests:  # every digest is compared: the time does not say which matched
            accepted |= hmac.compare_digest(digest, known)
        return "accepted" if accepted else "wrong"


def require_key(keys: ApiKeys | None, authorization: str | None, how: str) -> None:
    """Raise Unauthorized (401 / UNAUTHENTICATED) unless the call may pass: no keys configured, or
    one of them presented. `how` tells the client where the key goes on its transport."""
    if keys is None:
        return
    outcome = keys.check(authorization)
    if outcome == "missing":
        raise Unauthorized(f"this server needs an API key: send {how}")
    if outcome == "wrong":
        raise Unauthorized(f"the API key is not valid: send one of the server's keys as {how}")
