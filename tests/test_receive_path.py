"""The server's receive path of a 1028 (handlers.py, crypto_utils.py), over real sockets.

A real Database and FileStore on `tmp_path`; each 1028 comes through a TCP connection on
127.0.0.1 (port 0) and is served by `handle_send_file` in a thread of the test, behind the
same PayloadReader the server uses. The content is received into one buffer and decrypted
into another, two per transfer: 256 KiB chunks, 1 MiB for files from 8 MiB on while fewer
than LARGE_BUFFERS other transfers hold such a pair (ReceiveBuffers). Among the fast tests mutmut runs
(docs/testing.md). About 5 s.
"""

from __future__ import annotations

import logging
import os
import random
import re
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import pytest

import handlers
import pagecache
from crypto_utils import cksum, encrypt
from database import Database
from handlers import (
    CHUNK_SIZE,
    LARGE_BUFFERS,
    LARGE_CHUNK_SIZE,
    LARGE_FILE_SIZE,
    RECEIVE_BUFFERS,
    ReceiveBuffers,
    RequestContext,
)
from pagecache import (
    PAGE_CACHE_WINDOW,
    THREAD_NAME,
    WRITEBACK_LAG,
    PageCacheRelease,
    WritebackBehind,
    page_cache_release,
)
from protocol import (
    CLIENT_VERSION,
    REQUEST_HEADER,
    DecryptionFailed,
    FileReceivedResponse,
    RequestCode,
    RequestHeader,
    ResponseCode,
    SendFileHead,
    encrypted_size,
)
from storage import INCOMING_DIR_NAME, FileStore
from streams import PayloadReader, PeerGone, RateGuard, read_exact_into

KEY = bytes(range(16))
PUBLIC_KEY = bytes(160)  # never used to wrap anything here: the AES key is set directly
WAIT = 30.0  # seconds: the bound of every wait on an observable condition


# --- ReceiveBuffers ----------------------------------------------------------------------


def test_a_large_file_gets_a_large_buffer_while_one_is_free() -> None:
    buffers = ReceiveBuffers(large=2)
    with buffers.lease(LARGE_FILE_SIZE) as first, buffers.lease(LARGE_FILE_SIZE + 1) as second:
        assert [len(view) for view in (*first, *second)] == [LARGE_CHUNK_SIZE] * 4
        assert first[0].obj is not first[1].obj, "the decryption's output is a buffer apart"
        assert buffers.large_in_use == 2
        with buffers.lease(10 * LARGE_FILE_SIZE) as third:  # none free: never waited for
            assert [len(view) for view in third] == [CHUNK_SIZE] * 2
            assert buffers.large_in_use == 2
    assert buffers.large_in_use == 0
    with buffers.lease(LARGE_FILE_SIZE) as again:
        assert [len(view) for view in again] == [LARGE_CHUNK_SIZE] * 2


@pytest.mark.parametrize(
    ("content_size", "chunk"),
    [
        (0, 0),
        (16, 16),
        (CHUNK_SIZE - 16, CHUNK_SIZE - 16),
        (CHUNK_SIZE, CHUNK_SIZE),
        (CHUNK_SIZE + 16, CHUNK_SIZE),
        (LARGE_FILE_SIZE - 16, CHUNK_SIZE),
    ],
)
def test_a_smaller_file_gets_a_buffer_of_its_size_up_to_a_chunk(content_size: int, chunk: int) -> None:
    buffers = ReceiveBuffers()
    with buffers.lease(content_size) as buffer:
        assert [len(view) for view in buffer] == [chunk, chunk]
        assert buffers.large_in_use == 0


def test_a_large_buffer_is_given_back_when_the_transfer_fails() -> None:
    buffers = ReceiveBuffers(large=1)
    with pytest.raises(PeerGone), buffers.lease(LARGE_FILE_SIZE):
        assert buffers.large_in_use == 1
        raise PeerGone("gone")
    assert buffers.large_in_use == 0
    with buffers.lease(LARGE_FILE_SIZE) as buffer:
        assert [len(view) for view in buffer] == [LARGE_CHUNK_SIZE] * 2


