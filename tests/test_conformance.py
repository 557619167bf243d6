"""End-to-end conformance: a real server on a real socket, checked byte by byte.

These tests grade any implementation of PROTOCOL.md (`--server-dir`,
`--server`; see grading.py), so they hold to three rules:

- Each names the PROTOCOL.md section it checks: in its name (`test_s2_1030_...`),
  in its `spec` marker (the grade report's "spec point"), and at the start of
  every failure message.
- Each is independent: it registers its own clients, and checks one point. A
  defect fails the test of its point, not every test that passes by it: the
  response version is checked only by the §1 test, the checksum only by §4's,
  the stored content only by §4's AES test, and when the AES key does not
  unwrap (§4) the other tests go on with the key the server stored.
- They reach the server only through the wire and the database schema of §5.
  What this implementation decided where the protocol is silent is tested at
  the end of this file, for ours only (the `ours` fixture).
"""

from __future__ import annotations

import base64
import os
import socket
import sqlite3
import textwrap
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from pathlib import Path, PurePath
from typing import TypeVar

import pytest
from conftest import RSA_KEY, ProxyFactory
from support import (
    READ_TIMEOUT,
    ClientProgram,
    ClientRun,
    NoResponse,
    RawConnection,
    RawResponse,
    ServerProcess,
    wait_until,
)

