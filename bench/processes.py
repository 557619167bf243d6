"""The processes a benchmark talks to: our server, and a private sshd for scp.

Both listen on 127.0.0.1 only, in a temporary folder of their own, and are
stopped (SIGTERM, then SIGKILL) when their `with` block ends. A fresh server
is started for each file size, so that its peak RSS (VmHWM) covers that size
alone.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVER_PY = REPO_ROOT / "server.py"
LOOPBACK = "127.0.0.1"
START_TIMEOUT = 20.0  # seconds for a process to start listening
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL
LISTENING_LINE = re.compile(r"listening on [^ ]+:(\d+)")
# The server's per-request log line (server.py), for the timing of a C++ client's 1028.
SEND_FILE_LINE = re.compile(r"client=([0-9a-f]{32}) code=1028 -> 2103 bytes=(\d+) ([\d.]+) ms")
# The cipher of the reference figure in the issue: the fastest one OpenSSH offers with AES-NI.
SCP_CIPHER = "aes128-gcm@openssh.com"


class BenchError(RuntimeError):
    """A benchmark step failed (a process did not start, a transfer did not verify)."""


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _proc_status_kib(pid: int, field_name: str) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field_name}:\s+(\d+) kB", status, re.MULTILINE)
    if match is None:
        raise BenchError(f"no {field_name} in /proc/{pid}/status")
    return int(match.group(1))


@dataclass
class OurServer:
    """`server.py` on 127.0.0.1 and a free port, logging to a file in its data folder."""

    data_dir: Path
    python: str = sys.executable
    server_py: Path = SERVER_PY  # another tree's server.py, for an A/B run (bench/ab.py)
    options: tuple[str, ...] = ()  # more command-line options of server.py
    port: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    @property
    def address(self) -> tuple[str, int]:
        return LOOPBACK, self.port

    def __enter__(self) -> OurServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [self.python, str(self.server_py), "--host", LOOPBACK, "--port", "0"]
        command += ["--data-dir", str(self.data_dir), "--log-level", "INFO", *self.options]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            match = LISTENING_LINE.search(self.log_text())
            if match:
                self.port = int(match.group(1))
                return self
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        self.__exit__(None, None, None)
        raise BenchError(f"server did not start:\n{self.log_text()}")

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self.process is not None:
            _stop(self.process)
            self.process = None

    @property
    def pid(self) -> int:
        if self.process is None:
            raise BenchError("the server is not running")
        return self.process.pid

    def peak_rss_kib(self) -> int:
        """VmHWM: the largest resident set the process has had since it started."""
        return _proc_status_kib(self.pid, "VmHWM")

    def log_text(self) -> str:
        return self.log_path.read_text("utf-8", "replace") if self.log_path.exists() else ""

    def send_file_ms(self, client_id: bytes) -> list[float]:
        """The server's own timing of each 1028 of `client_id`: header read to 2103 sent."""
        wanted = client_id.hex()
        return [float(m[3]) for m in SEND_FILE_LINE.finditer(self.log_text()) if m[1] == wanted]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_until_listening(port: int, process: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection((LOOPBACK, port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def find_sshd(install: bool) -> str | None:
    """The sshd binary; with `install`, `apt-get install openssh-server` when it is missing (root only)."""
    for candidate in (shutil.which("sshd"), "/usr/sbin/sshd"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    if install and os.geteuid() == 0 and shutil.which("apt-get"):
        print("sshd is missing: apt-get install -y openssh-server", file=sys.stderr)
        environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "openssh-server"]):
            subprocess.run(command, check=False, env=environment, stdout=subprocess.DEVNULL)
        if os.access("/usr/sbin/sshd", os.X_OK):
            return "/usr/sbin/sshd"
    return None


@dataclass
class ScpTarget:
    """A private sshd on 127.0.0.1 with a throw-away host key, client key and configuration.

    One master connection (ControlMaster) is opened at start, and every scp
    goes through it: like our figures, which start at the 1028 and leave out
    the connection and key exchange, scp's leave out the SSH handshake. What
    remains in them is opening a session channel and the SFTP server.
    """

    work_dir: Path
    sshd: str
    port: int = 0
    sshd_process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    master: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def __enter__(self) -> ScpTarget:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        for key in ("host_key", "client_key"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.work_dir / key)],
                check=True,
                stdin=subprocess.DEVNULL,
            )
        shutil.copy(self.work_dir / "client_key.pub", self.work_dir / "authorized_keys")
        if os.geteuid() == 0:
            # sshd refuses to start without its privilege separation folder.
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        try:
            self._start_sshd()
            self._start_master()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _sshd_config(self) -> str:
        return "\n".join(
            [
                f"ListenAddress {LOOPBACK}",
                f"Port {self.port}",
                f"HostKey {self.work_dir / 'host_key'}",
                f"PidFile {self.work_dir / 'sshd.pid'}",
                f"AuthorizedKeysFile {self.work_dir / 'authorized_keys'}",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "PermitRootLogin prohibit-password",
                f"AllowUsers {getpass.getuser()}",
                f"Ciphers {SCP_CIPHER}",
                # In-process SFTP: no login shell to start (root's here takes ~130 ms), so
                # scp's figures hold the transfer, not the shell's start-up files.
                "Subsystem sftp internal-sftp",
                "LogLevel ERROR",
                "",
            ]
        )

    def _start_sshd(self) -> None:
        for _ in range(3):  # the free port may be taken between probing and binding
            self.port = free_port()
            config = self.work_dir / "sshd_config"
            config.write_text(self._sshd_config())
            with (self.work_dir / "sshd.log").open("wb") as log:
                self.sshd_process = subprocess.Popen(
                    [self.sshd, "-D", "-e", "-f", str(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                )
            if _wait_until_listening(self.port, self.sshd_process):
                return
            _stop(self.sshd_process)
        log_text = (self.work_dir / "sshd.log").read_text("utf-8", "replace")
        raise BenchError(f"sshd did not start:\n{log_text}")

    def ssh_options(self) -> list[str]:
        return [
            "-F",
            "/dev/null",
            "-i",
            str(self.work_dir / "client_key"),
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            f"Ciphers={SCP_CIPHER}",
            "-o",
            "Compression=no",
            "-o",
            f"ControlPath={self.work_dir / 'master.sock'}",
        ]

    @property
    def login(self) -> str:
        return f"{getpass.getuser()}@{LOOPBACK}"

    def _start_master(self) -> None:
        command = ["ssh", *self.ssh_options(), "-p", str(self.port), "-o", "ControlMaster=yes", "-N"]
        self.master = subprocess.Popen(
            [*command, self.login], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + START_TIMEOUT
        check = ["ssh", *self.ssh_options(), "-p", str(self.port), "-O", "check", self.login]
        while time.monotonic() < deadline and self.master.poll() is None:
            result = subprocess.run(check, capture_output=True, check=False)
            if result.returncode == 0:
                return
            time.sleep(0.05)
        error = b""
        if self.master.poll() is not None and self.master.stderr is not None:
            error = self.master.stderr.read()
        reason = error.decode("utf-8", "replace")
        raise BenchError(f"ssh master connection to the private sshd failed: {reason}")

    @property
    def sshd_pid(self) -> int:
        if self.sshd_process is None:
            raise BenchError("sshd is not running")
        return self.sshd_process.pid

    @property
    def master_pid(self) -> int:
        if self.master is None:
            raise BenchError("the ssh master connection is not open")
        return self.master.pid

    def scp_command(self, source: Path, destination: Path) -> list[str]:
        return [
            "scp",
            "-q",
            *self.ssh_options(),
            "-o",
            "ControlMaster=no",
            "-P",
            str(self.port),
            str(source),
            f"{self.login}:{destination}",
        ]

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self.master is not None:
            _stop(self.master)
            if self.master.stderr is not None:
                self.master.stderr.close()
            self.master = None
        if self.sshd_process is not None:
            _stop(self.sshd_process)
            self.sshd_process = None


@contextmanager
def scp_target(work_dir: Path, install: bool) -> Iterator[ScpTarget | None]:
    """A running ScpTarget, or None (with the reason on stderr) when sshd is not available."""
    sshd = find_sshd(install)
    if sshd is None:
        print("scp reference skipped: no sshd (apt-get install -y openssh-server)", file=sys.stderr)
        yield None
        return
    try:
        target = ScpTarget(work_dir, sshd).__enter__()
    except (BenchError, OSError, subprocess.CalledProcessError) as err:
        print(f"scp reference skipped: {err}", file=sys.stderr)
        yield None
        return
    try:
        yield target
    finally:
        target.__exit__(None, None, None)
        with suppress(OSError):
            shutil.rmtree(work_dir)
