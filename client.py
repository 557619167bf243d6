"""The reference client of the encrypted file-transfer protocol (PROTOCOL.md §5-6).

Run it in a folder holding `transfer.info` (or name the folder with --dir):
it registers (or reconnects with `me.info`), exchanges keys, sends the file
encrypted, and confirms the checksum, resending up to three times. It ends
with status 0 when the server holds a verified copy, and with a `Fatal: ...`
line and status 1 otherwise.

`FileTransferClient` is the importable part: one connection, one method per
request, used by the tests and the benchmarks as well.
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import os
import queue
import re
import socket
import sys
import textwrap
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from io import BufferedIOBase
from pathlib import Path
from typing import TypeVar

from dependencies import exit_if_missing_package

try:
    from Crypto.PublicKey import RSA
    from tqdm import tqdm

    from crypto_utils import (
        CbcEncryptor,
        Cksum,
        CryptoError,
        export_public_key,
        generate_rsa_key,
        unwrap_aes_key,
    )

    if importlib.util.find_spec("cryptography") is None:  # crypto_utils imports it when it encrypts
        raise ModuleNotFoundError("No module named 'cryptography'", name="cryptography")
except ModuleNotFoundError as err:  # before anything else: one line, not a traceback
    exit_if_missing_package(err, "client.py")
from protocol import (
    AES_BLOCK_SIZE,
    CLIENT_ID_SIZE,
    CLIENT_VERSION,
    MAX_CONTENT_SIZE_ON_WIRE,
    RESPONSE_HEADER,
    RESPONSE_PAYLOAD_SIZES,
    SERVER_VERSION,
    AesKeyResponse,
    ClientIdResponse,
    FileReceivedResponse,
    NameRequest,
    ProtocolError,
    PublicKeyRequest,
    RequestCode,
    RequestHeader,
    ResponseCode,
    ResponseHeader,
    SendFileHead,
    encode_name,
    encrypted_size,
    pack_request,
)

TRANSFER_INFO = "transfer.info"
ME_INFO = "me.info"
PRIVATE_KEY_FILE = "priv.key"
MAX_CLIENT_NAME = 100  # transfer.info's limit on the name (§5)
ATTEMPTS_PER_STEP = 4  # a step answered with 2107 is tried again up to 3 times (§6)
SEND_ATTEMPTS = 4  # the fourth checksum mismatch ends the transfer with 1031 (§6)
DEFAULT_TIMEOUT = 30.0  # seconds to wait for each answer (--timeout); the C++ client's default too
# Plaintext read, checksummed and encrypted at a time (a multiple of 16). 1 MiB, not the
# server's 256 KiB: each chunk is one hand-over between the two threads of encrypt_stream, and
# with 256 KiB they cost 0.26 s of CPU per GiB more than the serial loop (bench/README.md).
CHUNK_SIZE = 1024 * 1024
# From this size on a worker thread encrypts ahead of the sends (encrypt_stream); below, the
# thread's start costs more than the overlap saves.
PIPELINE_MIN_SIZE = 4 * CHUNK_SIZE
PIPELINE_BUFFERS = 3  # one being sent, one ready, one being filled
BASE64_LINE = 72  # line length of Crypto++'s Base64Encoder, which the C++ client reads
PROGRESS_MIN_SIZE = 1024 * 1024

T = TypeVar("T")


class ClientError(Exception):
    """Something the client cannot recover from: the message says what."""


class ServerError(ClientError):
    """The server answered 2107 or something the protocol does not allow here."""


class NoAnswer(ClientError):
    """The server sent nothing, or took nothing, for the whole timeout."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        # The C++ client words it the same way (client/README.md).
        super().__init__(f"no answer from {host}:{port} within {timeout:g} s")


# --- the files around the client --------------------------------------------


