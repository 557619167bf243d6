"""§7 interoperability: names with garbage, 1025 after 2106, vanishing peers, one write, no spin."""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from crypto_utils import encrypt
from grading.database import SubmissionDatabase
from grading.harness import RawConnection, ServerProcess, bytes_in_flight, wait_until
from grading.plugin import ServerFactory
from grading.wire import (
    NameFactory,
    confirm,
    exchange_keys,
    expect,
    files_under,
    new_client,
    register,
    send_file,
    send_file_request,
    server_own,
    still_serves,
)
from protocol import NAME_FIELD_SIZE, RequestCode, RequestHeader, ResponseCode, encode_name, pack_request

spec = pytest.mark.spec
SPIN_WINDOW = 3.0  # seconds of the server's CPU measured after a peer goes (§7 no spin)
SPIN_BUDGET = 0.5  # CPU seconds a server may use in that window: an idle one uses about none


@spec("§7 file names", needs=("§2 1028",))
def test_s7_a_file_name_with_garbage_after_its_nul(
    server: ServerProcess, db: SubmissionDatabase, unique_name: NameFactory
) -> None:
    field = (b"report.pdf\0" + b"\xcc" * 40).ljust(NAME_FIELD_SIZE, b"\xcc")
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, unique_name(), server)
        ciphertext = encrypt(aes_key, b"%PDF")
        payload = len(ciphertext).to_bytes(4, "little") + field + ciphertext
        conn.send(pack_request(client_id, RequestCode.SEND_FILE, payload))
        reply = expect(conn, ResponseCode.FILE_RECEIVED, "§7 file names: a 1028 of 'report.pdf\\0' + garbage")
    echoed = reply[20 : 20 + NAME_FIELD_SIZE].split(b"\0", 1)[0]
    assert echoed == b"report.pdf", f"§7 file names: 2103 echoes the text before the NUL, got {echoed!r}"
    names = [row.file_name for row in db.files_of(client_id)]
    assert names == ["report.pdf"], f"§7 file names: FileName is 'report.pdf', not {names}"


@spec("§7 reconnect denied", needs=("§2 1025", "§2 1026", "§2 1027 denied"))
def test_s7_after_2106_a_1025_on_the_same_connection(server: ServerProcess, unique_name: NameFactory) -> None:
    name = unique_name()
    with RawConnection(server.address) as conn:
        conn.send(pack_request(os.urandom(16), RequestCode.RECONNECT, encode_name(name)))
        expect(conn, ResponseCode.RECONNECT_DENIED, "§7: 1027 of a client this server does not know")
        client_id = register(conn, name)
        exchange_keys(conn, client_id, name, server)