def test_the_server_shares_one_bound_of_four_large_buffers() -> None:
    assert LARGE_BUFFERS == 4
    assert LARGE_BUFFERS * LARGE_CHUNK_SIZE <= 4 * 1024 * 1024  # the memory it may take
    assert RequestContext.__dataclass_fields__["buffers"].default is RECEIVE_BUFFERS
    with RECEIVE_BUFFERS.lease(LARGE_FILE_SIZE):
        assert RECEIVE_BUFFERS.large_in_use == 1
    assert RECEIVE_BUFFERS.large_in_use == 0


# --- pagecache: PageCacheRelease and WritebackBehind ---------------------------------------


# Run after each test (release_all): every held advice goes on, every advising thread made by
# a test is closed, so that a failed test leaves nothing the next tests would wait for.
FINALIZERS: list[Callable[[], None]] = []


@pytest.fixture(autouse=True)
def release_all() -> Iterator[None]:
    yield
    while FINALIZERS:
        FINALIZERS.pop()()


@pytest.fixture
def advice(monkeypatch: pytest.MonkeyPatch) -> Advice:
    """The posix_fadvise that pagecache calls, recorded."""
    advice = Advice()
    monkeypatch.setattr(pagecache, "_fadvise", advice)
    return advice


def behind(fd: int, lag: int = WRITEBACK_LAG) -> WritebackBehind:
    release = WritebackBehind(fd, lag)
    FINALIZERS.append(release.close)
    return release


