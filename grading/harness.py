"""The submission runner: a server in a subprocess, its process group, and the clients' side.

The server under test is either ours (this repository's `server.py`, run on
port 0 with a temporary data directory), a submission folder copied to a
temporary place (`port.info` written with a free port, as the digits alone:
PROTOCOL.md §7), or one already running (`--server`). Checks reach it only
through the wire, its folder and its database.

Every wait is bounded: a server that hangs fails the check that waited for it
(with a message saying what did not arrive) instead of stalling the run. What
goes wrong on the grader's side (no free port, an unwritable folder, a missing
interpreter) is a `HarnessError`: an error of the run, never a failed check.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import closing, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from protocol import (
    REQUEST_HEADER,
    RESPONSE_HEADER,
    SEND_FILE_HEAD,
    RequestCode,
    ResponseHeader,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 20.0  # seconds for a server to start listening
READ_TIMEOUT = 10.0  # seconds a check waits for one response (ours may wait 5 s on a locked database)
STOP_TIMEOUT = 5.0  # seconds our server gets to exit after SIGTERM before it is killed
# A submission's clean stop is not graded: one that ignores SIGTERM must not cost every check 5 s.
FOREIGN_STOP_TIMEOUT = 1.0
CLIENT_TIMEOUT = 30.0  # seconds for one run of a client program (§6), sanitizer builds included
POLL_INTERVAL = 0.05  # seconds between two looks at a condition that has a deadline
LISTENING_LINE = re.compile(r"listening on [^ ]+:(\d+)")
# What a copy of a submission leaves behind: its state (so that every check starts clean) and
# what is big and useless to a server run (virtual environments, caches, build trees).
SUBMISSION_LEFTOVERS = shutil.ignore_patterns(
    "defensive.db*", "__pycache__", "*.pyc", ".git", ".venv", "venv", ".mypy_cache", ".pytest_cache", "build"
)
NOT_IN_THE_FOLDER = (
    "reads the server's database or folder: --server gives only its address (use --server-dir)"
)
# Names that only Windows's standard library has, as an AttributeError or ImportError names them.
_WINDOWS_NAMES = (
    r"windll|oledll|WinDLL|OleDLL|WinError|FormatError|GetLastError|startfile|CTRL_C_EVENT|CTRL_BREAK_EVENT"
)
# Start-up failures that say the submission was written for Windows (§5 start-up, one row).
WINDOWS_ONLY = re.compile(
    r"No module named '(?P<module>win32\w*|msvcrt|winreg|_winapi|pywintypes|winsound|wmi|pythoncom)'"
    rf"|module '(?P<owner>ctypes|os|signal)' has no attribute '(?P<name>{_WINDOWS_NAMES})'"
    rf"|cannot import name '(?P<imported>{_WINDOWS_NAMES})' from '(?P<source>ctypes|os|signal)'"
    r"|(?P<path>'\.\\\\[^']*')"
)
RECORD_WRITES_DIR = Path(__file__).resolve().parent / "record_writes"
WRITES_LOG_VARIABLE = "GRADING_WRITES_LOG"


def windows_only_use(found: re.Match[str]) -> str:
    """What a WINDOWS_ONLY match found, as the report says it: "msvcrt, a Windows-only module"."""
    if found.group("module"):
        return f"{found.group('module')}, a Windows-only module"
    if found.group("name"):
        return f"{found.group('owner')}.{found.group('name')}, a Windows-only name"
    if found.group("imported"):
        return f"{found.group('source')}.{found.group('imported')}, a Windows-only name"
    return f"{found.group('path')}, a Windows path"


class HarnessError(RuntimeError):
    """The grading set-up failed (not the submission): reported as an error of the run."""


class ServerStartError(RuntimeError):
    """The server did not start; the message's first line says why, then its output."""


class NoResponse(AssertionError):
    """The server sent nothing (and did not close) within the read timeout."""