@dataclass(frozen=True)
class TransferInfo:
    host: str
    port: int
    name: str
    file_path: Path

    @classmethod
    def load(cls, path: Path) -> TransferInfo:
        try:
            # UTF-8: the file's path may name folders in any language; only its base name
            # travels, and that must be ASCII (§7).
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise ClientError(f"cannot read {path}: {err}") from err
        if len(lines) < 3:
            # Lines counted as str.splitlines() counts them; the C++ client counts the same way.
            raise ClientError(f"{path.name} has {len(lines)} lines; expected 3 (host:port, name, file path)")
        host, colon, port_text = lines[0].strip().rpartition(":")
        if not colon or not host or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ClientError(f"{path}: line 1 must be host:port, not {lines[0]!r}")
        name = lines[1].strip()
        if not 1 <= len(name) <= MAX_CLIENT_NAME or not name.isprintable() or not name.isascii():
            raise ClientError(
                f"{path}: line 2 must be a name of 1 to {MAX_CLIENT_NAME} printable ASCII characters"
            )
        file_path = lines[2].strip()
        if not base_name(file_path):
            raise ClientError(f"{path}: line 3 must name the file to send")
        try:
            encode_name(base_name(file_path))  # it travels as the 1028's file name (§6)
        except ValueError as err:
            raise ClientError(
                f"{path}: line 3: the file's name {base_name(file_path)!r} must be 1 to 254 ASCII characters"
            ) from err
        return cls(host, int(port_text), name, Path(file_path))


def base_name(path: str) -> str:
    """The last component of `path`, split at both separators: the name a 1028 carries (§6).

    A full path would tell the server the sender's folders; `C:\\dir\\f.bin` and
    `/dir/f.bin` are both `f.bin`, whatever system the client runs on.
    """
    return re.split(r"[\\/]", path)[-1]


@dataclass(frozen=True)
class MeInfo:
    name: str
    client_id: bytes
    private_key: RSA.RsaKey

    @classmethod
    def load(cls, path: Path) -> MeInfo:
        """Line 1 the name, line 2 the UUID in hex, line 3 to the end the key in Base64 (§5)."""
        try:
            lines = path.read_text(encoding="ascii").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise ClientError(f"cannot read {path}: {err}") from err
        if len(lines) < 3:
            raise ClientError(f"{path}: expected a name, a UUID and a key")
        try:
            client_id = bytes.fromhex(lines[1].strip())
            der = base64.b64decode("".join(line.strip() for line in lines[2:]), validate=True)
            private_key = RSA.import_key(der)
        except (ValueError, IndexError, TypeError) as err:
            raise ClientError(f"{path}: malformed UUID or private key") from err
        if len(client_id) != CLIENT_ID_SIZE or not private_key.has_private():
            raise ClientError(f"{path}: malformed UUID or private key")
        return cls(lines[0].strip(), client_id, private_key)

    def save(self, folder: Path) -> None:
        # PKCS#8, as Crypto++'s RSA::PrivateKey::Save writes it: the C++ client reads these files too.
        der = self.private_key.export_key("DER", pkcs=8)
        key_base64 = base64.b64encode(der).decode("ascii")
        key_lines = "\n".join(textwrap.wrap(key_base64, BASE64_LINE))
        _write_private(folder / ME_INFO, f"{self.name}\n{self.client_id.hex()}\n{key_lines}\n")
        _write_private(folder / PRIVATE_KEY_FILE, f"{key_lines}\n")


