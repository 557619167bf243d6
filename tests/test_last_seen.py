"""§2 "LastSeen is updated on every request from a registered client", code by code.

Each case sets the client's LastSeen far back in the database, sends one request, and
checks that LastSeen moved to the time of that request: no sleep, and no reliance on
LastSeen's one-second resolution. A 1030 has no response; a 1025 of another name sent
after it on the same connection is answered only once the 1030 was served.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime

import pytest
from conftest import RSA_KEY
from support import READ_TIMEOUT, RawConnection, ServerProcess

from crypto_utils import export_public_key
from grading.wire import expect, new_client, register, send_file_request
from protocol import RequestCode, ResponseCode, encode_name, pack_request

pytestmark = pytest.mark.usefixtures("ours")  # reads and writes our database's LastSeen

STALE = "2000-01-01 00:00:00+00:00"


def set_stale(server: ServerProcess, client_id: bytes) -> None:
    with closing(sqlite3.connect(server.db_path, timeout=READ_TIMEOUT)) as db, db:
        db.execute("UPDATE clients SET LastSeen = ? WHERE ID = ?", (STALE, client_id))


def last_seen(server: ServerProcess, client_id: bytes) -> datetime:
    [(value,)] = server.query("SELECT LastSeen FROM clients WHERE ID = ?", (client_id,))
    return datetime.fromisoformat(value)


def unique() -> str:
    return f"seen-{uuid.uuid4().hex[:12]}"


Case = Callable[[RawConnection, bytes, bytes, str], None]


def _public_key(conn: RawConnection, client_id: bytes, aes_key: bytes, name: str) -> None:
    conn.send(pack_request(client_id, RequestCode.PUBLIC_KEY, encode_name(name) + export_public_key(RSA_KEY)))
    expect(conn, ResponseCode.AES_KEY, "1026")


def _reconnect(conn: RawConnection, client_id: bytes, aes_key: bytes, name: str) -> None:
    conn.send(pack_request(client_id, RequestCode.RECONNECT, encode_name(name)))
    expect(conn, ResponseCode.RECONNECTED, "1027")


def _send_file(conn: RawConnection, client_id: bytes, aes_key: bytes, name: str) -> None:
    conn.send(send_file_request(client_id, aes_key, "other.bin", b"content"))
    expect(conn, ResponseCode.FILE_RECEIVED, "1028")


def _crc_ok(conn: RawConnection, client_id: bytes, aes_key: bytes, name: str) -> None:
    conn.send(pack_request(client_id, RequestCode.CRC_OK, encode_name("x.bin")))
    expect(conn, ResponseCode.ACK, "1029")


def _crc_ok_refused(conn: RawConnection, client_id: bytes, aes_key: bytes, name: str) -> None:
    conn.send(pack_request(client_id, RequestCode.CRC_OK, encode_name("never-sent.bin")))
    expect(conn, ResponseCode.GENERAL_ERROR, "1029 of an unknown file")


def _crc_retry(conn: RawConnection, client_id: bytes, aes_key: bytes, name: str) -> None:
    conn.send(pack_request(client_id, RequestCode.CRC_RETRY, encode_name("x.bin")))
    register(conn, unique())  # answered after the 1030 was served: the connection is in order


def _crc_abort(conn: RawConnection, client_id: bytes, aes_key: bytes, name: str) -> None:
    conn.send(pack_request(client_id, RequestCode.CRC_ABORT, encode_name("x.bin")))
    expect(conn, ResponseCode.ACK, "1031")


@pytest.mark.parametrize(
    "request_of",
    [_public_key, _reconnect, _send_file, _crc_ok, _crc_ok_refused, _crc_retry, _crc_abort],
    ids=["1026", "1027", "1028", "1029", "1029-refused", "1030", "1031"],
)
def test_last_seen_advances_on_every_request_of_a_registered_client(
    server: ServerProcess, request_of: Case
) -> None:
    name = unique()
    with RawConnection(server.address) as conn:
        if request_of is _public_key:
            client_id, aes_key = register(conn, name), b""  # registered, its key not yet sent
        else:
            client_id, aes_key = new_client(conn, name)
            conn.send(send_file_request(client_id, aes_key, "x.bin", b"content"))
            expect(conn, ResponseCode.FILE_RECEIVED, "1028")
        set_stale(server, client_id)
        before = datetime.now(UTC).replace(microsecond=0)  # LastSeen has whole seconds
        request_of(conn, client_id, aes_key, name)
    assert last_seen(server, client_id) >= before, f"§2: LastSeen is updated on {request_of.__name__}"


def test_a_request_of_an_unknown_client_touches_no_one(server: ServerProcess) -> None:
    with RawConnection(server.address) as conn:
        client_id, _ = new_client(conn, unique())
        set_stale(server, client_id)
        conn.send(pack_request(bytes(16), RequestCode.CRC_OK, encode_name("x.bin")))
        expect(conn, ResponseCode.GENERAL_ERROR, "1029 of an unknown client")
    assert last_seen(server, client_id) == datetime.fromisoformat(STALE)
