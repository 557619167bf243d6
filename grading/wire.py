"""What the checks send and expect on the wire: sessions, requests, and their failure messages.

Every helper that expects a response names the spec point in its failure, and
says what was sent, what came back and what PROTOCOL.md expects, so that a
failure's first line can be pasted into a student's feedback.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from Crypto.Cipher import AES

from crypto_utils import CryptoError, encrypt, export_public_key, generate_rsa_key, unwrap_aes_key
from grading.database import SubmissionDatabase
from grading.harness import NoResponse, RawConnection, ServerProcess
from protocol import (
    AesKeyResponse,
    FileReceivedResponse,
    ProtocolError,
    RequestCode,
    ResponseCode,
    SendFileHead,
    encode_name,
    pack_request,
)

T = TypeVar("T")
NameFactory = Callable[[], str]

# One RSA key for every check: generating a 1024-bit key costs tens of milliseconds.
RSA_KEY = generate_rsa_key()

REQUEST_NAMES = {
    1025: "1025 (register)",
    1026: "1026 (public key)",
    1027: "1027 (reconnect)",
    1028: "1028 (send file)",
    1029: "1029 (CRC ok)",
    1030: "1030 (CRC failed)",
    1031: "1031 (give up)",
}


def expect(conn: RawConnection, code: ResponseCode, section: str) -> bytes:
    """The next response's payload, which must carry `code`; failures name `section`."""
    prefix = f"{section}: " if section else ""
    try:
        response = conn.receive()
    except AssertionError as err:
        raise type(err)(f"{prefix}expected {code.value}, but {err}") from None
    except OSError as err:
        raise AssertionError(f"{prefix}expected {code.value}, but the connection broke ({err})") from None
    assert response.code == code, f"{prefix}expected {code.value}, got {response.code}"
    return response.payload


def parse(section: str, unpack: Callable[[bytes], T], payload: bytes) -> T:
    try:
        return unpack(payload)
    except ProtocolError as err:
        raise AssertionError(f"{section}: {err}") from None


def register(conn: RawConnection, name: str) -> bytes:
    conn.send(pack_request(bytes(16), RequestCode.REGISTER, encode_name(name)))
    payload = expect(conn, ResponseCode.REGISTERED, f"§2 1025 of {name!r}")
    assert len(payload) == 16, f"§2 1025: 2100 carries a 16-byte client ID, not {len(payload)} bytes"
    return payload


def aes_key_of(wrapped: bytes, client_id: bytes, server: ServerProcess | None) -> bytes:
    """The AES key the server sent: unwrapped, or (if that fails, §4's check) from its database."""
    try:
        return unwrap_aes_key(RSA_KEY, wrapped)
    except CryptoError as err:
        if server is None:
            raise AssertionError(f"§4 key wrap: {err}") from None
    row = SubmissionDatabase(server.db_path).client(client_id, "AESKey")
    key = row.aes_key if row is not None else None
    assert isinstance(key, bytes) and len(key) == 16, (
        "§4 key wrap: the key in 2102 does not unwrap with RSA-OAEP-SHA1, and the database holds "
        "no 16-byte AESKey to go on with"
    )
    return key


def exchange_keys(
    conn: RawConnection, client_id: bytes, name: str, server: ServerProcess | None = None
) -> bytes:
    payload = encode_name(name) + export_public_key(RSA_KEY)
    conn.send(pack_request(client_id, RequestCode.PUBLIC_KEY, payload))
    reply = parse("§2 1026", AesKeyResponse.unpack, expect(conn, ResponseCode.AES_KEY, "§2 1026"))
    assert reply.client_id == client_id, (
        f"§2 1026: 2102 starts with the client's ID {client_id.hex()}, not {reply.client_id.hex()}"
    )
    return aes_key_of(reply.encrypted_key, client_id, server)


def new_client(conn: RawConnection, name: str, server: ServerProcess | None = None) -> tuple[bytes, bytes]:
    """Register `name` and exchange keys: (client ID, AES key)."""
    client_id = register(conn, name)
    return client_id, exchange_keys(conn, client_id, name, server)


def send_file_request(client_id: bytes, aes_key: bytes, file_name: str, content: bytes) -> bytes:
    ciphertext = encrypt(aes_key, content)
    payload = SendFileHead(len(ciphertext), file_name).pack() + ciphertext
    return pack_request(client_id, RequestCode.SEND_FILE, payload)


def send_large_file(
    conn: RawConnection, client_id: bytes, aes_key: bytes, file_name: str, content: bytes
) -> None:
    """A 1028 streamed in pieces (AES-CBC, zero IV, PKCS#7): no whole copy of the ciphertext."""
    piece = 1 << 20
    padding = 16 - len(content) % 16
    size = len(content) + padding
    head = SendFileHead(size, file_name).pack()
    header = pack_request(client_id, RequestCode.SEND_FILE, b"")[:-4] + (len(head) + size).to_bytes(
        4, "little"
    )
    conn.send(header + head)
    cipher = AES.new(aes_key, AES.MODE_CBC, iv=bytes(16))
    view = memoryview(content)
    whole = len(content) - len(content) % 16
    for offset in range(0, whole, piece):
        conn.sock.sendall(cipher.encrypt(view[offset : min(offset + piece, whole)]))
    conn.sock.sendall(cipher.encrypt(bytes(view[whole:]) + bytes([padding]) * padding))


