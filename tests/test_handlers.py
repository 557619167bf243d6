"""handlers.py on its own: each request code's handler, called with a payload from memory.

No socket and no server process: a real Database and FileStore on `tmp_path`, the payload
in a BytesIO behind the same PayloadReader the server uses. Among the fast tests mutmut
runs (docs/testing.md); the same behaviours are tested end to end in the grading checks (grading/checks/).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import random
import re
from pathlib import Path
from typing import Any

import pytest
from Crypto.Cipher import AES

import handlers
from crypto_utils import ZERO_IV, cksum, encrypt, export_public_key, generate_rsa_key, unwrap_aes_key
from database import Database, LimitReached, Limits
from forgeries import DecryptionFailures
from handlers import CHUNK_SIZE, HANDLERS, RequestContext
from protocol import (
    HEAD_ONLY_PAYLOAD_SIZE,
    AesKeyResponse,
    ClientIdResponse,
    DecryptionFailed,
    FileReceivedResponse,
    FramingError,
    KeyAlreadySet,
    MalformedPayload,
    OverLimit,
    RequestCode,
    RequestError,
    RequestHeader,
    ResponseCode,
    SendFileHead,
    Throttled,
    UnknownClient,
    UnknownFile,
    encode_name,
)
from storage import FileStore, StorageError
from streams import PayloadReader, RateGuard

RSA_KEY = generate_rsa_key()
PUBLIC_KEY = export_public_key(RSA_KEY)


def forged(key: bytes, size: int) -> bytes:
    """`size` bytes of ciphertext under `key` whose plaintext is all zero bytes: a last byte of
    0 is never valid PKCS#7 padding, so it fails to decrypt every time (no 1-in-256 luck)."""
    cipher = AES.new(key, AES.MODE_CBC, iv=ZERO_IV)
    ciphertext: bytes = cipher.encrypt(bytes(size))
    return ciphertext


class Server:
    """The state a handler works on, and a way to call one as the connection loop does."""

    def __init__(self, data_dir: Path, limits: Limits | None = None) -> None:
        self.db = Database(data_dir / "defensive.db", limits)
        self.store = FileStore(data_dir, min_free_space=0)

    def context(
        self, code: int, client_id: bytes, payload: bytes, payload_size: int | None = None
    ) -> RequestContext:
        size = len(payload) if payload_size is None else payload_size
        header = RequestHeader(client_id, 3, code, size)
        reader = PayloadReader(io.BufferedReader(io.BytesIO(payload)), size, RateGuard(0, 60))
        return RequestContext(header, reader, self.db, self.store)

    def call(self, code: RequestCode, client_id: bytes, payload: bytes) -> tuple[ResponseCode, bytes] | None:
        context = self.context(code, client_id, payload)
        reply = HANDLERS[code](context)
        assert context.payload.unread == 0, "a handler reads its payload whole"
        return reply

    def refused(
        self, code: RequestCode, client_id: bytes, payload: bytes, kind: type[RequestError]
    ) -> RequestError:
        """The handler's refusal, of the class that says what it is (protocol.py's hierarchy)."""
        with pytest.raises(kind) as caught:
            HANDLERS[code](self.context(code, client_id, payload))
        assert caught.value.response_code == ResponseCode.GENERAL_ERROR
        return caught.value

    def registered(self, name: str = "alice") -> tuple[bytes, bytes]:
        """A client that completed its key exchange: (client ID, AES key)."""
        reply = self.call(RequestCode.REGISTER, bytes(16), encode_name(name))
        assert reply is not None and reply[0] == ResponseCode.REGISTERED
        client_id = reply[1]
        reply = self.call(RequestCode.PUBLIC_KEY, client_id, encode_name(name) + PUBLIC_KEY)
        assert reply is not None and reply[0] == ResponseCode.AES_KEY
        return client_id, unwrap_aes_key(RSA_KEY, AesKeyResponse.unpack(reply[1]).encrypted_key)

    def send_file(self, client_id: bytes, aes_key: bytes, file_name: str, content: bytes) -> Any:
        ciphertext = encrypt(aes_key, content)
        return self.call(
            RequestCode.SEND_FILE, client_id, SendFileHead(len(ciphertext), file_name).pack() + ciphertext
        )

    def stored(self) -> list[Path]:
        return sorted(path for path in self.store.root.rglob("*") if path.is_file())