class Advice:
    """posix_fadvise calls (offset, length) as pagecache makes them, and the threads that made
    them, passed on to the real one; held while the test does not allow them (allow)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []
        self.threads: set[str] = set()
        self.fail_with: Exception | None = None  # each call raises it (after it is recorded)
        self.allowed: int | None = None  # how many calls may go on; None: all
        self.changed = threading.Condition()
        FINALIZERS.append(lambda: self.allow(None))

    def __call__(self, fd: int, offset: int, length: int, advice: int) -> None:
        assert advice == os.POSIX_FADV_DONTNEED
        with self.changed:
            self.calls.append((offset, length))
            self.threads.add(threading.current_thread().name)
            index = len(self.calls)
            self.changed.notify_all()
            assert self.changed.wait_for(lambda: self.allowed is None or index <= self.allowed, WAIT)
        if self.fail_with is not None:
            raise self.fail_with
        os.posix_fadvise(fd, offset, length, advice)

    def allow(self, calls: int | None) -> None:
        """Let the first `calls` calls go on (None: every call from now on)."""
        with self.changed:
            self.allowed = calls
            self.changed.notify_all()

    def wait_for_calls(self, count: int) -> list[tuple[int, int]]:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.calls) >= count, WAIT), self.calls
            return list(self.calls)

    def covered(self) -> int:
        """How far the calls advise the file: from its start, with no gap, each further on."""
        end = 0
        for offset, length in self.calls:
            assert offset <= end < offset + length, self.calls
            end = offset + length
        return end


def writeback_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == THREAD_NAME]


def wait_for_writeback() -> None:
    """Every advising thread ends (they may outlive the transfer's answer, not much longer)."""
    for thread in writeback_threads():
        thread.join(WAIT)
        assert not thread.is_alive(), "an advising thread did not end"


def open_on(fd: int, path: Path) -> bool:
    """Whether descriptor `fd` is open on the file `path` (once closed, its number may be
    reused by another file: the test's process opens and closes files meanwhile)."""
    try:
        opened = os.fstat(fd)
    except OSError:
        return False
    found = path.stat()
    return (opened.st_dev, opened.st_ino) == (found.st_dev, found.st_ino)


def resident_pages(path: Path) -> int:
    """Pages of `path` in the page cache now (util-linux's fincore)."""
    output = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--raw", "--output", "PAGES", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(output.split()[0])


def test_every_window_advises_the_last_two_and_the_end_the_rest(tmp_path: Path, advice: Advice) -> None:
    window = PAGE_CACHE_WINDOW
    with (tmp_path / "f").open("wb") as file:
        release = PageCacheRelease(file.fileno())
        step = LARGE_CHUNK_SIZE
        for total in range(step, 3 * window + 1, step):
            release.written(total, last=False)
        release.written(3 * window + 5, last=True)
    assert advice.calls == [(0, window), (0, 2 * window), (window, 2 * window), (2 * window, window + 5)]
    assert advice.threads == {threading.current_thread().name}


def test_a_file_smaller_than_a_window_is_advised_once_at_its_end(tmp_path: Path, advice: Advice) -> None:
    with (tmp_path / "f").open("wb") as file:
        release = PageCacheRelease(file.fileno())
        release.written(PAGE_CACHE_WINDOW - 1, last=False)
        assert advice.calls == []
        release.written(PAGE_CACHE_WINDOW + 100, last=True)
    assert advice.calls == [(0, PAGE_CACHE_WINDOW + 100)]


def test_the_advice_frees_the_pages_once_they_are_written_back(tmp_path: Path) -> None:
    """The real effect: the kernel drops the file's pages from its cache (fincore counts them)."""
    path = tmp_path / "f"
    size = 2 * PAGE_CACHE_WINDOW
    with path.open("wb", buffering=0) as file:
        file.write(os.urandom(size))
        os.fsync(file.fileno())  # written back: the pages are clean and can go
        assert resident_pages(path) > 0
        PageCacheRelease(file.fileno()).written(size, last=True)
        assert resident_pages(path) == 0


def test_writeback_behind_advises_the_whole_file_from_a_thread_of_its_own(
    tmp_path: Path, advice: Advice
) -> None:
    size = 5 * PAGE_CACHE_WINDOW + 7
    with (tmp_path / "f").open("wb") as file:
        release = behind(file.fileno())
        assert release.fd != file.fileno() and open_on(release.fd, tmp_path / "f"), "a dup"
        for total in range(LARGE_CHUNK_SIZE, size, LARGE_CHUNK_SIZE):
            release.written(total, last=False)
        release.written(size, last=True)
        release.close()
        release.thread.join(WAIT)
        assert not open_on(release.fd, tmp_path / "f"), "the thread's own descriptor is closed"
    assert not release.thread.is_alive()
    assert advice.covered() == size
    assert advice.threads == {THREAD_NAME}
    assert release.waits == 0, "never more than WRITEBACK_LAG behind"
    assert release.thread.daemon, "an advice held by a slow disk does not hold the server's exit"


def test_a_window_written_is_advised_without_waiting_for_more(tmp_path: Path, advice: Advice) -> None:
    with (tmp_path / "f").open("wb") as file:
        release = behind(file.fileno())
        release.written(PAGE_CACHE_WINDOW - LARGE_CHUNK_SIZE, last=False)
        release.written(PAGE_CACHE_WINDOW, last=False)
        assert advice.wait_for_calls(1) == [(0, PAGE_CACHE_WINDOW)]
        release.written(PAGE_CACHE_WINDOW + LARGE_CHUNK_SIZE, last=False)  # less than a window more
        release.written(PAGE_CACHE_WINDOW + LARGE_CHUNK_SIZE + 5, last=True)
        release.thread.join(WAIT)
    assert advice.calls == [(0, PAGE_CACHE_WINDOW), (0, PAGE_CACHE_WINDOW + LARGE_CHUNK_SIZE + 5)]


def test_the_writes_wait_for_the_advice_only_when_it_is_the_lag_behind(
    tmp_path: Path, advice: Advice
) -> None:
    """Each advice is held until the test allows it: the writes go on up to `lag` bytes ahead
    of what is advised, and the first write past that waits until an advice is done. (The
    advising thread takes what is written when it wakes: a window, or a chunk or so more.)"""
    advice.allow(0)  # every call held until allowed
    lag, step, size = PAGE_CACHE_WINDOW, LARGE_CHUNK_SIZE, 4 * PAGE_CACHE_WINDOW
    progress: list[int] = []
    with (tmp_path / "f").open("wb") as file:
        release = behind(file.fileno(), lag=lag)

        def write() -> None:
            for total in range(step, size + 1, step):
                progress.append(total)
                release.written(total, last=total == size)

        writer = threading.Thread(target=write)
        writer.start()
        try:
            with release.changed:  # the first advice is held: nothing is done
                assert release.changed.wait_for(lambda: release.waits == 1, WAIT)
                assert (progress[-1], release.done) == (lag + step, 0)
            [(_, first)] = advice.wait_for_calls(1)
            assert lag <= first <= lag + step
            advice.allow(1)  # the first is done; the second is held
            assert advice.wait_for_calls(2)[1][0] == 0, "the window before the last one, again"
            with release.changed:
                assert release.changed.wait_for(lambda: release.waits == 2, WAIT)
                assert (progress[-1], release.done) == (first + lag + step, first)
        finally:
            advice.allow(None)
        writer.join(WAIT)
        release.thread.join(WAIT)
    assert not writer.is_alive() and not release.thread.is_alive()
    assert progress[-1] == size
    assert advice.covered() == size


@pytest.mark.parametrize("advised_before_close", [False, True])
def test_the_advice_ends_at_close_when_the_transfer_ends_early(
    tmp_path: Path, advice: Advice, advised_before_close: bool
) -> None:
    written = PAGE_CACHE_WINDOW + 3
    with (tmp_path / "f").open("wb") as file:
        release = behind(file.fileno())
        release.written(written, last=False)
        if advised_before_close:
            with release.changed:
                assert release.changed.wait_for(lambda: release.done == written, WAIT)
        release.close()  # the peer vanished, say
        release.thread.join(WAIT)
    assert not release.thread.is_alive()
    assert advice.calls == [(0, written)], "each byte advised once: nothing again at close"


def test_an_advising_thread_that_fails_is_logged_and_holds_no_write(
    tmp_path: Path, advice: Advice, caplog: pytest.LogCaptureFixture
) -> None:
    """Not an OSError (a refusal, ignored) but a bug: the thread ends with a log line, and the
    writes go on past the lag without waiting for it."""
    advice.fail_with = RuntimeError("a bug")
    with caplog.at_level(logging.ERROR, logger="pagecache"), (tmp_path / "f").open("wb") as file:
        release = behind(file.fileno(), lag=PAGE_CACHE_WINDOW)
        release.written(PAGE_CACHE_WINDOW, last=False)
        release.thread.join(WAIT)
        assert not release.thread.is_alive()
        release.written(3 * PAGE_CACHE_WINDOW, last=True)  # past the lag: returns
    assert release.ended and release.done == 0
    [record] = caplog.records
    assert "page cache advice" in record.getMessage() and record.exc_info is not None


def refuse(error: Exception) -> Callable[..., NoReturn]:
    """A stand-in for a call that fails with `error`."""

    def call(*_args: object) -> NoReturn:
        raise error

    return call


def test_page_cache_release_advises_inline_without_a_thread_to_be_had(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "f"
    with path.open("wb") as file:
        fd = file.fileno()
        assert type(page_cache_release(fd, behind=False)) is PageCacheRelease
        release = page_cache_release(fd, behind=True)
        assert isinstance(release, WritebackBehind)
        release.close()
        release.thread.join(WAIT)
        dups: list[int] = []
        real_dup = os.dup

        def dup(fd: int) -> int:
            dups.append(real_dup(fd))
            return dups[-1]

        with monkeypatch.context() as patch:
            patch.setattr(os, "dup", dup)
            patch.setattr(threading.Thread, "start", refuse(RuntimeError("can't start new thread")))
            assert type(page_cache_release(fd, behind=True)) is PageCacheRelease
        [made] = dups
        assert not open_on(made, path), "the dup made for the thread is closed"
        with monkeypatch.context() as patch:
            patch.setattr(os, "dup", refuse(OSError(24, "Too many open files")))
            assert type(page_cache_release(fd, behind=True)) is PageCacheRelease
        with monkeypatch.context() as patch:
            patch.setattr(pagecache, "_fadvise", None)  # Windows, macOS: nothing to advise
            assert type(page_cache_release(fd, behind=True)) is PageCacheRelease


@pytest.mark.parametrize("size", [3 * CHUNK_SIZE + 1, PAGE_CACHE_WINDOW + 1], ids=["inline", "behind"])
def test_a_refused_advice_is_ignored(receiver: Receiver, advice: Advice, size: int) -> None:
    advice.fail_with = OSError(22, "Invalid argument")
    content = os.urandom(size)
    assert send_whole(receiver, "x.bin", content).response().cksum == cksum(content)
    assert receiver.stored_content("x.bin") == content
    wait_for_writeback()
    assert advice.covered() == size


def test_without_fadvise_the_file_is_stored_all_the_same(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pagecache, "_fadvise", None)  # Windows, macOS
    content = os.urandom(PAGE_CACHE_WINDOW + 1)
    assert send_whole(receiver, "x.bin", content).response().cksum == cksum(content)
    assert receiver.stored_content("x.bin") == content
    assert writeback_threads() == []


def test_a_received_file_is_advised_window_by_window_to_its_end(tmp_path: Path, advice: Advice) -> None:
    """Through the receive path without a large pair (none free): inline, a window at a time,
    the advice covers the plaintext written, padding cut off."""
    receiver = Receiver(tmp_path, ReceiveBuffers(large=0))
    try:
        content = os.urandom(2 * PAGE_CACHE_WINDOW + 3)
        send_whole(receiver, "x.bin", content).response()
        window = PAGE_CACHE_WINDOW
        assert advice.calls == [(0, window), (0, 2 * window), (window, window + 3)]
        assert advice.threads == {"handler"}
        assert receiver.stored_content("x.bin") == content
    finally:
        receiver.close()


def test_a_large_file_is_answered_while_its_advice_is_still_held(receiver: Receiver, advice: Advice) -> None:
    """With a large pair, the advice runs behind in a thread of its own: the 2103 does not wait
    for it (a disk slower than the network), and it goes on to the end after the answer."""
    advice.allow(0)  # every call held until allowed
    content = os.urandom(LARGE_FILE_SIZE + 3 * PAGE_CACHE_WINDOW + 5)
    assert send_whole(receiver, "x.bin", content).response().cksum == cksum(content)
    assert receiver.stored_content("x.bin") == content
    [thread] = writeback_threads()
    assert thread.is_alive(), "its advice is held"
    advice.allow(None)
    thread.join(WAIT)
    assert not thread.is_alive()
    assert advice.covered() == len(content)
    assert advice.threads == {THREAD_NAME}


# --- 1028 over a socket ------------------------------------------------------------------


class ChunkLog(logging.Handler):
    """The handlers' 'receiving ... N at a time' lines, each 1028's chunk size, waited on."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.chunks: dict[str, int] = {}
        self.changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        found = re.search(r"receiving '([^']*)', \d+ bytes, (\d+) at a time", record.getMessage())
        if found:
            with self.changed:
                self.chunks[found[1]] = int(found[2])
                self.changed.notify_all()

    def wait_for(self, count: int) -> dict[str, int]:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.chunks) >= count, WAIT), self.chunks
            return dict(self.chunks)


@pytest.fixture
def chunk_log() -> Iterator[ChunkLog]:
    handler = ChunkLog()
    logger = logging.getLogger("handlers")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@dataclass
class Transfer:
    """One 1028 sent by the test's side of a connection and served by handle_send_file."""

    name: str
    content: bytes
    client: socket.socket
    thread: threading.Thread
    reply: list[tuple[ResponseCode, bytes] | None] = field(default_factory=list)
    error: list[BaseException] = field(default_factory=list)

    def finish(self) -> None:
        self.thread.join(WAIT)
        assert not self.thread.is_alive()
        self.client.close()

    def response(self) -> FileReceivedResponse:
        self.finish()
        assert not self.error, self.error
        [reply] = self.reply
        assert reply is not None and reply[0] == ResponseCode.FILE_RECEIVED
        return FileReceivedResponse.unpack(reply[1])


class Receiver:
    """The server's side: a Database, a FileStore, a listening socket, the handler."""

    def __init__(self, data_dir: Path, buffers: ReceiveBuffers) -> None:
        self.db = Database(data_dir / "receive.db")
        self.store = FileStore(data_dir, min_free_space=0)
        self.buffers = buffers
        client_id = self.db.register_client("alice")
        assert client_id is not None and self.db.set_keys(client_id, "alice", PUBLIC_KEY, KEY)
        self.client_id = client_id
        self.listener = socket.create_server(("127.0.0.1", 0))

    def close(self) -> None:
        self.listener.close()
        self.db.close()
        self.store.close()

    def start(self, name: str, content: bytes, ciphertext: bytes | None = None) -> Transfer:
        """Connect, and serve the connection's one 1028 in a thread; the caller sends it."""
        client = socket.create_connection(self.listener.getsockname(), timeout=WAIT)
        connection, _ = self.listener.accept()
        transfer = Transfer(name, content, client, threading.Thread(target=lambda: None))
        transfer.thread = threading.Thread(target=self._serve, args=(connection, transfer), name="handler")
        transfer.thread.start()
        return transfer

    def _serve(self, connection: socket.socket, transfer: Transfer) -> None:
        connection.settimeout(WAIT)  # as the server's connections: a poll before each recv
        with connection, connection.makefile("rb") as stream:
            guard = RateGuard(0, WAIT)
            raw = bytearray(REQUEST_HEADER.size)
            read_exact_into(stream, memoryview(raw), guard)
            header = RequestHeader.unpack(bytes(raw))
            payload = PayloadReader(stream, header.payload_size, guard)
            context = RequestContext(header, payload, self.db, self.store, buffers=self.buffers)
            try:
                transfer.reply.append(handlers.handle_send_file(context))
            except BaseException as err:  # looked at by the test
                transfer.error.append(err)

    def request(self, name: str, ciphertext: bytes) -> bytes:
        head = SendFileHead(len(ciphertext), name).pack()
        header = RequestHeader(
            self.client_id, CLIENT_VERSION, RequestCode.SEND_FILE, len(head) + len(ciphertext)
        )
        return header.pack() + head

    def stored(self) -> list[Path]:
        return sorted(path for path in self.store.root.rglob("*") if path.is_file())

    def stored_content(self, name: str) -> bytes:
        record = self.db.get_file(self.client_id, name)
        assert record is not None and not record.verified
        return (self.store.data_dir / record.path_name).read_bytes()


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    receiver = Receiver(tmp_path, ReceiveBuffers())
    yield receiver
    receiver.close()
    wait_for_writeback()  # every transfer's advising thread has ended, failed ones' too


def send_whole(receiver: Receiver, name: str, content: bytes) -> Transfer:
    ciphertext = encrypt(KEY, content)
    transfer = receiver.start(name, content)
    transfer.client.sendall(receiver.request(name, ciphertext) + ciphertext)
    return transfer


# Plaintext sizes around the chunks: 256 KiB and 1 MiB multiples +-1, the padding block
# alone in the last chunk, and files around the 8 MiB from which 1 MiB chunks are used.
SIZES = [1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE - 1, 4 * CHUNK_SIZE + 1]
SIZES += [LARGE_CHUNK_SIZE - 1, LARGE_CHUNK_SIZE, LARGE_CHUNK_SIZE + 1]
SIZES += [LARGE_FILE_SIZE - 17, LARGE_FILE_SIZE - 16, LARGE_FILE_SIZE - 1, LARGE_FILE_SIZE]
SIZES += [LARGE_FILE_SIZE + LARGE_CHUNK_SIZE - 1, LARGE_FILE_SIZE + LARGE_CHUNK_SIZE + 1]
SIZES += [LARGE_FILE_SIZE + 12_345]


@pytest.mark.parametrize("size", SIZES)
def test_1028_is_stored_byte_for_byte_with_its_cksum(
    receiver: Receiver, chunk_log: ChunkLog, size: int
) -> None:
    content = random.Random(size).randbytes(size)
    response = send_whole(receiver, "x.bin", content).response()
    content_size = encrypted_size(size)
    assert response == FileReceivedResponse(receiver.client_id, content_size, "x.bin", cksum(content))
    assert receiver.stored_content("x.bin") == content
    assert len(receiver.stored()) == 1, "the stored file alone: no temporary file left"
    expected = LARGE_CHUNK_SIZE if content_size >= LARGE_FILE_SIZE else min(CHUNK_SIZE, content_size)
    assert chunk_log.wait_for(1) == {"x.bin": expected}
    assert receiver.buffers.large_in_use == 0


def test_a_file_that_does_not_decrypt_in_its_last_large_chunk_leaves_nothing(receiver: Receiver) -> None:
    ciphertext = encrypt(bytes(16), os.urandom(LARGE_FILE_SIZE + 100))  # another key
    transfer = receiver.start("x.bin", b"")
    transfer.client.sendall(receiver.request("x.bin", ciphertext) + ciphertext)
    transfer.finish()
    [error] = transfer.error
    assert isinstance(error, DecryptionFailed)
    assert receiver.db.get_file(receiver.client_id, "x.bin") is None
    assert receiver.stored() == []
    assert receiver.buffers.large_in_use == 0


def test_concurrent_large_files_hold_at_most_the_bound_of_large_buffers(
    receiver: Receiver, chunk_log: ChunkLog
) -> None:
    """LARGE_BUFFERS + 1 large files at once, each held after its first chunk: the last to
    start is received in 256 KiB chunks; all are stored whole; the buffers are given back."""
    transfers = []
    for index in range(LARGE_BUFFERS + 1):
        content = random.Random(index).randbytes(LARGE_FILE_SIZE + 1000 * index + 1)
        ciphertext = encrypt(KEY, content)
        transfer = receiver.start(f"f{index}.bin", content)
        transfer.client.sendall(receiver.request(transfer.name, ciphertext) + ciphertext[:LARGE_CHUNK_SIZE])
        chunk_log.wait_for(index + 1)  # one at a time: the order of the leases is known
        transfers.append((transfer, ciphertext))
    chunks = chunk_log.wait_for(LARGE_BUFFERS + 1)
    assert receiver.buffers.large_in_use == LARGE_BUFFERS
    assert sorted(chunks.values()) == [CHUNK_SIZE] + [LARGE_CHUNK_SIZE] * LARGE_BUFFERS
    assert chunks[f"f{LARGE_BUFFERS}.bin"] == CHUNK_SIZE
    for transfer, ciphertext in transfers:
        transfer.client.sendall(ciphertext[LARGE_CHUNK_SIZE:])
    for transfer, _ in transfers:
        assert transfer.response().cksum == cksum(transfer.content)
        assert receiver.stored_content(transfer.name) == transfer.content
    assert receiver.buffers.large_in_use == 0
    again = send_whole(receiver, "again.bin", bytes(LARGE_FILE_SIZE))
    again.response()
    assert chunk_log.wait_for(LARGE_BUFFERS + 2)["again.bin"] == LARGE_CHUNK_SIZE


@pytest.mark.parametrize(
    "sent",
    [0, 100, CHUNK_SIZE - 1, CHUNK_SIZE + 100, LARGE_CHUNK_SIZE + LARGE_CHUNK_SIZE // 2],
    ids=[
        "no-content",
        "mid-first-chunk",
        "just-short-of-a-small-chunk",
        "mid-second-small-chunk",
        "mid-large-chunk",
    ],
)
@pytest.mark.parametrize("size", [8 * CHUNK_SIZE, LARGE_FILE_SIZE + 5], ids=["small-chunks", "large-chunks"])
def test_a_peer_vanishing_mid_chunk_leaves_nothing(receiver: Receiver, size: int, sent: int) -> None:
    ciphertext = encrypt(KEY, os.urandom(size))
    transfer = receiver.start("x.bin", b"")
    transfer.client.sendall(receiver.request("x.bin", ciphertext) + ciphertext[:sent])
    transfer.client.close()
    transfer.finish()
    [error] = transfer.error
    assert isinstance(error, PeerGone)
    assert error.missing > 0
    assert receiver.db.get_file(receiver.client_id, "x.bin") is None
    assert receiver.stored() == []
    assert list((receiver.store.root / INCOMING_DIR_NAME).iterdir()) == []
    assert receiver.buffers.large_in_use == 0
