"""A bound on forged 1028s: per client ID, the 1028s whose content fails to decrypt.

Anyone who has seen a client's ID and a file name (both travel in clear) can
send 1028s as that client (SECURITY.md §1). Two abuses of that are cheap:
a blind overwrite (about 1 random ciphertext in 255 pads validly, and then
replaces the victim's file with garbage) and a padding oracle (2103 or 2107
tells whether a chosen ciphertext pads validly, which decrypts a captured
file a byte at a time). Both need many 1028s that fail to decrypt, and a
legitimate client sends none: its content is encrypted with the key the
server gave it, so its padding is always valid, unless someone else rotated
its key with a 1027 (SECURITY.md §4).

So, per client ID: after FAILURES_ALLOWED failures within FAILURE_WINDOW
seconds, the ID's 1028s are refused (2107, read to their end) for LOCKOUT
seconds, with one log line. The costs this puts on the attacker are measured
in SECURITY.md §4 and §6.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from protocol import Throttled

log = logging.getLogger(__name__)

# Decryption failures of one client ID tolerated within the window. More than one,
# so that a client whose key was just rotated by someone else (and which retries
# each step three times, §6) is not what trips it on its own first attempt.
FAILURES_ALLOWED = 3
FAILURE_WINDOW = 3600.0  # seconds
# How long the ID's 1028s are then refused. With FAILURES_ALLOWED, this sets the
# attacker's rate: 3 tries per 6 h, 12 a day (SECURITY.md §4: a blind overwrite's
# chance under 5 % a day; a padding oracle needing months).
LOCKOUT = 6 * 3600.0  # seconds
# Entries kept before expired ones are dropped (one entry per client ID that failed).
PRUNE_ABOVE = 1024


@dataclass
class _Failures:
    times: list[float] = field(default_factory=list)
    locked_until: float = 0.0


class DecryptionFailures:
    """The failures of every client ID, shared by all connections (thread-safe)."""

    def __init__(
        self,
        allowed: int = FAILURES_ALLOWED,
        window: float = FAILURE_WINDOW,
        lockout: float = LOCKOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.allowed = allowed
        self.window = window
        self.lockout = lockout
        self._clock = clock
        self._lock = threading.Lock()
        self._by_client: dict[bytes, _Failures] = {}

    def check(self, client_id: bytes) -> None:
        """Raise Throttled while the client ID's 1028s are refused."""
        with self._lock:
            entry = self._by_client.get(client_id)
            remaining = entry.locked_until - self._clock() if entry else 0.0
        if remaining > 0:
            raise Throttled(
                f"1028s of client {client_id.hex()} are refused for {remaining:.0f} s more: "
                f"too many failed to decrypt"
            )

    def record(self, client_id: bytes, peer: str) -> None:
        """A 1028 of `client_id` failed to decrypt; lock the ID out if it is one too many."""
        now = self._clock()
        with self._lock:
            if len(self._by_client) > PRUNE_ABOVE:
                self._prune(now)
            entry = self._by_client.setdefault(client_id, _Failures())
            entry.times = [t for t in entry.times if now - t < self.window]
            entry.times.append(now)
            if len(entry.times) < self.allowed:
                return
            entry.times.clear()
            entry.locked_until = now + self.lockout
        # One line per lockout, however many 1028s it then refuses.
        log.warning(
            "client %s: %d 1028s failed to decrypt within %.0f s (the last from %s): forged? "
            "its 1028s are refused for %.0f s (SECURITY.md §4)",
            client_id.hex(),
            self.allowed,
            self.window,
            peer,
            self.lockout,
        )

    def _prune(self, now: float) -> None:
        self._by_client = {
            client_id: entry
            for client_id, entry in self._by_client.items()
            if entry.locked_until > now or any(now - t < self.window for t in entry.times)
        }