def wait_until(condition: Callable[[], object], timeout: float = READ_TIMEOUT) -> bool:
    """Poll `condition()` until it is true or `timeout` seconds pass; its last value, as a bool.

    For effects the server makes after its response (a connection it notices
    closed): a bounded wait for a condition, not a sleep standing in for one.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return bool(condition())
        threading.Event().wait(POLL_INTERVAL)
    return True


# Every server started in this process, so that a SIGTERM or Ctrl-C of a grading run stops
# them all (plugin.py), not only those whose check got to its teardown.
_RUNNING: set[ServerProcess] = set()
_RUNNING_LOCK = threading.Lock()


def stop_every_server() -> None:
    """Kill the process group of every server still running (a grading run that is stopped)."""
    with _RUNNING_LOCK:
        running = list(_RUNNING)
    for server in running:
        server.kill_group()


class ServerProcess:
    """A server in a subprocess: ours, or a submission's entry point in a copied folder.

    `data_dir` holds `defensive.db` and the storage (for a submission: its
    folder, `server_dir`); `log_path` what the server printed. Each runs in a
    process group of its own: stopping it stops whatever it started.
    """

    def __init__(
        self,
        server_dir: Path,
        data_dir: Path,
        *,
        python: str = sys.executable,
        ours: bool = True,
        extra_args: list[str] | None = None,
        log_path: Path | None = None,
        label: str | None = None,
        entry: str = "server.py",
        port_info: Callable[[int], str] = str,
        record_writes: Path | None = None,
    ) -> None:
        self._server_dir = server_dir
        self._label = label
        self._data_dir = data_dir
        self.python = python
        self.ours = ours
        self.extra_args = list(extra_args or [])
        self.entry = entry
        self.port_info = port_info  # port -> the text of port.info (default: the digits alone)
        self.record_writes = record_writes  # a file where the submission's socket writes are logged
        self.host = "127.0.0.1"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        # A submission's own files stay its own: its output goes beside its folder, not into it.
        self.log_path = log_path or data_dir / "server.log"

    @property
    def server_dir(self) -> Path:
        return self._server_dir

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    @property
    def db_path(self) -> Path:
        """defensive.db: beside the entry point or in the folder it runs from (§5)."""
        if self.ours:
            return self.data_dir / "defensive.db"
        for folder in (self.server_dir, (self.server_dir / self.entry).parent):
            if (folder / "defensive.db").exists():
                return folder / "defensive.db"
        return self.server_dir / "defensive.db"

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def description(self) -> str:
        if self._label is not None:
            return self._label
        return "this repository's server.py" if self.ours else f"{self.server_dir}/{self.entry}"

    def _environment(self) -> dict[str, str]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        if self.record_writes is not None:
            # sitecustomize.py there wraps socket.send/sendall and logs each response's writes.
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(RECORD_WRITES_DIR), env.get("PYTHONPATH")]))
            env[WRITES_LOG_VARIABLE] = str(self.record_writes)
        return env

    def _popen(self, command: list[str], cwd: Path | None, log: IO[bytes]) -> subprocess.Popen[bytes]:
        try:
            process = subprocess.Popen(  # noqa: S603  # running the submission is the point
                command,
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._environment(),
                # Its own process group: stopping it stops whatever it started, and nothing else;
                # a Ctrl-C meant for the grading run reaches it only through the run's clean-up.
                start_new_session=os.name == "posix",
            )
        except OSError as err:
            raise HarnessError(f"cannot run {command[0]}: {err.strerror or err}") from err
        with _RUNNING_LOCK:
            _RUNNING.add(self)
        return process

    def start(self) -> None:
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise HarnessError(f"cannot create {self.data_dir}: {err.strerror or err}") from err
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
        # Its output goes straight to the log file, not through a pipe and a thread: what it
        # logged before it answered is in the file when the answer arrives.
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.process = self._popen(command, None, log)
        deadline = time.monotonic() + START_TIMEOUT
        while self.process.poll() is None and time.monotonic() < deadline:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                match = LISTENING_LINE.search(log.read().decode("utf-8", "replace"))
            if match:
                self.port = int(match.group(1))
                return
            threading.Event().wait(POLL_INTERVAL / 5)
        exited = self.process.poll()
        self.stop()
        what = None if exited is not None else f'did not log "listening on" within {START_TIMEOUT:.0f} s'
        raise ServerStartError(self._start_failure(exited, what))

    def _start_foreign(self) -> None:
        """A submission: port.info with a free port, `python ENTRY` from its folder (§5)."""
        self.port = free_port()
        entry_dir = (self.server_dir / self.entry).parent
        try:
            # Beside the entry point and in the folder it runs from: servers read either.
            for folder in {self.server_dir, entry_dir}:
                (folder / "port.info").write_text(self.port_info(self.port), newline="")
            log = self.log_path.open("ab")
        except OSError as err:
            raise HarnessError(f"cannot write into {self.server_dir}: {err.strerror or err}") from err
        with log:
            self.process = self._popen([self.python, self.entry], self.server_dir, log)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerStartError(self._start_failure(self.stop()))
            host = listening_host(self.port)
            if host is not None:
                self.host = host
                return
            ports = listening_ports_of(self.process.pid)
            elsewhere = [port for port in ports if port != self.port]
            if elsewhere and self.port not in ports:
                self.stop()
                what = f"listens on {', '.join(map(str, elsewhere))}, not on {self.port} of port.info"
                raise ServerStartError(self._start_failure(None, what))
            threading.Event().wait(POLL_INTERVAL)
        self.stop()
        what = f"did not listen on port {self.port} (its port.info) within {START_TIMEOUT:.0f} s"
        raise ServerStartError(self._start_failure(None, what))

    def _start_failure(self, status: int | None, what: str | None = None) -> str:
        """A message whose first line says what happened (if it exited: its last line, the error)."""
        output = self.log_text().strip()
        windows = WINDOWS_ONLY.search(output)
        if windows is not None and what is None:
            what = f"cannot run on this machine: it uses {windows_only_use(windows)} (status {status})"
        if what is None:
            last_line = output.splitlines()[-1].strip() if output else "(no output)"
            what = f"exited with status {status} at start-up: {last_line}"
        return f"{self.entry} {what}\n--- output of {self.description} ---\n{output}"

    def _signal(self, signum: int) -> None:
        assert self.process is not None
        if not self.ours and os.name == "posix":
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signum)
        elif self.process.poll() is None:
            self.process.send_signal(signum)

    def stop(self) -> int | None:
        """SIGTERM, and SIGKILL if it does not stop in time; the exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT if self.ours else FOREIGN_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait()
        if not self.ours and os.name == "posix":
            self._signal(signal.SIGKILL)  # anything the submission started and left running
        status = self.process.returncode
        self.process = None
        with _RUNNING_LOCK:
            _RUNNING.discard(self)
        return status

    def kill_group(self) -> None:
        """SIGKILL to the whole process group, from any thread or a signal handler."""
        process = self.process
        if process is not None and os.name == "posix":
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        elif process is not None:
            process.kill()

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind in the server."""
        if self.process is not None:
            self._signal(signal.SIGKILL)
        self.stop()

    def restart(self) -> None:
        self.stop()
        self.start()

    def exit_status(self) -> int | None:
        """The exit status if the server has exited on its own (crashed); None while it runs."""
        return None if self.process is None else self.process.poll()

    def log_text(self) -> str:
        return self.log_path.read_text("utf-8", "replace") if self.log_path.exists() else ""

    def query(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        """Read our server's database (the PROTOCOL.md §5 schema exactly) while it runs.

        For tests of our own server. The checks read a submission's database
        leniently, through grading.database.
        """
        if not self.db_path.exists():
            raise AssertionError("§5 database: there is no defensive.db")
        try:
            with closing(
                sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=READ_TIMEOUT)
            ) as db:
                return db.execute(sql, params).fetchall()
        except sqlite3.OperationalError as err:
            raise AssertionError(f"§5 database: {err} (in {sql})") from err

    def peak_rss_kib(self) -> int:
        """The process's peak resident set size (VmHWM), in KiB."""
        assert self.process is not None
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        match = re.search(r"VmHWM:\s+(\d+) kB", status)
        assert match, status
        return int(match.group(1))

    def group(self) -> ProcessGroup:
        """The server's process group, for its memory and CPU (Linux)."""
        if self.process is None:
            pytest.skip("needs the server's process")
        return ProcessGroup(self.process.pid)