def _write_private(path: Path, text: str) -> None:
    """Write a file holding private key material, readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "w", encoding="ascii") as out:
        out.write(text)


# --- one connection ---------------------------------------------------------


class FileTransferClient:
    """One connection to the server; a method per request, each returning the decoded response."""

    def __init__(self, host: str, port: int, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as err:
            raise ClientError(f"cannot connect to {host}:{port}: {err.strerror or err}") from err
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._stream = self.sock.makefile("rb")
        self.client_id = bytes(CLIENT_ID_SIZE)
        self.aes_key: bytes | None = None

    def close(self) -> None:
        self._stream.close()
        self.sock.close()

    def __enter__(self) -> FileTransferClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _send(self, code: RequestCode, payload: bytes = b"") -> None:
        self.sock.sendall(pack_request(self.client_id, code, payload))

    def _receive(self, *expected: ResponseCode) -> tuple[ResponseCode, bytes]:
        """Read one response; anything but one of `expected` is a ServerError."""
        raw = self._read_exact(RESPONSE_HEADER.size)
        header = ResponseHeader.unpack(raw)
        if header.code not in expected or header.version != SERVER_VERSION:
            if header.payload_size <= max(RESPONSE_PAYLOAD_SIZES.values()):
                self._read_exact(header.payload_size)  # keep the stream aligned for a retry
            wanted = "/".join(str(code.value) for code in expected)
            raise ServerError(
                f"server answered {header.code} (version {header.version}), "
                f"expected {wanted} (version {SERVER_VERSION})"
            )
        code = ResponseCode(header.code)
        if header.payload_size != RESPONSE_PAYLOAD_SIZES[code]:
            raise ClientError(f"server sent {code.value} with a {header.payload_size}-byte payload")
        return code, self._read_exact(header.payload_size)

    def _read_exact(self, size: int) -> bytes:
        try:
            data = self._stream.read(size)
        except TimeoutError as err:
            raise NoAnswer(self.host, self.port, self.timeout) from err
        if len(data) != size:
            raise ClientError("the server closed the connection")
        return data

    def register(self, name: str) -> bytes | None:
        """1025: the new client ID, or None if the name is taken (2101)."""
        self._send(RequestCode.REGISTER, NameRequest(name).pack())
        code, payload = self._receive(ResponseCode.REGISTERED, ResponseCode.REGISTRATION_FAILED)
        if code is ResponseCode.REGISTRATION_FAILED:
            return None
        self.client_id = ClientIdResponse.unpack(payload).client_id
        return self.client_id

    def send_public_key(self, name: str, private_key: RSA.RsaKey) -> bytes:
        """1026: the AES key from 2102."""
        self._send(RequestCode.PUBLIC_KEY, PublicKeyRequest(name, export_public_key(private_key)).pack())
        _, payload = self._receive(ResponseCode.AES_KEY)
        return self._accept_aes_key(AesKeyResponse.unpack(payload), private_key)

    def reconnect(self, name: str, client_id: bytes, private_key: RSA.RsaKey) -> bytes | None:
        """1027: the AES key from 2105, or None when the server denies it (2106)."""
        self.client_id = client_id
        self._send(RequestCode.RECONNECT, NameRequest(name).pack())
        code, payload = self._receive(ResponseCode.RECONNECTED, ResponseCode.RECONNECT_DENIED)
        if code is ResponseCode.RECONNECT_DENIED:
            return None
        return self._accept_aes_key(AesKeyResponse.unpack(payload), private_key)

    def _accept_aes_key(self, response: AesKeyResponse, private_key: RSA.RsaKey) -> bytes:
        if response.client_id != self.client_id:
            raise ServerError("server answered with another client's ID")
        try:
            self.aes_key = unwrap_aes_key(private_key, response.encrypted_key)
        except CryptoError as err:
            raise ServerError(f"cannot use the AES key: {err}") from err
        return self.aes_key

    def send_file(
        self, path: Path, file_name: str | None = None, progress: Callable[[int], object] | None = None
    ) -> tuple[FileReceivedResponse, int]:
        """1028: stream `path` encrypted under its base name (or `file_name`); return the 2103
        and the local checksum."""
        if self.aes_key is None:
            raise ClientError("no AES key: register or reconnect first")
        name = file_name if file_name is not None else base_name(str(path))
        try:
            source = open(path, "rb")  # noqa: SIM115 (closed by the `with` below; opened here to report errors)
        except OSError as err:
            raise ClientError(f"cannot read {path}: {err.strerror}") from err
        with source:
            size = os.fstat(source.fileno()).st_size
            content_size = encrypted_size(size)
            if content_size > MAX_CONTENT_SIZE_ON_WIRE:
                raise ClientError(f"{path} is too large for the protocol ({size} bytes)")
            head = SendFileHead(content_size, name).pack()
            header = RequestHeader(
                self.client_id, CLIENT_VERSION, RequestCode.SEND_FILE, len(head) + content_size
            )
            self.sock.sendall(header.pack() + head)
            checksum = self._stream_encrypted(source, size, progress)
        _, payload = self._receive(ResponseCode.FILE_RECEIVED)
        received = FileReceivedResponse.unpack(payload)
        if (received.client_id, received.content_size, received.file_name) != (
            self.client_id,
            content_size,
            name,
        ):
            raise ServerError("2103 does not describe the file that was sent")
        return received, checksum

    def _stream_encrypted(
        self, source: BufferedIOBase, size: int, progress: Callable[[int], object] | None
    ) -> int:
        """Read, checksum, encrypt and send `size` bytes of `source`; return the cksum."""
        assert self.aes_key is not None
        return encrypt_stream(source, size, self.aes_key, self.sock.sendall, progress)

    def crc_ok(self, file_name: str) -> None:
        self._send(RequestCode.CRC_OK, NameRequest(file_name).pack())
        self._expect_ack()

    def crc_retry(self, file_name: str) -> None:
        """1030: no response; the next request is the resent 1028 (§2)."""
        self._send(RequestCode.CRC_RETRY, NameRequest(file_name).pack())

    def crc_abort(self, file_name: str) -> None:
        self._send(RequestCode.CRC_ABORT, NameRequest(file_name).pack())
        self._expect_ack()

    def _expect_ack(self) -> None:
        _, payload = self._receive(ResponseCode.ACK)
        if ClientIdResponse.unpack(payload).client_id != self.client_id:
            raise ServerError("2104 names another client")


def encrypt_stream(
    source: BufferedIOBase,
    size: int,
    key: bytes,
    write: Callable[[memoryview | bytes], object],
    progress: Callable[[int], object] | None = None,
    *,
    pipelined: bool | None = None,
) -> int:
    """Read, checksum and encrypt `size` bytes of `source` as a 1028's content, passing
    the ciphertext to `write` (which must take it whole); return the cksum of the plaintext.

    The last chunk carries the padded final block, so a file of up to one
    chunk is one call of `write`. Pipelined (the default from PIPELINE_MIN_SIZE
    on), a worker thread reads, checksums and encrypts the next chunks while
    this thread writes the previous one: OpenSSL's CBC (the client's largest
    cost) and anycrc release the GIL, and so does the socket's send, so the
    two overlap on two cores. An error in the worker (the file shrank, a read
    failed) is raised here; an error in `write` stops the worker.
    """
    plan = _chunk_plan(size)
    if pipelined is None:
        pipelined = size >= PIPELINE_MIN_SIZE
    chunks = _ChunkEncryptor(source, key)
    if not pipelined:
        buffer = memoryview(bytearray(min(CHUNK_SIZE, size) + CbcEncryptor.SLACK))
        for length, last in plan:
            write(buffer[: chunks.fill(buffer, length, last)])
            if progress:
                progress(length)
        return chunks.checksum.value
    _pipeline(chunks, plan, write, progress)
    return chunks.checksum.value


def _chunk_plan(size: int) -> list[tuple[int, bool]]:
    """(plaintext length, is last) of each chunk: whole CHUNK_SIZEs, then the rest (maybe 0 bytes),
    which the padded final block follows."""
    return [(CHUNK_SIZE, False)] * (size // CHUNK_SIZE) + [(size % CHUNK_SIZE, True)]


class _ChunkEncryptor:
    """Reads, checksums and encrypts a stream chunk by chunk, each into a buffer it is given."""

    def __init__(self, source: BufferedIOBase, key: bytes) -> None:
        self.source = source
        self.encryptor = CbcEncryptor(key)
        self.checksum = Cksum()

    def fill(self, buffer: memoryview, length: int, last: bool) -> int:
        """Read `length` bytes into `buffer` and encrypt them in place; the number of
        ciphertext bytes now in it. `buffer` has CbcEncryptor.SLACK bytes past `length`:
        the last chunk's padded final block goes there (PKCS#7 always adds 1 to 16 bytes)."""
        chunk = buffer[:length]
        _read_into(self.source, chunk)
        self.checksum.update(chunk)
        whole = length - length % AES_BLOCK_SIZE  # every chunk but the last is whole blocks
        tail = bytes(chunk[whole:])
        self.encryptor.encrypt_in_place(buffer, whole)
        if not last:
            return whole
        buffer[whole : whole + AES_BLOCK_SIZE] = self.encryptor.encrypt_final(tail)
        return whole + AES_BLOCK_SIZE