from crypto_utils import CryptoError, encrypt, export_public_key, generate_rsa_key, unwrap_aes_key
from protocol import (
    FILE_RECEIVED,
    NAME_FIELD_SIZE,
    RESPONSE_PAYLOAD_SIZES,
    AesKeyResponse,
    FileReceivedResponse,
    ProtocolError,
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
T = TypeVar("T")


# --- raw helpers --------------------------------------------------------------


def expect(conn: RawConnection, code: ResponseCode, section: str) -> bytes:
    """The next response's payload, which must carry `code`; failures name `section`."""
    prefix = f"{section}: " if section else ""
    try:
        response = conn.receive()
    except AssertionError as err:
        raise type(err)(f"{prefix}expected {code.value}, but {err}") from None
    assert response.code == code, f"{prefix}expected {code.value}, got {response.code}"
    return response.payload


def parse(section: str, unpack: Callable[[bytes], T], payload: bytes) -> T:
    try:
        return unpack(payload)
    except ProtocolError as err:
        raise AssertionError(f"{section}: {err}") from None


def register(conn: RawConnection, name: str) -> bytes:
    conn.send(pack_request(bytes(16), RequestCode.REGISTER, encode_name(name)))
    payload = expect(conn, ResponseCode.REGISTERED, "§2 1025")
    assert len(payload) == 16, f"§2 1025: 2100 carries a 16-byte client ID, not {len(payload)} bytes"
    return payload


def aes_key_of(wrapped: bytes, client_id: bytes, server: ServerProcess | None) -> bytes:
    """The AES key the server sent: unwrapped, or (if that fails, §4's test) from its database."""
    try:
        return unwrap_aes_key(RSA_KEY, wrapped)
    except CryptoError as err:
        if server is None:
            raise AssertionError(f"§4 key wrap: {err}") from None
    rows = server.query("SELECT AESKey FROM clients WHERE ID = ?", (stored_id(server, client_id),))
    assert len(rows) == 1 and isinstance(rows[0][0], bytes), "§4 key wrap: no AES key to go on with"
    key: bytes = rows[0][0]
    return key


def exchange_keys(
    conn: RawConnection, client_id: bytes, name: str, server: ServerProcess | None = None
) -> bytes:
    payload = encode_name(name) + export_public_key(RSA_KEY)
    conn.send(pack_request(client_id, RequestCode.PUBLIC_KEY, payload))
    reply = parse("§2 1026", AesKeyResponse.unpack, expect(conn, ResponseCode.AES_KEY, "§2 1026"))
    assert reply.client_id == client_id, "§2 1026: 2102 starts with the client's ID"
    return aes_key_of(reply.encrypted_key, client_id, server)


def new_client(conn: RawConnection, name: str, server: ServerProcess | None = None) -> tuple[bytes, bytes]:
    """Register `name` and exchange keys: (client ID, AES key)."""
    client_id = register(conn, name)
    return client_id, exchange_keys(conn, client_id, name, server)


def send_file_request(client_id: bytes, aes_key: bytes, file_name: str, content: bytes) -> bytes:
    ciphertext = encrypt(aes_key, content)
    payload = SendFileHead(len(ciphertext), file_name).pack() + ciphertext
    return pack_request(client_id, RequestCode.SEND_FILE, payload)


def file_request(client_id: bytes, code: RequestCode, file_name: str) -> bytes:
    return pack_request(client_id, code, encode_name(file_name))


def file_received(conn: RawConnection, section: str = "§2 1028") -> FileReceivedResponse:
    return parse(section, FileReceivedResponse.unpack, expect(conn, ResponseCode.FILE_RECEIVED, section))


def send_file(conn: RawConnection, client_id: bytes, aes_key: bytes, name: str, content: bytes) -> None:
    conn.send(send_file_request(client_id, aes_key, name, content))
    file_received(conn)


def stored_id(server: ServerProcess, client_id: bytes) -> object:
    """`client_id` as the server's database holds it: a 16-byte blob, as §5 fixes.

    A database that holds IDs as text (hex, or the UUID's string) fails the §5
    database test; the other tests find their rows anyway.
    """
    held = {row[0] for row in server.query("SELECT ID FROM clients")}
    text = client_id.hex()
    for form in (client_id, text, text.upper(), str(uuid.UUID(bytes=client_id))):
        if form in held:
            return form
    return client_id


def files_of(server: ServerProcess, client_id: bytes) -> list[tuple[object, ...]]:
    return server.query(
        "SELECT FileName, PathName, Verified FROM files WHERE ID = ?", (stored_id(server, client_id),)
    )


def stored_file(server: ServerProcess, path_name: object) -> Path:
    """The file a `PathName` names: relative to the server folder (§5), or found by its tail.

    Whether PathName is relative to the server folder is the §5 PathName
    test's point; the other tests find the file either way.
    """
    assert isinstance(path_name, str) and path_name, f"§5: PathName {path_name!r} is not a path"
    direct = server.data_dir / path_name
    if direct.is_file():
        return direct
    tail = "/" + path_name.replace("\\", "/").lstrip("/")
    found = [path for path in server.data_dir.rglob("*") if path.is_file() and path.as_posix().endswith(tail)]
    assert len(found) == 1, f"§5: no stored file at PathName {path_name!r}"
    return found[0]


def stored_bytes(server: ServerProcess, path_name: object) -> bytes:
    return stored_file(server, path_name).read_bytes()


def still_serves(server: ServerProcess, unique_name: NameFactory) -> None:
    with RawConnection(server.address) as conn:
        register(conn, unique_name())


def files_under(folder: Path) -> set[Path]:
    return {path.resolve() for path in folder.rglob("*") if path.is_file()}


def _server_own(path: Path) -> bool:
    """The database (and its journal) and the output log: files a server run leaves anyway."""
    return path.name.startswith("defensive.db") or path.suffix == ".log"


class Cases:
    """Several cases of one spec point in one test: each is checked, the failures reported together.

    One row per spec point in the grade report, whose message lists every case
    that failed. A case that waited in vain for the server, or whose connection
    broke, ends the test: the next cases would only wait as long, or break too.
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
            self.failed.append(
                f"{name}: {str(err).strip().splitlines()[0] if str(err).strip() else 'failed'}"
            )
            if isinstance(err, NoResponse):
                self.check()
        except OSError as err:  # the server closed or reset the connection under a request
            self.failed.append(f"{name}: the connection broke ({type(err).__name__}: {err})")
            self.check()

    def check(self) -> None:
        assert not self.failed, f"{self.point}: {len(self.failed)} of {self.count} cases fail: " + "; ".join(
            self.failed
        )


# --- §1 transport and framing ------------------------------------------------------


@spec("§1 version")
def test_s1_responses_carry_server_version_3(server: ServerProcess, unique_name: NameFactory) -> None:
    name = unique_name()
    responses: list[RawResponse] = []
    with RawConnection(server.address) as conn:
        conn.send(pack_request(bytes(16), RequestCode.REGISTER, encode_name(name)))
        responses.append(conn.receive())
        conn.send(pack_request(bytes(16), RequestCode.REGISTER, encode_name(name)))
        responses.append(conn.receive())
    versions = {response.code: response.version for response in responses}
    assert set(versions.values()) == {3}, f"§1: responses carry the server version 3, got {versions}"


@spec("§1 text fields")
def test_s1_text_fields_are_read_up_to_the_first_nul(server: ServerProcess, unique_name: NameFactory) -> None:
    name = unique_name()
    field = (name.encode() + b"\0" + b"\xffgarbage").ljust(NAME_FIELD_SIZE, b"\x01")
    with RawConnection(server.address) as conn:
        conn.send(pack_request(bytes(16), RequestCode.REGISTER, field))
        client_id = expect(conn, ResponseCode.REGISTERED, "§1 text fields: garbage after the NUL")
        conn.send(pack_request(bytes(16), RequestCode.REGISTER, encode_name(name)))
        expect(conn, ResponseCode.REGISTRATION_FAILED, "§1 text fields: the name is the text before the NUL")
    assert server.query("SELECT Name FROM clients WHERE ID = ?", (stored_id(server, client_id),)) == [
        (name,)
    ], "§1 text fields: the stored name is the text before the NUL"


@spec("§1 pipelining")
def test_s1_pipelined_requests_are_all_served(server: ServerProcess, unique_name: NameFactory) -> None:
    """1030, the resend 1028 and its 1029 in one write, as real clients send them (§1, §7)."""
    content = os.urandom(5000)
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, unique_name(), server)
        send_file(conn, client_id, aes_key, "f.bin", content)
        conn.send(
            file_request(client_id, RequestCode.CRC_RETRY, "f.bin")
            + send_file_request(client_id, aes_key, "f.bin", content)
            + file_request(client_id, RequestCode.CRC_OK, "f.bin")
        )
        response = conn.receive()
        if response.code == ResponseCode.ACK:
            response = conn.receive()  # a reply to the 1030: wrong, but the §2 1030 test's point
        assert response.code == ResponseCode.FILE_RECEIVED, (
            f"§1 pipelining: the 1028 sent right behind a 1030 got {response.code}, expected 2103 "
            "(were the bytes after the 1030 dropped?)"
        )
        expect(conn, ResponseCode.ACK, "§1 pipelining: the 1029 behind the 1028")


@spec("§1 concurrency")
def test_s1_fifty_concurrent_clients(server: ServerProcess, unique_name: NameFactory) -> None:
    def transfer(index: int) -> tuple[bytes, bytes]:
        content = os.urandom(20_000 + index)
        with RawConnection(server.address) as conn:
            client_id, aes_key = new_client(conn, unique_name(), server)
            send_file(conn, client_id, aes_key, f"f{index}.bin", content)
            conn.send(file_request(client_id, RequestCode.CRC_OK, f"f{index}.bin"))
            expect(conn, ResponseCode.ACK, "§1 concurrency: 1029")
        return client_id, content

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(transfer, range(50)))
    for index, (client_id, content) in enumerate(results):
        [(_, path_name, verified)] = files_of(server, client_id)
        assert verified == 1, f"§1 concurrency: client {index}'s file is not verified"
        assert stored_bytes(server, path_name) == content, f"§1 concurrency: client {index}'s file differs"


@spec("§1 concurrency")
def test_s1_stalled_connections_do_not_block_others(server: ServerProcess, unique_name: NameFactory) -> None:
    stalled = [RawConnection(server.address) for _ in range(50)]
    try:
        for index, conn in enumerate(stalled):
            conn.send(bytes(index % 23))  # a partial header, or nothing at all
        with RawConnection(server.address) as conn:
            client_id, aes_key = new_client(conn, unique_name(), server)
            conn.send(send_file_request(client_id, aes_key, "ok.bin", b"through"))
            expect(conn, ResponseCode.FILE_RECEIVED, "§1 concurrency: with 50 stalled connections open")
    finally:
        for conn in stalled:
            conn.close()


# --- §2 registration and keys (1025-1027) ------------------------------------


@spec("§2 1025")
def test_s2_1025_register_answers_2100_and_stores_the_client(
    server: ServerProcess, unique_name: NameFactory
) -> None:
    name = unique_name()
    with RawConnection(server.address) as conn:
        # The header's client ID of a 1025 is ignored (§7): send garbage.
        conn.send(pack_request(os.urandom(16), RequestCode.REGISTER, encode_name(name)))
        payload = expect(conn, ResponseCode.REGISTERED, "§2 1025")
    assert len(payload) == 16, f"§2 1025: 2100 carries a 16-byte client ID, not {len(payload)} bytes"
    assert server.query("SELECT Name FROM clients WHERE ID = ?", (stored_id(server, payload),)) == [
        (name,)
    ], "§2 1025: the client is stored under the ID that 2100 sent"


@spec("§2 1025")
def test_s2_1025_client_ids_are_random_uuid4(server: ServerProcess, unique_name: NameFactory) -> None:
    with RawConnection(server.address) as conn:
        ids = [uuid.UUID(bytes=register(conn, unique_name())) for _ in range(3)]
    assert len(set(ids)) == 3, f"§2 1025: three registrations gave {ids}"
    assert all(client_id.version == 4 and client_id.variant == uuid.RFC_4122 for client_id in ids), (
        f"§2 1025: client IDs are random UUIDs (uuid4), got {[str(client_id) for client_id in ids]}"
    )


@spec("§2 1025")
def test_s2_1025_a_taken_name_gets_2101(server: ServerProcess, unique_name: NameFactory) -> None:
    name = unique_name()
    with RawConnection(server.address) as conn:
        register(conn, name)
        conn.send(pack_request(bytes(16), RequestCode.REGISTER, encode_name(name)))
        assert expect(conn, ResponseCode.REGISTRATION_FAILED, "§2 1025 taken name") == b"", (
            "§2 1025: 2101 has no payload"
        )


@spec("§2 1025")
def test_s2_1025_racing_registrations_of_one_name_give_exactly_one_2100(
    server: ServerProcess, unique_name: NameFactory
) -> None:
    name = unique_name()
    barrier = threading.Barrier(32)

    def race(_: int) -> int:
        with RawConnection(server.address) as conn:
            barrier.wait(READ_TIMEOUT)
            conn.send(pack_request(bytes(16), RequestCode.REGISTER, encode_name(name)))
            return conn.receive().code

    with ThreadPoolExecutor(32) as pool:
        codes = list(pool.map(race, range(32)))
    assert sorted(codes) == [2100] + [2101] * 31, (
        f"§2 1025: 32 racing 1025s of one name: {codes.count(2100)} got 2100, {codes.count(2101)} 2101"
    )
    assert server.query("SELECT count(*) FROM clients WHERE Name = ?", (name,)) == [(1,)]


@spec("§2 1026")
def test_s2_1026_public_key_is_stored_and_answered_with_an_aes_key(
    server: ServerProcess, unique_name: NameFactory
) -> None:
    name = unique_name()
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, name, server)
    [(public_key, stored_aes_key)] = server.query(
        "SELECT PublicKey, AESKey FROM clients WHERE ID = ?", (stored_id(server, client_id),)
    )
    assert public_key == export_public_key(RSA_KEY), "§2 1026: PublicKey holds the 160 bytes the client sent"
    assert stored_aes_key == aes_key and len(aes_key) == 16, "§2 1026: AESKey holds the 16-byte key sent"


@spec("§2 1026")
def test_s2_1026_every_key_exchange_makes_a_new_aes_key(
    server: ServerProcess, unique_name: NameFactory
) -> None:
    name = unique_name()
    with RawConnection(server.address) as conn:
        client_id, first = new_client(conn, name, server)
        second = exchange_keys(conn, client_id, name, server)
    assert first != second, "§2 1026: each 1026 generates a fresh AES key"


@spec("§2 1026")
def test_s2_1026_another_clients_name_gets_2107(server: ServerProcess, unique_name: NameFactory) -> None:
    with RawConnection(server.address) as conn:
        client_id = register(conn, unique_name())
        payload = encode_name(unique_name()) + export_public_key(RSA_KEY)
        conn.send(pack_request(client_id, RequestCode.PUBLIC_KEY, payload))
        expect(conn, ResponseCode.GENERAL_ERROR, "§2 1026: the name must match the client ID")


@spec("§2 1026")
def test_s2_1026_an_unknown_client_gets_2107(server: ServerProcess, unique_name: NameFactory) -> None:
    with RawConnection(server.address) as conn:
        payload = encode_name(unique_name()) + export_public_key(RSA_KEY)
        conn.send(pack_request(os.urandom(16), RequestCode.PUBLIC_KEY, payload))
        expect(conn, ResponseCode.GENERAL_ERROR, "§2 1026: the client ID must be registered")


@spec("§2 1027")
def test_s2_1027_reconnect_gives_a_new_aes_key(server: ServerProcess, unique_name: NameFactory) -> None:
    name = unique_name()
    with RawConnection(server.address) as conn:
        client_id, first = new_client(conn, name, server)
    with RawConnection(server.address) as conn:
        conn.send(pack_request(client_id, RequestCode.RECONNECT, encode_name(name)))
        reply = parse("§2 1027", AesKeyResponse.unpack, expect(conn, ResponseCode.RECONNECTED, "§2 1027"))
    assert reply.client_id == client_id, "§2 1027: 2105 starts with the client's ID"
    second = aes_key_of(reply.encrypted_key, client_id, server)
    assert second != first, "§2 1027: a reconnect generates a new AES key"
    assert server.query("SELECT AESKey FROM clients WHERE ID = ?", (stored_id(server, client_id),)) == [
        (second,)
    ], "§2 1027: the new AES key is stored"


@spec("§2 1027")
def test_s2_1027_reconnect_denied_echoes_the_client_id(
    server: ServerProcess, unique_name: NameFactory
) -> None:
    name = unique_name()
    cases = Cases("§2 1027: 2106 echoes the request's client ID")
    with RawConnection(server.address) as conn:
        client_id, _ = new_client(conn, name, server)
        for case, asked_id, asked_name in (
            ("unknown id", os.urandom(16), name),
            ("wrong name", client_id, unique_name()),
        ):
            with cases.case(case):
                conn.send(pack_request(asked_id, RequestCode.RECONNECT, encode_name(asked_name)))
                echoed = expect(conn, ResponseCode.RECONNECT_DENIED, "1027")
                assert echoed == asked_id, f"2106 carries {echoed.hex()}, not {asked_id.hex()}"
    cases.check()


@spec("§2 1027")
def test_s2_1027_reconnect_of_an_incomplete_registration_drops_it(
    server: ServerProcess, unique_name: NameFactory
) -> None:
    """2106 for a client that never sent its key; its 1025 on the same connection then succeeds (§7)."""
    name = unique_name()
    with RawConnection(server.address) as conn:
        client_id = register(conn, name)
        conn.send(pack_request(client_id, RequestCode.RECONNECT, encode_name(name)))
        assert expect(conn, ResponseCode.RECONNECT_DENIED, "§2 1027 without a key") == client_id
        conn.send(pack_request(bytes(16), RequestCode.REGISTER, encode_name(name)))
        new_id = expect(conn, ResponseCode.REGISTERED, "§2 1027: the dropped registration's name is free")
    assert new_id != client_id, "§2 1025: a new registration gets a new ID"
    assert server.query("SELECT count(*) FROM clients WHERE Name = ?", (name,)) == [(1,)]


@spec("§2 LastSeen")
def test_s2_last_seen_is_updated_on_every_request(server: ServerProcess, unique_name: NameFactory) -> None:
    name = unique_name()
    stale = "2000-01-01 00:00:00"
    with RawConnection(server.address) as conn:
        client_id, _ = new_client(conn, name, server)
    server.query("SELECT LastSeen FROM clients")  # the schema is there (else: not run)
    with closing(sqlite3.connect(server.db_path, timeout=READ_TIMEOUT)) as db, db:
        db.execute("UPDATE clients SET LastSeen = ? WHERE ID = ?", (stale, stored_id(server, client_id)))
    with RawConnection(server.address) as conn:
        conn.send(pack_request(client_id, RequestCode.RECONNECT, encode_name(name)))
        conn.receive()
    [(last_seen,)] = server.query(
        "SELECT LastSeen FROM clients WHERE ID = ?", (stored_id(server, client_id),)
    )
    assert last_seen not in (None, stale), "§2: LastSeen is updated on every request of a registered client"


# --- §2 files (1028-1031) ------------------------------------------------------


@spec("§2 1028")
def test_s2_1028_answers_2103_and_records_the_file(server: ServerProcess, unique_name: NameFactory) -> None:
    content = os.urandom(1000)
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, unique_name(), server)
        conn.send(send_file_request(client_id, aes_key, "data.bin", content))
        payload = expect(conn, ResponseCode.FILE_RECEIVED, "§2 1028")
    # Client ID(16), Content size(4) as received (encrypted), File name(255); the Cksum is §4's.
    expected = FILE_RECEIVED.pack(client_id, 1008, encode_name("data.bin"), 0)[:-4]
    assert len(payload) == FILE_RECEIVED.size, (
        f"§2 1028: 2103 has {FILE_RECEIVED.size} bytes, not {len(payload)}"
    )
    assert payload[:-4] == expected, (
        f"§2 1028: 2103 must be ID, encrypted size 1008, name; got {payload[:-4].rstrip(bytes(1)).hex()}"
    )
    rows = files_of(server, client_id)
    assert [(row[0], row[2]) for row in rows] == [("data.bin", 0)], (
        f"§2 1028: one record, FileName as sent, Verified false; got {rows}"
    )
    assert stored_file(server, rows[0][1]).is_file()


@spec("§2 1028")
def test_s2_1028_the_same_name_replaces_the_earlier_copy(
    server: ServerProcess, unique_name: NameFactory
) -> None:
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, unique_name(), server)
        send_file(conn, client_id, aes_key, "doc.txt", b"first version")
        send_file(conn, client_id, aes_key, "doc.txt", b"second")
    rows = files_of(server, client_id)
    assert len(rows) == 1, f"§2 1028: the same name replaces the earlier copy; records: {rows}"
    [(_, path_name, verified)] = rows
    assert verified == 0, "§2 1028: the new copy is not verified until its own 1029"
    assert stored_bytes(server, path_name) == b"second", "§2 1028: the stored file is the new copy"


@spec("§2 1029")
def test_s2_1029_marks_the_file_verified(server: ServerProcess, unique_name: NameFactory) -> None:
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, unique_name(), server)
        send_file(conn, client_id, aes_key, "a.txt", b"hello")
        conn.send(file_request(client_id, RequestCode.CRC_OK, "a.txt"))
        assert expect(conn, ResponseCode.ACK, "§2 1029") == client_id, "§2 1029: 2104 carries the client ID"
    assert [row[2] for row in files_of(server, client_id)] == [1], "§2 1029: Verified becomes true"


@spec("§2 1030")
def test_s2_1030_has_no_response_and_the_resend_is_served(
    server: ServerProcess, unique_name: NameFactory
) -> None:
    content = os.urandom(5000)
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, unique_name(), server)
        send_file(conn, client_id, aes_key, "f.bin", content)
        conn.send(file_request(client_id, RequestCode.CRC_RETRY, "f.bin"))
        if not conn.silent_and_open():
            try:
                got = f"got {conn.receive().code}"
            except AssertionError as err:
                got = str(err)
            pytest.fail(f"§2 1030: no response is sent, and the connection stays open; {got}", pytrace=False)
        conn.send(send_file_request(client_id, aes_key, "f.bin", content))
        assert file_received(conn, "§2 1030: the resend").file_name == "f.bin"
        conn.send(file_request(client_id, RequestCode.CRC_OK, "f.bin"))
        expect(conn, ResponseCode.ACK, "§2 1030: 1029 after the resend")


@spec("§2 1031")
def test_s2_1031_removes_the_file_and_its_record(server: ServerProcess, unique_name: NameFactory) -> None:
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, unique_name(), server)
        send_file(conn, client_id, aes_key, "gone.bin", b"x" * 100)
        [(_, path_name, _)] = files_of(server, client_id)
        stored = stored_file(server, path_name)
        conn.send(file_request(client_id, RequestCode.CRC_ABORT, "gone.bin"))
        assert expect(conn, ResponseCode.ACK, "§2 1031") == client_id, "§2 1031: 2104 carries the client ID"
    assert files_of(server, client_id) == [], "§2 1031: the record is removed"
    assert not stored.exists(), "§2 1031: the stored file is removed"


@spec("§2 file names")
def test_s2_file_names_are_echoed_and_recorded_as_sent(
    server: ServerProcess, unique_name: NameFactory
) -> None:
    cases = Cases("§2 file names: 2103 echoes, and FileName holds, the name as sent")
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, unique_name(), server)
        for file_name in ("C:\\Users\\me\\file.bin", "/home/me/file.bin", "dir/sub/x.bin", "with spaces.txt"):
            with cases.case(repr(file_name)):
                conn.send(send_file_request(client_id, aes_key, file_name, b"payload"))
                echoed = expect(conn, ResponseCode.FILE_RECEIVED, "1028")[20 : 20 + NAME_FIELD_SIZE]
                assert echoed == encode_name(file_name), f"2103 echoes {echoed.split(bytes(1))[0]!r}"
    recorded = sorted(str(row[0]) for row in files_of(server, client_id))
    with cases.case("FileName"):
        expected = sorted(
            ["C:\\Users\\me\\file.bin", "/home/me/file.bin", "dir/sub/x.bin", "with spaces.txt"]
        )
        assert recorded == expected, f"the records hold {recorded}"
    cases.check()


# --- §3 responses: sizes and 2107 ----------------------------------------------------


@spec("§3 sizes")
def test_s3_every_response_has_its_exact_payload_size(
    server: ServerProcess, unique_name: NameFactory
) -> None:
    name = unique_name()
    responses: list[RawResponse] = []
    with RawConnection(server.address) as conn:
        client_id = register(conn, name)
        conn.send(pack_request(bytes(16), RequestCode.REGISTER, encode_name(name)))
        responses.append(conn.receive())  # 2101
        conn.send(
            pack_request(client_id, RequestCode.PUBLIC_KEY, encode_name(name) + export_public_key(RSA_KEY))
        )
        responses.append(conn.receive())  # 2102
        aes_key = aes_key_of(responses[-1].payload[16:], client_id, server)
        conn.send(send_file_request(client_id, aes_key, "s.bin", b"sizes"))
        responses.append(conn.receive())  # 2103
        conn.send(file_request(client_id, RequestCode.CRC_OK, "s.bin"))
        responses.append(conn.receive())  # 2104
        conn.send(pack_request(client_id, RequestCode.RECONNECT, encode_name(name)))
        responses.append(conn.receive())  # 2105
        conn.send(pack_request(os.urandom(16), RequestCode.RECONNECT, encode_name(name)))
        responses.append(conn.receive())  # 2106
        conn.send(RequestHeader(bytes(16), 3, 9999, 0).pack())
        responses.append(conn.receive())  # 2107
    codes = [response.code for response in responses]
    assert codes == [2101, 2102, 2103, 2104, 2105, 2106, 2107], f"§3: unexpected response codes {codes}"
    wrong = {
        response.code: len(response.payload)
        for response in responses
        if len(response.payload) != RESPONSE_PAYLOAD_SIZES[ResponseCode(response.code)]
    }
    assert not wrong, f"§3 wire sizes: payload sizes {wrong} (code: bytes) are wrong"


@spec("§3 2107")
def test_s3_2107_for_malformed_requests(server: ServerProcess) -> None:
    cases = Cases("§3 2107 (no payload) for a malformed request")
    for case, code, payload in (
        ("1025 without a NUL", RequestCode.REGISTER, b"a" * 255),
        ("1025 with an empty name", RequestCode.REGISTER, bytes(255)),
        ("1025 with a short payload", RequestCode.REGISTER, encode_name("x")[:100]),
        ("1025 with trailing bytes", RequestCode.REGISTER, encode_name("x") + b"extra"),
        ("an unknown code", 9999, b""),
        ("an unknown code with a payload", 9999, b"z" * 1000),
    ):
        with cases.case(case), RawConnection(server.address) as conn:
            conn.send(RequestHeader(bytes(16), 3, code, len(payload)).pack() + payload)
            assert expect(conn, ResponseCode.GENERAL_ERROR, "") == b"", "2107 with a payload"
    cases.check()


@spec("§3 2107")
def test_s3_2107_keeps_the_connection_after_a_well_framed_request(
    server: ServerProcess, unique_name: NameFactory
) -> None:
    """After 2107 the connection stays usable if the request's payload was read whole (§3)."""
    refused = {
        "an unknown code with a payload": RequestHeader(bytes(16), 3, 9999, 1000).pack() + b"z" * 1000,
        "a 1025 without a NUL": pack_request(bytes(16), RequestCode.REGISTER, b"a" * 255),
        "a 1025 with trailing bytes": pack_request(bytes(16), RequestCode.REGISTER, encode_name("x") + b"!"),
        "a 1028 from an unknown client": send_file_request(os.urandom(16), os.urandom(16), "x.bin", b"?"),
    }
    with RawConnection(server.address) as conn:
        name = unique_name()
        client_id = register(conn, name)
        refused["a 1026 with a key that does not import"] = pack_request(
            client_id, RequestCode.PUBLIC_KEY, encode_name(name) + os.urandom(160)
        )
        for what, request in refused.items():
            conn.send(request)
            expect(conn, ResponseCode.GENERAL_ERROR, f"§3 2107 for {what}")
            conn.send(pack_request(bytes(16), RequestCode.REGISTER, encode_name(unique_name())))
            expect(conn, ResponseCode.REGISTERED, f"§3: the connection stays usable after 2107 for {what}")


@spec("§3 2107")
def test_s3_2107_for_a_public_key_that_does_not_import(
    server: ServerProcess, unique_name: NameFactory
) -> None:
    name = unique_name()
    with RawConnection(server.address) as conn:
        client_id = register(conn, name)
        conn.send(pack_request(client_id, RequestCode.PUBLIC_KEY, encode_name(name) + os.urandom(160)))
        expect(conn, ResponseCode.GENERAL_ERROR, "§3 2107 for a malformed public key")


@spec("§3 2107")
def test_s3_2107_for_a_file_from_an_unknown_client(server: ServerProcess) -> None:
    with RawConnection(server.address) as conn:
        conn.send(send_file_request(os.urandom(16), os.urandom(16), "x.bin", b"secret"))
        expect(conn, ResponseCode.GENERAL_ERROR, "§3 2107 for a request from an unknown client")


@spec("§3 2107")
def test_s3_2107_for_a_file_that_does_not_decrypt_and_nothing_is_kept(
    server: ServerProcess, unique_name: NameFactory
) -> None:
    with RawConnection(server.address) as conn:
        client_id, _ = new_client(conn, unique_name(), server)
        conn.send(send_file_request(client_id, os.urandom(16), "x.bin", b"wrong key" * 100))
        expect(conn, ResponseCode.GENERAL_ERROR, "§3 2107 for a decryption failure (bad padding)")
    assert files_of(server, client_id) == [], "§3: a file that does not decrypt leaves no record"


@spec("§3 2107")
def test_s3_2107_for_inconsistent_file_sizes(server: ServerProcess, unique_name: NameFactory) -> None:
    cases = Cases("§3 2107 for a 1028 whose content size is not 16·n and payload size - 259")
    for declared, actual in ((64, 48), (17, 17)):
        with cases.case(f"content size {declared}, {actual} bytes"), RawConnection(server.address) as conn:
            client_id, _ = new_client(conn, unique_name(), server)
            head = declared.to_bytes(4, "little") + encode_name("x.bin")
            conn.send(pack_request(client_id, RequestCode.SEND_FILE, head + os.urandom(actual)))
            expect(conn, ResponseCode.GENERAL_ERROR, "")
            assert files_of(server, client_id) == [], "a refused 1028 left a record"
    cases.check()


@spec("§3 framing")
def test_s3_a_truncated_header_closes_the_connection(server: ServerProcess, unique_name: NameFactory) -> None:
    with RawConnection(server.address) as conn:
        conn.send(bytes(10))
        conn.sock.shutdown(socket.SHUT_WR)
        rest = conn.rest_until_closed()
    # The version byte is §1 version's point, not this one's: any version, code 2107, no payload.
    assert rest == b"" or (len(rest) == 7 and rest[1:] == pack_response(ResponseCode.GENERAL_ERROR)[1:]), (
        f"§3 framing: a truncated header gets 2107 or nothing, then the close; got {rest.hex()}"
    )
    still_serves(server, unique_name)


@spec("§3 framing")
def test_s3_an_impossible_payload_size_gets_2107_and_closes(
    server: ServerProcess, unique_name: NameFactory
) -> None:
    """A 1025 claiming 4 GiB: answered before any of it arrives, nothing allocated."""
    with RawConnection(server.address) as conn:
        conn.send(RequestHeader(bytes(16), 3, RequestCode.REGISTER, 2**32 - 1).pack())
        expect(conn, ResponseCode.GENERAL_ERROR, "§3 framing: a 1025 with a payload size of 4 GiB")
        assert conn.is_closed(), "§3 framing: after an impossible payload size the connection is closed"
    still_serves(server, unique_name)


# --- §4 cryptography ---------------------------------------------------------------


@spec("§4 key wrap")
def test_s4_the_aes_key_is_wrapped_with_rsa_oaep_sha1(
    server: ServerProcess, unique_name: NameFactory
) -> None:
    name = unique_name()
    with RawConnection(server.address) as conn:
        client_id = register(conn, name)
        conn.send(
            pack_request(client_id, RequestCode.PUBLIC_KEY, encode_name(name) + export_public_key(RSA_KEY))
        )
        exchanged = parse("§2 1026", AesKeyResponse.unpack, expect(conn, ResponseCode.AES_KEY, "§2 1026"))
        conn.send(pack_request(client_id, RequestCode.RECONNECT, encode_name(name)))
        reconnected = parse(
            "§2 1027", AesKeyResponse.unpack, expect(conn, ResponseCode.RECONNECTED, "§2 1027")
        )
    for code, reply in ((2102, exchanged), (2105, reconnected)):
        try:
            key = unwrap_aes_key(RSA_KEY, reply.encrypted_key)
        except CryptoError as err:
            pytest.fail(
                f"§4 key wrap: the key in {code} is not RSA-OAEP-SHA1 for our key: {err}", pytrace=False
            )
        assert len(key) == 16, f"§4: the key in {code} is {len(key)} bytes, not AES-128's 16"


@spec("§4 cksum")
def test_s4_the_cksum_in_2103_is_posix_cksum_of_the_decrypted_file(
    server: ServerProcess, unique_name: NameFactory
) -> None:
    cases = Cases("§4 cksum: the vectors of PROTOCOL.md (POSIX cksum, not zlib's CRC-32)")
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, unique_name(), server)
        for case, content, expected in (
            ("empty", b"", 4294967295),
            ("a", b"a", 1220704766),
            ("123456789", b"123456789", 930766865),
            ("100000 zero bytes", bytes(100_000), 1260869142),
        ):
            with cases.case(case):
                conn.send(send_file_request(client_id, aes_key, "c.bin", content))
                payload = expect(conn, ResponseCode.FILE_RECEIVED, "1028")
                got = int.from_bytes(payload[-4:], "little")
                assert got == expected, f"expected {expected}, got {got}"
    cases.check()


