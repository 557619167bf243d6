"""Our decisions where PROTOCOL.md is silent (docs/server.md), checked against our server only.

The checks of the protocol itself are the grading tool's (grading/checks/).
"""

from __future__ import annotations

import os

import pytest

from grading.database import SubmissionDatabase
from grading.harness import RawConnection, ServerProcess
from grading.wire import NameFactory, expect, file_request, new_client, send_file_request
from protocol import RequestCode, ResponseCode, encode_name, pack_request


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
    assert SubmissionDatabase(server.db_path).files_of(client_id) == []


@pytest.mark.usefixtures("ours")
def test_ours_answers_1029_of_an_unknown_file_with_2107(
    server: ServerProcess, unique_name: NameFactory
) -> None:
    with RawConnection(server.address) as conn:
        client_id, _ = new_client(conn, unique_name())
        conn.send(file_request(client_id, RequestCode.CRC_OK, "never-sent.bin"))
        expect(conn, ResponseCode.GENERAL_ERROR, "1029 of an unknown file")
