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
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest
from conftest import RSA_KEY, ServerFactory
from support import REPO_ROOT, RawConnection, ServerProcess, free_port
from test_conformance import expect, new_client, send_file_request

import handlers
import server as server_module
from client import FileTransferClient
from crypto_utils import export_public_key, generate_rsa_key
from protocol import RequestCode, RequestHeader, ResponseCode, SendFileHead, encode_name, pack_request

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


def test_connections_over_the_limit_are_closed_at_once(
    server_factory: ServerFactory, unique_name: NameFactory
) -> None:
    server = server_factory(extra_args=["--max-connections", "3"])
    held = [RawConnection(server.address) for _ in range(3)]
    try:
        for conn in held:  # each is being served: the limit is reached
            register_ok = new_client(conn, unique_name())
            assert register_ok
        with RawConnection(server.address) as extra:
            assert extra.is_closed()
        assert "refusing" in server.log_text()
        for conn in held:  # the others are unaffected
            new_client(conn, unique_name())
    finally:
        for conn in held:
            conn.close()
    with RawConnection(server.address) as conn:  # and a freed slot serves again
        new_client(conn, unique_name())


def test_a_file_over_the_maximum_is_refused_before_its_content(
    server_factory: ServerFactory, unique_name: NameFactory
) -> None:
    server = server_factory(extra_args=["--max-file-size", "65536"])
    with RawConnection(server.address) as conn:
        client_id, _ = new_client(conn, unique_name())
        head = SendFileHead(1 << 20, "big.bin").pack()
        conn.send(RequestHeader(client_id, 3, RequestCode.SEND_FILE, len(head) + (1 << 20)).pack())
        expect(conn, ResponseCode.GENERAL_ERROR, "max file size")
        assert conn.is_closed()


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

    def __init__(self, data_dir: Path) -> None:
        config = server_module.ServerConfig(
            host="127.0.0.1",
            port=0,
            data_dir=data_dir,
            idle_timeout=10,
            min_rate=0,
            max_connections=10,
            max_file_size=2**20,
            min_free_space=0,
        )
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