@spec("§4 AES-CBC")
def test_s4_the_stored_file_is_the_decrypted_content(server: ServerProcess, unique_name: NameFactory) -> None:
    """AES-128-CBC, IV all zeros, PKCS#7: every padding length, 0 to a full block."""
    sizes = [0, 1, 15, 16, 17, 100_000]
    contents = {f"{size}.bin": os.urandom(size) for size in sizes}
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, unique_name(), server)
        for file_name, content in contents.items():
            send_file(conn, client_id, aes_key, file_name, content)
    stored = {str(row[0]): stored_bytes(server, row[1]) for row in files_of(server, client_id)}
    cases = Cases("§4 AES-CBC: the stored file is the decrypted content")
    for file_name, content in contents.items():
        with cases.case(f"{len(content)} bytes"):
            assert file_name in stored, "no record"
            got = stored[file_name]
            first_block_only = len(content) > 16 and got[16:] == content[16:]
            hint = " (only the first block differs: IV not zero?)" if first_block_only else ""
            assert got == content, f"{len(got)} bytes stored, not the {len(content)} sent{hint}"
    cases.check()


# --- §5 files around the server ------------------------------------------------------


@spec("§5 database")
def test_s5_the_database_has_the_tables_and_columns_of_the_protocol(
    server: ServerProcess, unique_name: NameFactory
) -> None:
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, unique_name(), server)
        send_file(conn, client_id, aes_key, "schema.bin", b"data")
    db_path = server.db_path
    assert db_path.is_file(), "§5 database: defensive.db beside server.py"
    with closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=READ_TIMEOUT)) as db:
        for table, columns, key in (
            ("clients", ["ID", "Name", "PublicKey", "LastSeen", "AESKey"], ["ID"]),
            ("files", ["ID", "FileName", "PathName", "Verified"], ["ID", "FileName"]),
        ):
            # Rows of (cid, name, type, notnull, default, pk): pk is the column's place in the key.
            info = db.execute(f"PRAGMA table_info({table})").fetchall()
            assert info, f"§5 database: no table {table}"
            found = {row[1].lower(): row[5] for row in info}
            missing = [column for column in columns if column.lower() not in found]
            assert not missing, f"§5 database: table {table} lacks {missing} (has {[row[1] for row in info]})"
            primary = [name for _, name in sorted((place, name) for name, place in found.items() if place)]
            assert primary == [column.lower() for column in key], (
                f"§5 database: the primary key of {table} is ({', '.join(key)}), not {primary}"
            )
            ids = db.execute(f"SELECT DISTINCT typeof(ID), length(ID) FROM {table}").fetchall()
            assert ids == [("blob", 16)], f"§5 database: {table}.ID is a 16-byte blob, not {ids}"