def file_request(client_id: bytes, code: RequestCode, file_name: str) -> bytes:
    return pack_request(client_id, code, encode_name(file_name))


def file_received(conn: RawConnection, section: str = "§2 1028") -> FileReceivedResponse:
    return parse(section, FileReceivedResponse.unpack, expect(conn, ResponseCode.FILE_RECEIVED, section))


def send_file(conn: RawConnection, client_id: bytes, aes_key: bytes, name: str, content: bytes) -> None:
    conn.send(send_file_request(client_id, aes_key, name, content))
    file_received(conn, f"§2 1028 of {name!r} ({len(content)} bytes)")


def confirm(conn: RawConnection, client_id: bytes, name: str) -> None:
    """1029: the end of a client session (the server may close after its 2104)."""
    conn.send(file_request(client_id, RequestCode.CRC_OK, name))
    expect(conn, ResponseCode.ACK, f"§2 1029 of {name!r}")


def session(
    server: ServerProcess, name: str, files: dict[str, bytes], verify: bool = True
) -> tuple[bytes, bytes]:
    """One client session on its own connection, as real clients run it: (client ID, AES key)."""
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, name, server)
        for file_name, content in files.items():
            send_file(conn, client_id, aes_key, file_name, content)
        if verify:
            for file_name in files:
                confirm(conn, client_id, file_name)
    return client_id, aes_key


def still_serves(server: ServerProcess, unique_name: NameFactory) -> None:
    with RawConnection(server.address) as conn:
        register(conn, unique_name())


def files_under(folder: Path) -> set[Path]:
    return {path.resolve() for path in folder.rglob("*") if path.is_file()}


def server_own(path: Path) -> bool:
    """The database (and its journal) and the output log: files a server run leaves anyway."""
    return path.name.startswith("defensive.db") or path.suffix == ".log" or path.name == "port.info"


def stored_file(server: ServerProcess, path_name: object) -> Path:
    """The file a `PathName` names: relative to the server folder (§5), or found by its tail.

    Whether PathName is relative to the server folder is the §5 PathName
    check's point; the other checks find the file either way.
    """
    assert isinstance(path_name, str) and path_name, f"§5: PathName {path_name!r} is not a path"
    for folder in (server.data_dir, (server.data_dir / server.entry).parent):
        direct = folder / path_name
        if direct.is_file():
            return direct
    tail = "/" + path_name.replace("\\", "/").lstrip("/")
    found = [path for path in server.data_dir.rglob("*") if path.is_file() and path.as_posix().endswith(tail)]
    assert len(found) == 1, f"§5: the file of PathName {path_name!r} is not in the server's folder"
    return found[0]


def stored_bytes(server: ServerProcess, path_name: object) -> bytes:
    return stored_file(server, path_name).read_bytes()


def describe_bytes(got: bytes, expected: bytes) -> str:
    """How two contents differ, in words: sizes, and the first differing offset."""
    if got == expected:
        return "identical"
    first = next((index for index, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b), None)
    where = f"first difference at byte {first}" if first is not None else "one is a prefix of the other"
    return f"{len(got)} bytes stored, {len(expected)} sent; {where}"


class Cases:
    """Several cases of one spec point in one check: each is checked, the failures reported together.

    One row per check in the report, whose message lists every case that
    failed. A case that waited in vain for the server, or whose connection
    broke, ends the check: the next cases would only wait as long, or break too.
    """

    def __init__(self, point: str) -> None:
        self.point = point
        self.count = 0
        self.failed: list[str] = []

    @contextmanager
    def case(self, name: str) -> Iterator[None]:
        self.count += 1
        try:
            yield
        except AssertionError as err:
            text = str(err).strip()
            self.failed.append(f"{name}: {text.splitlines()[0] if text else 'failed'}")
            if isinstance(err, NoResponse):
                self.check()
        except OSError as err:  # the server closed or reset the connection under a request
            self.failed.append(f"{name}: the connection broke ({type(err).__name__}: {err})")
            self.check()

    def check(self) -> None:
        assert not self.failed, f"{self.point}: {len(self.failed)} of {self.count} cases fail: " + "; ".join(
            self.failed
        )


def connect(server: ServerProcess) -> RawConnection:
    """A fresh connection; a refused one says so in words."""
    try:
        return RawConnection(server.address)
    except OSError as err:
        raise AssertionError(f"cannot connect to the server at {server.host}:{server.port}: {err}") from None
