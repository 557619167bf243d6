"""§3 responses: exact payload sizes, 2107 for what the other codes do not cover, framing."""

from __future__ import annotations

import os
import socket

import pytest

from crypto_utils import export_public_key
from grading.database import SubmissionDatabase
from grading.harness import RawConnection, RawResponse, ServerProcess
from grading.wire import (
    RSA_KEY,
    Cases,
    NameFactory,
    aes_key_of,
    expect,
    file_request,
    files_under,
    new_client,
    register,
    send_file_request,
    server_own,
    still_serves,
)
from protocol import (
    RESPONSE_PAYLOAD_SIZES,
    RequestCode,
    RequestHeader,
    ResponseCode,
    encode_name,
    pack_request,
    pack_response,
)

spec = pytest.mark.spec
KEYS = ("§2 1025", "§2 1026")


@spec("§3 sizes", needs=("§2 1025", "§2 1026", "§2 1027", "§2 1028", "§2 1029", "§2 1027 denied"))
def test_s3_every_response_has_its_exact_payload_size(
    server: ServerProcess, unique_name: NameFactory
) -> None:
    """Every response code once, each session on its own connection as clients run them."""
    name = unique_name()
    responses: list[RawResponse] = []
    with RawConnection(server.address) as conn:
        client_id = register(conn, name)
        conn.send(
            pack_request(client_id, RequestCode.PUBLIC_KEY, encode_name(name) + export_public_key(RSA_KEY))
        )
        responses.append(conn.receive())  # 2102
        aes_key = aes_key_of(responses[-1].payload[16:], client_id, server)
        conn.send(send_file_request(client_id, aes_key, "s.bin", b"sizes"))
        responses.append(conn.receive())  # 2103
        conn.send(file_request(client_id, RequestCode.CRC_OK, "s.bin"))
        responses.append(conn.receive())  # 2104
    for request in (
        pack_request(bytes(16), RequestCode.REGISTER, encode_name(name)),  # 2101
        pack_request(client_id, RequestCode.RECONNECT, encode_name(name)),  # 2105
        pack_request(os.urandom(16), RequestCode.RECONNECT, encode_name(name)),  # 2106
        RequestHeader(bytes(16), 3, 9999, 0).pack(),  # 2107
    ):
        with RawConnection(server.address) as conn:
            conn.send(request)
            responses.append(conn.receive())
    codes = sorted(response.code for response in responses)
    assert codes == [2101, 2102, 2103, 2104, 2105, 2106, 2107], f"§3 sizes: unexpected response codes {codes}"
    wrong = {
        response.code: len(response.payload)
        for response in responses
        if len(response.payload) != RESPONSE_PAYLOAD_SIZES[ResponseCode(response.code)]
    }
    expected = {code: RESPONSE_PAYLOAD_SIZES[ResponseCode(code)] for code in wrong}
    assert not wrong, f"§3 sizes: payload sizes {wrong} (code: bytes); PROTOCOL.md §3: {expected}"


@spec("§3 2107")
def test_s3_2107_for_malformed_requests(server: ServerProcess) -> None:
    cases = Cases("§3 2107 (no payload) for a malformed request")
    for case, code, payload in (
        ("1025 without a NUL", RequestCode.REGISTER, b"a" * 255),
        ("1025 with a short payload", RequestCode.REGISTER, encode_name("x")[:100]),
        ("1025 with trailing bytes", RequestCode.REGISTER, encode_name("x") + b"extra"),
        ("an unknown code", 9999, b""),
        ("an unknown code with a payload", 9999, b"z" * 1000),
    ):
        with cases.case(case), RawConnection(server.address) as conn:
            conn.send(RequestHeader(bytes(16), 3, code, len(payload)).pack() + payload)
            assert expect(conn, ResponseCode.GENERAL_ERROR, "") == b"", "2107 with a payload"
    cases.check()


@spec("§3 empty name", strict=False)
def test_s3_an_empty_name_is_refused(server: ServerProcess) -> None:
    """A SHOULD: PROTOCOL.md refuses an empty name; the course text leaves it open."""
    with RawConnection(server.address) as conn:
        conn.send(pack_request(bytes(16), RequestCode.REGISTER, bytes(255)))
        expect(conn, ResponseCode.GENERAL_ERROR, "§3 empty name: a 1025 whose name is empty (255 NULs)")