@spec("§5 database")
def test_s5_clients_survive_a_restart(server: ServerProcess, unique_name: NameFactory) -> None:
    name = unique_name()
    with RawConnection(server.address) as conn:
        client_id, _ = new_client(conn, name, server)
    server.restart()
    with RawConnection(server.address) as conn:
        conn.send(pack_request(client_id, RequestCode.RECONNECT, encode_name(name)))
        payload = expect(conn, ResponseCode.RECONNECTED, "§5 database: clients are loaded at start")
    assert payload[:16] == client_id, "§2 1027: 2105 starts with the client's ID"


@spec("§5 database")
def test_s5_sql_metacharacters_in_a_name_are_plain_text(server: ServerProcess) -> None:
    name = f"x'); DROP TABLE clients; -- {uuid.uuid4().hex[:8]}"
    with RawConnection(server.address) as conn:
        client_id = register(conn, name)
        conn.send(pack_request(bytes(16), RequestCode.REGISTER, encode_name(name)))
        expect(conn, ResponseCode.REGISTRATION_FAILED, "§5 database: the name was stored as it is")
    assert server.query("SELECT Name FROM clients WHERE ID = ?", (stored_id(server, client_id),)) == [(name,)]


@spec("§5 PathName")
def test_s5_path_name_is_relative_to_the_server_folder(
    server: ServerProcess, unique_name: NameFactory
) -> None:
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, unique_name(), server)
        send_file(conn, client_id, aes_key, "where.bin", b"here")
    [(_, path_name, _)] = files_of(server, client_id)
    assert isinstance(path_name, str) and path_name, f"§5 PathName: {path_name!r} is not a path"
    relative = PurePath(path_name.replace("\\", "/"))
    assert not relative.is_absolute() and ".." not in relative.parts, (
        f"§5 PathName: a path relative to the server folder, inside it, not {path_name!r}"
    )
    assert (server.data_dir / relative).is_file(), (
        f"§5 PathName: no file at {path_name!r} in the server folder"
    )