def _vanish_mid_file(server: ServerProcess, unique_name: NameFactory) -> bytes:
    """A 1028 of 1 MB cut in half; the close comes once the server has read the half. The client ID."""
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, unique_name(), server)
        request = send_file_request(client_id, aes_key, "half.bin", os.urandom(1_000_000))
        conn.send(request[: len(request) // 2])
        read = wait_until(lambda: bytes_in_flight(conn) in (0, None))
        assert read, (
            f"§7: the server did not read the first half of a 1028 ({bytes_in_flight(conn)} bytes unread)"
        )
    return client_id


# A server that spins on the vanished peer's connection never gets to clean up: that is §7 no
# spin's failure, not a second one here.
@spec("§7 vanishing peer", needs=("§2 1028", "§7 no spin"))
def test_s7_a_peer_vanishing_mid_file_leaves_nothing(
    server: ServerProcess, db: SubmissionDatabase, unique_name: NameFactory
) -> None:
    before = files_under(server.data_dir)

    def left_behind() -> list[str]:
        return [path.name for path in files_under(server.data_dir) - before if not server_own(path)]

    client_id = _vanish_mid_file(server, unique_name)
    # The server notices the close in its own time: each condition is waited for, boundedly.
    still_serves(server, unique_name)
    assert wait_until(lambda: not db.files_of(client_id)), (
        "§7 vanishing peer: a client that closes in the middle of a 1028 leaves a files row"
    )
    assert wait_until(lambda: not left_behind()), (
        f"§7 vanishing peer: a client that closes in the middle of a 1028 leaves files: {left_behind()}"
    )


@dataclass(frozen=True)
class Window:
    """What the server's process group did in the window after a peer went."""

    cpu: float  # CPU seconds it used
    runnable: float | None  # seconds its threads ran or waited to run (None: not known here)

    @property
    def busy(self) -> float:
        """The CPU it wanted: runnable time where known (load-independent), else CPU time."""
        return self.runnable if self.runnable is not None else self.cpu


def _window_after(server: ServerProcess, what: Callable[[], object]) -> Window:
    """The server's process group in the window after `what` happened."""
    group = server.group()
    what()
    start = group.sample().cpu_seconds
    before = group.runnable_ns()
    threading.Event().wait(SPIN_WINDOW)  # a measurement over a window, not a wait for a condition
    cpu = group.sample().cpu_seconds - start
    after = group.runnable_ns()
    if before is None or after is None:
        return Window(cpu, None)
    # Threads that ended in the window are left out; those that began count from zero.
    return Window(cpu, sum(value - before.get(tid, 0) for tid, value in after.items()) / 1e9)


@spec("§7 no spin", needs=("§2 1025", "§2 1026"))
def test_s7_no_cpu_spin_after_a_peer_goes(server_factory: ServerFactory, unique_name: NameFactory) -> None:
    """Under 0.5 s of CPU in the 3 s after a peer vanishes mid-file, and after one closes between requests.

    The CPU the server wants: the time its threads run or wait on a run queue to run (Linux's
    schedstat; elsewhere its CPU time). On a loaded machine a spinning thread gets little CPU
    but is runnable all the time, so the verdict does not depend on the load.

    A fresh server for each case: a thread still spinning from the first case would be charged
    to the second.
    """

    def vanish_mid_file(server: ServerProcess) -> None:
        _vanish_mid_file(server, unique_name)

    def close_between_requests(server: ServerProcess) -> None:
        with RawConnection(server.address) as conn:
            new_client(conn, unique_name(), server)

    windows = {}
    cases: dict[str, Callable[[ServerProcess], None]] = {
        "after a peer vanished in the middle of a 1028": vanish_mid_file,
        "after a peer closed between requests": close_between_requests,
    }
    for case, what in cases.items():
        server = server_factory()
        windows[case] = _window_after(server, functools.partial(what, server))
        server.stop()  # a spinning server stops spinning before the next case is measured
    spinning = {case: window for case, window in windows.items() if window.busy > SPIN_BUDGET}
    assert not spinning, "§7 no spin: " + "; ".join(
        f"the server wanted {window.busy:.1f} s of CPU (and got {window.cpu:.1f} s) in the "
        f"{SPIN_WINDOW:.0f} s {case}; an idle server wants about none: a recv() == b'' loop?"
        for case, window in spinning.items()
    )


@spec("§7 one write", needs=("§2 1025", "§2 1026", "§2 1028", "§2 1029"))
def test_s7_each_response_is_sent_in_one_write(
    server_factory: ServerFactory, unique_name: NameFactory, tmp_path: Path
) -> None:
    """Recorded inside the server's Python (a sitecustomize wrapping socket.send and sendall)."""
    log = tmp_path / "writes.log"
    server = server_factory(record_writes=log)
    name = unique_name()
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, name, server)
        send_file(conn, client_id, aes_key, "w.bin", b"one write")
        confirm(conn, client_id, "w.bin")
    for request in (
        pack_request(bytes(16), RequestCode.REGISTER, encode_name(name)),
        pack_request(client_id, RequestCode.RECONNECT, encode_name(name)),
        pack_request(os.urandom(16), RequestCode.RECONNECT, encode_name(name)),
        RequestHeader(bytes(16), 3, 9999, 0).pack(),
    ):
        with RawConnection(server.address) as conn:
            conn.send(request)
            conn.receive()
    text = log.read_text("ascii") if log.exists() else ""
    if "loaded" not in text:
        pytest.skip(
            "cannot record the server's writes: the sitecustomize that wraps socket.send/sendall did not "
            "load in its Python"
        )
    splits = [line.split() for line in text.splitlines() if line.startswith("split ")]
    assert not splits, (
        "§7 one write: "
        + "; ".join(
            f"the {code} response left in {sizes.count('+') + 1} writes ({sizes} bytes)"
            for _, code, sizes in splits[:4]
        )
        + "; PROTOCOL.md §7: header and payload in one write (recorded by wrapping socket.send/sendall)"
    )