class ExternalServer(ServerProcess):
    """A server someone else started (`--server HOST:PORT`): only its address is known.

    What needs its folder, its database or its process (a restart, a kill)
    skips the check that asked, with the reason: "not run", not "failed".
    """

    def __init__(self, host: str, port: int) -> None:
        super().__init__(Path(), Path(), ours=False, log_path=Path(os.devnull))
        self.host = host
        self.port = port

    @property
    def server_dir(self) -> Path:
        pytest.skip(NOT_IN_THE_FOLDER)

    @property
    def data_dir(self) -> Path:
        pytest.skip(NOT_IN_THE_FOLDER)

    @property
    def description(self) -> str:
        return f"the server at {self.host}:{self.port}"

    def start(self) -> None:
        """Already running: nothing to start (its reachability is checked once per session)."""

    def stop(self) -> int | None:
        return None

    def kill(self) -> None:
        pytest.skip("needs to kill the server: --server gives only its address")

    def restart(self) -> None:
        pytest.skip("needs to restart the server: --server gives only its address")

    def log_text(self) -> str:
        return ""

    def peak_rss_kib(self) -> int:
        pytest.skip("needs the server's process: --server gives only its address")

    def group(self) -> ProcessGroup:
        pytest.skip("needs the server's process: --server gives only its address")