@spec("§5 storage")
def test_s5_file_names_stay_inside_the_storage_folder(
    server: ServerProcess, unique_name: NameFactory
) -> None:
    """2103 (the last path component kept, §7) or 2107: either way nothing outside the storage."""
    tag = f"escape-{uuid.uuid4().hex[:8]}"
    names = ["../{tag}", "../../{tag}", "/tmp/{tag}", "..\\..\\{tag}", "server.py", "port.info"]
    names += ["defensive.db", "'; DROP TABLE files; --", ".", "..", "dir/"]
    root = server.data_dir.parent  # this test's temporary folder: the data (or submission) folder's parent
    protected = {
        path: path.read_bytes()
        for path in server.server_dir.glob("*")
        if path.is_file() and not _server_own(path)
    }
    cases = Cases("§5 storage: a file name must not reach outside the storage folder")
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, unique_name(), server)
    for template in names:
        file_name = template.format(tag=tag)
        with cases.case(repr(file_name)), RawConnection(server.address) as conn:
            before = files_under(root)
            conn.send(send_file_request(client_id, aes_key, file_name, b"payload"))
            code = conn.receive().code
            assert code in (2103, 2107), f"got {code}, not 2103 or 2107"
            stored: set[Path] = set()
            if code == 2103:
                [path_name] = [row[1] for row in files_of(server, client_id) if row[0] == file_name]
                path = stored_file(server, path_name).resolve()
                assert (
                    server.data_dir.resolve() in path.parents and path.parent != server.server_dir.resolve()
                ), f"stored at {path}, outside a storage folder"
                stored = {path}
            # Anything new beside server.py, or outside its folder, escaped; subfolders may hold
            # what the server likes (a storage folder, a backup of it).
            data_dir = server.data_dir.resolve()
            escaped = [
                path
                for path in files_under(root) - before - stored
                if not _server_own(path) and (data_dir not in path.parents or path.parent == data_dir)
            ]
            assert not escaped, f"created {[str(path) for path in escaped]}"
            assert not Path("/tmp", tag).exists(), "reached /tmp"
            changed = [path.name for path, content in protected.items() if path.read_bytes() != content]
            assert not changed, f"overwrote {changed}"
    cases.check()


