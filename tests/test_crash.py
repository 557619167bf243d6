"""Crash safety: SIGKILL the server in the middle of transfers and registrations, restart, check.

After every kill and restart: `defensive.db` passes `PRAGMA integrity_check`; no
record points to a missing or partial file; nothing is Verified that the client
did not confirm with 1029; no temporary or unrecorded file is left in storage;
every client that completed its key exchange can reconnect.

CI runs a few rounds; `CRASH_ROUNDS=200 ./test.sh -k sigkill` runs a long form.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import uuid
from dataclasses import dataclass, field

import pytest
from conftest import RSA_KEY
from support import NoResponse, RawConnection, ServerProcess

from crypto_utils import export_public_key, unwrap_aes_key
from grading.wire import expect, send_file_request
from protocol import AesKeyResponse, RequestCode, ResponseCode, encode_name, pack_request

pytestmark = pytest.mark.usefixtures("ours")  # SIGKILL and restarts need a server of our own

ROUNDS = int(os.environ.get("CRASH_ROUNDS", "6"))
WORKERS = 4


def content_for(file_name: str, size: int) -> bytes:
    """Content derived from the name, so a stored file can be checked without remembering it."""
    seed = hashlib.sha256(file_name.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


@dataclass
class Ledger:
    """What the clients know happened, as the server's state must reflect it."""

    keyed_clients: dict[bytes, str] = field(default_factory=dict)  # got 2102
    confirmed: set[tuple[bytes, str]] = field(default_factory=set)  # sent 1029
    failures: list[str] = field(default_factory=list)  # what went wrong other than the kill
    lock: threading.Lock = field(default_factory=threading.Lock)


class ServerKilled(Exception):
    """The connection broke while the test was killing the server: what the workers expect."""


def answer(conn: RawConnection, code: ResponseCode, what: str, killing: threading.Event) -> bytes:
    """The payload of the next response, which must be `code`.

    A broken connection is the kill only once the test has begun killing; before that it
    is a failure, as is a wrong response at any time (a killed server sends nothing wrong)
    and a server that hangs (NoResponse: a killed server's sockets close at once).
    """
    try:
        response = conn.receive()
    except NoResponse:
        raise
    except (AssertionError, OSError) as err:  # receive() asserts on a closed connection
        if killing.is_set():
            raise ServerKilled from err
        raise
    assert response.code == code, f"{what}: expected {code.value}, got {response.code}"
    return response.payload


def send(conn: RawConnection, data: bytes, killing: threading.Event) -> None:
    try:
        conn.send(data)
    except OSError as err:
        if killing.is_set():
            raise ServerKilled from err
        raise


def worker(address: tuple[str, int], ledger: Ledger, killing: threading.Event, seed: int) -> None:
    """Register, exchange keys, send files and confirm them until the server dies.

    Anything but the kill (a wrong response, a refused connection while the server is up)
    is recorded in the ledger, and the test fails on it.
    """
    rng = random.Random(seed)
    try:
        while True:
            try:
                conn = RawConnection(address, timeout=5)
            except OSError as err:
                if killing.is_set():
                    raise ServerKilled from err
                raise
            with conn:
                name = f"crash-{uuid.uuid4().hex[:10]}"
                send(conn, pack_request(bytes(16), RequestCode.REGISTER, encode_name(name)), killing)
                client_id = answer(conn, ResponseCode.REGISTERED, "1025", killing)
                key_request = encode_name(name) + export_public_key(RSA_KEY)
                send(conn, pack_request(client_id, RequestCode.PUBLIC_KEY, key_request), killing)
                wrapped = AesKeyResponse.unpack(answer(conn, ResponseCode.AES_KEY, "1026", killing))
                aes_key = unwrap_aes_key(RSA_KEY, wrapped.encrypted_key)
                with ledger.lock:
                    ledger.keyed_clients[client_id] = name
                for _ in range(rng.randint(1, 3)):
                    file_name = f"f-{uuid.uuid4().hex[:8]}.bin"
                    content = content_for(file_name, rng.randint(1, 3 << 20))
                    send(conn, send_file_request(client_id, aes_key, file_name, content), killing)
                    answer(conn, ResponseCode.FILE_RECEIVED, "1028", killing)
                    if rng.random() < 0.7:
                        with ledger.lock:
                            ledger.confirmed.add((client_id, file_name))
                        send(
                            conn, pack_request(client_id, RequestCode.CRC_OK, encode_name(file_name)), killing
                        )
                        answer(conn, ResponseCode.ACK, "1029", killing)
    except ServerKilled:
        return
    except BaseException as err:  # recorded for the main thread, which fails the test on it
        with ledger.lock:
            ledger.failures.append(f"{type(err).__name__}: {err}")


def check_invariants(server: ServerProcess, ledger: Ledger) -> None:
    assert server.query("PRAGMA integrity_check") == [("ok",)]
    rows = server.query("SELECT ID, FileName, PathName, Verified FROM files")
    recorded = set()
    for client_id, file_name, path_name, verified in rows:
        stored = server.data_dir / path_name
        assert stored.is_file(), f"record of {file_name} points to a missing file"
        assert stored.read_bytes() == content_for(file_name, stored.stat().st_size), f"{file_name} is partial"
        assert stored.stat().st_size > 0
        if verified:
            assert (client_id, file_name) in ledger.confirmed, f"{file_name} verified without 1029"
        recorded.add(path_name)
    storage = server.data_dir / "storage"
    for path in storage.rglob("*"):
        if path.is_file():
            assert path.relative_to(server.data_dir).as_posix() in recorded, f"leftover {path.name}"
    for client_id, name in ledger.keyed_clients.items():
        with RawConnection(server.address) as conn:
            conn.send(pack_request(client_id, RequestCode.RECONNECT, encode_name(name)))
            expect(conn, ResponseCode.RECONNECTED, "reconnect after a crash")


def test_sigkill_during_transfers_and_registrations(server: ServerProcess) -> None:
    ledger = Ledger()
    rng = random.Random(1234)
    for round_number in range(ROUNDS):
        killing = threading.Event()
        threads = [
            threading.Thread(
                target=worker, args=(server.address, ledger, killing, round_number * WORKERS + i)
            )
            for i in range(WORKERS)
        ]
        for thread in threads:
            thread.start()
        killing.wait(rng.uniform(0.2, 1.0))  # let the workers get into the middle of things
        killing.set()
        server.kill()
        for thread in threads:
            thread.join(30)
        assert not any(thread.is_alive() for thread in threads), "a worker hangs after the kill"
        assert not ledger.failures, (
            f"round {round_number}: the workers met more than the kill: {ledger.failures}"
        )
        server.start()
        check_invariants(server, ledger)
    assert ledger.keyed_clients, "no client completed a key exchange: the test exercised nothing"
    clients, confirmed = len(ledger.keyed_clients), len(ledger.confirmed)
    print(f"{ROUNDS} kills survived; {clients} clients, {confirmed} confirmed files")
