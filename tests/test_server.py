"""Our server's own behaviour beyond the wire: start-up, options, limits, faults, logs.

These read our log lines, our storage layout and our process, so they do not
run against another implementation (the `ours` fixture).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import resource
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from conftest import RSA_KEY, ServerFactory
from Crypto.Cipher import AES
from support import REPO_ROOT, RawConnection, ServerProcess, free_port, wait_until
from test_cpp_client import (
    ClientBuild,
    ClientRun,
    make_work_dir,
    pattern_bytes,
    posix_client,  # noqa: F401 (the fixture: the native builds, made once per session by test_cpp_client)
    read_me_info,
    run_client,
    run_python_client,
)

import handlers
import server as server_module
from client import FileTransferClient
from crypto_utils import cksum, encrypt, export_public_key, generate_rsa_key
from forgeries import DecryptionFailures
from grading.wire import expect, file_received, new_client, send_file_request
from protocol import (
    RequestCode,
    RequestHeader,
    ResponseCode,
    SendFileHead,
    Throttled,
    encode_name,
    pack_request,
)
from storage import StorageError

pytestmark = pytest.mark.usefixtures("ours")
NameFactory = Callable[[], str]


# --- start-up -------------------------------------------------------------------


@pytest.mark.parametrize("content", [None, "", "abc", "0", "70000", "-5", "12 34"])
def test_bad_port_info_warns_and_uses_1357(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str | None
) -> None:
    port_file = tmp_path / "port.info"
    if content is not None:
        port_file.write_text(content)
    with caplog.at_level(logging.WARNING):
        assert server_module.read_port_file(port_file) == 1357
    [record] = caplog.records
    assert "1357" in record.getMessage() and "port.info" in record.getMessage()


@pytest.mark.parametrize("content", ["4242", " 4242 \n", "4242\r\n"])
def test_port_info_with_whitespace_is_fine(tmp_path: Path, content: str) -> None:
    (tmp_path / "port.info").write_text(content)
    assert server_module.read_port_file(tmp_path / "port.info") == 4242


def test_port_info_is_read_beside_server_py_not_from_the_current_folder(tmp_path: Path) -> None:
    folder = tmp_path / "submission"
    folder.mkdir()
    for path in REPO_ROOT.glob("*.py"):
        shutil.copy(path, folder)
    port = free_port()
    (folder / "port.info").write_text(f"{port}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "port.info").write_text("1\n")
    process = subprocess.Popen(
        [sys.executable, str(folder / "server.py"), "--host", "127.0.0.1"],
        cwd=elsewhere,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        for line in process.stderr:
            if "listening on" in line:
                break
        assert f"127.0.0.1:{port}" in line
        with RawConnection(("127.0.0.1", port)) as conn:
            conn.send(pack_request(bytes(16), RequestCode.REGISTER, encode_name("alice")))
            expect(conn, ResponseCode.REGISTERED, "start-up")
        assert (folder / "defensive.db").exists(), "the data directory defaults to the folder of server.py"
    finally:
        process.terminate()
        process.wait(10)
        if process.stderr:
            process.stderr.close()


def test_help_names_every_option() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "server.py"), "--help"], capture_output=True, text=True, check=True
    )
    for option in (
        "--port",
        "--host",
        "--data-dir",
        "--log-level",
        "--idle-timeout",
        "--min-rate",
        "--max-connections",
        "--max-file-size",
        "--min-free-space",
        "port.info",
        "1357",
    ):
        assert option in result.stdout


def test_bad_option_values_are_refused_without_a_traceback() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "server.py"), "--port", "70000"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr and "--port" in result.stderr


def test_sigterm_stops_cleanly_and_removes_partial_files(
    server: ServerProcess, unique_name: NameFactory
) -> None:
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, unique_name())
        request = send_file_request(client_id, aes_key, "big.bin", os.urandom(2_000_000))
        conn.send(request[: len(request) // 2])
        # Wait until the server holds the partial file, then stop it mid-transfer.
        registered = server.query("SELECT count(*) FROM clients WHERE ID = ?", (client_id,))
        assert registered == [(1,)]
        partials = _wait_for(lambda: list(server.data_dir.rglob("*.part")))
        assert partials
        assert server.stop() == 0
    assert not list(server.data_dir.rglob("*.part"))
    log = server.log_text()
    assert "stopped" in log.splitlines()[-1]
    assert "Traceback" not in log


def _wait_for(probe: Callable[[], list[Path]], attempts: int = 200) -> list[Path]:
    """Poll a condition the server reaches on its own (a file appearing), bounded."""
    event = threading.Event()
    for _ in range(attempts):
        found = probe()
        if found:
            return found
        event.wait(0.02)
    return []


def test_startup_removes_leftovers_and_records_without_files(
    server: ServerProcess, unique_name: NameFactory
) -> None:
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, unique_name())
        for name in ("kept.bin", "lost.bin"):
            conn.send(send_file_request(client_id, aes_key, name, b"content"))
            expect(conn, ResponseCode.FILE_RECEIVED, "1028")
    server.kill()
    folder = server.data_dir / "storage" / client_id.hex()
    [(lost_path,)] = server.query("SELECT PathName FROM files WHERE FileName = 'lost.bin'")
    (server.data_dir / lost_path).unlink()
    (folder / ".incoming-x.part").write_bytes(b"half")
    (folder / "orphan.bin").write_bytes(b"no record")
    server.start()
    assert sorted(p.name for p in folder.iterdir()) == [
        Path(server.query("SELECT PathName FROM files")[0][0]).name
    ]
    assert server.query("SELECT FileName FROM files") == [("kept.bin",)]


# --- limits -----------------------------------------------------------------------


def test_idle_connection_is_closed(server_factory: ServerFactory) -> None:
    server = server_factory(extra_args=["--idle-timeout", "0.5"])
    with RawConnection(server.address) as conn:
        assert conn.is_closed()
    assert "idle" in server.log_text()


def test_a_trickling_peer_is_cut_off(server_factory: ServerFactory, unique_name: NameFactory) -> None:
    server = server_factory(extra_args=["--idle-timeout", "0.5", "--min-rate", "100000"])
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, unique_name())
        request = send_file_request(client_id, aes_key, "slow.bin", os.urandom(100_000))
        tick = threading.Event()
        closed = False
        for offset in range(0, len(request), 1000):  # 1000 bytes every 0.1 s: 10 kB/s
            try:
                conn.send(request[offset : offset + 1000])
            except OSError:
                closed = True
                break
            tick.wait(0.1)
        assert closed or conn.is_closed()
    assert "too slow" in server.log_text()
    assert server.query("SELECT count(*) FROM files") == [(0,)]
    assert not list(server.data_dir.rglob("*.part"))


def _peer(conn: RawConnection) -> str:
    """How the server names this connection in its log lines: host:port."""
    host, port = conn.sock.getsockname()[:2]
    return f"{host}:{port}"


def _begin_transfer(server: ServerProcess, conn: RawConnection, name: str) -> bytes:
    """Register, then send the first half of a 1028 and return the rest: the connection is busy.

    Returns once the server has logged that the file's content is coming (an
    observable condition), so that the server counts the connection as busy.
    """
    client_id, aes_key = new_client(conn, name)
    request = send_file_request(client_id, aes_key, "held.bin", os.urandom(400_000))
    conn.send(request[: len(request) // 2])
    assert wait_until(lambda: f"client={client_id.hex()}: receiving 'held.bin'" in server.log_text())
    return request[len(request) // 2 :]


def test_connections_over_the_limit_are_closed_at_once(
    server_factory: ServerFactory, unique_name: NameFactory
) -> None:
    """All slots busy in the middle of a request: a new connection is closed at once. A slot is
    given back before its connection is closed, so a client that sees the close and reconnects
    at once is served (issue 10, point 4: this failed 1 run in 5 on a loaded machine)."""
    server = server_factory(extra_args=["--max-connections", "3"])
    held = [RawConnection(server.address) for _ in range(3)]
    try:
        rests = [_begin_transfer(server, conn, unique_name()) for conn in held]
        with RawConnection(server.address) as extra:
            assert extra.is_closed()
        assert "refusing" in server.log_text()
        # The first one ends its transfer, then breaks the framing: 2107 and the server closes.
        held[0].send(rests[0])
        expect(held[0], ResponseCode.FILE_RECEIVED, "held transfer")
        broken = SendFileHead(32, "broken.bin").pack()  # the head says 32, the header 48
        held[0].send(RequestHeader(bytes(16), 3, RequestCode.SEND_FILE, len(broken) + 48).pack() + broken)
        assert held[0].rest_until_closed() == b"\x03\x3b\x08\x00\x00\x00\x00"
        with RawConnection(server.address) as conn:  # at once: its slot is free already
            new_client(conn, unique_name())
        for conn, rest in zip(held[1:], rests[1:], strict=True):  # the others are unaffected
            conn.send(rest)
            expect(conn, ResponseCode.FILE_RECEIVED, "held transfer")
    finally:
        for conn in held:
            conn.close()


def test_a_new_connection_takes_the_slot_of_the_longest_idle(
    server_factory: ServerFactory, unique_name: NameFactory
) -> None:
    """Full: the connection idle between requests the longest is closed (nothing sent to it)."""
    server = server_factory(extra_args=["--max-connections", "2"])
    with RawConnection(server.address) as first, RawConnection(server.address) as second:
        first_peer = _peer(first)
        new_client(first, unique_name())
        new_client(second, unique_name())  # after first's last answer: first is idle longer
        # Both idle, as their last requests' log lines show.
        for peer in (first_peer, _peer(second)):
            answered = re.compile(rf"{peer} client=\w+ code=1026 -> 2102")
            assert wait_until(lambda: answered.search(server.log_text()))  # noqa: B023 (used at once)
        with RawConnection(server.address) as third:
            new_client(third, unique_name())
            assert first.rest_until_closed() == b"", "closed between requests, with nothing sent"
            new_client(second, unique_name())  # still served
    assert f"{first_peer}: closed after" in server.log_text()
    assert "refusing" not in server.log_text()


def test_one_address_is_capped_and_cannot_crowd_out_another(
    server_factory: ServerFactory, unique_name: NameFactory
) -> None:
    server = server_factory(extra_args=["--max-connections", "10", "--max-connections-per-address", "2"])
    held = [RawConnection(server.address) for _ in range(2)]
    try:
        rests = [_begin_transfer(server, conn, unique_name()) for conn in held]
        with RawConnection(server.address) as third:  # its address has 2, both busy
            assert third.is_closed()
        assert "its address already has 2 connections" in server.log_text()
        with RawConnection(server.address, source="127.0.0.2") as elsewhere:  # another host
            new_client(elsewhere, unique_name())
        held[0].send(rests[0])
        expect(held[0], ResponseCode.FILE_RECEIVED, "held transfer")
        # held[0] is idle once its request is logged: a third connection from its address
        # takes its slot.
        assert wait_until(
            lambda: re.search(rf"{_peer(held[0])} client=\w+ code=1028 -> 2103", server.log_text())
        )
        with RawConnection(server.address) as third:
            new_client(third, unique_name())
            assert held[0].rest_until_closed() == b""
        held[1].send(rests[1])
        expect(held[1], ResponseCode.FILE_RECEIVED, "held transfer")
    finally:
        for conn in held:
            conn.close()


def test_help_gives_the_per_address_default() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "server.py"), "--help"], capture_output=True, text=True, check=True
    )
    assert "--max-connections-per-address" in result.stdout
    assert str(server_module.DEFAULT_MAX_CONNECTIONS_PER_ADDRESS) in result.stdout


def test_a_file_over_the_maximum_is_refused_before_its_content(
    server_factory: ServerFactory, unique_name: NameFactory
) -> None:
    """2107 as soon as the head is read; the content is then read and thrown away (§3)."""
    server = server_factory(extra_args=["--max-file-size", "65536"])
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, unique_name())
        head = SendFileHead(1 << 20, "big.bin").pack()
        conn.send(RequestHeader(client_id, 3, RequestCode.SEND_FILE, len(head) + (1 << 20)).pack() + head)
        expect(conn, ResponseCode.GENERAL_ERROR, "max file size")
        conn.send(os.urandom(1 << 20))
        conn.send(send_file_request(client_id, aes_key, "small.bin", b"fits"))  # the same connection
        expect(conn, ResponseCode.FILE_RECEIVED, "after a refused 1028")
    assert "over --max-file-size" in server.log_text()


def test_a_file_that_would_fill_the_disk_is_refused(
    server_factory: ServerFactory, unique_name: NameFactory
) -> None:
    server = server_factory(extra_args=["--min-free-space", str(2**62)])
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, unique_name())
        conn.send(send_file_request(client_id, aes_key, "x.bin", b"small"))
        expect(conn, ResponseCode.GENERAL_ERROR, "disk space")
    assert "disk space" in server.log_text()


# --- faults ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "size"),
    [
        (1_000_000, 3_000_000),  # a write in the middle of the file fails
        # The last chunk's write is cut short (it writes what fits and returns a short
        # count): nothing fails until a write that is never made, so the short count
        # itself must be taken as the failure.
        (handlers.CHUNK_SIZE + 30_000, handlers.CHUNK_SIZE + 40_000),
    ],
    ids=["mid-file", "last-chunk"],
)
def test_a_full_disk_mid_transfer_gets_2107_and_leaves_nothing(
    server: ServerProcess, unique_name: NameFactory, limit: int, size: int
) -> None:
    """RLIMIT_FSIZE makes writes past `limit` fail as a full disk fails them (short, then EFBIG)."""
    assert server.process is not None
    resource.prlimit(server.process.pid, resource.RLIMIT_FSIZE, (limit, limit))
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, unique_name())
        conn.send(send_file_request(client_id, aes_key, "huge.bin", os.urandom(size)))
        expect(conn, ResponseCode.GENERAL_ERROR, "full disk")
    assert server.query("SELECT count(*) FROM files") == [(0,)]
    assert not [p for p in (server.data_dir / "storage").rglob("*") if p.is_file()]
    assert "cannot write" in server.log_text()
    with RawConnection(server.address) as conn:  # still serving
        client_id, aes_key = new_client(conn, unique_name())
        conn.send(send_file_request(client_id, aes_key, "small.bin", b"fits"))
        expect(conn, ResponseCode.FILE_RECEIVED, "after a full disk")


def test_a_locked_database_gets_2107_and_the_server_recovers(
    server: ServerProcess, unique_name: NameFactory
) -> None:
    with closing(sqlite3.connect(server.db_path, timeout=10, isolation_level=None)) as db:
        db.execute("BEGIN EXCLUSIVE")
        with RawConnection(server.address) as conn:
            conn.send(pack_request(bytes(16), RequestCode.REGISTER, encode_name(unique_name())))
            expect(conn, ResponseCode.GENERAL_ERROR, "locked database")
        db.execute("ROLLBACK")
    assert re.search(r"refused: database is locked", server.log_text())
    with RawConnection(server.address) as conn:
        new_client(conn, unique_name())


class _InProcessServer:
    """Our server in a thread of the test process, for faults no peer can cause."""

    def __init__(self, data_dir: Path, **overrides: Any) -> None:
        settings: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": 0,
            "data_dir": data_dir,
            "idle_timeout": 10,
            "min_rate": 0,
            "max_connections": 10,
            "max_file_size": 2**21,
            "min_free_space": 0,
        }
        config = server_module.ServerConfig(**(settings | overrides))
        self.server = server_module.FileTransferServer(config)
        self.address: tuple[str, int] = self.server.server_address[:2]  # type: ignore[assignment]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def in_process_server(tmp_path: Path) -> Iterator[_InProcessServer]:
    running = _InProcessServer(tmp_path)
    yield running
    running.close()


def test_an_unexpected_error_is_logged_answered_2107_and_closes_only_that_connection(
    in_process_server: _InProcessServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    unique_name: NameFactory,
) -> None:
    def broken(ctx: handlers.RequestContext) -> handlers.Reply:
        raise RuntimeError("a bug")

    monkeypatch.setitem(handlers.HANDLERS, RequestCode.CRC_OK, broken)
    with RawConnection(in_process_server.address) as conn:
        client_id, _ = new_client(conn, unique_name())
        conn.send(pack_request(client_id, RequestCode.CRC_OK, encode_name("x")))
        assert conn.rest_until_closed() == b"\x03\x3b\x08\x00\x00\x00\x00"
    [record] = [r for r in caplog.records if r.exc_info]
    assert "unexpected error" in record.getMessage() and "RuntimeError" in caplog.text
    with RawConnection(in_process_server.address) as conn:
        new_client(conn, unique_name())


# --- secrets and logs ---------------------------------------------------------------


def test_database_and_storage_are_private(server: ServerProcess, unique_name: NameFactory) -> None:
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, unique_name())
        conn.send(send_file_request(client_id, aes_key, "private.bin", b"secret"))
        expect(conn, ResponseCode.FILE_RECEIVED, "1028")
    assert stat.S_IMODE(server.db_path.stat().st_mode) == 0o600
    storage = server.data_dir / "storage"
    for path in [storage, *storage.rglob("*")]:
        expected = 0o700 if path.is_dir() else 0o600
        assert stat.S_IMODE(path.stat().st_mode) == expected, path
    for journal in server.data_dir.glob("defensive.db-*"):
        assert stat.S_IMODE(journal.stat().st_mode) & 0o077 == 0, journal


def test_the_log_never_holds_keys_or_contents(server: ServerProcess, unique_name: NameFactory) -> None:
    content = b"TOP-SECRET-CONTENT-" + os.urandom(32)
    with FileTransferClient(*server.address) as client:
        name = unique_name()
        client.register(name)
        aes_key = client.send_public_key(name, RSA_KEY)
        path = server.data_dir.parent / "content.bin"
        path.write_bytes(content)
        client.send_file(path, "content.bin")
        client.crc_ok("content.bin")
    [(stored_key,)] = server.query("SELECT AESKey FROM clients WHERE ID = ?", (client.client_id,))
    secrets = [aes_key, stored_key]
    log = server.log_text()
    for secret in secrets:
        for form in (secret.hex(), secret.hex().upper(), base64.b64encode(secret).decode(), repr(secret)):
            assert form not in log
    assert "TOP-SECRET" not in log and content.hex() not in log
    # One line per request: peer, client ID, code, outcome, bytes, duration.
    line = next(line for line in log.splitlines() if "code=1028" in line)
    assert re.search(
        rf"127\.0\.0\.1:\d+ client={client.client_id.hex()} code=1028 -> 2103 bytes=\d+ [\d.]+ ms", line
    )


# --- memory ------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_1_gib_transfer_keeps_server_memory_under_64_mib(
    server: ServerProcess, unique_name: NameFactory, tmp_path: Path
) -> None:
    path = tmp_path / "one-gib.bin"
    block = os.urandom(1 << 20)
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for index in range(1024):
            piece = index.to_bytes(4, "little") + block[4:]
            out.write(piece)
            digest.update(piece)
    with FileTransferClient(*server.address, timeout=300) as client:
        name = unique_name()
        client.register(name)
        client.send_public_key(name, RSA_KEY)
        received, local = client.send_file(path, "one-gib.bin")
        assert received.cksum == local
        client.crc_ok("one-gib.bin")
    peak_mib = server.peak_rss_kib() / 1024
    path.unlink()
    [(path_name, verified)] = server.query("SELECT PathName, Verified FROM files")
    stored = server.data_dir / path_name
    assert verified == 1 and stored.stat().st_size == 1 << 30
    stored_digest = hashlib.sha256()
    with stored.open("rb") as source:
        while piece := source.read(1 << 20):
            stored_digest.update(piece)
    stored.unlink()
    assert stored_digest.digest() == digest.digest()
    print(f"server peak RSS after 1 GiB: {peak_mib:.1f} MiB")
    assert peak_mib < 64


def test_a_different_public_key_for_a_keyed_client_gets_2107(
    server: ServerProcess, unique_name: NameFactory
) -> None:
    """Decision (README): a stored key is never replaced, or an eavesdropper could take the ID over."""
    name = unique_name()
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, name)
        other_key = export_public_key(generate_rsa_key())
        conn.send(pack_request(client_id, RequestCode.PUBLIC_KEY, encode_name(name) + other_key))
        expect(conn, ResponseCode.GENERAL_ERROR, "§2 1026 key replacement")
    assert server.query("SELECT PublicKey, AESKey FROM clients WHERE ID = ?", (client_id,)) == [
        (export_public_key(RSA_KEY), aes_key)
    ]


def test_a_read_only_database_gets_2107_and_the_server_recovers(
    in_process_server: _InProcessServer, caplog: pytest.LogCaptureFixture, unique_name: NameFactory
) -> None:
    """The database opened read-only (as after a remount, or a permissions change for a non-root
    server): every write fails; the server answers 2107, logs why, and recovers when it is writable."""
    database = in_process_server.server.db
    writable = database._conn
    database._conn = sqlite3.connect(f"file:{database.path}?mode=ro", uri=True, check_same_thread=False)
    try:
        with RawConnection(in_process_server.address) as conn:
            conn.send(pack_request(bytes(16), RequestCode.REGISTER, encode_name(unique_name())))
            expect(conn, ResponseCode.GENERAL_ERROR, "read-only database")
            assert "readonly database" in caplog.text
    finally:
        database._conn.close()
        database._conn = writable
    with RawConnection(in_process_server.address) as conn:
        new_client(conn, unique_name())


# --- threads, refusals, forgeries, framing (issue 10) ---------------------------------------


def test_a_failed_thread_start_gives_its_slot_back_and_closes_the_socket(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    unique_name: NameFactory,
) -> None:
    """A thread shortage must not leak slots (issue 10, point 5): each connection that gets no
    thread is closed, its slot given back; once threads start again, all is served."""
    running = _InProcessServer(tmp_path, max_connections=2)
    try:

        def no_thread(self: threading.Thread) -> None:
            raise RuntimeError("can't start new thread")

        with monkeypatch.context() as patch:
            patch.setattr(threading.Thread, "start", no_thread)
            for _ in range(3):
                with RawConnection(running.address) as conn:
                    assert conn.is_closed()
        assert len(running.server.slots) == 0
        assert caplog.text.count("cannot serve") == 3
        with RawConnection(running.address) as first, RawConnection(running.address) as second:
            new_client(first, unique_name())
            new_client(second, unique_name())
    finally:
        running.close()


def test_refusal_lines_are_rate_limited_per_connection(
    server: ServerProcess, unique_name: NameFactory
) -> None:
    """A connection of refusals logged a line per 23 bytes (issue 10, point 10): now its first
    few, then a count."""
    unknown_code = RequestHeader(bytes(16), 3, 9999, 0).pack()
    with RawConnection(server.address) as conn:
        peer = _peer(conn)
        conn.send(unknown_code * 200)
        for _ in range(200):
            expect(conn, ResponseCode.GENERAL_ERROR, "unknown code")
        conn.send(pack_request(bytes(16), RequestCode.REGISTER, encode_name(unique_name())))
        expect(conn, ResponseCode.REGISTERED, "after refusals")
    refused_lines = server_module.REFUSALS_LOGGED_PER_CONNECTION
    unlogged = 200 - refused_lines
    assert wait_until(lambda: f"{peer}: {unlogged} more refusals not logged" in server.log_text())
    lines = [line for line in server.log_text().splitlines() if peer in line]
    assert sum("refused:" in line for line in lines) == refused_lines
    assert sum(len(line) + 1 for line in lines) < len(unknown_code) * 200, (
        "the log grows slower than the input"
    )


@pytest.mark.parametrize("declared", ["whole", "head only"])
@pytest.mark.parametrize("reason", ["unknown client", "over --max-file-size", "no room"])
def test_a_refused_1028_is_read_to_its_end_and_the_connection_stays_usable(
    server_factory: ServerFactory, unique_name: NameFactory, reason: str, declared: str
) -> None:
    """§3: a refused 1028 whose framing is intact is read to its end (issue 10, point 13), so
    that the client, still sending, reads its 2107 and retries on the same connection."""
    extra = {
        "unknown client": [],
        "over --max-file-size": ["--max-file-size", "65536"],
        "no room": ["--min-free-space", str(2**62)],
    }[reason]
    server = server_factory(extra_args=extra)
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, unique_name())
        sender = os.urandom(16) if reason == "unknown client" else client_id
        ciphertext = encrypt(aes_key, os.urandom(1 << 20))
        head = SendFileHead(len(ciphertext), "big.bin").pack()
        size = len(head) + (len(ciphertext) if declared == "whole" else 0)
        conn.send(RequestHeader(sender, 3, RequestCode.SEND_FILE, size).pack() + head + ciphertext)
        expect(conn, ResponseCode.GENERAL_ERROR, reason)
        conn.send(pack_request(client_id, RequestCode.CRC_RETRY, encode_name("big.bin")))  # no reply
        conn.send(pack_request(bytes(16), RequestCode.REGISTER, encode_name(unique_name())))
        expect(conn, ResponseCode.REGISTERED, "the next request on the same connection")
    log = server.log_text()
    assert "refused" in log and "; closing" not in log


def _refusing_the_first_1028(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make the server refuse its first 1028 as a full disk does; the list names what it refused."""
    refused: list[str] = []
    original = handlers.HANDLERS[RequestCode.SEND_FILE]

    def refuse_once(ctx: handlers.RequestContext) -> handlers.Reply:
        if refused:
            return original(ctx)
        head = handlers.read_send_file_head(ctx)
        refused.append(head.file_name)
        raise StorageError(f"not enough disk space for {head.content_size} bytes (once, by the test)")

    monkeypatch.setitem(handlers.HANDLERS, RequestCode.SEND_FILE, refuse_once)
    return refused