@spec("§5 storage")
def test_s5_two_names_with_one_base_name_keep_separate_files(
    server: ServerProcess, unique_name: NameFactory
) -> None:
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, unique_name(), server)
        for name, content in (("a/x.bin", b"from a"), ("b/x.bin", b"from b")):
            send_file(conn, client_id, aes_key, name, content)
    rows = {row[0]: stored_bytes(server, row[1]) for row in files_of(server, client_id)}
    assert rows == {"a/x.bin": b"from a", "b/x.bin": b"from b"}, (
        f"§5 storage: a/x.bin and b/x.bin are two records with two files; got {rows}"
    )


@spec("§5 storage")
def test_s5_two_clients_with_one_file_name_keep_separate_files(
    server: ServerProcess, unique_name: NameFactory
) -> None:
    contents = {}
    for content in (b"client one", b"client two"):
        with RawConnection(server.address) as conn:
            client_id, aes_key = new_client(conn, unique_name(), server)
            send_file(conn, client_id, aes_key, "same.txt", content)
            contents[client_id] = content
    for client_id, content in contents.items():
        [(_, path_name, _)] = files_of(server, client_id)
        assert stored_bytes(server, path_name) == content, "§5 storage: one client's file replaced another's"


# --- §6 the client's flow, with a real client program (client.py or --client-exe) ------------