@pytest.fixture
def server(tmp_path: Path) -> Server:
    return Server(tmp_path)


def test_every_request_code_has_its_handler() -> None:
    expected = {
        RequestCode.REGISTER: handlers.handle_register,
        RequestCode.PUBLIC_KEY: handlers.handle_public_key,
        RequestCode.RECONNECT: handlers.handle_reconnect,
        RequestCode.SEND_FILE: handlers.handle_send_file,
        RequestCode.CRC_OK: handlers.handle_crc_ok,
        RequestCode.CRC_RETRY: handlers.handle_crc_retry,
        RequestCode.CRC_ABORT: handlers.handle_crc_abort,
    }
    assert expected == HANDLERS


# --- 1025 ------------------------------------------------------------------------------


def test_1025_registers_a_new_client_and_ignores_the_header_id(server: Server) -> None:
    reply = server.call(RequestCode.REGISTER, b"\xff" * 16, encode_name("alice"))
    assert reply is not None
    code, payload = reply
    assert code == ResponseCode.REGISTERED and len(payload) == 16 and payload != b"\xff" * 16
    record = server.db.get_client(payload)
    assert record is not None and record.name == "alice" and record.public_key is None


def test_1025_of_a_taken_name_is_2101(server: Server) -> None:
    server.call(RequestCode.REGISTER, bytes(16), encode_name("alice"))
    assert server.call(RequestCode.REGISTER, bytes(16), encode_name("alice")) == (
        ResponseCode.REGISTRATION_FAILED,
        b"",
    )
    assert server.db.count_clients() == 1


# --- 1026 ------------------------------------------------------------------------------


def test_1026_stores_the_key_and_answers_with_a_wrapped_aes_key(server: Server) -> None:
    client_id, aes_key = server.registered()
    record = server.db.get_client(client_id)
    assert record is not None and record.public_key == PUBLIC_KEY and record.aes_key == aes_key
    assert len(aes_key) == 16


def test_1026_answer_starts_with_the_client_id(server: Server) -> None:
    reply = server.call(RequestCode.REGISTER, bytes(16), encode_name("bob"))
    assert reply is not None
    client_id = reply[1]
    reply = server.call(RequestCode.PUBLIC_KEY, client_id, encode_name("bob") + PUBLIC_KEY)
    assert reply is not None and reply[0] == ResponseCode.AES_KEY
    assert AesKeyResponse.unpack(reply[1]).client_id == client_id


@pytest.mark.parametrize("who", ["unknown id", "other name"])
def test_1026_of_an_unknown_client_or_name_is_refused(server: Server, who: str) -> None:
    client_id, _ = server.registered("alice")
    header_id, name = (bytes(16), "alice") if who == "unknown id" else (client_id, "mallory")
    error = server.refused(RequestCode.PUBLIC_KEY, header_id, encode_name(name) + PUBLIC_KEY, UnknownClient)
    assert not error.closes_connection


def test_1026_with_a_different_key_for_a_keyed_client_is_refused_and_changes_nothing(server: Server) -> None:
    client_id, aes_key = server.registered()
    other = export_public_key(generate_rsa_key())
    error = server.refused(RequestCode.PUBLIC_KEY, client_id, encode_name("alice") + other, KeyAlreadySet)
    assert "different public key" in str(error)
    record = server.db.get_client(client_id)
    assert record is not None and record.public_key == PUBLIC_KEY and record.aes_key == aes_key


def test_1026_repeated_with_the_same_key_gives_a_new_aes_key(server: Server) -> None:
    client_id, first = server.registered()
    reply = server.call(RequestCode.PUBLIC_KEY, client_id, encode_name("alice") + PUBLIC_KEY)
    assert reply is not None and reply[0] == ResponseCode.AES_KEY
    second = unwrap_aes_key(RSA_KEY, AesKeyResponse.unpack(reply[1]).encrypted_key)
    record = server.db.get_client(client_id)
    assert second != first and record is not None and record.aes_key == second