def _refused_once_then_stored(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    run: Callable[[Path], ClientRun],
) -> None:
    """§6 step 4 for real: a 1 MB file refused once is sent again and stored (issue 10, point 13).

    Before, the server closed the connection while the client was still sending; the client
    saw a broken pipe and never read the 2107."""
    caplog.set_level(logging.INFO)
    refused = _refusing_the_first_1028(monkeypatch)
    running = _InProcessServer(tmp_path / "server")
    try:
        content = pattern_bytes(1 << 20)
        work_dir = make_work_dir(tmp_path, running.address, "retrying", "one-mb.bin", content)
        result = run(work_dir)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "server responded with an error" in (result.stdout + result.stderr).lower()
        assert refused == ["one-mb.bin"]
        me = read_me_info(work_dir)
        record = running.server.db.get_file(me.client_id, "one-mb.bin")
        assert record is not None and record.verified
        assert (running.server.store.data_dir / record.path_name).read_bytes() == content
        answers = re.findall(r"(\S+) client=\w+ code=1028 -> (\d+)", caplog.text)
        [(refused_peer, _), (served_peer, served)] = answers
        assert served == "2103" and served_peer == refused_peer, "retried on the same connection"
    finally:
        running.close()


def test_the_python_client_retries_a_refused_1028_on_the_same_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """About 1 s."""
    _refused_once_then_stored(tmp_path, monkeypatch, caplog, run_python_client)