def work_folder(tmp_path: Path, address: tuple[str, int], name: str, content: bytes) -> Path:
    """A client's working folder: transfer.info (§5) and the file it names."""
    folder = tmp_path / "client"
    folder.mkdir(exist_ok=True)
    (folder / "file.bin").write_bytes(content)
    host, port = address
    (folder / "transfer.info").write_text(f"{host}:{port}\n{name}\nfile.bin\n", newline="\n")
    return folder


def me_info(folder: Path, run: ClientRun | None = None) -> tuple[str, bytes]:
    """(name, client ID) from the me.info a client wrote (§5)."""
    path = folder / "me.info"
    assert path.is_file(), "§6: the client wrote no me.info" + (f": {run.tail()}" if run else "")
    lines = path.read_text("ascii", "replace").splitlines()
    assert len(lines) >= 3, f"§5 me.info: a name, a UUID and a key, not {len(lines)} lines"
    return lines[0].strip(), bytes.fromhex(lines[1].strip())


def write_me_info(folder: Path, name: str, client_id: bytes) -> None:
    """A me.info as a client registered elsewhere has it: PKCS#8 DER in Base64, 72 a line."""
    key_text = base64.b64encode(generate_rsa_key().export_key("DER", pkcs=8)).decode("ascii")
    key_lines = "\n".join(textwrap.wrap(key_text, 72))
    (folder / "me.info").write_text(f"{name}\n{client_id.hex()}\n{key_lines}\n", newline="\n")
    (folder / "priv.key").write_text(f"{key_lines}\n", newline="\n")


def run_to_success(program: ClientProgram, folder: Path, what: str) -> None:
    run = program.run(folder)
    assert run.returncode == 0, f"§6 {what}: {program.description} exited with {run.returncode}: {run.tail()}"


def assert_verified_copy(server: ServerProcess, client_id: bytes, content: bytes) -> None:
    rows = files_of(server, client_id)
    assert [(row[0], row[2]) for row in rows] == [("file.bin", 1)], f"§6: one verified file.bin; got {rows}"
    assert stored_bytes(server, rows[0][1]) == content, "§6: the stored file is the one sent"


@spec("§6 register")
def test_s6_a_first_run_registers_and_sends_the_file(
    server: ServerProcess, client_program: ClientProgram, unique_name: NameFactory, tmp_path: Path
) -> None:
    name, content = unique_name(), os.urandom(100_000)
    folder = work_folder(tmp_path, server.address, name, content)
    run_to_success(client_program, folder, "register and send")
    written_name, client_id = me_info(folder)
    assert written_name == name, f"§5 me.info: line 1 is the name, {name!r}, not {written_name!r}"
    assert server.query("SELECT Name FROM clients WHERE ID = ?", (stored_id(server, client_id),)) == [(name,)]
    assert_verified_copy(server, client_id, content)


@spec("§6 reconnect")
def test_s6_a_second_run_reconnects(
    server: ServerProcess, client_program: ClientProgram, unique_name: NameFactory, tmp_path: Path
) -> None:
    name, content = unique_name(), os.urandom(30_000)
    folder = work_folder(tmp_path, server.address, name, content)
    run_to_success(client_program, folder, "first run")
    _, client_id = me_info(folder)
    run_to_success(client_program, folder, "second run (reconnect)")
    assert me_info(folder)[1] == client_id, "§6: a reconnecting client keeps its ID"
    assert server.query("SELECT ID FROM clients WHERE Name = ?", (name,)) == [(stored_id(server, client_id),)]
    assert_verified_copy(server, client_id, content)