@spec("§3 2107 keeps the connection", needs=("§2 1025", "§3 2107"))
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
            expect(
                conn, ResponseCode.REGISTERED, f"§3: a 1025 on the same connection after the 2107 for {what}"
            )


@spec("§3 2107", needs=("§2 1025",))
def test_s3_2107_for_a_public_key_that_does_not_import(
    server: ServerProcess, unique_name: NameFactory
) -> None:
    name = unique_name()
    with RawConnection(server.address) as conn:
        client_id = register(conn, name)
        conn.send(pack_request(client_id, RequestCode.PUBLIC_KEY, encode_name(name) + os.urandom(160)))
        expect(conn, ResponseCode.GENERAL_ERROR, "§3 2107 for a 1026 whose 160-byte key is random bytes")


@spec("§3 2107")
def test_s3_2107_for_a_file_from_an_unknown_client(server: ServerProcess) -> None:
    with RawConnection(server.address) as conn:
        conn.send(send_file_request(os.urandom(16), os.urandom(16), "x.bin", b"secret"))
        expect(conn, ResponseCode.GENERAL_ERROR, "§3 2107 for a 1028 from an unknown client ID")


@spec("§3 2107", needs=KEYS)
def test_s3_2107_for_a_file_that_does_not_decrypt_and_nothing_is_kept(
    server: ServerProcess, db: SubmissionDatabase, unique_name: NameFactory
) -> None:
    """A wrong key: bad padding, 2107; no record and no file (a `.part` included) stays behind."""
    with RawConnection(server.address) as conn:
        client_id, _ = new_client(conn, unique_name(), server)
        before = files_under(server.data_dir)
        conn.send(send_file_request(client_id, os.urandom(16), "x.bin", b"wrong key" * 100))
        expect(
            conn, ResponseCode.GENERAL_ERROR, "§3 2107 for a 1028 encrypted with another key (bad padding)"
        )
    assert db.files_of(client_id) == [], "§3 2107: a file that does not decrypt leaves no files row"
    left = sorted(
        str(path.relative_to(server.data_dir.resolve()))
        for path in files_under(server.data_dir) - before
        if not server_own(path)
    )
    assert not left, f"§3 2107: a file that does not decrypt leaves no file in the storage; found {left}"


@spec("§3 2107", needs=KEYS)
def test_s3_2107_for_inconsistent_file_sizes(
    server: ServerProcess, db: SubmissionDatabase, unique_name: NameFactory
) -> None:
    cases = Cases("§3 2107 for a 1028 whose content size is not 16·n and payload size - 259")
    for declared, actual in ((64, 48), (17, 17)):
        with cases.case(f"content size {declared}, {actual} bytes"), RawConnection(server.address) as conn:
            client_id, _ = new_client(conn, unique_name(), server)
            head = declared.to_bytes(4, "little") + encode_name("x.bin")
            conn.send(pack_request(client_id, RequestCode.SEND_FILE, head + os.urandom(actual)))
            expect(conn, ResponseCode.GENERAL_ERROR, "")
            assert db.files_of(client_id) == [], "a refused 1028 left a files row"
    cases.check()


@spec("§3 framing", needs=("§2 1025",))
def test_s3_a_truncated_header_closes_the_connection(server: ServerProcess, unique_name: NameFactory) -> None:
    with RawConnection(server.address) as conn:
        conn.send(bytes(10))
        conn.sock.shutdown(socket.SHUT_WR)
        rest = conn.rest_until_closed()
    # The version byte is §1 version's point, not this one's: any version, code 2107, no payload.
    assert rest == b"" or (len(rest) == 7 and rest[1:] == pack_response(ResponseCode.GENERAL_ERROR)[1:]), (
        f"§3 framing: 10 bytes of a header, then the close: 2107 or nothing, then the close; got {rest.hex()}"
    )
    still_serves(server, unique_name)


@spec("§3 framing", needs=("§2 1025",))
def test_s3_an_impossible_payload_size_gets_2107_and_closes(
    server: ServerProcess, unique_name: NameFactory
) -> None:
    """A 1025 claiming 4 GiB: answered before any of it arrives, nothing allocated."""
    with RawConnection(server.address) as conn:
        conn.send(RequestHeader(bytes(16), 3, RequestCode.REGISTER, 2**32 - 1).pack())
        expect(conn, ResponseCode.GENERAL_ERROR, "§3 framing: a 1025 header declaring a payload of 4 GiB")
        assert conn.is_closed(), "§3 framing: after an impossible payload size the connection is closed"
    still_serves(server, unique_name)
