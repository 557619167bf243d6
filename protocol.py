"""Wire format of the encrypted file-transfer protocol, version 3 (PROTOCOL.md §1-3).

Pure: codes, layouts, limits, encoders, strict decoders and the protocol's own
errors. No sockets, no files, no database, so that the server, the reference
client and the tests share one description of every byte (the "sans-IO" idea).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar

SERVER_VERSION = 3
CLIENT_VERSION = 3

CLIENT_ID_SIZE = 16
NAME_FIELD_SIZE = 255  # ASCII, NUL-terminated, zero-filled (§1)
MAX_NAME_CHARS = NAME_FIELD_SIZE - 1  # room for the terminating NUL
PUBLIC_KEY_SIZE = 160  # X.509 DER of an RSA-1024 key with e = 17 (§4)
AES_KEY_SIZE = 16  # AES-128
AES_BLOCK_SIZE = 16
ENCRYPTED_AES_KEY_SIZE = 128  # RSA-1024 OAEP output

# client_id(16) version(1) code(2) payload_size(4): 23 bytes, no padding thanks to "<".
REQUEST_HEADER = struct.Struct("<16sBHI")
# version(1) code(2) payload_size(4): 7 bytes.
RESPONSE_HEADER = struct.Struct("<BHI")
# The fixed head of a 1028 payload: content_size(4) file_name(255); the content follows.
SEND_FILE_HEAD = struct.Struct(f"<I{NAME_FIELD_SIZE}s")
# 2103: client_id(16) content_size(4) file_name(255) cksum(4).
FILE_RECEIVED = struct.Struct(f"<{CLIENT_ID_SIZE}sI{NAME_FIELD_SIZE}sI")

# A 1028 whose header declares only its head (§7): Content size more bytes follow the head.
HEAD_ONLY_PAYLOAD_SIZE = SEND_FILE_HEAD.size
# The largest content a 1028 can describe: its Content size field is 32 bits and
# the header's payload size (259 + content) must fit in 32 bits as well.
MAX_CONTENT_SIZE_ON_WIRE = (2**32 - 1 - SEND_FILE_HEAD.size) // AES_BLOCK_SIZE * AES_BLOCK_SIZE
# The unread rest of a refused request's payload, up to this many bytes, is read and
# thrown away so the connection stays usable; a larger rest is not worth reading,
# and the connection is closed instead.
MAX_DISCARDED_PAYLOAD = 64 * 1024


class RequestCode(IntEnum):
    REGISTER = 1025
    PUBLIC_KEY = 1026
    RECONNECT = 1027
    SEND_FILE = 1028
    CRC_OK = 1029
    CRC_RETRY = 1030
    CRC_ABORT = 1031


class ResponseCode(IntEnum):
    REGISTERED = 2100
    REGISTRATION_FAILED = 2101
    AES_KEY = 2102
    FILE_RECEIVED = 2103
    ACK = 2104
    RECONNECTED = 2105
    RECONNECT_DENIED = 2106
    GENERAL_ERROR = 2107


# Exact payload sizes of the requests whose payload has a fixed size (§3, "Wire sizes").
FIXED_REQUEST_PAYLOAD_SIZES: dict[RequestCode, int] = {
    RequestCode.REGISTER: NAME_FIELD_SIZE,
    RequestCode.PUBLIC_KEY: NAME_FIELD_SIZE + PUBLIC_KEY_SIZE,
    RequestCode.RECONNECT: NAME_FIELD_SIZE,
    RequestCode.CRC_OK: NAME_FIELD_SIZE,
    RequestCode.CRC_RETRY: NAME_FIELD_SIZE,
    RequestCode.CRC_ABORT: NAME_FIELD_SIZE,
}

# Exact payload sizes of every response (§3).
RESPONSE_PAYLOAD_SIZES: dict[ResponseCode, int] = {
    ResponseCode.REGISTERED: CLIENT_ID_SIZE,
    ResponseCode.REGISTRATION_FAILED: 0,
    ResponseCode.AES_KEY: CLIENT_ID_SIZE + ENCRYPTED_AES_KEY_SIZE,
    ResponseCode.FILE_RECEIVED: FILE_RECEIVED.size,
    ResponseCode.ACK: CLIENT_ID_SIZE,
    ResponseCode.RECONNECTED: CLIENT_ID_SIZE + ENCRYPTED_AES_KEY_SIZE,
    ResponseCode.RECONNECT_DENIED: CLIENT_ID_SIZE,
    ResponseCode.GENERAL_ERROR: 0,
}


# --- errors -----------------------------------------------------------------
#
# One hierarchy for every request the server answers with an error instead of
# serving it. Each class says what went wrong and carries what to do about it:
# the response code to send and whether the connection must close (h2's
# `error_code`). The connection loop (server.py) has one `except RequestError`.
#
#   RequestError
#   +-- ProtocolError        the peer broke PROTOCOL.md
#   |   +-- FramingError         header or sizes impossible: the stream is out of step; closes
#   |   +-- MalformedPayload     the payload's form is invalid (sizes, text fields, key encoding)
#   |   +-- UnknownRequestCode   a code §2 does not define
#   |   +-- DecryptionFailed     a 1028's content does not decrypt (bad PKCS#7 padding)
#   +-- RequestRefused       well-formed, but the server will not serve it
#   |   +-- UnknownClient        no such client ID (or one without keys)
#   |   +-- UnknownFile          a 1029 for a file that is not stored
#   |   +-- KeyAlreadySet        a 1026 with a different public key for a keyed client
#   |   +-- OverLimit            over a configured limit (--max-file-size, ...)
#   |   |   +-- LimitReached         (database.py) a change over the database's Limits
#   |   +-- Throttled            too many failed 1028s for one client ID (SECURITY.md §4)
#   +-- ServerFailure        the server could not carry out a valid request
#       +-- StorageError         (storage.py) a file cannot be stored
#       |   +-- ShuttingDown         (storage.py) a 1028 after shutdown began: 2107, and closes
#       +-- DatabaseError        (database.py)
#           +-- ConstraintViolation  (database.py) a taken name, a file of a client that is gone


class RequestError(Exception):
    """A request the server answers with an error response instead of serving it.

    `closes_connection` is true when the byte stream can no longer be trusted
    to be aligned on a request boundary (§3: "if the framing itself is broken").
    """

    response_code: ClassVar[ResponseCode] = ResponseCode.GENERAL_ERROR
    closes_connection: ClassVar[bool] = False


class ProtocolError(RequestError):
    """The request breaks the protocol: the peer's mistake (or attack)."""


