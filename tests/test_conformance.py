"""End-to-end conformance: a real server on a real socket, checked byte by byte.

Each test names the PROTOCOL.md section it checks (`spec` marker), registers
its own client, and reaches the server only through the wire and the §5
database schema, so the same tests grade any implementation (`--server-dir`).
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import pytest
from conftest import RSA_KEY, ProxyFactory
from support import RawConnection, ServerProcess

from client import FileTransferClient
from crypto_utils import cksum, encrypt, export_public_key, unwrap_aes_key
from protocol import (
    NAME_FIELD_SIZE,
    AesKeyResponse,
    FileReceivedResponse,
    RequestCode,
    RequestHeader,
    ResponseCode,
    SendFileHead,
    encode_name,
    pack_request,
    pack_response,
)

spec = pytest.mark.spec
NameFactory = Callable[[], str]


# --- raw helpers --------------------------------------------------------------


def register(conn: RawConnection, name: str) -> bytes:
    conn.send(pack_request(bytes(16), RequestCode.REGISTER, encode_name(name)))
    response = conn.receive()
    assert response.code == ResponseCode.REGISTERED, f"§2 1025: expected 2100, got {response.code}"
    assert len(response.payload) == 16
    return response.payload


def exchange_keys(conn: RawConnection, client_id: bytes, name: str) -> bytes:
    payload = encode_name(name) + export_public_key(RSA_KEY)
    conn.send(pack_request(client_id, RequestCode.PUBLIC_KEY, payload))
    response = conn.receive()
    assert response.code == ResponseCode.AES_KEY, f"§2 1026: expected 2102, got {response.code}"
    reply = AesKeyResponse.unpack(response.payload)
    assert reply.client_id == client_id
    return unwrap_aes_key(RSA_KEY, reply.encrypted_key)


def new_client(conn: RawConnection, name: str) -> tuple[bytes, bytes]:
    client_id = register(conn, name)
    return client_id, exchange_keys(conn, client_id, name)


def send_file_request(client_id: bytes, aes_key: bytes, file_name: str, content: bytes) -> bytes:
    ciphertext = encrypt(aes_key, content)
    payload = SendFileHead(len(ciphertext), file_name).pack() + ciphertext
    return pack_request(client_id, RequestCode.SEND_FILE, payload)


def expect(conn: RawConnection, code: ResponseCode, section: str) -> bytes:
    response = conn.receive()
    assert response.version == 3, f"{section}: server version must be 3, got {response.version}"
    assert response.code == code, f"{section}: expected {code.value}, got {response.code}"
    return response.payload


def files_of(server: ServerProcess, client_id: bytes) -> list[tuple[object, ...]]:
    return server.query("SELECT FileName, PathName, Verified FROM files WHERE ID = ?", (client_id,))


def stored_bytes(server: ServerProcess, path_name: object) -> bytes:
    assert isinstance(path_name, str)
    return (server.data_dir / path_name).read_bytes()


# --- registration and keys (§2 1025-1027) ------------------------------------


@spec("§2 1025")
def test_register_returns_a_new_id_and_stores_the_client(
    server: ServerProcess, unique_name: NameFactory
) -> None:
    name = unique_name()
    with RawConnection(server.address) as conn:
        # The header's client ID of a 1025 is ignored (§7): send garbage.
        conn.send(pack_request(os.urandom(16), RequestCode.REGISTER, encode_name(name)))
        payload = expect(conn, ResponseCode.REGISTERED, "§2 1025")
    assert len(payload) == 16
    assert uuid.UUID(bytes=payload).version == 4, "§2 1025: the ID is a random UUID (uuid4)"
    assert server.query("SELECT Name FROM clients WHERE ID = ?", (payload,)) == [(name,)]


@spec("§2 1025")
def test_a_taken_name_gets_2101(server: ServerProcess, unique_name: NameFactory) -> None:
    name = unique_name()
    with RawConnection(server.address) as conn:
        register(conn, name)
        conn.send(pack_request(bytes(16), RequestCode.REGISTER, encode_name(name)))
        assert expect(conn, ResponseCode.REGISTRATION_FAILED, "§2 1025") == b""


@spec("§1")
def test_name_field_is_read_up_to_its_nul(server: ServerProcess, unique_name: NameFactory) -> None:
    name = unique_name()
    field = (name.encode() + b"\0" + b"\xffgarbage").ljust(NAME_FIELD_SIZE, b"\x01")
    with RawConnection(server.address) as conn:
        conn.send(pack_request(bytes(16), RequestCode.REGISTER, field))
        client_id = expect(conn, ResponseCode.REGISTERED, "§1 text fields")
    assert server.query("SELECT Name FROM clients WHERE ID = ?", (client_id,)) == [(name,)]


@spec("§2 1026")
def test_public_key_is_stored_and_answered_with_a_wrapped_aes_key(
    server: ServerProcess, unique_name: NameFactory
) -> None:
    name = unique_name()
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, name)
    [(public_key, stored_aes_key)] = server.query(
        "SELECT PublicKey, AESKey FROM clients WHERE ID = ?", (client_id,)
    )
    assert public_key == export_public_key(RSA_KEY)
    assert stored_aes_key == aes_key and len(aes_key) == 16


@spec("§2 1026")
def test_every_key_exchange_makes_a_new_aes_key(server: ServerProcess, unique_name: NameFactory) -> None:
    name = unique_name()
    with RawConnection(server.address) as conn:
        client_id, first = new_client(conn, name)
        second = exchange_keys(conn, client_id, name)
    assert first != second


@spec("§2 1026")
def test_public_key_with_another_clients_name_gets_2107(
    server: ServerProcess, unique_name: NameFactory
) -> None:
    with RawConnection(server.address) as conn:
        client_id = register(conn, unique_name())
        payload = encode_name(unique_name()) + export_public_key(RSA_KEY)
        conn.send(pack_request(client_id, RequestCode.PUBLIC_KEY, payload))
        expect(conn, ResponseCode.GENERAL_ERROR, "§2 1026 name must match")


@spec("§3 2107")
def test_public_key_from_an_unknown_client_gets_2107(server: ServerProcess, unique_name: NameFactory) -> None:
    with RawConnection(server.address) as conn:
        payload = encode_name(unique_name()) + export_public_key(RSA_KEY)
        conn.send(pack_request(os.urandom(16), RequestCode.PUBLIC_KEY, payload))
        expect(conn, ResponseCode.GENERAL_ERROR, "§3 request from an unknown client")


@spec("§3 2107")
def test_garbage_public_key_gets_2107_and_the_connection_stays_usable(
    server: ServerProcess, unique_name: NameFactory
) -> None:
    name = unique_name()
    with RawConnection(server.address) as conn:
        client_id = register(conn, name)
        conn.send(pack_request(client_id, RequestCode.PUBLIC_KEY, encode_name(name) + os.urandom(160)))
        expect(conn, ResponseCode.GENERAL_ERROR, "§3 malformed payload")
        exchange_keys(conn, client_id, name)


@spec("§2 1027")
def test_reconnect_gives_a_new_aes_key(server: ServerProcess, unique_name: NameFactory) -> None:
    name = unique_name()
    with RawConnection(server.address) as conn:
        client_id, first = new_client(conn, name)
    with RawConnection(server.address) as conn:
        conn.send(pack_request(client_id, RequestCode.RECONNECT, encode_name(name)))
        reply = AesKeyResponse.unpack(expect(conn, ResponseCode.RECONNECTED, "§2 1027"))
    assert reply.client_id == client_id
    second = unwrap_aes_key(RSA_KEY, reply.encrypted_key)
    assert second != first
    assert server.query("SELECT AESKey FROM clients WHERE ID = ?", (client_id,)) == [(second,)]


@spec("§2 1027")
@pytest.mark.parametrize("case", ["unknown id", "wrong name"])
def test_reconnect_denied_echoes_the_client_id(
    server: ServerProcess, unique_name: NameFactory, case: str
) -> None:
    name = unique_name()
    with RawConnection(server.address) as conn:
        client_id, _ = new_client(conn, name)
        asked_id, asked_name = (os.urandom(16), name) if case == "unknown id" else (client_id, unique_name())
        conn.send(pack_request(asked_id, RequestCode.RECONNECT, encode_name(asked_name)))
        assert expect(conn, ResponseCode.RECONNECT_DENIED, "§2 1027") == asked_id


@spec("§2 1027")
def test_reconnect_of_an_incomplete_registration_drops_it(
    server: ServerProcess, unique_name: NameFactory
) -> None:
    """2106 for a client that never sent its key; its 1025 on the same connection then succeeds (§7)."""
    name = unique_name()
    with RawConnection(server.address) as conn:
        client_id = register(conn, name)
        conn.send(pack_request(client_id, RequestCode.RECONNECT, encode_name(name)))
        assert expect(conn, ResponseCode.RECONNECT_DENIED, "§2 1027") == client_id
        new_id = register(conn, name)
    assert new_id != client_id
    assert server.query("SELECT count(*) FROM clients WHERE Name = ?", (name,)) == [(1,)]


@spec("§5")
def test_clients_survive_a_restart(server: ServerProcess, unique_name: NameFactory) -> None:
    name = unique_name()
    with RawConnection(server.address) as conn:
        client_id, _ = new_client(conn, name)
    server.restart()
    with RawConnection(server.address) as conn:
        conn.send(pack_request(client_id, RequestCode.RECONNECT, encode_name(name)))
        reply = AesKeyResponse.unpack(expect(conn, ResponseCode.RECONNECTED, "§5 loaded at start"))
    assert reply.client_id == client_id


@spec("§2")
def test_last_seen_is_updated_on_every_request(server: ServerProcess, unique_name: NameFactory) -> None:
    with RawConnection(server.address) as conn:
        client_id, _ = new_client(conn, unique_name())
        # Make the stored value stale; then one request (even a refused one) must refresh it.
        with closing(sqlite3.connect(server.db_path, timeout=10)) as db, db:
            db.execute("UPDATE clients SET LastSeen = '2000-01-01 00:00:00' WHERE ID = ?", (client_id,))
        conn.send(pack_request(client_id, RequestCode.CRC_OK, encode_name("no-such-file")))
        conn.receive()
    [(last_seen,)] = server.query("SELECT LastSeen FROM clients WHERE ID = ?", (client_id,))
    assert isinstance(last_seen, str) and not last_seen.startswith("2000")


# --- files (§2 1028-1031) ------------------------------------------------------


@spec("§2 1028")
@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 100_000])
def test_send_file_stores_the_decrypted_file(
    server: ServerProcess, unique_name: NameFactory, size: int
) -> None:
    content = os.urandom(size)
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, unique_name())
        conn.send(send_file_request(client_id, aes_key, "data.bin", content))
        reply = FileReceivedResponse.unpack(expect(conn, ResponseCode.FILE_RECEIVED, "§2 1028"))
    assert reply == FileReceivedResponse(client_id, (size // 16 + 1) * 16, "data.bin", cksum(content))
    [(file_name, path_name, verified)] = files_of(server, client_id)
    assert (file_name, verified) == ("data.bin", 0)
    assert stored_bytes(server, path_name) == content


@spec("§2 1029")
def test_crc_ok_marks_the_file_verified(server: ServerProcess, unique_name: NameFactory) -> None:
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, unique_name())
        conn.send(send_file_request(client_id, aes_key, "a.txt", b"hello"))
        expect(conn, ResponseCode.FILE_RECEIVED, "§2 1028")
        conn.send(pack_request(client_id, RequestCode.CRC_OK, encode_name("a.txt")))
        assert expect(conn, ResponseCode.ACK, "§2 1029") == client_id
    assert [row[2] for row in files_of(server, client_id)] == [1]


@spec("§2 1030")
def test_crc_retry_has_no_response_and_the_pipelined_resend_is_served(
    server: ServerProcess, unique_name: NameFactory
) -> None:
    """Real clients send 1030 and the next 1028 at once (§1, §7)."""
    content = os.urandom(5000)
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, unique_name())
        conn.send(send_file_request(client_id, aes_key, "f.bin", content))
        expect(conn, ResponseCode.FILE_RECEIVED, "§2 1028")
        conn.send(
            pack_request(client_id, RequestCode.CRC_RETRY, encode_name("f.bin"))
            + send_file_request(client_id, aes_key, "f.bin", content)
        )
        reply = FileReceivedResponse.unpack(expect(conn, ResponseCode.FILE_RECEIVED, "§2 1030: no reply"))
        assert reply.cksum == cksum(content)
        conn.send(pack_request(client_id, RequestCode.CRC_RETRY, encode_name("f.bin")))
        assert conn.silent_and_open(), "§2 1030: the server must not answer 1030"


@spec("§2 1031")
def test_crc_abort_removes_the_file_and_its_record(server: ServerProcess, unique_name: NameFactory) -> None:
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, unique_name())
        conn.send(send_file_request(client_id, aes_key, "gone.bin", b"x" * 100))
        expect(conn, ResponseCode.FILE_RECEIVED, "§2 1028")
        [(_, path_name, _)] = files_of(server, client_id)
        conn.send(pack_request(client_id, RequestCode.CRC_ABORT, encode_name("gone.bin")))
        assert expect(conn, ResponseCode.ACK, "§2 1031") == client_id
    assert files_of(server, client_id) == []
    assert isinstance(path_name, str) and not (server.data_dir / path_name).exists()


@spec("§2 1028")
def test_the_same_name_replaces_the_earlier_copy(server: ServerProcess, unique_name: NameFactory) -> None:
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, unique_name())
        conn.send(send_file_request(client_id, aes_key, "doc.txt", b"first version"))
        expect(conn, ResponseCode.FILE_RECEIVED, "§2 1028")
        conn.send(pack_request(client_id, RequestCode.CRC_OK, encode_name("doc.txt")))
        expect(conn, ResponseCode.ACK, "§2 1029")
        conn.send(send_file_request(client_id, aes_key, "doc.txt", b"second"))
        expect(conn, ResponseCode.FILE_RECEIVED, "§2 1028")
    [(_, path_name, verified)] = files_of(server, client_id)
    assert verified == 0, "§2: a replaced file is not verified until its own 1029"
    assert stored_bytes(server, path_name) == b"second"


@spec("§2 file names")
@pytest.mark.parametrize(
    "file_name",
    [
        "C:\\Users\\me\\file.bin",
        "/home/me/file.bin",
        "../x",
        "../../x",
        "/tmp/x",
        "..\\..\\x",
        "server.py",
        "port.info",
        "defensive.db",
        "name with spaces.txt",
        "'; DROP TABLE files; --",
    ],
)
def test_file_names_stay_inside_the_storage_folder(
    server: ServerProcess, unique_name: NameFactory, file_name: str
) -> None:
    protected = {p: p.read_bytes() for p in server.server_dir.glob("*") if p.is_file() and p.suffix != ".log"}
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, unique_name())
        conn.send(send_file_request(client_id, aes_key, file_name, b"payload"))
        reply = FileReceivedResponse.unpack(expect(conn, ResponseCode.FILE_RECEIVED, "§2 1028"))
    assert reply.file_name == file_name, "§2: 2103 echoes the name as the client sent it"
    [(stored_name, path_name, _)] = files_of(server, client_id)
    assert stored_name == file_name
    assert isinstance(path_name, str)
    stored = (server.data_dir / path_name).resolve()
    assert stored.read_bytes() == b"payload"
    assert stored.parent != server.server_dir.resolve() and server.data_dir.resolve() in stored.parents
    assert not Path("/tmp/x").exists() or Path("/tmp/x").read_bytes() != b"payload"
    for path, content in protected.items():
        assert path.read_bytes() == content, f"{path.name} was touched"
    assert server.query("SELECT count(*) FROM files")[0][0] >= 1


@spec("§5 storage")
def test_two_names_with_one_base_name_keep_separate_files(
    server: ServerProcess, unique_name: NameFactory
) -> None:
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, unique_name())
        for name, content in (("a/x.bin", b"from a"), ("b/x.bin", b"from b")):
            conn.send(send_file_request(client_id, aes_key, name, content))
            expect(conn, ResponseCode.FILE_RECEIVED, "§2 1028")
    rows = {row[0]: stored_bytes(server, row[1]) for row in files_of(server, client_id)}
    assert rows == {"a/x.bin": b"from a", "b/x.bin": b"from b"}


@spec("§5 storage")
def test_two_clients_with_one_file_name_keep_separate_files(
    server: ServerProcess, unique_name: NameFactory
) -> None:
    contents = {}
    for content in (b"client one", b"client two"):
        with RawConnection(server.address) as conn:
            client_id, aes_key = new_client(conn, unique_name())
            conn.send(send_file_request(client_id, aes_key, "same.txt", content))
            expect(conn, ResponseCode.FILE_RECEIVED, "§2 1028")
            contents[client_id] = content
    for client_id, content in contents.items():
        [(_, path_name, _)] = files_of(server, client_id)
        assert stored_bytes(server, path_name) == content


# --- whole flows with the reference client -----------------------------------------


@spec("§6")
def test_reference_client_flow_through_a_corrupting_proxy(
    server: ServerProcess, corrupting_proxy: ProxyFactory, unique_name: NameFactory, tmp_path: Path
) -> None:
    """Two corrupted transfers: 1030 twice, the third attempt verifies."""
    path = tmp_path / "file.bin"
    path.write_bytes(os.urandom(70_000))
    name = unique_name()
    with FileTransferClient(*corrupting_proxy(server, corrupt=2)) as client:
        client.register(name)
        client.send_public_key(name, RSA_KEY)
        results = []
        for _ in range(3):
            received, local = client.send_file(path, "file.bin")
            results.append(received.cksum == local)
            if received.cksum != local:
                client.crc_retry("file.bin")
        client.crc_ok("file.bin")
    assert results == [False, False, True]
    [(_, path_name, verified)] = files_of(server, client.client_id)
    assert verified == 1 and stored_bytes(server, path_name) == path.read_bytes()


# --- concurrency ------------------------------------------------------------------


@spec("§2 1025")
def test_racing_registrations_of_one_name_give_exactly_one_2100(
    server: ServerProcess, unique_name: NameFactory
) -> None:
    name = unique_name()
    barrier = threading.Barrier(32)

    def race(_: int) -> int:
        with RawConnection(server.address) as conn:
            barrier.wait()
            conn.send(pack_request(bytes(16), RequestCode.REGISTER, encode_name(name)))
            return conn.receive().code

    with ThreadPoolExecutor(32) as pool:
        codes = list(pool.map(race, range(32)))
    assert sorted(codes) == [2100] + [2101] * 31
    assert server.query("SELECT count(*) FROM clients WHERE Name = ?", (name,)) == [(1,)]


@spec("§1")
def test_fifty_concurrent_clients(server: ServerProcess, unique_name: NameFactory) -> None:
    def transfer(index: int) -> tuple[bytes, bytes]:
        content = os.urandom(20_000 + index)
        with RawConnection(server.address) as conn:
            client_id, aes_key = new_client(conn, unique_name())
            conn.send(send_file_request(client_id, aes_key, f"f{index}.bin", content))
            reply = FileReceivedResponse.unpack(expect(conn, ResponseCode.FILE_RECEIVED, "§2 1028"))
            assert reply.cksum == cksum(content)
            conn.send(pack_request(client_id, RequestCode.CRC_OK, encode_name(f"f{index}.bin")))
            expect(conn, ResponseCode.ACK, "§2 1029")
        return client_id, content

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(transfer, range(50)))
    for client_id, content in results:
        [(_, path_name, verified)] = files_of(server, client_id)
        assert verified == 1 and stored_bytes(server, path_name) == content
    assert server.query("SELECT count(DISTINCT ID) FROM files WHERE Verified = 1")[0][0] >= 50


# --- bad input (§3 2107) ------------------------------------------------------------


def still_serves(server: ServerProcess, unique_name: NameFactory) -> None:
    with RawConnection(server.address) as conn:
        new_client(conn, unique_name())


@spec("§3 2107")
@pytest.mark.parametrize(
    ("code", "payload"),
    [
        (RequestCode.REGISTER, b"a" * 255),  # no NUL
        (RequestCode.REGISTER, bytes(255)),  # empty name
        (RequestCode.REGISTER, encode_name("x")[:100]),  # short payload
        (RequestCode.REGISTER, encode_name("x") + b"extra"),  # trailing bytes
        (9999, b""),  # unknown code
        (9999, b"z" * 1000),  # unknown code with a payload to skip
    ],
    ids=["no-nul", "empty-name", "short", "trailing", "unknown-code", "unknown-code-payload"],
)
def test_malformed_requests_get_2107_and_the_connection_stays_usable(
    server: ServerProcess, unique_name: NameFactory, code: int, payload: bytes
) -> None:
    with RawConnection(server.address) as conn:
        conn.send(RequestHeader(bytes(16), 3, code, len(payload)).pack() + payload)
        assert expect(conn, ResponseCode.GENERAL_ERROR, "§3 2107") == b""
        register(conn, unique_name())


@spec("§3 2107")
def test_truncated_header_closes_the_connection(server: ServerProcess, unique_name: NameFactory) -> None:
    with RawConnection(server.address) as conn:
        conn.send(bytes(10))
        conn.sock.shutdown(socket.SHUT_WR)
        rest = conn.rest_until_closed()
    assert rest in (b"", pack_response(ResponseCode.GENERAL_ERROR)), "§3: 2107 if anything, then close"
    still_serves(server, unique_name)


@spec("§3 2107")
def test_an_impossible_payload_size_gets_2107_and_closes(
    server: ServerProcess, unique_name: NameFactory
) -> None:
    """A 1025 claiming 4 GiB: answered before any of it is read, nothing allocated."""
    with RawConnection(server.address) as conn:
        conn.send(RequestHeader(bytes(16), 3, RequestCode.REGISTER, 2**32 - 1).pack())
        expect(conn, ResponseCode.GENERAL_ERROR, "§3 impossible payload size")
        assert conn.is_closed()
    still_serves(server, unique_name)


@spec("§3 2107")
def test_send_file_from_an_unknown_client_gets_2107(server: ServerProcess, unique_name: NameFactory) -> None:
    with RawConnection(server.address) as conn:
        conn.send(send_file_request(os.urandom(16), os.urandom(16), "x.bin", b"secret"))
        expect(conn, ResponseCode.GENERAL_ERROR, "§3 unknown client")
        register(conn, unique_name())  # small request: skipped, the connection stays usable


@spec("§3 2107")
def test_bad_padding_gets_2107_and_leaves_nothing(server: ServerProcess, unique_name: NameFactory) -> None:
    with RawConnection(server.address) as conn:
        client_id, _ = new_client(conn, unique_name())
        conn.send(send_file_request(client_id, os.urandom(16), "x.bin", b"wrong key" * 100))
        expect(conn, ResponseCode.GENERAL_ERROR, "§3 decryption failure")
        register(conn, unique_name())
    assert files_of(server, client_id) == []
    assert not list((server.data_dir).rglob("*x.bin*"))


@spec("§3 2107")
@pytest.mark.parametrize(
    ("declared", "actual"), [(64, 48), (17, 17)], ids=["size-disagrees-with-header", "not-whole-blocks"]
)
def test_inconsistent_send_file_sizes_get_2107_and_close(
    server: ServerProcess, unique_name: NameFactory, declared: int, actual: int
) -> None:
    with RawConnection(server.address) as conn:
        client_id, _ = new_client(conn, unique_name())
        head = (
            SendFileHead(declared, "x.bin").pack()
            if declared % 16 == 0
            else (declared.to_bytes(4, "little") + encode_name("x.bin"))
        )
        conn.send(pack_request(client_id, RequestCode.SEND_FILE, head + os.urandom(actual)))
        expect(conn, ResponseCode.GENERAL_ERROR, "§3 broken framing")
        assert conn.is_closed()
    assert files_of(server, client_id) == []


@spec("§3 2107")
@pytest.mark.parametrize("file_name", [".", "..", "dir/", "a\\..\\"])
def test_file_names_without_a_base_name_get_2107(
    server: ServerProcess, unique_name: NameFactory, file_name: str
) -> None:
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, unique_name())
        conn.send(send_file_request(client_id, aes_key, file_name, b"data"))
        expect(conn, ResponseCode.GENERAL_ERROR, "§5 unsafe file name")
    assert files_of(server, client_id) == []


@spec("§3 2107")
def test_sql_metacharacters_in_a_name_are_plain_text(server: ServerProcess) -> None:
    name = f"x'); DROP TABLE clients; -- {uuid.uuid4().hex[:8]}"
    with RawConnection(server.address) as conn:
        client_id = register(conn, name)
    assert server.query("SELECT Name FROM clients WHERE ID = ?", (client_id,)) == [(name,)]


@spec("§3 2107")
def test_crc_ok_for_an_unknown_file_gets_2107(server: ServerProcess, unique_name: NameFactory) -> None:
    with RawConnection(server.address) as conn:
        client_id, _ = new_client(conn, unique_name())
        conn.send(pack_request(client_id, RequestCode.CRC_OK, encode_name("never-sent.bin")))
        expect(conn, ResponseCode.GENERAL_ERROR, "§2 1029 of an unknown file")


@spec("§7")
def test_a_peer_vanishing_mid_file_leaves_nothing(server: ServerProcess, unique_name: NameFactory) -> None:
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, unique_name())
        request = send_file_request(client_id, aes_key, "half.bin", os.urandom(1_000_000))
        conn.send(request[: len(request) // 2])
    # The server notices the close; a request on a new connection is served after it.
    still_serves(server, unique_name)
    with RawConnection(server.address) as conn:
        conn.send(pack_request(client_id, RequestCode.CRC_OK, encode_name("half.bin")))
        expect(conn, ResponseCode.GENERAL_ERROR, "§7 half-received file left a record")
    assert files_of(server, client_id) == []
    assert [p.name for p in server.data_dir.rglob("*half.bin*")] == []


@spec("§1")
def test_stalled_connections_do_not_block_a_transfer(server: ServerProcess, unique_name: NameFactory) -> None:
    stalled = [RawConnection(server.address) for _ in range(50)]
    try:
        for index, conn in enumerate(stalled):
            conn.send(bytes(index % 23))  # a partial header, or nothing at all
        with RawConnection(server.address) as conn:
            client_id, aes_key = new_client(conn, unique_name())
            conn.send(send_file_request(client_id, aes_key, "ok.bin", b"through"))
            expect(conn, ResponseCode.FILE_RECEIVED, "§2 1028")
    finally:
        for conn in stalled:
            conn.close()
