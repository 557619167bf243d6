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
from support import RawConnection, ServerProcess
from test_conformance import exchange_keys, expect, register, send_file_request

from protocol import RequestCode, ResponseCode, encode_name, pack_request

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
    lock: threading.Lock = field(default_factory=threading.Lock)


def worker(address: tuple[str, int], ledger: Ledger, stop: threading.Event, seed: int) -> None:
    """Register, exchange keys, send files and confirm them until the server dies."""
    rng = random.Random(seed)
    try:
        while not stop.is_set():
            with RawConnection(address, timeout=5) as conn:
                name = f"crash-{uuid.uuid4().hex[:10]}"
                client_id = register(conn, name)
                aes_key = exchange_keys(conn, client_id, name)
                with ledger.lock:
                    ledger.keyed_clients[client_id] = name
                for _ in range(rng.randint(1, 3)):
                    file_name = f"f-{uuid.uuid4().hex[:8]}.bin"
                    conn.send(
                        send_file_request(
                            client_id, aes_key, file_name, content_for(file_name, rng.randint(1, 3 << 20))
                        )
                    )
                    expect(conn, ResponseCode.FILE_RECEIVED, "1028")
                    if rng.random() < 0.7:
                        with ledger.lock:
                            ledger.confirmed.add((client_id, file_name))
                        conn.send(pack_request(client_id, RequestCode.CRC_OK, encode_name(file_name)))
                        expect(conn, ResponseCode.ACK, "1029")
    except (OSError, AssertionError):
        return  # the server was killed under us: expected


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
        stop = threading.Event()
        threads = [
            threading.Thread(target=worker, args=(server.address, ledger, stop, round_number * WORKERS + i))
            for i in range(WORKERS)
        ]
        for thread in threads:
            thread.start()
        stop.wait(rng.uniform(0.2, 1.0))  # let the workers get into the middle of things
        server.kill()
        stop.set()
        for thread in threads:
            thread.join(30)
        server.start()
        check_invariants(server, ledger)
    assert ledger.keyed_clients, "no client completed a key exchange: the test exercised nothing"
    clients, confirmed = len(ledger.keyed_clients), len(ledger.confirmed)
    print(f"{ROUNDS} kills survived; {clients} clients, {confirmed} confirmed files")
