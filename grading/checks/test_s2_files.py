"""§2 files: 1028 (small, many chunks, streamed), 1029, 1030, 1031, file names as sent."""

from __future__ import annotations

import os
import threading
import time

import pytest

from grading.database import SubmissionDatabase
from grading.harness import RawConnection, ServerProcess
from grading.wire import (
    Cases,
    NameFactory,
    confirm,
    describe_bytes,
    expect,
    file_received,
    file_request,
    new_client,
    send_file,
    send_file_request,
    send_large_file,
    stored_bytes,
    stored_file,
)
from protocol import FILE_RECEIVED, NAME_FIELD_SIZE, RequestCode, ResponseCode, encode_name

spec = pytest.mark.spec
KEYS = ("§2 1025", "§2 1026")
MIB = 1 << 20
STREAMED_SIZE = 64 * MIB  # §2 1028: the server must stream; a 64 MiB file shows whether it does
MAX_GROWTH = 32 * MIB  # memory the server's process group may grow by while it receives it
STREAMED_WITHIN = 60.0  # seconds for the 64 MiB: a streaming server never misses it, a quadratic one does
SAMPLE_INTERVAL = 0.02  # seconds between two looks at the server's memory


@spec("§2 1028", needs=KEYS)
def test_s2_1028_answers_2103_and_records_the_file(
    server: ServerProcess, db: SubmissionDatabase, unique_name: NameFactory
) -> None:
    content = os.urandom(1000)
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, unique_name(), server)
        conn.send(send_file_request(client_id, aes_key, "data.bin", content))
        payload = expect(conn, ResponseCode.FILE_RECEIVED, "§2 1028 of data.bin (1000 bytes, 1008 encrypted)")
    # Client ID(16), Content size(4) as received (encrypted), File name(255); the Cksum is §4's.
    expected = FILE_RECEIVED.pack(client_id, 1008, encode_name("data.bin"), 0)[:-4]
    assert len(payload) == FILE_RECEIVED.size, (
        f"§2 1028: 2103 has {FILE_RECEIVED.size} bytes (ID, size, name, cksum), not {len(payload)}"
    )
    assert payload[:-4] == expected, (
        f"§2 1028: 2103 must be ID, encrypted size 1008, name; got {payload[:-4].rstrip(bytes(1)).hex()}"
    )
    rows = db.files_of(client_id)
    assert [(row.file_name, row.verified) for row in rows] == [("data.bin", False)], (
        f"§2 1028: one files row, FileName as sent, Verified false; got "
        f"{[(row.file_name, row.verified_raw) for row in rows]}"
    )
    got = stored_bytes(server, rows[0].path_name)
    assert got == content, (
        f"§2 1028: the stored file is the decrypted content: {describe_bytes(got, content)}"
    )


@spec("§2 1028 replace", needs=("§2 1028",))
def test_s2_1028_the_same_name_replaces_the_earlier_copy(
    server: ServerProcess, db: SubmissionDatabase, unique_name: NameFactory
) -> None:
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, unique_name(), server)
        send_file(conn, client_id, aes_key, "doc.txt", b"first version")
        send_file(conn, client_id, aes_key, "doc.txt", b"second")
    rows = db.files_of(client_id)
    assert len(rows) == 1, f"§2 1028: a second doc.txt replaces the first; {len(rows)} records"
    assert rows[0].verified is False, "§2 1028: the new copy is not verified until its own 1029"
    got = stored_bytes(server, rows[0].path_name)
    assert got == b"second", f"§2 1028: the stored doc.txt is the second copy, b'second'; got {got[:20]!r}"


@spec("§2 1029", needs=("§2 1028",))
def test_s2_1029_marks_the_file_verified(
    server: ServerProcess, db: SubmissionDatabase, unique_name: NameFactory
) -> None:
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, unique_name(), server)
        send_file(conn, client_id, aes_key, "a.txt", b"hello")
        conn.send(file_request(client_id, RequestCode.CRC_OK, "a.txt"))
        echoed = expect(conn, ResponseCode.ACK, "§2 1029 of a.txt")
    assert echoed == client_id, f"§2 1029: 2104 carries the client ID {client_id.hex()}, not {echoed.hex()}"
    rows = db.files_of(client_id)
    assert [row.verified for row in rows] == [True], (
        f"§2 1029: Verified becomes true; the files rows hold {[row.verified_raw for row in rows]}"
    )


@spec("§2 1030", needs=("§2 1028", "§2 1029"))
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
            pytest.fail(
                f"§2 1030: no response is sent to a 1030, and the connection stays open; {got}", pytrace=False
            )
        conn.send(send_file_request(client_id, aes_key, "f.bin", content))
        assert file_received(conn, "§2 1030: the resend after a 1030").file_name == "f.bin"
        confirm(conn, client_id, "f.bin")


