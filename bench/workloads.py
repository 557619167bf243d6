"""What the benchmark times: one transfer per tool, many clients at once, key exchanges.

Throughput is file bytes per second of the transfer itself:
- Python client: from the first byte of the 1028 to the 2103, timed in the
  client (`FileTransferClient.send_file`).
- C++ client: the server's own timing of the same 1028 (its log line, from
  the header read to the 2103 sent); the process start, the RSA work and the
  reconnect before it are left out, as they are for the Python client.
- scp: the whole `scp` process over an open SSH master connection (the
  handshake left out), which includes opening a channel and starting the SFTP
  server: tens of milliseconds that matter at 1 MiB and vanish at 1 GiB.
Every transfer is checked: the checksum in the 2103 (then 1029), the C++
client's exit status, the size of scp's copy.

CPU seconds (user + system, bench/cpu.py) are read around the same span, on
each side: the client (this process, or the program run and, for scp, the
ssh master connection that encrypts) and the server (ours, or sshd with its
session and SFTP processes).
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from Crypto.PublicKey import RSA

from bench.cpu import children_cpu_seconds, own_cpu_seconds, process_cpu_seconds, tree_cpu_seconds
from bench.processes import BenchError, OurServer, ScpTarget
from client import FileTransferClient, encrypt_stream
from protocol import (
    CLIENT_VERSION,
    RESPONSE_HEADER,
    FileReceivedResponse,
    RequestCode,
    RequestHeader,
    ResponseCode,
    ResponseHeader,
    SendFileHead,
    encrypted_size,
)

WRITE_CHUNK = 16 * 1024 * 1024  # bytes of random data written at a time to a test file
TRANSFER_TIMEOUT = 600.0  # seconds one transfer may take before the benchmark gives up
BARRIER_TIMEOUT = 120.0  # seconds the concurrent clients wait for each other to be ready


def make_file(path: Path, size: int) -> None:
    """A file of `size` random bytes (incompressible, as encrypted traffic must treat it)."""
    with path.open("wb") as out:
        remaining = size
        while remaining:
            piece = min(WRITE_CHUNK, remaining)
            out.write(os.urandom(piece))
            remaining -= piece


@dataclass(frozen=True)
class Timing:
    """One timed transfer: its seconds, and the CPU seconds each side spent meanwhile."""

    seconds: float
    client_cpu: float
    server_cpu: float


def _unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class PythonSender:
    """One client registered with its AES key, on an open connection; sends files on demand."""

    def __init__(self, server: OurServer, rsa_key: RSA.RsaKey) -> None:
        self.server = server
        self.client = FileTransferClient(*server.address, timeout=TRANSFER_TIMEOUT)
        name = _unique_name("bench-py")
        if self.client.register(name) is None:
            raise BenchError(f"registration of {name} refused")
        self.client.send_public_key(name, rsa_key)

    def send(self, path: Path) -> Timing:
        """From the first byte of the 1028 to the 2103; then 1029 (not timed).

        The client's CPU is this whole process's: nothing else runs in it meanwhile
        (the concurrent clients' figures use only the seconds).
        """
        server_cpu = process_cpu_seconds(self.server.pid)
        client_cpu = own_cpu_seconds()
        started = time.perf_counter()
        received, checksum = self.client.send_file(path, path.name)
        elapsed = time.perf_counter() - started
        timing = Timing(
            elapsed,
            own_cpu_seconds() - client_cpu,
            process_cpu_seconds(self.server.pid) - server_cpu,
        )
        if received.cksum != checksum:
            raise BenchError(f"{path.name}: server checksum {received.cksum}, local {checksum}")
        self.client.crc_ok(path.name)
        return timing

    def close(self) -> None:
        self.client.close()


class PreEncryptedSender:
    """What the server alone can take: the content encrypted beforehand, sent with sendfile().

    The Python client's CBC encryption is sequential and limits it; here it
    is done once, untimed, with the key of a registered client, and each
    timed 1028 is the kernel copying the encrypted file into the socket.
    """

    def __init__(self, server: OurServer, rsa_key: RSA.RsaKey, source: Path, encrypted: Path) -> None:
        with FileTransferClient(*server.address) as client:
            name = _unique_name("bench-pre")
            if client.register(name) is None:
                raise BenchError(f"registration of {name} refused")
            aes_key = client.send_public_key(name, rsa_key)
            self.client_id = client.client_id
        self.server = server
        self.encrypted = encrypted
        self.file_name = source.name
        self.checksum = _encrypt_file(source, encrypted, aes_key)

    def send(self) -> Timing:
        """From the first byte of the 1028 to the 2103, on a connection of its own."""
        content_size = self.encrypted.stat().st_size
        head = SendFileHead(content_size, self.file_name).pack()
        # The header's payload size covers the head and the content that follows it.
        header = RequestHeader(
            self.client_id, CLIENT_VERSION, RequestCode.SEND_FILE, len(head) + content_size
        )
        request = header.pack() + head
        with socket.create_connection(self.server.address, timeout=TRANSFER_TIMEOUT) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as the clients do
            server_cpu = process_cpu_seconds(self.server.pid)
            client_cpu = own_cpu_seconds()
            started = time.perf_counter()
            sock.sendall(request)
            with self.encrypted.open("rb") as content:
                sock.sendfile(content)
            response = ResponseHeader.unpack(_receive_exact(sock, RESPONSE_HEADER.size))
            payload = _receive_exact(sock, response.payload_size)
            elapsed = time.perf_counter() - started
            timing = Timing(
                elapsed,
                own_cpu_seconds() - client_cpu,
                process_cpu_seconds(self.server.pid) - server_cpu,
            )
        if response.code != ResponseCode.FILE_RECEIVED:
            raise BenchError(f"pre-encrypted 1028 answered with {response.code}")
        if FileReceivedResponse.unpack(payload).cksum != self.checksum:
            raise BenchError("pre-encrypted 1028: the server's checksum differs")
        return timing


def _encrypt_file(source: Path, destination: Path, key: bytes) -> int:
    """Encrypt `source` into `destination` as a client sends it; return the cksum of `source`."""
    with source.open("rb") as plain, destination.open("wb") as out:
        checksum = encrypt_stream(plain, source.stat().st_size, key, out.write)
    if destination.stat().st_size != encrypted_size(source.stat().st_size):
        raise BenchError(f"{destination} has not the size of the encrypted {source}")
    return checksum


def _receive_exact(sock: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    view = memoryview(buffer)
    filled = 0
    while filled < size:
        count = sock.recv_into(view[filled:])
        if not count:
            raise BenchError("the server closed the connection")
        filled += count
    return bytes(buffer)


@dataclass
class CppSender:
    """The C++ client program, run in a folder of its own (it registers once, then reconnects)."""

    binary: Path
    folder: Path
    server: OurServer
    name: str = field(default_factory=lambda: _unique_name("bench-cpp"))

    def send(self, path: Path) -> Timing:
        """Seconds of the 1028 as the server timed it (header read to 2103 sent).

        CPU seconds: the whole client process, and the server's meanwhile; both
        include the reconnect (RSA decryption of the AES key: well under 1 ms).
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        host, port = self.server.address
        (self.folder / "transfer.info").write_text(f"{host}:{port}\n{self.name}\n{path}\n")
        server_cpu = process_cpu_seconds(self.server.pid)
        client_cpu = children_cpu_seconds()
        try:
            result = subprocess.run(
                [str(self.binary)],
                cwd=self.folder,
                capture_output=True,
                timeout=TRANSFER_TIMEOUT,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise BenchError(f"C++ client: {err}") from err
        client_cpu = children_cpu_seconds() - client_cpu
        server_cpu = process_cpu_seconds(self.server.pid) - server_cpu
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode("utf-8", "replace")
            raise BenchError(f"C++ client exited with {result.returncode}:\n{output}")
        client_id = bytes.fromhex((self.folder / "me.info").read_text().splitlines()[1].strip())
        timings = self.server.send_file_ms(client_id)
        if not timings:
            raise BenchError("the server logged no 1028 of the C++ client")
        return Timing(timings[-1] / 1000, client_cpu, server_cpu)


def scp_send(target: ScpTarget, source: Path, destination: Path) -> Timing:
    """One `scp` over the master connection; the copy is checked and removed.

    Client CPU: scp and its ssh (waited for), and the master connection's ssh,
    which encrypts; server CPU: sshd and every process under it (the session
    and its SFTP server, which decrypt and write).
    """
    server_cpu = tree_cpu_seconds(target.sshd_pid)
    client_cpu = children_cpu_seconds() + process_cpu_seconds(target.master_pid)
    started = time.perf_counter()
    result = subprocess.run(
        target.scp_command(source, destination),
        capture_output=True,
        timeout=TRANSFER_TIMEOUT,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    elapsed = time.perf_counter() - started
    client_cpu = children_cpu_seconds() + process_cpu_seconds(target.master_pid) - client_cpu
    server_cpu = tree_cpu_seconds(target.sshd_pid) - server_cpu
    if result.returncode != 0:
        raise BenchError(f"scp exited with {result.returncode}: {result.stderr.decode(errors='replace')}")
    copied = destination.stat().st_size
    destination.unlink()
    if copied != source.stat().st_size:
        raise BenchError(f"scp copied {copied} bytes of {source.stat().st_size}")
    return Timing(elapsed, client_cpu, server_cpu)


@dataclass
class ConcurrencyResult:
    clients: int
    succeeded: int
    file_size: int
    send_seconds: float  # from the moment all are ready to the last 2103
    total_seconds: float  # connect + register + key exchange + send, for all
    errors: list[str]

    @property
    def aggregate_bytes_per_second(self) -> float:
        return self.succeeded * self.file_size / self.send_seconds if self.send_seconds else 0.0


def concurrent_clients(server: OurServer, count: int, path: Path, rsa_key: RSA.RsaKey) -> ConcurrencyResult:
    """`count` clients connect, register and exchange keys at once, then all send `path` at once."""
    barrier = threading.Barrier(count + 1, timeout=BARRIER_TIMEOUT)
    lock = threading.Lock()
    finished: list[float] = []
    errors: list[str] = []

    def one_client() -> None:
        sender: PythonSender | None = None
        try:
            sender = PythonSender(server, rsa_key)
        except Exception as err:
            with lock:
                errors.append(f"setup: {err!r}")
        try:
            barrier.wait()
            if sender is not None:
                sender.send(path)
                with lock:
                    finished.append(time.perf_counter())
        except Exception as err:
            with lock:
                errors.append(f"send: {err!r}")
        finally:
            if sender is not None:
                sender.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=one_client, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    barrier.wait()
    all_ready = time.perf_counter()
    for thread in threads:
        thread.join(TRANSFER_TIMEOUT)
    last = max(finished, default=all_ready)
    return ConcurrencyResult(
        clients=count,
        succeeded=len(finished),
        file_size=path.stat().st_size,
        send_seconds=last - all_ready,
        total_seconds=last - started,
        errors=errors,
    )


def key_exchange_seconds(server: OurServer, count: int, rsa_key: RSA.RsaKey) -> list[float]:
    """For each of `count` clients in turn: connect, 1025 -> 2100, 1026 -> 2102 (AES key unwrapped)."""
    timings = []
    for _ in range(count):
        name = _unique_name("bench-kx")
        started = time.perf_counter()
        with FileTransferClient(*server.address) as client:
            if client.register(name) is None:
                raise BenchError(f"registration of {name} refused")
            client.send_public_key(name, rsa_key)
            timings.append(time.perf_counter() - started)
    return timings


def percentile(values: list[float], fraction: float) -> float:
    """The `fraction` quantile (0..1) by linear interpolation, as numpy's default."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[round(fraction * 1000) - 1]


def find_cpp_client() -> Path | None:
    """build/client/client, if the C++ client has been built."""
    binary = Path(__file__).resolve().parent.parent / "build" / "client" / "client"
    return binary if binary.is_file() and os.access(binary, os.X_OK) else None


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