def test_the_cpp_client_retries_a_refused_1028_on_the_same_connection(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    posix_client: ClientBuild,  # noqa: F811 (the fixture imported above)
) -> None:
    """About 1 s per build (2 under ASan); the builds are test_cpp_client's, made once."""
    _refused_once_then_stored(
        tmp_path, monkeypatch, caplog, lambda work_dir: run_client(posix_client, work_dir)
    )


def _bad_padding(aes_key: bytes) -> bytes:
    """Ciphertext whose plaintext ends in a 0 byte: always invalid PKCS#7 padding."""
    return AES.new(aes_key, AES.MODE_CBC, iv=bytes(16)).encrypt(bytes(32))


def test_1028s_that_fail_to_decrypt_lock_their_client_id_out(
    server: ServerProcess, unique_name: NameFactory
) -> None:
    """Bounded forgeries (issue 10, point 14; SECURITY.md §4): after a few 1028s of one ID that
    fail to decrypt, that ID's 1028s get 2107 for a while, with one log line; others go on."""
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, unique_name())
        forged = pack_request(
            client_id, RequestCode.SEND_FILE, SendFileHead(32, "victim.bin").pack() + _bad_padding(aes_key)
        )
        for _ in range(DecryptionFailures().allowed):
            conn.send(forged)
            expect(conn, ResponseCode.GENERAL_ERROR, "bad padding")
        conn.send(send_file_request(client_id, aes_key, "victim.bin", b"a valid file"))
        expect(conn, ResponseCode.GENERAL_ERROR, "locked out")
        other_id, other_key = new_client(conn, unique_name())
        conn.send(send_file_request(other_id, other_key, "other.bin", b"another client"))
        expect(conn, ResponseCode.FILE_RECEIVED, "another client")
    log = server.log_text()
    assert log.count("failed to decrypt within") == 1
    assert "(Throttled) refused" in log
    assert server.query("SELECT count(*) FROM files WHERE ID = ?", (client_id,)) == [(0,)]