def _pipeline(
    chunks: _ChunkEncryptor,
    plan: list[tuple[int, bool]],
    write: Callable[[memoryview | bytes], object],
    progress: Callable[[int], object] | None,
) -> None:
    """Fill chunks in a worker thread, write them in this one, through PIPELINE_BUFFERS buffers."""
    free: queue.SimpleQueue[memoryview | None] = queue.SimpleQueue()  # None: stop
    for _ in range(PIPELINE_BUFFERS):
        free.put(memoryview(bytearray(CHUNK_SIZE + CbcEncryptor.SLACK)))
    # A filled buffer with its ciphertext and plaintext lengths; None when all are done;
    # the exception that stopped the worker.
    ready: queue.SimpleQueue[tuple[memoryview, int, int] | BaseException | None] = queue.SimpleQueue()

    def produce() -> None:
        try:
            for length, last in plan:
                buffer = free.get()
                if buffer is None:
                    return
                ready.put((buffer, chunks.fill(buffer, length, last), length))
            ready.put(None)
        except BaseException as err:  # raised again in the writing thread
            ready.put(err)

    worker = threading.Thread(target=produce, name="encrypt-stream", daemon=True)
    worker.start()
    try:
        while (item := ready.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            buffer, ciphertext_length, length = item
            write(buffer[:ciphertext_length])
            free.put(buffer)
            if progress:
                progress(length)
    finally:
        free.put(None)  # the worker stops at its next chunk (it is done, or this thread failed)
        worker.join()


def _read_into(source: BufferedIOBase, view: memoryview) -> None:
    filled = 0
    while filled < len(view):
        count = source.readinto(view[filled:])
        if not count:
            raise ClientError("the file shrank while it was being sent")
        filled += count


# --- the flow of §6 ---------------------------------------------------------


def _retrying(step: str, action: Callable[[], T], report: Callable[[str], None]) -> T:
    """Run one protocol step; on 2107 or an unexpected answer, try again up to 3 more times."""
    for attempt in range(1, ATTEMPTS_PER_STEP + 1):
        try:
            return action()
        except ServerError as err:
            report(f"server responded with an error ({step}: {err})")
            if attempt == ATTEMPTS_PER_STEP:
                raise ClientError(f"{step} failed {ATTEMPTS_PER_STEP} times: {err}") from err
    raise AssertionError("unreachable")


@dataclass
class TransferResult:
    verified: bool
    attempts: int
    checksum: int


def run_transfer(
    folder: Path,
    report: Callable[[str], None] = print,
    progress_factory: Callable[[int], Callable[[int], object] | None] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> TransferResult:
    """Everything §6 describes, from `folder`'s transfer.info to 1029 or 1031."""
    info = TransferInfo.load(folder / TRANSFER_INFO)
    file_path = info.file_path if info.file_path.is_absolute() else folder / info.file_path
    if not file_path.is_file():
        raise ClientError(f"cannot read {file_path}: not a file")
    me = MeInfo.load(folder / ME_INFO) if (folder / ME_INFO).exists() else None
    with FileTransferClient(info.host, info.port, timeout) as client:
        try:
            return _transfer(
                client,
                info,
                file_path=file_path,
                me=me,
                folder=folder,
                report=report,
                progress_factory=progress_factory,
            )
        except TimeoutError as err:  # a send that the server took nothing of for the whole timeout
            raise NoAnswer(info.host, info.port, timeout) from err


def _transfer(
    client: FileTransferClient,
    info: TransferInfo,
    *,
    file_path: Path,
    me: MeInfo | None,
    folder: Path,
    report: Callable[[str], None],
    progress_factory: Callable[[int], Callable[[int], object] | None] | None,
) -> TransferResult:
    aes_key = None
    if me is not None:
        aes_key = _retrying(
            "reconnect", lambda: client.reconnect(me.name, me.client_id, me.private_key), report
        )
        if aes_key is None:
            report("reconnect denied: registering anew")
        else:
            report(f"reconnected as {uuid.UUID(bytes=me.client_id)}")
    if aes_key is None:
        _register(client, info.name, folder, report)
    file_name = base_name(str(info.file_path))
    progress = progress_factory(file_path.stat().st_size) if progress_factory else None
    for attempt in range(1, SEND_ATTEMPTS + 1):
        received, checksum = _retrying(
            "send file", lambda: client.send_file(file_path, file_name, progress), report
        )
        if received.cksum == checksum:
            _retrying("confirm checksum", lambda: client.crc_ok(file_name), report)
            return TransferResult(True, attempt, checksum)
        report(f"checksum mismatch (attempt {attempt}): server {received.cksum}, local {checksum}")
        if attempt < SEND_ATTEMPTS:
            client.crc_retry(file_name)
    _retrying("give up", lambda: client.crc_abort(file_name), report)
    return TransferResult(False, SEND_ATTEMPTS, checksum)


def _register(client: FileTransferClient, name: str, folder: Path, report: Callable[[str], None]) -> None:
    client_id = _retrying("register", lambda: client.register(name), report)
    if client_id is None:
        raise ClientError(f"the server refused to register the name {name!r} (2101: taken)")
    private_key = generate_rsa_key()
    MeInfo(name, client_id, private_key).save(folder)
    report(f"registered as {uuid.UUID(bytes=client_id)}")
    _retrying("send public key", lambda: client.send_public_key(name, private_key), report)


def _progress_bar(total: int) -> Callable[[int], object] | None:
    """A tqdm bar on a terminal, for files worth watching; nothing otherwise."""
    if total < PROGRESS_MIN_SIZE or not sys.stderr.isatty():
        return None
    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, leave=False)

    def update(count: int) -> None:
        bar.update(count)
        if bar.n >= total:
            bar.close()  # clears the line before the client's last message

    return update


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Send a file to the encrypted file-transfer server.")
    parser.add_argument(
        "--dir", type=Path, default=Path("."), help="folder with transfer.info (default: the current one)"
    )
    parser.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"seconds to wait for each answer of the server (default: {DEFAULT_TIMEOUT:g})",
    )
    args = parser.parse_args(argv)
    try:
        result = run_transfer(args.dir, report=print, progress_factory=_progress_bar, timeout=args.timeout)
    except (ClientError, ProtocolError, OSError) as err:
        print(f"Fatal: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # Ctrl-C: the connection closes with the process, and the server drops what it
        # received of the transfer (§7, a client vanishing mid-transfer).
        print("Interrupted", file=sys.stderr)
        return 130
    if not result.verified:
        print(
            f"Fatal: the checksum did not match after {result.attempts} attempts; the transfer failed",
            file=sys.stderr,
        )
        return 1
    print(f"file sent and verified (cksum {result.checksum}, {result.attempts} attempt(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