class FramingError(ProtocolError):
    """Header or declared size is impossible: the stream is out of step."""

    closes_connection = True


class MalformedPayload(ProtocolError):
    """The payload's form is invalid: a wrong size, a bad text field, a key that does not import."""


class UnknownRequestCode(ProtocolError):
    """A request code that PROTOCOL.md §2 does not define."""


class DecryptionFailed(ProtocolError):
    """A 1028's content does not decrypt with the client's AES key (its padding is invalid)."""


class RequestRefused(RequestError):
    """A well-formed request that the server will not serve."""


class UnknownClient(RequestRefused):
    """The header's Client ID names no registered client (or one without keys)."""


class UnknownFile(RequestRefused):
    """The request names a file that the client has not stored."""


class KeyAlreadySet(RequestRefused):
    """A 1026 would replace a client's stored public key with a different one (SECURITY.md §1)."""


class OverLimit(RequestRefused):
    """The request is over one of the server's configured limits."""


class Throttled(RequestRefused):
    """The client ID's requests of this kind are refused for a while (SECURITY.md §4)."""


class ServerFailure(RequestError):
    """The server could not carry out a valid request: its disk or its database failed."""


# --- text fields ------------------------------------------------------------


def encode_name(text: str) -> bytes:
    """Encode `text` as a 255-byte NUL-terminated, zero-filled ASCII field."""
    try:
        raw = text.encode("ascii")  # pragma: no mutate  (codec names are case-insensitive)
    except UnicodeEncodeError as err:
        raise ValueError(f"not ASCII: {text!r}") from err
    if len(raw) > MAX_NAME_CHARS:
        raise ValueError(f"longer than {MAX_NAME_CHARS} characters: {len(raw)}")
    if b"\0" in raw:
        raise ValueError("contains NUL")
    return raw.ljust(NAME_FIELD_SIZE, b"\0")


def decode_name(field: bytes) -> str:
    """Decode a 255-byte text field: the ASCII text before its first NUL (§1).

    Whatever follows the NUL is ignored (real clients leave garbage there, §7).
    """
    if len(field) != NAME_FIELD_SIZE:
        raise MalformedPayload(f"text field is {len(field)} bytes, expected {NAME_FIELD_SIZE}")
    text, nul, _ = field.partition(b"\0")
    if not nul:
        raise MalformedPayload("text field has no NUL terminator")
    try:
        decoded = text.decode("ascii")  # pragma: no mutate  (codec names are case-insensitive)
    except UnicodeDecodeError as err:
        raise MalformedPayload("text field is not ASCII") from err
    if not decoded:
        raise MalformedPayload("text field is empty")
    if not decoded.isprintable():
        raise MalformedPayload("text field has control characters")
    return decoded