def test_decryption_failures_count_within_a_window_and_the_lockout_ends() -> None:
    now = [0.0]
    failures = DecryptionFailures(allowed=3, window=100.0, lockout=1000.0, clock=lambda: now[0])
    victim = bytes(16)
    for moment in (0.0, 50.0, 120.0):  # never 3 within 100 s
        now[0] = moment
        failures.record(victim, "peer")
        failures.check(victim)
    now[0] = 130.0
    failures.record(victim, "peer")  # 50, 120, 130: three within 100 s
    with pytest.raises(Throttled):
        failures.check(victim)
    failures.check(bytes(15) + b"\x01")  # another ID is not affected
    now[0] = 130.0 + 999.0
    with pytest.raises(Throttled):
        failures.check(victim)
    now[0] = 130.0 + 1000.0
    failures.check(victim)


def test_a_1028_declaring_its_head_alone_is_served_with_one_warning(
    server: ServerProcess, unique_name: NameFactory
) -> None:
    """§7: a payload size of 259 (the head without the content) is served (issue 10, point 15)."""
    with RawConnection(server.address) as conn:
        peer = _peer(conn)
        client_id, aes_key = new_client(conn, unique_name())
        contents = {"first.bin": os.urandom(300_000), "second.bin": b"short"}
        for name, content in contents.items():
            ciphertext = encrypt(aes_key, content)
            head = SendFileHead(len(ciphertext), name).pack()
            conn.send(
                RequestHeader(client_id, 3, RequestCode.SEND_FILE, len(head)).pack() + head + ciphertext
            )
            received = file_received(conn)
            assert (received.content_size, received.file_name, received.cksum) == (
                len(ciphertext),
                name,
                cksum(content),
            )
        conn.send(pack_request(client_id, RequestCode.CRC_OK, encode_name("second.bin")))
        expect(conn, ResponseCode.ACK, "after two 1028s of 259")
    for name, content in contents.items():
        [(path_name,)] = server.query("SELECT PathName FROM files WHERE FileName = ?", (name,))
        assert (server.data_dir / path_name).read_bytes() == content
    warnings = [line for line in server.log_text().splitlines() if "WARNING" in line and peer in line]
    assert len(warnings) == 1 and "payload size of 259" in warnings[0]