def test_1026_with_a_key_that_does_not_import_is_refused_and_stores_nothing(server: Server) -> None:
    reply = server.call(RequestCode.REGISTER, bytes(16), encode_name("alice"))
    assert reply is not None
    error = server.refused(
        RequestCode.PUBLIC_KEY, reply[1], encode_name("alice") + bytes(160), MalformedPayload
    )
    assert str(error) == "public key is not a valid RSA key", "the reason, for the log"
    record = server.db.get_client(reply[1])
    assert record is not None and record.public_key is None and record.aes_key is None


# --- 1027 ------------------------------------------------------------------------------


def test_1027_of_a_keyed_client_gives_a_new_aes_key(server: Server) -> None:
    client_id, first = server.registered()
    reply = server.call(RequestCode.RECONNECT, client_id, encode_name("alice"))
    assert reply is not None and reply[0] == ResponseCode.RECONNECTED
    response = AesKeyResponse.unpack(reply[1])
    second = unwrap_aes_key(RSA_KEY, response.encrypted_key)
    record = server.db.get_client(client_id)
    assert response.client_id == client_id and second != first
    assert record is not None and record.aes_key == second


@pytest.mark.parametrize("who", ["unknown id", "other name"])
def test_1027_of_an_unknown_client_or_name_is_2106_with_the_header_id(server: Server, who: str) -> None:
    client_id, aes_key = server.registered("alice")
    header_id, name = (os.urandom(16), "alice") if who == "unknown id" else (client_id, "mallory")
    assert server.call(RequestCode.RECONNECT, header_id, encode_name(name)) == (
        ResponseCode.RECONNECT_DENIED,
        header_id,
    )
    record = server.db.get_client(client_id)
    assert record is not None and record.aes_key == aes_key


def test_1027_of_an_incomplete_registration_is_2106_and_frees_the_name(server: Server) -> None:
    reply = server.call(RequestCode.REGISTER, bytes(16), encode_name("alice"))
    assert reply is not None
    client_id = reply[1]
    assert server.call(RequestCode.RECONNECT, client_id, encode_name("alice")) == (
        ResponseCode.RECONNECT_DENIED,
        client_id,
    )
    assert server.db.get_client(client_id) is None
    again = server.call(RequestCode.REGISTER, bytes(16), encode_name("alice"))
    assert again is not None and again[0] == ResponseCode.REGISTERED


def test_1027_with_a_stored_key_that_does_not_import_is_2106_and_keeps_the_client(server: Server) -> None:
    client_id, aes_key = server.registered()
    server.db._execute("UPDATE clients SET PublicKey = ? WHERE ID = ?", (bytes(160), client_id))
    assert server.call(RequestCode.RECONNECT, client_id, encode_name("alice")) == (
        ResponseCode.RECONNECT_DENIED,
        client_id,
    )
    record = server.db.get_client(client_id)
    assert record is not None and record.aes_key == aes_key


# --- 1028 ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size",
    [0, 1, 15, 16, 17, CHUNK_SIZE - 17, CHUNK_SIZE - 16, CHUNK_SIZE - 1, CHUNK_SIZE, 2 * CHUNK_SIZE + 5],
)
def test_1028_stores_the_decrypted_file_and_answers_its_cksum(server: Server, size: int) -> None:
    """Sizes around the AES block and the server's chunk: the padding block may fall alone in
    the last chunk (CHUNK_SIZE - 16 .. CHUNK_SIZE - 1 bytes of plaintext)."""
    client_id, aes_key = server.registered()
    content = random.Random(size).randbytes(size)
    reply = server.send_file(client_id, aes_key, "dir/x.bin", content)
    assert reply is not None and reply[0] == ResponseCode.FILE_RECEIVED
    response = FileReceivedResponse.unpack(reply[1])
    assert response == FileReceivedResponse(
        client_id, len(encrypt(aes_key, content)), "dir/x.bin", cksum(content)
    )
    record = server.db.get_file(client_id, "dir/x.bin")
    assert record is not None and not record.verified
    # storage/<client hex>/<upload ID>-<base name> (storage.py)
    assert re.fullmatch(rf"storage/{client_id.hex()}/[0-9a-f]{{16}}-x\.bin", record.path_name)
    assert (server.store.data_dir / record.path_name).read_bytes() == content
    assert server.stored() == [server.store.data_dir / record.path_name]


