"""Test support: a real server in a subprocess, raw connections, a corrupting proxy.

The server under test is either ours (`server.py` of this repository, run on
port 0 with a temporary data directory) or a submission folder copied to a
temporary place (`--server-dir`), or one already running (`--server`). Tests
reach it only through the wire and, where they need it, the database schema
that PROTOCOL.md §5 fixes, so the same tests grade other implementations.
"""

from __future__ import annotations

import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from protocol import (
    REQUEST_HEADER,
    RESPONSE_HEADER,
    SEND_FILE_HEAD,
    RequestCode,
    ResponseHeader,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVER_PY = REPO_ROOT / "server.py"
START_TIMEOUT = 20.0  # seconds for a server to start listening
READ_TIMEOUT = 10.0  # seconds a test waits for any one response
LISTENING_LINE = re.compile(r"listening on [^ ]+:(\d+)")


class ServerStartError(RuntimeError):
    pass


@dataclass
class ServerProcess:
    """A server in a subprocess: ours, or a submission's `server.py` in a copied folder.

    `data_dir` holds `defensive.db` and the storage; `log_path` what the server printed.
    """

    server_dir: Path
    data_dir: Path
    python: str = sys.executable
    ours: bool = True
    extra_args: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)
    _pump: threading.Thread | None = None

    def __post_init__(self) -> None:
        self.log_path = self.data_dir / "server.log"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "defensive.db"

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.ours:
            self._start_ours()
        else:
            self._start_foreign()

    def _start_ours(self) -> None:
        """Port 0, and the port read back from the server's own "listening on" line."""
        command = [
            self.python,
            str(self.server_dir / "server.py"),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--data-dir",
            str(self.data_dir),
            "--log-level",
            "DEBUG",
            *self.extra_args,
        ]
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert self.process.stderr is not None
        found = threading.Event()

        def pump(stream: IO[bytes], log: IO[bytes]) -> None:
            """Copy the server's stderr to the log; note the port when it is announced."""
            with stream, log:
                for line in stream:
                    log.write(line)
                    log.flush()
                    match = LISTENING_LINE.search(line.decode("utf-8", "replace"))
                    if match and not found.is_set():
                        self.port = int(match.group(1))
                        found.set()
            found.set()  # the server exited: stop waiting

        self._pump = threading.Thread(
            target=pump, args=(self.process.stderr, self.log_path.open("ab")), daemon=True
        )
        self._pump.start()
        if not found.wait(START_TIMEOUT) or self.process.poll() is not None:
            self.stop()
            raise ServerStartError(f"server did not start:\n{self.log_text()}")

    def _start_foreign(self) -> None:
        """A submission: port.info with a free port, `python server.py` from its folder."""
        self.port = free_port()
        (self.server_dir / "port.info").write_text(f"{self.port}\n")
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [self.python, "server.py"],
            cwd=self.server_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerStartError(f"server exited with {self.process.returncode}:\n{self.log_text()}")
            try:
                socket.create_connection(self.address, timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise ServerStartError(f"server did not listen on {self.port}:\n{self.log_text()}")

    def stop(self) -> int | None:
        """SIGTERM, and SIGKILL if it does not stop; the exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        status = self.process.returncode
        self.process = None
        if self._pump is not None:
            self._pump.join()
            self._pump = None
        return status

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind in the server."""
        if self.process is not None:
            self.process.kill()
        self.stop()

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_text(self) -> str:
        return self.log_path.read_text("utf-8", "replace") if self.log_path.exists() else ""

    def query(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        """Read the server's database (PROTOCOL.md §5 schema) while it runs."""
        with closing(sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10)) as db:
            return db.execute(sql, params).fetchall()

    def peak_rss_kib(self) -> int:
        """The process's peak resident set size (VmHWM), in KiB."""
        assert self.process is not None
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        match = re.search(r"VmHWM:\s+(\d+) kB", status)
        assert match, status
        return int(match.group(1))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def running_server(
    server_dir: Path,
    data_dir: Path,
    *,
    ours: bool = True,
    python: str = sys.executable,
    extra_args: list[str] | None = None,
) -> Iterator[ServerProcess]:
    server = ServerProcess(server_dir, data_dir, python=python, ours=ours, extra_args=extra_args or [])
    server.start()
    try:
        yield server
    finally:
        server.stop()


def copy_submission(source: Path, destination: Path) -> Path:
    """A submission folder copied without its state, so that each test starts clean."""
    ignore = shutil.ignore_patterns("defensive.db*", "storage", "__pycache__", ".git", "build")
    shutil.copytree(source, destination, ignore=ignore)
    return destination


# --- raw connections --------------------------------------------------------


@dataclass(frozen=True)
class RawResponse:
    version: int
    code: int
    payload: bytes


class RawConnection:
    """A plain socket to the server, for tests that write exact bytes and read exact responses."""

    def __init__(self, address: tuple[str, int], timeout: float = READ_TIMEOUT) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        self._buffer = bytearray()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _read(self, size: int) -> bytes:
        """Up to `size` bytes: fewer only if the server closed the connection."""
        while len(self._buffer) < size:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                break
            self._buffer += data
        taken = bytes(self._buffer[:size])
        del self._buffer[:size]
        return taken

    def receive(self) -> RawResponse:
        raw = self._read(RESPONSE_HEADER.size)
        assert len(raw) == RESPONSE_HEADER.size, f"connection closed after {len(raw)} header bytes"
        header = ResponseHeader.unpack(raw)
        assert header.payload_size <= 1024, f"absurd response payload size {header.payload_size}"
        payload = self._read(header.payload_size)
        assert len(payload) == header.payload_size, "connection closed inside a response payload"
        return RawResponse(header.version, header.code, payload)

    def rest_until_closed(self) -> bytes:
        """Everything the server sends until it closes the connection."""
        return self._read(1 << 20)

    def is_closed(self) -> bool:
        """True when the server has closed its side (and sent nothing more)."""
        return self._read(1) == b""

    def silent_and_open(self, wait: float = 0.3) -> bool:
        """True if, for `wait` seconds, no byte arrives and the connection stays open.

        For 1030, which has no response. A bounded wait for an absence, not a
        sleep standing in for a result.
        """
        if self._buffer:
            return False
        self.sock.settimeout(wait)
        try:
            self.sock.recv(1, socket.MSG_PEEK)
        except TimeoutError:
            return True
        finally:
            self.sock.settimeout(READ_TIMEOUT)
        return False  # a byte arrived, or the connection closed


# --- a proxy that corrupts files in transit --------------------------------


class CorruptingProxy:
    """A TCP proxy that flips one ciphertext byte in the first `corrupt` 1028 requests.

    The server then decrypts a different file, its checksum disagrees with the
    client's, and the client walks the 1030/resend/1031 path. Flipping a byte
    of the first block leaves the padding of any file of 16 bytes or more
    intact, so the server still accepts the content.
    """

    def __init__(self, upstream: tuple[str, int], corrupt: int | None) -> None:
        self.upstream = upstream
        self.remaining = corrupt if corrupt is not None else 2**31
        self.corrupted = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            threading.Thread(target=self._forward_requests, args=(downstream, upstream), daemon=True).start()
            threading.Thread(target=_pipe, args=(upstream, downstream), daemon=True).start()

    def _take_one(self) -> bool:
        with self._lock:
            if self.remaining <= 0:
                return False
            self.remaining -= 1
            self.corrupted += 1
            return True

    def _forward_requests(self, downstream: socket.socket, upstream: socket.socket) -> None:
        source = downstream.makefile("rb")
        try:
            while header := source.read(REQUEST_HEADER.size):
                upstream.sendall(header)
                if len(header) < REQUEST_HEADER.size:
                    break
                _, _, code, size = REQUEST_HEADER.unpack(header)
                flip_at = SEND_FILE_HEAD.size if code == RequestCode.SEND_FILE and self._take_one() else -1
                sent = 0
                while sent < size:
                    chunk = bytearray(source.read(min(size - sent, 1 << 20)))
                    if not chunk:
                        return
                    if sent <= flip_at < sent + len(chunk):
                        chunk[flip_at - sent] ^= 0xFF
                    upstream.sendall(chunk)
                    sent += len(chunk)
        except OSError:
            pass
        finally:
            _shutdown(upstream)


def _pipe(source: socket.socket, destination: socket.socket) -> None:
    try:
        while data := source.recv(1 << 16):
            destination.sendall(data)
    except OSError:
        pass
    finally:
        _shutdown(destination)


def _shutdown(sock: socket.socket) -> None:
    with suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
