"""streams.py on its own: exact reads (§1 framing), the rate guard, skipping a refused payload.

A stream that hands out bytes a few at a time stands for the socket; a clock the test moves
stands for time.monotonic, so the rate guard is tested without waiting. Among the fast
tests mutmut runs (docs/testing.md).
"""

from __future__ import annotations

import io
import os
from types import SimpleNamespace
from typing import Any

import pytest

from protocol import ProtocolError
from streams import SKIP_PIECE_SIZE, PayloadReader, PeerGone, RateGuard, TooSlow, read_exact_into


class Trickle(io.BufferedIOBase):
    """A stream whose every read returns at most `piece` bytes, as a socket may."""

    def __init__(self, data: bytes, piece: int) -> None:
        self._data = io.BytesIO(data)
        self.piece = piece
        self.reads: list[int] = []

    def readable(self) -> bool:
        return True

    def readinto1(self, buffer: Any) -> int:
        view = memoryview(buffer)
        chunk = self._data.read(min(self.piece, len(view)))
        view[: len(chunk)] = chunk
        self.reads.append(len(chunk))
        return len(chunk)

    def rest(self) -> bytes:
        return self._data.read()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr("streams.time", SimpleNamespace(monotonic=fake))  # streams' clock only
    return fake


def unguarded() -> RateGuard:
    return RateGuard(min_rate=0, grace=60)


# --- read_exact_into --------------------------------------------------------------------


@pytest.mark.parametrize("piece", [1, 3, 1000])
def test_read_exact_into_fills_the_view_and_leaves_the_rest(piece: int) -> None:
    data = os.urandom(100)
    stream = Trickle(data + b"next request", piece)
    buffer = bytearray(100)
    read_exact_into(stream, memoryview(buffer), unguarded())
    assert bytes(buffer) == data
    assert stream.rest() == b"next request"


def test_read_exact_into_of_nothing_reads_nothing() -> None:
    stream = Trickle(b"abc", 1)
    read_exact_into(stream, memoryview(bytearray()), unguarded())
    assert stream.reads == [] and stream.rest() == b"abc"


def test_a_stream_that_closes_early_is_a_peer_gone_saying_how_short() -> None:
    with pytest.raises(PeerGone, match="closed 4 bytes short") as caught:
        read_exact_into(Trickle(b"123456", 4), memoryview(bytearray(10)), unguarded())
    assert caught.value.missing == 4  # the server adds what the request has left unread
    assert PeerGone("gone between requests").missing == 0, "unless told, nothing is missing"


def test_the_guard_sees_every_piece(clock: Clock) -> None:
    guard = RateGuard(min_rate=0, grace=60)
    stream = Trickle(bytes(10), 3)
    read_exact_into(stream, memoryview(bytearray(10)), guard)
    assert stream.reads == [3, 3, 3, 1]
    assert guard._received == 10


# --- RateGuard ---------------------------------------------------------------------------


def test_the_guard_allows_anything_during_the_grace_period(clock: Clock) -> None:
    guard = RateGuard(min_rate=1000, grace=10)
    clock.now += 10
    guard.count(0)  # at the grace period itself, not beyond it: fine


def test_the_guard_cuts_off_a_peer_below_the_rate_after_the_grace(clock: Clock) -> None:
    guard = RateGuard(min_rate=1000, grace=10)
    clock.now += 12  # 2 s past the grace: 2000 bytes are due
    with pytest.raises(TooSlow, match=r"1999 bytes in 12\.0 s is below 1000 bytes/s"):
        guard.count(1999)


def test_the_guard_accepts_a_peer_at_the_rate(clock: Clock) -> None:
    guard = RateGuard(min_rate=1000, grace=10)
    clock.now += 12
    guard.count(2000)
    clock.now += 1
    guard.count(1000)


def test_restart_begins_a_new_request(clock: Clock) -> None:
    guard = RateGuard(min_rate=1000, grace=10)
    guard.count(5000)
    clock.now += 100
    guard.restart()
    clock.now += 10.5  # 500 bytes due, counted from the restart
    guard.count(500)
    guard.restart()
    clock.now += 10.5
    with pytest.raises(TooSlow):
        guard.count(499)


def test_too_slow_is_a_peer_gone() -> None:
    assert issubclass(TooSlow, PeerGone)


# --- PayloadReader --------------------------------------------------------------------------


def test_payload_reader_reads_exactly_its_payload() -> None:
    stream = Trickle(b"headrest" + b"NEXT", 3)
    reader = PayloadReader(stream, 8, unguarded())
    assert reader.read(4) == b"head"
    assert reader.unread == 4
    assert reader.read_all() == b"rest"
    assert reader.unread == 0
    assert stream.rest() == b"NEXT"


def test_payload_reader_refuses_to_read_past_its_payload() -> None:
    stream = Trickle(b"abcdefgh", 8)
    reader = PayloadReader(stream, 4, unguarded())
    with pytest.raises(ProtocolError, match="payload needs 5 more bytes, 4 left"):
        reader.read(5)
    assert reader.unread == 4 and stream.reads == []
    assert reader.read(4) == b"abcd"


def test_what_a_failed_read_consumed_is_counted_as_read() -> None:
    reader = PayloadReader(Trickle(b"abc", 2), 10, unguarded())
    with pytest.raises(PeerGone):
        reader.read(5)
    assert reader.unread == 5


def test_readinto_fills_a_callers_view() -> None:
    reader = PayloadReader(Trickle(b"0123456789", 4), 10, unguarded())
    buffer = bytearray(6)
    reader.readinto(memoryview(buffer))
    assert buffer == b"012345" and reader.unread == 4


@pytest.mark.parametrize(
    "size", [0, 1, SKIP_PIECE_SIZE - 1, SKIP_PIECE_SIZE, SKIP_PIECE_SIZE + 1, 3 * SKIP_PIECE_SIZE]
)
def test_skip_rest_reads_exactly_the_rest_of_the_payload(size: int) -> None:
    stream = Trickle(b"h" + os.urandom(size) + b"NEXT", 1 << 20)
    reader = PayloadReader(stream, size + 1, unguarded())
    reader.read(1)
    reader.skip_rest()
    assert reader.unread == 0
    assert stream.rest() == b"NEXT"
    assert all(read <= SKIP_PIECE_SIZE for read in stream.reads)


def test_a_new_payload_reader_is_not_framed_until_told_and_has_nothing_added() -> None:
    reader = PayloadReader(Trickle(b"", 1), 259, unguarded())
    assert reader.framed is False and reader.head_only_size == 0 and reader.unread == 259
    reader.mark_framed()
    assert reader.framed is True


def test_extend_adds_bytes_to_the_payload_and_counts_them_apart() -> None:
    # A 1028 that declared its head alone (§7): the content is added once the head is read.
    stream = Trickle(b"head" + b"c" * 7 + b"NEXT", 5)
    reader = PayloadReader(stream, 4, unguarded())
    assert reader.read(4) == b"head"
    reader.extend(3)
    reader.extend(4)
    assert reader.unread == 7 and reader.head_only_size == 7
    assert reader.read_all() == b"c" * 7
    assert stream.rest() == b"NEXT"