# --- a process group's memory and CPU (Linux /proc) ---------------------------------


@dataclass(frozen=True)
class GroupSample:
    rss_kib: int  # the sum of the processes' resident sets
    peak_kib: int  # the sum of their peaks (VmHWM): an upper bound of the group's peak
    cpu_seconds: float  # user + system time of every process of the group


# Fields of /proc/PID/stat, counted after the command name (which is in parentheses and
# may hold spaces): the parent's pid and the process group.
PPID_FIELD = 1
PGRP_FIELD = 2


def processes_where(field: int, value: int) -> list[int]:
    """The pids whose /proc/PID/stat has `value` in `field` (Linux; elsewhere none are known)."""
    found = []
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    for entry in proc.iterdir():
        if entry.name.isdigit():
            with suppress(OSError, IndexError, ValueError):
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
                if int(fields[field]) == value:
                    found.append(int(entry.name))
    return found


class ProcessGroup:
    """The processes of one process group: a server and whatever it started."""

    def __init__(self, pgid: int) -> None:
        self.pgid = pgid
        self._ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def pids(self) -> list[int]:
        return processes_where(PGRP_FIELD, self.pgid)

    def runnable_ns(self) -> dict[int, int] | None:
        """Per thread of the group: nanoseconds it ran or waited on a run queue to run (Linux).

        From /proc/PID/task/TID/schedstat. Unlike CPU time, this does not shrink on a
        loaded machine: a thread that spins is runnable all the time, whatever share of a
        CPU it gets; an idle one is asleep. None where the kernel does not give it.
        """
        found: dict[int, int] = {}
        for pid in self.pids():
            with suppress(OSError):
                for task in Path(f"/proc/{pid}/task").iterdir():
                    with suppress(OSError, ValueError):
                        running, waiting = (task / "schedstat").read_text().split()[:2]
                        found[int(task.name)] = int(running) + int(waiting)
        return found or None

    def sample(self) -> GroupSample:
        rss = peak = 0
        ticks = 0
        for pid in self.pids():
            with suppress(OSError, IndexError, ValueError):
                status = Path(f"/proc/{pid}/status").read_text()
                rss_match = re.search(r"VmRSS:\s+(\d+) kB", status)
                peak_match = re.search(r"VmHWM:\s+(\d+) kB", status)
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
                rss += int(rss_match.group(1)) if rss_match else 0
                peak += int(peak_match.group(1)) if peak_match else 0
                ticks += int(fields[11]) + int(fields[12])  # utime, stime
        return GroupSample(rss, peak, ticks / self._ticks)


def free_port() -> int:
    try:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
            return port
    except OSError as err:
        raise HarnessError(f"no free port on 127.0.0.1: {err}") from err


def listening_host(port: int) -> str | None:
    """The address to reach a server listening on `port` at, or None if nothing listens yet.

    Read from the kernel's socket tables where there are some (Linux), so that
    waiting for a submission does not connect to it: a connection that closes
    without a byte is a case of its own, for a check to see, not for start-up.
    Elsewhere: a connection attempt.
    """
    if not Path("/proc/net/tcp").exists():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except OSError:
            return None
        return "127.0.0.1"
    addresses = [address for address, bound_port, _ in _listening_sockets() if bound_port == port]
    if not addresses:
        return None
    if any(address.version == 4 and (address.is_unspecified or address.is_loopback) for address in addresses):
        return "127.0.0.1"
    if any(address.is_unspecified or address.is_loopback for address in addresses):
        return "::1"
    return str(addresses[0])  # bound to one interface's address only


