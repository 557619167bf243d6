"""Connection slots: how many connections the server serves at once, and who gives way.

A slot is held from the moment a connection is accepted until the server has
decided to close it, and is given back *before* the socket is closed: a client
that sees its connection closed can reconnect at once and find the slot free.

When the server is full, a new connection takes the slot of the connection
that has been idle between two requests the longest: that client loses
nothing but the connection (it sees a close between requests, never in the
middle of one). Only when every connection is in the middle of a request is
the new one refused. So holding slots costs an attacker a request in progress
on each, and a request must keep up the minimum rate once it has lasted the
idle timeout (streams.RateGuard): idle slots cost nothing to take back.

One address may hold at most `max_per_address` slots; over that, its new
connection takes the slot of its own longest-idle connection, or is refused.
So one host cannot push everyone else out by opening connections quickly.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Slot:
    """One accepted connection's slot."""

    host: str  # the peer's address, without the port: what the per-address limit counts
    peer: str  # host:port, for log lines
    sock: socket.socket
    # When the connection last became idle (accepted, or its last response sent);
    # None while it is in the middle of a request.
    idle_since: float | None
    released: bool = field(default=False)


class ConnectionSlots:
    """The table of slots, shared by the accepting thread and the connection threads."""

    def __init__(
        self, max_total: int, max_per_address: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self._clock = clock
        self._lock = threading.Lock()
        self._slots: list[Slot] = []

    def __len__(self) -> int:
        with self._lock:
            return len(self._slots)

    def acquire(self, sock: socket.socket, host: str, peer: str) -> Slot | None:
        """A slot for a new connection, taken from the longest-idle one if need be; None: refuse."""
        with self._lock:
            own = [slot for slot in self._slots if slot.host == host]
            victim: Slot | None = None
            if len(own) >= self.max_per_address:
                victim = self._longest_idle(own)
                if victim is None:
                    log.warning(
                        "refusing %s: its address already has %d connections, none idle", peer, len(own)
                    )
                    return None
            elif len(self._slots) >= self.max_total:
                victim = self._longest_idle(self._slots)
                if victim is None:
                    log.warning("refusing %s: %d connections already open, none idle", peer, len(self._slots))
                    return None
            now = self._clock()
            if victim is not None:
                self._remove(victim)
                assert victim.idle_since is not None
                log.info(
                    "%s: closed after %.1f s idle, to make room for %s",
                    victim.peer,
                    now - victim.idle_since,
                    peer,
                )
            slot = Slot(host, peer, sock, idle_since=now)
            self._slots.append(slot)
        if victim is not None:
            # Wakes its thread, blocked reading the next request, with end of stream. Its
            # client sees the close between two requests, where §3 lets the server close.
            with contextlib.suppress(OSError):  # already closed by its peer
                victim.sock.shutdown(socket.SHUT_RDWR)
        return slot

    def busy(self, slot: Slot) -> bool:
        """The connection has begun a request. False if it lost its slot to a new connection."""
        with self._lock:
            if slot.released:
                return False
            slot.idle_since = None
            return True

    def idle(self, slot: Slot) -> None:
        """The connection has answered a request and waits for the next one."""
        with self._lock:
            slot.idle_since = self._clock()

    def release(self, slot: Slot) -> None:
        """Give the slot back (idempotent: an evicted connection's slot is already gone)."""
        with self._lock:
            if not slot.released:
                self._remove(slot)

    def _remove(self, slot: Slot) -> None:
        slot.released = True
        self._slots.remove(slot)

    @staticmethod
    def _longest_idle(slots: list[Slot]) -> Slot | None:
        idle = [slot for slot in slots if slot.idle_since is not None]
        return min(idle, key=lambda slot: slot.idle_since or 0.0, default=None)