def test_1028_of_the_same_name_replaces_the_file_and_its_verification(server: Server) -> None:
    client_id, aes_key = server.registered()
    server.send_file(client_id, aes_key, "x.bin", b"first")
    server.call(RequestCode.CRC_OK, client_id, encode_name("x.bin"))
    server.send_file(client_id, aes_key, "x.bin", b"second")
    record = server.db.get_file(client_id, "x.bin")
    assert record is not None and not record.verified
    assert (server.store.data_dir / record.path_name).read_bytes() == b"second"
    assert len(server.stored()) == 1


def test_1028_that_does_not_decrypt_is_refused_and_keeps_nothing(server: Server) -> None:
    client_id, aes_key = server.registered()
    ciphertext = forged(aes_key, CHUNK_SIZE + 112)
    payload = SendFileHead(len(ciphertext), "x.bin").pack() + ciphertext
    error = server.refused(RequestCode.SEND_FILE, client_id, payload, DecryptionFailed)
    assert "padding" in str(error)
    assert server.db.get_file(client_id, "x.bin") is None
    assert server.stored() == [], "no record, no stored file and no .part file"


@pytest.mark.parametrize("state", ["unknown", "without a key"])
def test_1028_of_a_client_without_an_aes_key_is_refused(server: Server, state: str) -> None:
    client_id = bytes(16)
    if state == "without a key":
        reply = server.call(RequestCode.REGISTER, bytes(16), encode_name("alice"))
        assert reply is not None
        client_id = reply[1]
    ciphertext = encrypt(bytes(16), b"content")
    error = server.refused(
        RequestCode.SEND_FILE, client_id, SendFileHead(16, "x.bin").pack() + ciphertext, UnknownClient
    )
    assert "not registered" in str(error)
    assert server.stored() == []


def test_1028_whose_head_disagrees_with_the_header_closes_the_connection(server: Server) -> None:
    client_id, aes_key = server.registered()
    ciphertext = encrypt(aes_key, b"content")
    payload = SendFileHead(32, "x.bin").pack() + ciphertext
    context = server.context(RequestCode.SEND_FILE, client_id, payload)
    with pytest.raises(FramingError) as caught:
        handlers.handle_send_file(context)
    assert caught.value.closes_connection and not context.payload.framed
    assert server.stored() == []


def test_1028_without_room_on_the_disk_is_refused_before_its_content(tmp_path: Path) -> None:
    server = Server(tmp_path)
    client_id, aes_key = server.registered()
    server.store.min_free_space = 1 << 62
    ciphertext = encrypt(aes_key, b"content")
    context = server.context(RequestCode.SEND_FILE, client_id, SendFileHead(16, "x.bin").pack() + ciphertext)
    with pytest.raises(StorageError, match="disk space"):
        handlers.handle_send_file(context)
    assert context.payload.unread == 16, "the content is left unread (the loop decides what to skip)"
    assert server.stored() == []


