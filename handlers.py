"""What the server does for each request code (PROTOCOL.md §2), one function per code.

Every handler has the same signature: it takes the request's context, reads
its payload through the context's `PayloadReader`, and returns the response
to send (None for 1030, which has none). A handler answers 2101 and 2106
itself, as replies: they are answers of the protocol, not errors. Everything
it refuses is raised as a `protocol.RequestError`, which carries its response
code (2107 for all of them, §3); the connection loop in server.py sends it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from crypto_utils import (
    CbcDecryptor,
    Cksum,
    CryptoError,
    generate_aes_key,
    padding_length,
    wrap_aes_key,
)
from database import ClientRecord, Database, LimitReached
from forgeries import DecryptionFailures
from pagecache import page_cache_release
from protocol import (
    AES_BLOCK_SIZE,
    HEAD_ONLY_PAYLOAD_SIZE,
    MAX_CONTENT_SIZE_ON_WIRE,
    SEND_FILE_HEAD,
    AesKeyResponse,
    ClientIdResponse,
    DecryptionFailed,
    FileReceivedResponse,
    KeyAlreadySet,
    MalformedPayload,
    NameRequest,
    OverLimit,
    PublicKeyRequest,
    RequestCode,
    RequestHeader,
    ResponseCode,
    SendFileHead,
    UnknownClient,
    UnknownFile,
    send_file_content_size,
)
from storage import FileStore, Partial, StorageError
from streams import PayloadReader

log = logging.getLogger(__name__)

# Bytes read, decrypted, checksummed and written at a time in a 1028. A multiple
# of the AES block; large enough that per-chunk overhead vanishes, small enough
# that a hundred concurrent transfers stay within a few tens of MiB.
CHUNK_SIZE = 256 * 1024
# A file of LARGE_FILE_SIZE bytes or more is received LARGE_CHUNK_SIZE at a time, while
# fewer than LARGE_BUFFERS other transfers hold a buffer that large (ReceiveBuffers): a
# quarter of the system calls and loop turns per byte, and memory that stays bounded
# (four pairs of 1 MiB: 8 MiB at most) whatever the number of clients. The others use CHUNK_SIZE.
# A transfer with a large pair also advises its pages from a thread of its own (pagecache.py).
LARGE_CHUNK_SIZE = 1024 * 1024
LARGE_FILE_SIZE = 8 * 1024 * 1024
LARGE_BUFFERS = 4


class ReceiveBuffers:
    """The buffers that 1028s are received into: two per transfer (the socket is read into
    one, decrypted into the other), at most `large` transfers with large ones.

    `large_in_use` is how many large pairs are out now (tests read it; a log
    line at debug level names each transfer's chunk size).
    """

    def __init__(self, large: int = LARGE_BUFFERS) -> None:
        self._large = threading.BoundedSemaphore(large)
        self._count_lock = threading.Lock()
        self.large_in_use = 0

    @contextlib.contextmanager
    def lease(self, content_size: int) -> Iterator[tuple[memoryview, memoryview]]:
        """Two buffers to receive `content_size` bytes in: LARGE_CHUNK_SIZE for a large file
        while a pair is free (never waited for), else CHUNK_SIZE or the content's size if less."""
        large = content_size >= LARGE_FILE_SIZE and self._large.acquire(blocking=False)
        if large:
            with self._count_lock:
                self.large_in_use += 1
        try:
            chunk = LARGE_CHUNK_SIZE if large else min(CHUNK_SIZE, content_size)
            yield memoryview(bytearray(chunk)), memoryview(bytearray(chunk))
        finally:
            if large:
                with self._count_lock:
                    self.large_in_use -= 1
                self._large.release()


# One for the whole server: the bound on large buffers holds across all connections.
RECEIVE_BUFFERS = ReceiveBuffers()


@dataclass(frozen=True)
class RequestContext:
    header: RequestHeader
    payload: PayloadReader
    db: Database
    store: FileStore
    peer: str = "-"  # host:port, for log lines
    max_file_size: int = MAX_CONTENT_SIZE_ON_WIRE  # --max-file-size
    decryption_failures: DecryptionFailures = field(default_factory=DecryptionFailures)
    buffers: ReceiveBuffers = RECEIVE_BUFFERS


Reply = tuple[ResponseCode, bytes] | None
Handler = Callable[[RequestContext], Reply]


def _registered_client(ctx: RequestContext) -> ClientRecord:
    """The client named by the header, which must have completed its key exchange."""
    client = ctx.db.get_client(ctx.header.client_id)
    if client is None or client.aes_key is None:
        raise UnknownClient(f"client {ctx.header.client_id.hex()} is not registered with a key")
    return client


def _new_wrapped_aes_key(public_key: bytes) -> tuple[bytes, bytes]:
    """A fresh AES key and the same key wrapped with `public_key`."""
    aes_key = generate_aes_key()
    try:
        return aes_key, wrap_aes_key(public_key, aes_key)
    except CryptoError as err:
        raise MalformedPayload(str(err)) from err


def handle_register(ctx: RequestContext) -> Reply:
    """1025: a new client; the header's Client ID is ignored (§7)."""
    request = NameRequest.unpack(ctx.payload.read_all())
    client_id = ctx.db.register_client(request.name)
    if client_id is None:
        log.info("registration refused: name %r is taken", request.name)
        return ResponseCode.REGISTRATION_FAILED, b""
    return ResponseCode.REGISTERED, ClientIdResponse(client_id).pack()


def handle_public_key(ctx: RequestContext) -> Reply:
    """1026: store the client's public key and answer with a new wrapped AES key."""
    request = PublicKeyRequest.unpack(ctx.payload.read_all())
    client = ctx.db.get_client(ctx.header.client_id)
    if client is None or client.name != request.name:
        raise UnknownClient(f"no client {ctx.header.client_id.hex()} named {request.name!r}")
    if client.public_key is not None and client.public_key != request.public_key:
        # Whoever sees a client ID and name in clear could otherwise take the
        # identity over with a key of their own (SECURITY.md §1). A client that
        # lost its key registers anew; a repeated 1026 with the same key is fine.
        raise KeyAlreadySet(f"client {client.name!r} already has a different public key")
    aes_key, wrapped = _new_wrapped_aes_key(request.public_key)
    if not ctx.db.set_keys(client.client_id, request.name, request.public_key, aes_key):
        # Dropped since it was read (a racing 1027, or expired): no key for a client that is gone.
        raise UnknownClient(f"client {client.client_id.hex()} was removed during its 1026")
    return ResponseCode.AES_KEY, AesKeyResponse(client.client_id, wrapped).pack()


def handle_reconnect(ctx: RequestContext) -> Reply:
    """1027: a new AES key for a known client, or 2106 and the client registers anew."""
    request = NameRequest.unpack(ctx.payload.read_all())
    denied = ResponseCode.RECONNECT_DENIED, ClientIdResponse(ctx.header.client_id).pack()
    client = ctx.db.get_client(ctx.header.client_id)
    if client is None or client.name != request.name:
        log.info("reconnect denied: no client %s named %r", ctx.header.client_id.hex(), request.name)
        return denied
    if client.public_key is None:
        # Registered but never sent its key: drop it so its next 1025 succeeds (§2).
        if ctx.db.delete_incomplete_client(client.client_id):
            log.info("reconnect denied: %r never completed its key exchange", request.name)
            return denied
        # A racing 1026 completed it meanwhile (or it expired): go on with what is there now.
        client = ctx.db.get_client(ctx.header.client_id)
        if client is None or client.public_key is None:
            return denied
    try:
        aes_key, wrapped = _new_wrapped_aes_key(client.public_key)
    except MalformedPayload as err:
        log.info("reconnect denied: stored public key of %r is unusable: %s", request.name, err)
        return denied
    if not ctx.db.set_aes_key(client.client_id, client.public_key, aes_key):
        raise UnknownClient(f"client {client.client_id.hex()} changed during its 1027")
    return ResponseCode.RECONNECTED, AesKeyResponse(client.client_id, wrapped).pack()


def read_send_file_head(ctx: RequestContext) -> SendFileHead:
    """Read a 1028's head and settle its framing: how many content bytes follow (§2, §7).

    First of all, before any refusal: once the framing is known, a refused
    1028 is read to its end and the connection stays usable (§3).
    """
    raw = ctx.payload.read(SEND_FILE_HEAD.size)
    content_size = send_file_content_size(raw, ctx.header.payload_size)  # FramingError: close
    if ctx.header.payload_size == HEAD_ONLY_PAYLOAD_SIZE:
        ctx.payload.extend(content_size)  # served all the same (§7); the loop warns once
    ctx.payload.mark_framed()
    return SendFileHead.unpack(raw, ctx.header.payload_size)


def handle_send_file(ctx: RequestContext) -> Reply:
    """1028: stream, decrypt, checksum and store a file; record it unverified."""
    head = read_send_file_head(ctx)
    if head.content_size > ctx.max_file_size:
        raise OverLimit(f"1028 of {head.content_size} bytes is over --max-file-size {ctx.max_file_size}")
    client = _registered_client(ctx)
    assert client.aes_key is not None
    ctx.decryption_failures.check(client.client_id)  # Throttled: too many forged 1028s?
    path_name = ctx.store.path_name(client.client_id, head.file_name)
    if not ctx.db.may_add_file(client.client_id, head.file_name):
        raise LimitReached(f"client {client.client_id.hex()} has the most files it may have")
    partial = ctx.store.begin_upload(head.content_size)  # reserves the space until end_upload
    try:
        # The store owns the descriptor: it measures the file to count what is still reserved.
        with (
            open(partial.fd, "wb", buffering=0, closefd=False) as out,
            ctx.buffers.lease(head.content_size) as buffers,
        ):
            log.debug(
                "%s client=%s: receiving %r, %d bytes, %d at a time",
                ctx.peer,
                client.client_id.hex(),
                head.file_name,
                head.content_size,
                len(buffers[0]),
            )
            try:
                checksum = _receive_content(ctx.payload, head.content_size, client.aes_key, out, buffers)
            except DecryptionFailed:
                ctx.decryption_failures.record(client.client_id, ctx.peer)
                raise
        _place(ctx, partial, client.client_id, head.file_name, path_name)
    finally:
        ctx.store.end_upload(partial)
    response = FileReceivedResponse(client.client_id, head.content_size, head.file_name, checksum)
    return ResponseCode.FILE_RECEIVED, response.pack()


def _place(ctx: RequestContext, partial: Partial, client_id: bytes, file_name: str, path_name: str) -> None:
    """Move the file into place, then record it, then remove the copy it replaces.

    `path_name` is new to this upload, so until the record names it nobody else
    uses it; the record changes in one statement, to a file already in place
    and unverified. No lock is needed against a 1031 or another 1028 of the
    same name (storage.py, "Placement"). A failed move leaves no record; a
    failed record removes the moved file.
    """
    ctx.store.commit_partial(partial, path_name)
    try:
        replaced = ctx.db.put_file(client_id, file_name, path_name)
    except BaseException:
        ctx.store.remove(path_name)
        raise
    if replaced is not None:
        ctx.store.remove(replaced)


def _receive_content(
    payload: PayloadReader, size: int, key: bytes, out: BinaryIO, buffers: tuple[memoryview, memoryview]
) -> int:
    """Decrypt `size` bytes of ciphertext from `payload` into `out`; return the cksum.

    Two buffers for the whole transfer, whatever the file size (ReceiveBuffers):
    the socket is read into one, which is decrypted into the other (decrypting
    in place would need a copy of the ciphertext aside); that one is
    checksummed and written. The written pages go back to the kernel as the
    file grows (pagecache.py), from a thread of their own for a large pair.

    Not OpenSSL in place: the server's handler threads are daemon threads, and
    one that has used OpenSSL and is still alive at exit makes the process
    abort in OpenSSL's clean-up (SIGABRT after "stopped"; tests/test_server.py's
    SIGTERM test, about one run in two; bench/README.md).
    """
    received, plain_buffer = buffers
    decryptor = CbcDecryptor(key, len(received))
    checksum = Cksum()
    # A transfer with a large pair of buffers (LARGE_BUFFERS at most) advises from a thread.
    page_cache = page_cache_release(out.fileno(), behind=len(received) == LARGE_CHUNK_SIZE)
    written = 0
    remaining = size
    try:
        while remaining:
            ciphertext = received[: min(len(received), remaining)]
            payload.readinto(ciphertext)
            remaining -= len(ciphertext)
            plain = plain_buffer[: len(ciphertext)]
            decryptor.decrypt_into(ciphertext, plain)
            if not remaining:
                try:
                    plain = plain[: len(plain) - padding_length(plain[-AES_BLOCK_SIZE:])]
                except CryptoError as err:
                    raise DecryptionFailed(str(err)) from err
            checksum.update(plain)
            _write_all(out, plain)
            written += len(plain)
            page_cache.written(written, last=not remaining)
    finally:
        page_cache.close()
    return checksum.value


def _write_all(out: BinaryIO, data: memoryview) -> None:
    """Write all of `data`. A write that meets a full disk (or a file size limit) can
    write part and return a short count, and only the next one fails: never take a
    short count for success, or a truncated file would be recorded as whole."""
    written = 0
    try:
        while written < len(data):
            count = out.write(data[written:])
            if not count:
                raise StorageError("cannot write the file: no progress")
            written += count
    except OSError as err:
        raise StorageError(f"cannot write the file: {err.strerror}") from err


def handle_crc_ok(ctx: RequestContext) -> Reply:
    """1029: the client's checksum matched: the file is verified."""
    client = _registered_client(ctx)
    request = NameRequest.unpack(ctx.payload.read_all())
    if not ctx.db.set_verified(client.client_id, request.name):
        raise UnknownFile(f"1029 for unknown file {request.name!r}")
    return ResponseCode.ACK, ClientIdResponse(client.client_id).pack()


def handle_crc_retry(ctx: RequestContext) -> Reply:
    """1030: the checksum did not match and the client resends. No response (§2, §7)."""
    client = _registered_client(ctx)
    request = NameRequest.unpack(ctx.payload.read_all())
    log.info("client %s reports a checksum mismatch on %r, resending", client.name, request.name)
    return None


def handle_crc_abort(ctx: RequestContext) -> Reply:
    """1031: the fourth mismatch; the transfer failed for good: forget the file.

    Acknowledged even when no such file is stored (a transfer whose every
    attempt was refused): the removal is idempotent, and the client wants 2104.
    """
    client = _registered_client(ctx)
    request = NameRequest.unpack(ctx.payload.read_all())
    # The record goes first, in one statement that hands back its path: only then is the
    # file nobody's, and a 1028 racing this one records a file of its own (storage.py).
    path_name = ctx.db.delete_file(client.client_id, request.name)
    if path_name is not None:
        ctx.store.remove(path_name)
    return ResponseCode.ACK, ClientIdResponse(client.client_id).pack()


HANDLERS: dict[RequestCode, Handler] = {
    RequestCode.REGISTER: handle_register,
    RequestCode.PUBLIC_KEY: handle_public_key,
    RequestCode.RECONNECT: handle_reconnect,
    RequestCode.SEND_FILE: handle_send_file,
    RequestCode.CRC_OK: handle_crc_ok,
    RequestCode.CRC_RETRY: handle_crc_retry,
    RequestCode.CRC_ABORT: handle_crc_abort,
}