@spec("§6 reconnect denied")
def test_s6_a_denied_reconnect_registers_anew(
    server: ServerProcess, client_program: ClientProgram, unique_name: NameFactory, tmp_path: Path
) -> None:
    """me.info from another server: 1027 gets 2106, and the client registers (1025) instead."""
    name, content = unique_name(), os.urandom(10_000)
    folder = work_folder(tmp_path, server.address, name, content)
    unknown_id = uuid.uuid4().bytes
    write_me_info(folder, name, unknown_id)
    run_to_success(client_program, folder, "reconnect denied, register anew")
    _, client_id = me_info(folder)
    assert client_id != unknown_id, "§6: after 2106 the client registers and writes its new ID"
    assert server.query("SELECT ID FROM clients WHERE Name = ?", (name,)) == [(stored_id(server, client_id),)]
    assert_verified_copy(server, client_id, content)


@spec("§6 resend")
def test_s6_a_corrupted_transfer_is_resent(
    server: ServerProcess,
    client_program: ClientProgram,
    corrupting_proxy: ProxyFactory,
    unique_name: NameFactory,
    tmp_path: Path,
) -> None:
    """Two corrupted transfers: 1030 twice, the third attempt verifies."""
    content = os.urandom(70_000)
    folder = work_folder(tmp_path, corrupting_proxy(server, corrupt=2), unique_name(), content)
    run_to_success(client_program, folder, "two checksum mismatches, then a match")
    assert_verified_copy(server, me_info(folder)[1], content)


@spec("§6 give up")
def test_s6_the_fourth_mismatch_gives_up(
    server: ServerProcess,
    client_program: ClientProgram,
    corrupting_proxy: ProxyFactory,
    unique_name: NameFactory,
    tmp_path: Path,
) -> None:
    """Every transfer corrupted: 1030 three times, then 1031; the server keeps nothing."""
    folder = work_folder(tmp_path, corrupting_proxy(server, corrupt=None), unique_name(), os.urandom(20_000))
    run = client_program.run(folder)
    assert run.returncode != 0, f"§6 give up: the client reports failure (status != 0): {run.tail()}"
    assert files_of(server, me_info(folder, run)[1]) == [], (
        "§2 1031: the record of the failed file is removed"
    )


# --- §7 interoperability -------------------------------------------------------------


@spec("§7 file names")
def test_s7_a_file_name_with_garbage_after_its_nul(server: ServerProcess, unique_name: NameFactory) -> None:
    field = (b"report.pdf\0" + b"\xcc" * 40).ljust(NAME_FIELD_SIZE, b"\xcc")
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, unique_name(), server)
        ciphertext = encrypt(aes_key, b"%PDF")
        payload = len(ciphertext).to_bytes(4, "little") + field + ciphertext
        conn.send(pack_request(client_id, RequestCode.SEND_FILE, payload))
        reply = expect(conn, ResponseCode.FILE_RECEIVED, "§7 file names: garbage after the NUL")
    echoed = reply[20 : 20 + NAME_FIELD_SIZE].split(b"\0", 1)[0]
    assert echoed == b"report.pdf", f"§7 file names: 2103 echoes the text before the NUL, got {echoed!r}"
    assert [row[0] for row in files_of(server, client_id)] == ["report.pdf"], "§7: FileName is report.pdf"


@spec("§7 reconnect denied")
def test_s7_after_2106_a_1025_on_the_same_connection(server: ServerProcess, unique_name: NameFactory) -> None:
    name = unique_name()
    with RawConnection(server.address) as conn:
        conn.send(pack_request(os.urandom(16), RequestCode.RECONNECT, encode_name(name)))
        expect(conn, ResponseCode.RECONNECT_DENIED, "§7: 1027 of a client this server does not know")
        client_id = register(conn, name)
        exchange_keys(conn, client_id, name, server)


@spec("§7 vanishing peer")
def test_s7_a_peer_vanishing_mid_file_leaves_nothing(server: ServerProcess, unique_name: NameFactory) -> None:
    def left_behind() -> list[Path]:
        return [path for path in files_under(server.data_dir) - before if not _server_own(path)]

    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, unique_name(), server)
        before = files_under(server.data_dir)
        request = send_file_request(client_id, aes_key, "half.bin", os.urandom(1_000_000))
        conn.send(request[: len(request) // 2])
        # Close once the server is receiving (a file of its own appears), or after a moment if
        # it keeps the content elsewhere: a close before it read anything would test nothing.
        wait_until(left_behind, timeout=2.0)
    # The server notices the close in its own time (a slow one may only now create its file):
    # each condition is waited for, boundedly, rather than looked at once.
    still_serves(server, unique_name)
    assert wait_until(lambda: not files_of(server, client_id)), "§7: a half-received file leaves no record"
    assert wait_until(lambda: not left_behind()), f"§7: a half-received file leaves no file: {left_behind()}"


# --- our decisions where the protocol is silent (README), for ours only ------------------


@pytest.mark.usefixtures("ours")
def test_ours_closes_the_connection_after_an_inconsistent_file_size(
    server: ServerProcess, unique_name: NameFactory
) -> None:
    for declared, actual in ((64, 48), (17, 17)):
        with RawConnection(server.address) as conn:
            client_id, _ = new_client(conn, unique_name())
            head = declared.to_bytes(4, "little") + encode_name("x.bin")
            conn.send(pack_request(client_id, RequestCode.SEND_FILE, head + os.urandom(actual)))
            expect(conn, ResponseCode.GENERAL_ERROR, "inconsistent 1028")
            assert conn.is_closed()


@pytest.mark.usefixtures("ours")
def test_ours_refuses_file_names_without_a_base_name(server: ServerProcess, unique_name: NameFactory) -> None:
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, unique_name())
        for file_name in (".", "..", "dir/", "a\\..\\"):
            conn.send(send_file_request(client_id, aes_key, file_name, b"data"))
            expect(conn, ResponseCode.GENERAL_ERROR, f"unsafe file name {file_name!r}")
    assert files_of(server, client_id) == []


@pytest.mark.usefixtures("ours")
def test_ours_answers_1029_of_an_unknown_file_with_2107(
    server: ServerProcess, unique_name: NameFactory
) -> None:
    with RawConnection(server.address) as conn:
        client_id, _ = new_client(conn, unique_name())
        conn.send(file_request(client_id, RequestCode.CRC_OK, "never-sent.bin"))
        expect(conn, ResponseCode.GENERAL_ERROR, "1029 of an unknown file")