@spec("§2 1031", needs=("§2 1028",))
def test_s2_1031_removes_the_file_and_its_record(
    server: ServerProcess, db: SubmissionDatabase, unique_name: NameFactory
) -> None:
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, unique_name(), server)
        send_file(conn, client_id, aes_key, "gone.bin", b"x" * 100)
        [row] = db.files_of(client_id)
        stored = stored_file(server, row.path_name)
        conn.send(file_request(client_id, RequestCode.CRC_ABORT, "gone.bin"))
        echoed = expect(conn, ResponseCode.ACK, "§2 1031 of gone.bin")
    assert echoed == client_id, f"§2 1031: 2104 carries the client ID {client_id.hex()}, not {echoed.hex()}"
    assert db.files_of(client_id) == [], "§2 1031: the files row of gone.bin is removed"
    assert not stored.exists(), "§2 1031: the stored file of gone.bin is removed"


@spec("§2 file names", needs=("§2 1028",))
def test_s2_file_names_are_echoed_and_recorded_as_sent(
    server: ServerProcess, db: SubmissionDatabase, unique_name: NameFactory
) -> None:
    names = ["C:\\Users\\me\\file.bin", "/home/me/file.bin", "dir/sub/x.bin", "with spaces.txt"]
    cases = Cases("§2 file names: 2103 echoes, and FileName holds, the name as sent")
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, unique_name(), server)
        for file_name in names:
            with cases.case(repr(file_name)):
                conn.send(send_file_request(client_id, aes_key, file_name, b"payload"))
                echoed = expect(conn, ResponseCode.FILE_RECEIVED, "1028")[20 : 20 + NAME_FIELD_SIZE]
                assert echoed == encode_name(file_name), f"2103 echoes {echoed.split(bytes(1))[0]!r}"
    recorded = sorted(str(row.file_name) for row in db.files_of(client_id))
    with cases.case("FileName"):
        assert recorded == sorted(names), f"the files rows hold {recorded}"
    cases.check()


@spec("§4 AES-CBC many chunks", needs=("§2 1028",), timeout=120)
@pytest.mark.parametrize("size", [3 * MIB + 12_345, STREAMED_SIZE], ids=["3 MiB + 12345 bytes", "64 MiB"])
def test_s4_a_file_of_many_chunks_is_stored_byte_identical(
    server: ServerProcess, db: SubmissionDatabase, unique_name: NameFactory, size: int
) -> None:
    """CBC chains across every chunk a server reads: a chaining bug shows past the first."""
    content = os.urandom(size)
    with RawConnection(server.address, timeout=STREAMED_WITHIN) as conn:
        client_id, aes_key = new_client(conn, unique_name(), server)
        send_large_file(conn, client_id, aes_key, "big.bin", content)
        file_received(conn, f"§4 AES-CBC: a 1028 of {size} bytes")
    [row] = db.files_of(client_id)
    got = stored_bytes(server, row.path_name)
    assert got == content, f"§4 AES-CBC: a {size}-byte file is stored as sent; {describe_bytes(got, content)}"


@spec("§2 1028 streaming", needs=("§2 1028",), timeout=120)
def test_s2_1028_a_64_mib_file_is_streamed(server: ServerProcess, unique_name: NameFactory) -> None:
    """The server's process group grows by less than 32 MiB for a 64 MiB file, within 60 s."""
    group = server.group()
    content = os.urandom(STREAMED_SIZE)
    with RawConnection(server.address, timeout=STREAMED_WITHIN) as conn:
        client_id, aes_key = new_client(conn, unique_name(), server)
        baseline = group.sample()
        peak = baseline.rss_kib
        done = threading.Event()

        def watch() -> None:
            nonlocal peak
            while not done.wait(SAMPLE_INTERVAL):
                peak = max(peak, group.sample().rss_kib)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        started = time.monotonic()
        try:
            send_large_file(conn, client_id, aes_key, "streamed.bin", content)
            file_received(conn, "§2 1028 streaming: a 1028 of 64 MiB")
        finally:
            elapsed = time.monotonic() - started
            done.set()
            watcher.join()
    grown_mib = (max(peak, group.sample().rss_kib) - baseline.rss_kib) / 1024
    assert grown_mib < MAX_GROWTH / MIB, (
        f"§2 1028 streaming: receiving a 64 MiB file, the server's memory grew by {grown_mib:.0f} MiB; "
        f"PROTOCOL.md §2: stream it in chunks (a streaming server grows by a few MiB; "
        f"bound {MAX_GROWTH // MIB} MiB)"
    )
    assert elapsed < STREAMED_WITHIN, (
        f"§2 1028 streaming: a 64 MiB file took {elapsed:.0f} s "
        f"(bound {STREAMED_WITHIN:.0f} s): quadratic reads?"
    )