def _check_size(payload: bytes, expected: int, what: str) -> None:
    if len(payload) != expected:
        raise MalformedPayload(f"{what} payload is {len(payload)} bytes, expected {expected}")


# --- headers ----------------------------------------------------------------


@dataclass(frozen=True)
class RequestHeader:
    client_id: bytes
    version: int
    code: int  # not a RequestCode: an unknown code must still be framed and answered
    payload_size: int

    def pack(self) -> bytes:
        return REQUEST_HEADER.pack(self.client_id, self.version, self.code, self.payload_size)

    @classmethod
    def unpack(cls, data: bytes) -> RequestHeader:
        if len(data) != REQUEST_HEADER.size:
            raise FramingError(f"request header is {len(data)} bytes, expected {REQUEST_HEADER.size}")
        return cls(*REQUEST_HEADER.unpack(data))


@dataclass(frozen=True)
class ResponseHeader:
    version: int
    code: int
    payload_size: int

    def pack(self) -> bytes:
        return RESPONSE_HEADER.pack(self.version, self.code, self.payload_size)

    @classmethod
    def unpack(cls, data: bytes) -> ResponseHeader:
        if len(data) != RESPONSE_HEADER.size:
            raise FramingError(f"response header is {len(data)} bytes, expected {RESPONSE_HEADER.size}")
        return cls(*RESPONSE_HEADER.unpack(data))


def pack_request(client_id: bytes, code: RequestCode, payload: bytes = b"") -> bytes:
    """One request, header and payload, ready to send."""
    return RequestHeader(client_id, CLIENT_VERSION, code, len(payload)).pack() + payload


def pack_response(code: ResponseCode, payload: bytes = b"") -> bytes:
    """One response in one buffer: some clients break if header and payload arrive apart (§7)."""
    return ResponseHeader(SERVER_VERSION, code, len(payload)).pack() + payload


def check_request_size(header: RequestHeader, max_content_size: int) -> None:
    """Check the declared payload size against the code, before anything is read (§3).

    Raises MalformedPayload, UnknownRequestCode or OverLimit; the caller then reads and
    discards the payload if it is at most MAX_DISCARDED_PAYLOAD bytes, and closes the
    connection if not.
    """
    try:
        code = RequestCode(header.code)
    except ValueError:
        raise UnknownRequestCode(f"unknown request code {header.code}") from None
    if code is RequestCode.SEND_FILE:
        smallest = SEND_FILE_HEAD.size + AES_BLOCK_SIZE
        largest = SEND_FILE_HEAD.size + max_content_size
        if header.payload_size == HEAD_ONLY_PAYLOAD_SIZE:
            return  # a known client mistake, served (§7): the head tells the content's size
        if header.payload_size < smallest:
            raise MalformedPayload(f"1028 payload size {header.payload_size} is below {smallest}")
        if header.payload_size > largest:
            raise OverLimit(f"1028 payload size {header.payload_size} is over the maximum, {largest}")
        return
    expected = FIXED_REQUEST_PAYLOAD_SIZES[code]
    if header.payload_size != expected:
        raise MalformedPayload(f"{code.value} payload size {header.payload_size}, expected {expected}")


# --- request payloads -------------------------------------------------------


@dataclass(frozen=True)
class NameRequest:
    """1025 register, 1027 reconnect: Name(255); 1029, 1030, 1031: File name(255).

    One layout, one text field: `name` is the client's name or the file's name.
    """

    name: str

    def pack(self) -> bytes:
        return encode_name(self.name)

    @classmethod
    def unpack(cls, payload: bytes) -> NameRequest:
        _check_size(payload, NAME_FIELD_SIZE, "name")
        return cls(decode_name(payload))


@dataclass(frozen=True)
class PublicKeyRequest:
    """1026: Name(255), Public key(160)."""

    name: str
    public_key: bytes

    def pack(self) -> bytes:
        if len(self.public_key) != PUBLIC_KEY_SIZE:
            raise ValueError(f"public key is {len(self.public_key)} bytes, expected {PUBLIC_KEY_SIZE}")
        return encode_name(self.name) + self.public_key

    @classmethod
    def unpack(cls, payload: bytes) -> PublicKeyRequest:
        _check_size(payload, NAME_FIELD_SIZE + PUBLIC_KEY_SIZE, "public key")
        return cls(decode_name(payload[:NAME_FIELD_SIZE]), payload[NAME_FIELD_SIZE:])