def listening_ports_of(pid: int) -> list[int]:
    """The TCP ports process `pid` listens on (Linux; elsewhere none are known)."""
    inodes = set()
    with suppress(OSError):
        for descriptor in Path(f"/proc/{pid}/fd").iterdir():
            with suppress(OSError):
                match = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(descriptor))
                if match:
                    inodes.add(int(match.group(1)))
    return sorted({port for _, port, inode in _listening_sockets() if inode in inodes})


def _listening_sockets() -> list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int, int]]:
    """(address, port, inode) of every listening TCP socket in /proc/net/tcp and tcp6."""
    found = []
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        with suppress(OSError):
            for line in table.read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":  # LISTEN
                    address_hex, port_hex = fields[1].split(":")
                    found.append((_kernel_address(address_hex), int(port_hex, 16), int(fields[9])))
    return found


def bytes_in_flight(conn: RawConnection) -> int | None:
    """Bytes this connection sent that the server's process has not read yet (Linux), or None.

    Our socket's send queue plus the server socket's receive queue, from
    /proc/net/tcp{,6}: zero means the server has read everything sent, whatever
    it does with it (a file, memory). None where the tables are not there.
    """
    local_port = conn.sock.getsockname()[1]
    server_port = conn.sock.getpeername()[1]
    total = None
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        with suppress(OSError):
            for line in table.read_text().splitlines()[1:]:
                fields = line.split()
                local, remote = (int(part.split(":")[1], 16) for part in fields[1:3])
                tx_queue, rx_queue = (int(part, 16) for part in fields[4].split(":"))
                if (local, remote) == (local_port, server_port):
                    total = (total or 0) + tx_queue
                elif (local, remote) == (server_port, local_port):
                    total = (total or 0) + rx_queue
    return total