def test_an_interrupted_request_logs_the_bytes_missing_from_the_whole_request(
    server: ServerProcess, unique_name: NameFactory
) -> None:
    """Issue 12: the count was of the chunk being read (262144), not of the request."""
    with RawConnection(server.address) as conn:
        peer = _peer(conn)
        client_id, aes_key = new_client(conn, unique_name())
        request = send_file_request(client_id, aes_key, "cut.bin", os.urandom(700_000))
        sent = 300_001
        conn.send(request[:sent])
    missing = len(request) - sent
    assert wait_until(
        lambda: f"{peer} went away: connection closed {missing} bytes short of the end" in server.log_text()
    )


def test_a_slot_is_given_back_before_the_socket_is_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unique_name: NameFactory
) -> None:
    """What the client sees (the close) must come after the slot is free, or a client that
    reconnects at once is refused (issue 10, point 4). Deterministic: the slots are counted
    at the moment the server closes the socket."""
    running = _InProcessServer(tmp_path, max_connections=1)
    open_at_close: list[int] = []
    original = server_module.FileTransferServer.shutdown_request

    def counting(self: server_module.FileTransferServer, request: object) -> None:
        open_at_close.append(len(self.slots))
        original(self, request)  # type: ignore[arg-type]

    monkeypatch.setattr(server_module.FileTransferServer, "shutdown_request", counting)
    try:
        with RawConnection(running.address) as conn:
            new_client(conn, unique_name())
            conn.sock.shutdown(socket.SHUT_WR)
            assert conn.is_closed()
        assert open_at_close == [0]
        with RawConnection(running.address) as conn:  # and so the next one is served
            new_client(conn, unique_name())
    finally:
        running.close()
