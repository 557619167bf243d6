"""§1 transport and framing: the version byte, text fields, pipelining, concurrency, connections."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from grading.database import SubmissionDatabase
from grading.harness import RawConnection, RawResponse, ServerProcess
from grading.wire import (
    NameFactory,
    confirm,
    expect,
    file_request,
    new_client,
    send_file,
    send_file_request,
    stored_bytes,
)
from protocol import NAME_FIELD_SIZE, RequestCode, ResponseCode, encode_name, pack_request

spec = pytest.mark.spec
FILES = ("§2 1025", "§2 1026", "§2 1028", "§2 1029")


@spec("§1 version")
def test_s1_responses_carry_server_version_3(server: ServerProcess, unique_name: NameFactory) -> None:
    name = unique_name()
    responses: list[RawResponse] = []
    for _ in range(2):  # 2100, then 2101 for the same name: two sessions, two connections
        with RawConnection(server.address) as conn:
            conn.send(pack_request(bytes(16), RequestCode.REGISTER, encode_name(name)))
            responses.append(conn.receive())
    versions = {response.code: response.version for response in responses}
    assert set(versions.values()) == {3}, (
        f"§1 version: responses to 1025 carry the server version 3; got {versions} (code: version)"
    )


@spec("§1 text fields", needs=("§2 1025",))
def test_s1_text_fields_are_read_up_to_the_first_nul(
    server: ServerProcess, db: SubmissionDatabase, unique_name: NameFactory
) -> None:
    name = unique_name()
    field = (name.encode() + b"\0" + b"\xffgarbage").ljust(NAME_FIELD_SIZE, b"\x01")
    with RawConnection(server.address) as conn:
        conn.send(pack_request(bytes(16), RequestCode.REGISTER, field))
        client_id = expect(conn, ResponseCode.REGISTERED, "§1 text fields: a 1025 with garbage after the NUL")
    with RawConnection(server.address) as conn:
        conn.send(pack_request(bytes(16), RequestCode.REGISTER, encode_name(name)))
        expect(conn, ResponseCode.REGISTRATION_FAILED, f"§1 text fields: {name!r} is the name before the NUL")
    row = db.client(client_id, "Name")
    assert row is not None and row.name == name, (
        f"§1 text fields: the stored name is the text before the NUL, {name!r}; "
        f"got {row.name if row else None!r}"
    )


@spec("§1 pipelining", needs=FILES)
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
            response = conn.receive()  # a reply to the 1030: wrong, but the §2 1030 check's point
        assert response.code == ResponseCode.FILE_RECEIVED, (
            f"§1 pipelining: 1030, 1028 and 1029 sent in one write; the 1028 got {response.code}, "
            "expected 2103 (were the bytes after the 1030 dropped?)"
        )
        expect(conn, ResponseCode.ACK, "§1 pipelining: the 1029 behind the 1028")


@spec("§1 concurrency", needs=FILES)
def test_s1_fifty_concurrent_clients(
    server: ServerProcess, db: SubmissionDatabase, unique_name: NameFactory
) -> None:
    def transfer(index: int) -> tuple[bytes, bytes]:
        content = os.urandom(20_000 + index)
        with RawConnection(server.address) as conn:
            client_id, aes_key = new_client(conn, unique_name(), server)
            send_file(conn, client_id, aes_key, f"f{index}.bin", content)
            confirm(conn, client_id, f"f{index}.bin")
        return client_id, content

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(transfer, range(50)))
    for index, (client_id, content) in enumerate(results):
        rows = db.files_of(client_id)
        assert [row.verified for row in rows] == [True], (
            f"§1 concurrency: of 50 clients at once, client {index} has {len(rows)} records, not one verified"
        )
        assert stored_bytes(server, rows[0].path_name) == content, (
            f"§1 concurrency: of 50 clients at once, client {index}'s stored file differs from what it sent"
        )


@spec("§1 concurrency", needs=("§2 1025", "§2 1026", "§2 1028"))
def test_s1_stalled_connections_do_not_block_others(server: ServerProcess, unique_name: NameFactory) -> None:
    stalled = [RawConnection(server.address) for _ in range(50)]
    try:
        for index, conn in enumerate(stalled):
            conn.send(bytes(index % 23))  # a partial header, or nothing at all
        with RawConnection(server.address) as conn:
            client_id, aes_key = new_client(conn, unique_name(), server)
            conn.send(send_file_request(client_id, aes_key, "ok.bin", b"through"))
            expect(
                conn, ResponseCode.FILE_RECEIVED, "§1 concurrency: a 1028 with 50 stalled connections open"
            )
    finally:
        for conn in stalled:
            conn.close()


@spec("§1 sessions on one connection", needs=FILES, strict=False)
def test_s1_two_sessions_on_one_connection(server: ServerProcess, unique_name: NameFactory) -> None:
    """A SHOULD: the server may close after 2104 (§3), but a client that goes on is served."""
    with RawConnection(server.address) as conn:
        for index in ("first", "second"):
            try:
                client_id, aes_key = new_client(conn, unique_name(), server)
                send_file(conn, client_id, aes_key, "s.bin", b"session")
                confirm(conn, client_id, "s.bin")
            except (AssertionError, OSError) as err:
                raise AssertionError(
                    f"§1 sessions on one connection: the {index} session (1025, 1026, 1028, 1029) "
                    f"on one connection: {err}"
                ) from None