def test_1028_that_fails_to_write_is_refused_and_keeps_nothing(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    client_id, aes_key = server.registered()

    def full_disk(out: object, data: memoryview) -> None:
        raise StorageError("cannot write the file: No space left on device")

    monkeypatch.setattr(handlers, "_write_all", full_disk)
    ciphertext = encrypt(aes_key, b"content")
    error = server.refused(
        RequestCode.SEND_FILE, client_id, SendFileHead(16, "x.bin").pack() + ciphertext, StorageError
    )
    assert "cannot write" in str(error)
    assert server.db.get_file(client_id, "x.bin") is None and server.stored() == []


class ShortWrites(io.RawIOBase):
    """A file whose writes take at most `piece` bytes (as a pipe or a nearly full disk does)."""

    def __init__(self, piece: int, fail_after: int | None = None) -> None:
        self.piece = piece
        self.fail_after = fail_after
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self.fail_after is not None and len(self.data) >= self.fail_after:
            if self.fail_after == 0:
                return 0
            raise OSError(28, "No space left on device")
        taken = bytes(data[: self.piece])
        self.data += taken
        return len(taken)


def test_write_all_goes_on_after_short_writes() -> None:
    out = ShortWrites(7)
    data = os.urandom(100)
    handlers._write_all(out, memoryview(data))  # type: ignore[arg-type]
    assert bytes(out.data) == data


@pytest.mark.parametrize(("fail_after", "message"), [(0, "no progress"), (14, "No space left on device")])
def test_write_all_takes_a_write_that_stops_for_a_failure(fail_after: int, message: str) -> None:
    with pytest.raises(StorageError, match=f"cannot write the file: {message}"):
        handlers._write_all(ShortWrites(7, fail_after), memoryview(bytes(100)))  # type: ignore[arg-type]


# --- 1029, 1030, 1031 -------------------------------------------------------------------


def test_1029_verifies_the_file(server: Server) -> None:
    client_id, aes_key = server.registered()
    server.send_file(client_id, aes_key, "x.bin", b"content")
    assert server.call(RequestCode.CRC_OK, client_id, encode_name("x.bin")) == (
        ResponseCode.ACK,
        ClientIdResponse(client_id).pack(),
    )
    record = server.db.get_file(client_id, "x.bin")
    assert record is not None and record.verified


def test_1029_of_an_unknown_file_or_client_is_refused(server: Server) -> None:
    client_id, aes_key = server.registered()
    server.send_file(client_id, aes_key, "x.bin", b"content")
    error = server.refused(RequestCode.CRC_OK, client_id, encode_name("y.bin"), UnknownFile)
    assert "unknown file" in str(error)
    error = server.refused(RequestCode.CRC_OK, bytes(16), encode_name("x.bin"), UnknownClient)
    assert "not registered" in str(error)
    record = server.db.get_file(client_id, "x.bin")
    assert record is not None and not record.verified


def test_1030_has_no_response_and_keeps_the_file(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="handlers")
    client_id, aes_key = server.registered()
    server.send_file(client_id, aes_key, "x.bin", b"content")
    assert server.call(RequestCode.CRC_RETRY, client_id, encode_name("x.bin")) is None
    assert server.db.get_file(client_id, "x.bin") is not None and len(server.stored()) == 1
    assert "checksum mismatch on 'x.bin'" in caplog.text
    assert "not registered" in str(
        server.refused(RequestCode.CRC_RETRY, bytes(16), encode_name("x.bin"), UnknownClient)
    )


def test_1031_removes_the_file_and_its_record(server: Server) -> None:
    client_id, aes_key = server.registered()
    server.send_file(client_id, aes_key, "x.bin", b"content")
    server.send_file(client_id, aes_key, "kept.bin", b"other")
    assert server.call(RequestCode.CRC_ABORT, client_id, encode_name("x.bin")) == (
        ResponseCode.ACK,
        ClientIdResponse(client_id).pack(),
    )
    assert server.db.get_file(client_id, "x.bin") is None
    kept = server.db.get_file(client_id, "kept.bin")
    assert kept is not None and server.stored() == [server.store.data_dir / kept.path_name]


def test_1031_of_a_file_never_stored_is_acknowledged(server: Server) -> None:
    client_id, _ = server.registered()
    assert server.call(RequestCode.CRC_ABORT, client_id, encode_name("never.bin")) == (
        ResponseCode.ACK,
        client_id,
    )
    assert "not registered" in str(
        server.refused(RequestCode.CRC_ABORT, bytes(16), encode_name("x.bin"), UnknownClient)
    )


def test_one_clients_1031_leaves_another_clients_file_of_that_name(server: Server) -> None:
    alice, alice_key = server.registered("alice")
    bob, bob_key = server.registered("bob")
    server.send_file(alice, alice_key, "x.bin", b"alice's")
    server.send_file(bob, bob_key, "x.bin", b"bob's")
    server.call(RequestCode.CRC_ABORT, alice, encode_name("x.bin"))
    record = server.db.get_file(bob, "x.bin")
    assert record is not None and (server.store.data_dir / record.path_name).read_bytes() == b"bob's"
    assert record.path_name.startswith(f"storage/{bob.hex()}/")


def test_1027_that_finds_its_half_registration_completed_meanwhile_reconnects(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 1026 of the same client, racing, completes the key exchange between the 1027's read
    of the record and its attempt to drop the half registration (§2 1027)."""
    reply = server.call(RequestCode.REGISTER, bytes(16), encode_name("alice"))
    assert reply is not None
    client_id = reply[1]

    def completed_meanwhile(candidate: bytes) -> bool:
        assert server.db.set_keys(candidate, "alice", PUBLIC_KEY, bytes(16))
        return False

    monkeypatch.setattr(server.db, "delete_incomplete_client", completed_meanwhile)
    reply = server.call(RequestCode.RECONNECT, client_id, encode_name("alice"))
    assert reply is not None and reply[0] == ResponseCode.RECONNECTED
    new_key = unwrap_aes_key(RSA_KEY, AesKeyResponse.unpack(reply[1]).encrypted_key)
    record = server.db.get_client(client_id)
    assert record is not None and record.aes_key == new_key


@pytest.mark.parametrize("meanwhile", ["expired", "still without a key"])
def test_1027_whose_half_registration_went_or_stayed_is_denied(
    server: Server, monkeypatch: pytest.MonkeyPatch, meanwhile: str
) -> None:
    reply = server.call(RequestCode.REGISTER, bytes(16), encode_name("alice"))
    assert reply is not None
    client_id = reply[1]

    def not_dropped(candidate: bytes) -> bool:
        if meanwhile == "expired":
            server.db._execute("DELETE FROM clients WHERE ID = ?", (candidate,))
        return False

    monkeypatch.setattr(server.db, "delete_incomplete_client", not_dropped)
    assert server.call(RequestCode.RECONNECT, client_id, encode_name("alice")) == (
        ResponseCode.RECONNECT_DENIED,
        client_id,
    )


def test_1028_over_the_files_per_client_limit_is_refused_before_its_content(tmp_path: Path) -> None:
    server = Server(tmp_path, Limits(max_files_per_client=1))
    client_id, aes_key = server.registered()
    server.send_file(client_id, aes_key, "one.bin", b"1")
    ciphertext = encrypt(aes_key, b"2")
    context = server.context(
        RequestCode.SEND_FILE, client_id, SendFileHead(16, "two.bin").pack() + ciphertext
    )
    with pytest.raises(LimitReached):
        handlers.handle_send_file(context)
    assert context.payload.unread == 16 and context.payload.framed, "the rest can be read and skipped"
    assert server.send_file(client_id, aes_key, "one.bin", b"again") is not None, "a replacement is fine"


def test_a_file_whose_record_fails_is_not_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = Server(tmp_path)
    client_id, aes_key = server.registered()

    def full(*args: object) -> None:
        raise LimitReached("the most files")

    monkeypatch.setattr(server.db, "put_file", full)
    ciphertext = encrypt(aes_key, b"content")
    with pytest.raises(LimitReached):
        HANDLERS[RequestCode.SEND_FILE](
            server.context(RequestCode.SEND_FILE, client_id, SendFileHead(16, "x.bin").pack() + ciphertext)
        )
    assert server.stored() == []


def test_1028_that_declares_its_head_alone_is_served_all_the_same(server: Server) -> None:
    # §7: a payload size of 259, the head without its content; the head's Content size frames it.
    client_id, aes_key = server.registered()
    content = os.urandom(100)
    ciphertext = encrypt(aes_key, content)
    payload = SendFileHead(len(ciphertext), "x.bin").pack() + ciphertext
    context = server.context(RequestCode.SEND_FILE, client_id, payload, payload_size=HEAD_ONLY_PAYLOAD_SIZE)
    assert handlers.handle_send_file(context) == (
        ResponseCode.FILE_RECEIVED,
        FileReceivedResponse(client_id, len(ciphertext), "x.bin", cksum(content)).pack(),
    )
    assert context.payload.unread == 0 and context.payload.framed
    assert context.payload.head_only_size == len(ciphertext), "the loop warns of it once"
    record = server.db.get_file(client_id, "x.bin")
    assert record is not None and (server.store.data_dir / record.path_name).read_bytes() == content


def test_1028_of_exactly_the_max_file_size_is_served_and_one_block_more_is_refused(server: Server) -> None:
    client_id, aes_key = server.registered()
    for content in (bytes(31), bytes(32)):  # 32 bytes of ciphertext, then 48
        ciphertext = encrypt(aes_key, content)
        context = dataclasses.replace(
            server.context(
                RequestCode.SEND_FILE, client_id, SendFileHead(len(ciphertext), "x").pack() + ciphertext
            ),
            max_file_size=32,
        )
        if len(ciphertext) == 32:
            reply = handlers.handle_send_file(context)
            assert reply is not None and reply[0] == ResponseCode.FILE_RECEIVED
        else:
            with pytest.raises(OverLimit, match="over --max-file-size 32") as caught:
                handlers.handle_send_file(context)
            assert caught.value.response_code == ResponseCode.GENERAL_ERROR
            assert context.payload.unread == 48, "refused before its content"


def test_forged_1028s_lock_out_their_client_id_and_no_other(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="forgeries")
    failures = DecryptionFailures(allowed=2)  # shared by every connection, as the server's is
    alice, alice_key = server.registered("alice")
    bob, bob_key = server.registered("bob")

    def send(client_id: bytes, ciphertext: bytes) -> Any:
        payload = SendFileHead(len(ciphertext), "x.bin").pack() + ciphertext
        context = server.context(RequestCode.SEND_FILE, client_id, payload)
        context = dataclasses.replace(context, peer="192.0.2.7:4000", decryption_failures=failures)
        return handlers.handle_send_file(context)

    for _ in range(2):
        with pytest.raises(DecryptionFailed):
            send(alice, forged(alice_key, 32))
    assert "failed to decrypt" in caplog.text and "(the last from 192.0.2.7:4000)" in caplog.text
    with pytest.raises(Throttled) as caught:
        send(alice, encrypt(alice_key, b"a real file"))
    assert caught.value.response_code == ResponseCode.GENERAL_ERROR
    assert server.db.get_file(alice, "x.bin") is None
    reply = send(bob, encrypt(bob_key, b"bob's file"))
    assert reply is not None and reply[0] == ResponseCode.FILE_RECEIVED


def test_1028_whose_disk_fails_a_write_is_refused_and_keeps_nothing(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes go straight to the file (unbuffered), so a failing write is a StorageError of the
    write itself, not an OSError when a buffer is flushed at the end."""
    client_id, aes_key = server.registered()
    begin_upload = server.store.begin_upload

    def on_a_failing_disk(size: int) -> Any:
        partial = begin_upload(size)
        read_end, write_end = os.pipe()
        os.close(read_end)  # every write to the pipe now fails (EPIPE), as a failing disk's does
        os.dup2(write_end, partial.fd)
        os.close(write_end)
        return partial

    monkeypatch.setattr(server.store, "begin_upload", on_a_failing_disk)
    ciphertext = encrypt(aes_key, b"content")
    error = server.refused(
        RequestCode.SEND_FILE, client_id, SendFileHead(16, "x.bin").pack() + ciphertext, StorageError
    )
    assert str(error).startswith("cannot write the file: ")
    assert server.db.get_file(client_id, "x.bin") is None and server.stored() == []