@dataclass(frozen=True)
class SendFileHead:
    """The fixed head of a 1028: Content size(4), File name(255). The content follows."""

    content_size: int
    file_name: str

    def pack(self) -> bytes:
        return SEND_FILE_HEAD.pack(self.content_size, encode_name(self.file_name))

    @classmethod
    def unpack(cls, data: bytes, payload_size: int) -> SendFileHead:
        """Decode the head and check it against the header's payload size (§2, 1028)."""
        content_size = send_file_content_size(data, payload_size)
        return cls(content_size, decode_name(SEND_FILE_HEAD.unpack(data)[1]))


def send_file_content_size(head: bytes, payload_size: int) -> int:
    """The Content size of a 1028's head, once it agrees with the header's payload size.

    Raises FramingError when the two disagree: which one frames the stream is
    unknowable. A payload size of exactly HEAD_ONLY_PAYLOAD_SIZE is a known
    client mistake (§7): the content follows the head all the same.
    """
    _check_size(head, SEND_FILE_HEAD.size, "1028 head")
    content_size: int = SEND_FILE_HEAD.unpack(head)[0]
    if payload_size == HEAD_ONLY_PAYLOAD_SIZE:
        if not content_size:
            # Both readings agree that nothing follows: framed, but no file (PKCS#7 always
            # adds a block).
            raise MalformedPayload("1028 with no content")
    elif content_size != payload_size - SEND_FILE_HEAD.size:
        raise FramingError(f"1028 content size {content_size} disagrees with payload size {payload_size}")
    if content_size % AES_BLOCK_SIZE:
        raise FramingError(f"1028 content size {content_size} is not a multiple of 16")
    return content_size


def encrypted_size(plain_size: int) -> int:
    """Size of `plain_size` bytes after AES-CBC with PKCS#7 padding (always 1..16 bytes added)."""
    return (plain_size // AES_BLOCK_SIZE + 1) * AES_BLOCK_SIZE


# --- response payloads ------------------------------------------------------


def _check_client_id(client_id: bytes) -> None:
    if len(client_id) != CLIENT_ID_SIZE:
        raise ValueError(f"client ID is {len(client_id)} bytes, expected {CLIENT_ID_SIZE}")


@dataclass(frozen=True)
class ClientIdResponse:
    """2100, 2104, 2106: Client ID(16)."""

    client_id: bytes

    def pack(self) -> bytes:
        _check_client_id(self.client_id)
        return self.client_id

    @classmethod
    def unpack(cls, payload: bytes) -> ClientIdResponse:
        _check_size(payload, CLIENT_ID_SIZE, "client ID")
        return cls(payload)


@dataclass(frozen=True)
class AesKeyResponse:
    """2102, 2105: Client ID(16), Encrypted AES key(128)."""

    client_id: bytes
    encrypted_key: bytes

    def pack(self) -> bytes:
        _check_client_id(self.client_id)
        if len(self.encrypted_key) != ENCRYPTED_AES_KEY_SIZE:
            raise ValueError(f"encrypted key is {len(self.encrypted_key)} bytes")
        return self.client_id + self.encrypted_key

    @classmethod
    def unpack(cls, payload: bytes) -> AesKeyResponse:
        _check_size(payload, CLIENT_ID_SIZE + ENCRYPTED_AES_KEY_SIZE, "AES key")
        return cls(payload[:CLIENT_ID_SIZE], payload[CLIENT_ID_SIZE:])


@dataclass(frozen=True)
class FileReceivedResponse:
    """2103: Client ID(16), Content size(4), File name(255), Cksum(4)."""

    client_id: bytes
    content_size: int
    file_name: str
    cksum: int

    def pack(self) -> bytes:
        _check_client_id(self.client_id)
        return FILE_RECEIVED.pack(self.client_id, self.content_size, encode_name(self.file_name), self.cksum)

    @classmethod
    def unpack(cls, payload: bytes) -> FileReceivedResponse:
        _check_size(payload, FILE_RECEIVED.size, "file received")
        client_id, content_size, name_field, cksum = FILE_RECEIVED.unpack(payload)
        return cls(client_id, content_size, decode_name(name_field), cksum)
