"""Exact reads of requests from a client connection, with a floor on the peer's rate.

The framing of PROTOCOL.md §1 needs exact reads from a buffered stream (the
surplus of one read belongs to the next request). A defensive server also
needs to bound how long one request may take: the idle timeout alone lets a
peer pin a thread by trickling a byte just before every timeout. So every
read here goes through a `RateGuard`: once a request has lasted the grace
period, it must have averaged at least the minimum rate, or it is cut off.
"""

from __future__ import annotations

import time
from io import BufferedIOBase

from protocol import MalformedPayload

# Largest piece read at once while skipping the rest of a refused payload.
SKIP_PIECE_SIZE = 64 * 1024


class PeerGone(Exception):
    """The peer closed the connection (or went silent) in the middle of a request.

    `missing` is how many bytes the interrupted read still expected.
    """

    def __init__(self, message: str, missing: int = 0) -> None:
        super().__init__(message)
        self.missing = missing


class TooSlow(PeerGone):
    """The peer sends a request more slowly than the server's minimum rate."""


class RateGuard:
    """Tracks one request's bytes and cuts off a peer that falls below `min_rate`."""

    def __init__(self, min_rate: float, grace: float) -> None:
        self.min_rate = min_rate
        self.grace = grace
        self.restart()

    def restart(self) -> None:
        self._started = time.monotonic()
        self._received = 0

    def count(self, size: int) -> None:
        self._received += size
        elapsed = time.monotonic() - self._started
        if self._received < self.min_rate * (elapsed - self.grace):  # within the grace, <= 0 bytes are due
            raise TooSlow(f"{self._received} bytes in {elapsed:.1f} s is below {self.min_rate:.0f} bytes/s")


def read_exact_into(stream: BufferedIOBase, view: memoryview, guard: RateGuard) -> None:
    """Fill `view` from `stream`, one socket read at a time so the guard sees every piece.

    A large view is filled straight from the socket, without a copy through
    the stream's buffer (BufferedReader.readinto1).
    """
    filled = 0
    while filled < len(view):
        count = stream.readinto1(view[filled:])
        if not count:
            raise PeerGone(f"connection closed {len(view) - filled} bytes short", len(view) - filled)
        filled += count
        guard.count(count)


class PayloadReader:
    """Exact reads of one request's payload.

    Counts what is still unread, so that after a refusal the connection loop
    knows whether the rest can be skipped (the stream stays aligned on the
    next request) or the connection must close.
    """

    def __init__(self, stream: BufferedIOBase, size: int, guard: RateGuard) -> None:
        self._stream = stream
        self._guard = guard
        self.unread = size
        # True once the request's end is known for sure (a 1028's head agrees with its
        # header): a refusal then reads the rest, however large, instead of closing (§3).
        self.framed = False
        # Bytes added to the declared size: a 1028 that declared its head alone (§7).
        self.head_only_size = 0

    def mark_framed(self) -> None:
        self.framed = True

    def extend(self, size: int) -> None:
        """`size` more bytes follow than the header declared (a 1028's content, §7)."""
        self.unread += size
        self.head_only_size += size

    def readinto(self, view: memoryview) -> None:
        """Fill `view` completely with the next bytes of the payload."""
        if len(view) > self.unread:
            raise MalformedPayload(f"payload needs {len(view)} more bytes, {self.unread} left")
        try:
            read_exact_into(self._stream, view, self._guard)
        finally:
            # What was consumed is gone from the stream, even if the read failed halfway.
            self.unread -= len(view)

    def read(self, size: int) -> bytes:
        """The next `size` bytes (small reads only: the fixed-size parts of a payload)."""
        buffer = bytearray(size)
        self.readinto(memoryview(buffer))
        return bytes(buffer)

    def read_all(self) -> bytes:
        return self.read(self.unread)

    def skip_rest(self) -> None:
        """Read the rest and throw it away, under the rate guard like every read."""
        piece = memoryview(bytearray(min(self.unread, SKIP_PIECE_SIZE)))
        while self.unread:
            self.readinto(piece[: min(self.unread, len(piece))])