def _kernel_address(address_hex: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address as /proc/net/tcp{,6} prints it: 32-bit words in host (little-endian) order."""
    raw = bytes.fromhex(address_hex)
    words = b"".join(raw[index : index + 4][::-1] for index in range(0, len(raw), 4))
    address = ipaddress.ip_address(words)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def copy_submission(source: Path, destination: Path) -> Path:
    """A submission folder copied without its state, so that each check starts clean."""
    try:
        shutil.copytree(source, destination, ignore=SUBMISSION_LEFTOVERS)
    except OSError as err:
        raise HarnessError(f"cannot copy {source} to {destination}: {err}") from err
    return destination


# --- raw connections --------------------------------------------------------


@dataclass(frozen=True)
class RawResponse:
    version: int
    code: int
    payload: bytes


# The request codes sent on every connection of this process, last one last: a server that
# dies is reported "after a 1025" (plugin.py).
SENT_CODES: list[int] = []


def _note_codes(data: bytes) -> None:
    """Record the codes of the request headers at the start of `data` (whole requests only)."""
    offset = 0
    while offset + REQUEST_HEADER.size <= len(data):
        _, _, code, size = REQUEST_HEADER.unpack_from(data, offset)
        SENT_CODES.append(code)
        offset += REQUEST_HEADER.size + size


class RawConnection:
    """A plain socket to the server, for checks that write exact bytes and read exact responses."""

    def __init__(
        self, address: tuple[str, int], timeout: float = READ_TIMEOUT, source: str | None = None
    ) -> None:
        # `source`: another loopback address (127.0.0.2) to connect from, as a second host would.
        source_address = (source, 0) if source else None
        self.sock = socket.create_connection(address, timeout=timeout, source_address=source_address)
        self.timeout = timeout
        self._buffer = bytearray()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        _note_codes(data)
        self.sock.sendall(data)

    def _read(self, size: int) -> bytes:
        """Up to `size` bytes: fewer only if the server closed the connection."""
        while len(self._buffer) < size:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                data = b""
            except TimeoutError:
                raise NoResponse(
                    f"nothing from the server for {self.timeout:.0f} s "
                    f"(after {len(self._buffer)} of {size} awaited bytes): it hangs"
                ) from None
            if not data:
                break
            self._buffer += data
        taken = bytes(self._buffer[:size])
        del self._buffer[:size]
        return taken

    def receive(self) -> RawResponse:
        raw = self._read(RESPONSE_HEADER.size)
        assert len(raw) == RESPONSE_HEADER.size, (
            f"the server closed the connection instead of answering ({len(raw)} of 7 header bytes came)"
        )
        header = ResponseHeader.unpack(raw)
        assert header.payload_size <= 1024, (
            f"the response header (code {header.code}) declares a payload of {header.payload_size} bytes; "
            "no response has more than 279"
        )
        payload = self._read(header.payload_size)
        assert len(payload) == header.payload_size, (
            f"the server closed the connection inside a {header.code} response "
            f"({len(payload)} of {header.payload_size} payload bytes came)"
        )
        return RawResponse(header.version, header.code, payload)

    def rest_until_closed(self) -> bytes:
        """Everything the server sends until it closes the connection."""
        return self._read(1 << 20)

    def is_closed(self) -> bool:
        """True when the server closes its side (sending nothing more) within the read timeout."""
        try:
            return self._read(1) == b""
        except NoResponse:
            return False

    def silent_and_open(self, wait: float = 0.5) -> bool:
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
        except ConnectionResetError:
            return False
        finally:
            self.sock.settimeout(self.timeout)
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
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=READ_TIMEOUT)
            except OSError:
                downstream.close()  # the client sees the server's refusal as a closed connection
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [downstream, upstream]
            threading.Thread(target=self._forward_requests, args=(downstream, upstream), daemon=True).start()
            threading.Thread(target=_pipe, args=(upstream, downstream), daemon=True).start()

    def _take_one(self) -> bool:
        with self._lock:
            if self.remaining <= 0:
                return False
            self.remaining -= 1
            return True

    def _forward_requests(self, downstream: socket.socket, upstream: socket.socket) -> None:
        try:
            with downstream.makefile("rb") as source:
                self._forward(source, upstream)
        except (OSError, ValueError):
            pass  # either side closed; ValueError: the proxy closed the socket under the reader
        finally:
            _shutdown(upstream)

    def _forward(self, source: IO[bytes], upstream: socket.socket) -> None:
        while header := source.read(REQUEST_HEADER.size):
            upstream.sendall(header)
            if len(header) < REQUEST_HEADER.size:
                return
            _, _, code, size = REQUEST_HEADER.unpack(header)
            SENT_CODES.append(code)
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


# --- client programs, driven through transfer.info (§5, §6) -------------------


@dataclass(frozen=True)
class ClientRun:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return (self.stdout + self.stderr).strip()

    def tail(self, lines: int = 5) -> str:
        """The last lines of what the client printed, on one line, for a failure message."""
        return " | ".join(self.output.splitlines()[-lines:]) or "(no output)"


@dataclass(frozen=True)
class ClientProgram:
    """A client program run in a working folder holding transfer.info (PROTOCOL.md §5).

    It reads transfer.info, writes me.info, and exits with status 0 when the
    server holds a verified copy of the file: the reference client.py, or a
    C++ client binary (`--client-exe`), ours or a student's.
    """

    command: tuple[str, ...]
    description: str

    @classmethod
    def reference(cls) -> ClientProgram:
        return cls((sys.executable, str(REPO_ROOT / "client.py")), "the reference client.py")

    @classmethod
    def executable(cls, path: Path) -> ClientProgram:
        return cls((str(path.resolve()),), str(path))

    def run(self, work_dir: Path, timeout: float = CLIENT_TIMEOUT) -> ClientRun:
        try:
            completed = subprocess.run(  # noqa: S603  # the client program under test
                self.command,
                cwd=work_dir,
                capture_output=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except subprocess.TimeoutExpired as err:
            output = ((err.stdout or b"") + (err.stderr or b"")).decode("utf-8", "replace")
            tail = " | ".join(output.strip().splitlines()[-5:]) or "(no output)"
            raise AssertionError(
                f"{self.description} did not finish within {timeout:.0f} s; its last output: {tail}"
            ) from None
        except OSError as err:
            raise HarnessError(f"cannot run {self.command[0]}: {err.strerror or err}") from err
        return ClientRun(
            completed.returncode,
            completed.stdout.decode("utf-8", "replace"),
            completed.stderr.decode("utf-8", "replace"),
        )
