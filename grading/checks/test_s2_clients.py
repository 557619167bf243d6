"""§2 registration and keys: 1025, 1026, 1027, client IDs, fresh AES keys, LastSeen."""

from __future__ import annotations

import itertools
import os
import sqlite3
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing

import pytest

from crypto_utils import export_public_key
from grading.database import SubmissionDatabase
from grading.harness import READ_TIMEOUT, RawConnection, ServerProcess
from grading.plugin import ServerFactory
from grading.wire import (
    RSA_KEY,
    Cases,
    NameFactory,
    aes_key_of,
    confirm,
    expect,
    new_client,
    parse,
    register,
    send_file,
)
from protocol import AesKeyResponse, RequestCode, ResponseCode, encode_name, pack_request

spec = pytest.mark.spec
RACE_ROUNDS = 20  # rounds of racing registrations: a race lost 2-3 times in 20 is caught
RACERS = 8  # connections racing in each round


@spec("§2 1025")
def test_s2_1025_register_answers_2100_and_stores_the_client(
    server: ServerProcess, db: SubmissionDatabase, unique_name: NameFactory
) -> None:
    name = unique_name()
    with RawConnection(server.address) as conn:
        # The header's client ID of a 1025 is ignored (§7): send garbage.
        conn.send(pack_request(os.urandom(16), RequestCode.REGISTER, encode_name(name)))
        payload = expect(conn, ResponseCode.REGISTERED, f"§2 1025 of the new name {name!r}")
    assert len(payload) == 16, f"§2 1025: 2100 carries a 16-byte client ID, not {len(payload)} bytes"
    rows = db.clients_named(name)
    assert [row.client_id for row in rows] == [payload], (
        f"§2 1025: the clients table holds {name!r} under the ID that 2100 sent ({payload.hex()}); "
        f"found {[row.client_id.hex() if row.client_id else None for row in rows]}"
    )


@spec("§2 1025 taken name", needs=("§2 1025",))
def test_s2_1025_a_taken_name_gets_2101(server: ServerProcess, unique_name: NameFactory) -> None:
    name = unique_name()
    with RawConnection(server.address) as conn:
        register(conn, name)
    with RawConnection(server.address) as conn:
        conn.send(pack_request(bytes(16), RequestCode.REGISTER, encode_name(name)))
        payload = expect(conn, ResponseCode.REGISTRATION_FAILED, f"§2 1025 of the taken name {name!r}")
    assert payload == b"", f"§2 1025: 2101 has no payload, not {len(payload)} bytes"


@spec("§2 1025 race", needs=("§2 1025", "§2 1025 taken name"))
def test_s2_1025_racing_registrations_of_one_name_give_exactly_one_2100(
    server: ServerProcess, db: SubmissionDatabase, unique_name: NameFactory
) -> None:
    """20 rounds of 8 connections released at once with one name: the database must decide."""
    lost = []
    with ThreadPoolExecutor(RACERS) as pool:
        for round_number in range(RACE_ROUNDS):
            name = unique_name()
            connections = [RawConnection(server.address) for _ in range(RACERS)]
            barrier = threading.Barrier(RACERS)

            def race(conn: RawConnection, name: str = name, barrier: threading.Barrier = barrier) -> int:
                with conn:
                    barrier.wait(READ_TIMEOUT)
                    conn.send(pack_request(bytes(16), RequestCode.REGISTER, encode_name(name)))
                    return conn.receive().code

            codes = list(pool.map(race, connections))
            stored = len(db.clients_named(name))
            if codes.count(2100) != 1 or stored != 1:
                lost.append(f"round {round_number + 1}: {codes.count(2100)} x 2100, {stored} rows")
    assert not lost, (
        f"§2 1025 race: {RACERS} racing 1025s of one name get one 2100 and one row; "
        f"{len(lost)} of {RACE_ROUNDS} rounds did not: {'; '.join(lost[:5])}"
    )


@spec("§2 client IDs", needs=("§2 1025",))
def test_s2_client_ids_are_16_distinct_unguessable_bytes(
    server_factory: ServerFactory, unique_name: NameFactory
) -> None:
    """16 bytes, distinct, not zero, not a counter, not derived from the name (§2); any UUID form."""
    first = server_factory()
    names = [unique_name() for _ in range(8)]
    ids = []
    for name in names:
        with RawConnection(first.address) as conn:
            ids.append(register(conn, name))
    problems = []
    if len(set(ids)) != len(ids):
        problems.append(f"8 registrations gave only {len(set(ids))} distinct IDs")
    if bytes(16) in ids:
        problems.append("an ID is all zeros")
    for order in ("big", "little"):
        values = sorted(int.from_bytes(client_id, order) for client_id in ids)
        if max((later - earlier for earlier, later in itertools.pairwise(values)), default=0) < 2**32:
            problems.append(f"the IDs read {order}-endian are close together: a counter")
    if all(uuid.UUID(bytes=client_id).version == 1 for client_id in ids):
        problems.append("the IDs are uuid1 (time and MAC address): guessable")
    second = server_factory()
    with RawConnection(second.address) as conn:
        again = register(conn, names[0])
    if again == ids[0]:
        problems.append(
            f"{names[0]!r} got the same ID {again.hex()} from a fresh server: derived from the name"
        )
    shown = ", ".join(client_id.hex() for client_id in ids[:3])
    assert not problems, f"§2 client IDs: 16 unpredictable random bytes; {'; '.join(problems)} ({shown}, ...)"


@spec("§2 1026", needs=("§2 1025",))
def test_s2_1026_public_key_is_stored_and_answered_with_an_aes_key(
    server: ServerProcess, db: SubmissionDatabase, unique_name: NameFactory
) -> None:
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, unique_name(), server)
    row = db.client(client_id, "PublicKey", "AESKey")
    assert row is not None, f"§2 1026: no clients row for {client_id.hex()}"
    assert row.public_key == export_public_key(RSA_KEY), (
        f"§2 1026: PublicKey holds the 160 bytes the client sent; it holds {_shape(row.public_key)}"
    )
    assert row.aes_key == aes_key and len(aes_key) == 16, (
        f"§2 1026: AESKey holds the 16-byte key sent in 2102; it holds {_shape(row.aes_key)}"
    )


def _shape(value: object) -> str:
    if isinstance(value, bytes):
        return f"a {len(value)}-byte blob"
    return f"{type(value).__name__} {value!r:.40}"


@spec("§2 1026 refusals", needs=("§2 1025",))
def test_s2_1026_an_unknown_or_mismatched_client_gets_2107(
    server: ServerProcess, unique_name: NameFactory
) -> None:
    cases = Cases("§2 1026: a public key for a client that is not this one gets 2107")
    with cases.case("another client's name"), RawConnection(server.address) as conn:
        client_id = register(conn, unique_name())
        payload = encode_name(unique_name()) + export_public_key(RSA_KEY)
        conn.send(pack_request(client_id, RequestCode.PUBLIC_KEY, payload))
        expect(conn, ResponseCode.GENERAL_ERROR, "")
    with cases.case("an unknown client ID"), RawConnection(server.address) as conn:
        payload = encode_name(unique_name()) + export_public_key(RSA_KEY)
        conn.send(pack_request(os.urandom(16), RequestCode.PUBLIC_KEY, payload))
        expect(conn, ResponseCode.GENERAL_ERROR, "")
    cases.check()


def _reconnect(server: ServerProcess, client_id: bytes, name: str, section: str) -> AesKeyResponse:
    with RawConnection(server.address) as conn:
        conn.send(pack_request(client_id, RequestCode.RECONNECT, encode_name(name)))
        return parse(section, AesKeyResponse.unpack, expect(conn, ResponseCode.RECONNECTED, section))


@spec("§2 1027", needs=("§2 1025", "§2 1026"))
def test_s2_1027_reconnect_answers_2105_and_stores_the_new_key(
    server: ServerProcess, db: SubmissionDatabase, unique_name: NameFactory
) -> None:
    name = unique_name()
    with RawConnection(server.address) as conn:
        client_id, _ = new_client(conn, name, server)
    reply = _reconnect(server, client_id, name, f"§2 1027 of {name!r}, whose key exchange is done")
    assert reply.client_id == client_id, (
        f"§2 1027: 2105 starts with the client's ID {client_id.hex()}, not {reply.client_id.hex()}"
    )
    key = aes_key_of(reply.encrypted_key, client_id, server)
    row = db.client(client_id, "AESKey")
    assert row is not None and row.aes_key == key, (
        f"§2 1027: AESKey holds the key sent in 2105; it holds {_shape(row.aes_key if row else None)}"
    )


@spec("§2 AES keys", needs=("§2 1025", "§2 1026", "§2 1027"))
def test_s2_every_key_exchange_makes_a_fresh_aes_key(server: ServerProcess, unique_name: NameFactory) -> None:
    """Two clients' keys differ; one client's 1026, second 1026 and 1027 each give a new key."""
    names = [unique_name(), unique_name()]
    keys = {}
    ids = {}
    for name in names:
        with RawConnection(server.address) as conn:
            ids[name], keys[f"{name} 1026"] = new_client(conn, name, server)
    reply = _reconnect(server, ids[names[0]], names[0], "§2 1027")
    keys[f"{names[0]} 1027"] = aes_key_of(reply.encrypted_key, ids[names[0]], server)
    cases = Cases("§2 AES keys: every 1026 and 1027 generates a fresh random AES key")
    with cases.case("two clients"):
        assert keys[f"{names[0]} 1026"] != keys[f"{names[1]} 1026"], "two clients got the same AES key"
    with cases.case("1026 then 1027"):
        assert keys[f"{names[0]} 1026"] != keys[f"{names[0]} 1027"], "a reconnect gave the same AES key"
    cases.check()


@spec("§2 1027 denied", needs=("§2 1025", "§2 1026"))
def test_s2_1027_reconnect_denied_echoes_the_client_id(
    server: ServerProcess, unique_name: NameFactory
) -> None:
    name = unique_name()
    cases = Cases("§2 1027: a reconnect of no such client gets 2106, which echoes the request's client ID")
    with RawConnection(server.address) as conn:
        client_id, _ = new_client(conn, name, server)
    for case, asked_id, asked_name in (
        ("an unknown ID", os.urandom(16), name),
        ("a wrong name", client_id, unique_name()),
    ):
        with cases.case(case), RawConnection(server.address) as conn:
            conn.send(pack_request(asked_id, RequestCode.RECONNECT, encode_name(asked_name)))
            echoed = expect(conn, ResponseCode.RECONNECT_DENIED, "1027")
            assert echoed == asked_id, f"2106 carries {echoed.hex()}, not {asked_id.hex()}"
    cases.check()


@spec("§2 1027 incomplete", needs=("§2 1025", "§2 1027 denied"))
def test_s2_1027_reconnect_of_an_incomplete_registration_drops_it(
    server: ServerProcess, db: SubmissionDatabase, unique_name: NameFactory
) -> None:
    """2106 for a client that never sent its key; its 1025 on the same connection then succeeds (§7)."""
    name = unique_name()
    with RawConnection(server.address) as conn:
        client_id = register(conn, name)
        conn.send(pack_request(client_id, RequestCode.RECONNECT, encode_name(name)))
        echoed = expect(conn, ResponseCode.RECONNECT_DENIED, "§2 1027 of a client that never sent its key")
        assert echoed == client_id, f"§2 1027: 2106 echoes {client_id.hex()}, not {echoed.hex()}"
        conn.send(pack_request(bytes(16), RequestCode.REGISTER, encode_name(name)))
        new_id = expect(conn, ResponseCode.REGISTERED, "§2 1027: after its 2106, the name is free for a 1025")
    assert new_id != client_id, "§2 1025: a new registration gets a new ID"
    rows = db.clients_named(name)
    assert len(rows) == 1, f"§2 1027: the dropped registration is gone; {len(rows)} rows for {name!r}"


@spec("§2 LastSeen", needs=("§2 1025", "§2 1026", "§2 1027", "§2 1028"))
def test_s2_last_seen_is_updated_on_every_request(
    server: ServerProcess, db: SubmissionDatabase, unique_name: NameFactory
) -> None:
    """Set LastSeen to a stale value, send one request, look again: for 1027, 1028 and 1029."""
    name = unique_name()
    stale = "2000-01-01 00:00:00"
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, name, server)
    table, id_column, stored_id = db.row_key("clients", client_id)
    column = db.names("clients")[1].get("LastSeen")
    if column is None:
        pytest.skip("needs clients.LastSeen (see §5 database)")

    def set_stale() -> None:
        with closing(sqlite3.connect(server.db_path, timeout=READ_TIMEOUT)) as writer, writer:
            writer.execute(f'UPDATE "{table}" SET "{column}" = ? WHERE "{id_column}" = ?', (stale, stored_id))

    def last_seen() -> object:
        row = db.client(client_id, "LastSeen")
        return row.last_seen if row is not None else None

    cases = Cases("§2 LastSeen: updated on every request of a registered client")
    with cases.case("1027"):
        set_stale()
        _reconnect(server, client_id, name, "1027")
        assert last_seen() not in (None, stale), f"LastSeen stayed {last_seen()!r}"
    with RawConnection(server.address) as conn:
        conn.send(pack_request(client_id, RequestCode.RECONNECT, encode_name(name)))
        reply = parse("1027", AesKeyResponse.unpack, expect(conn, ResponseCode.RECONNECTED, "1027"))
        aes_key = aes_key_of(reply.encrypted_key, client_id, server)
        with cases.case("1028"):
            set_stale()
            send_file(conn, client_id, aes_key, "seen.bin", b"seen")
            assert last_seen() not in (None, stale), f"LastSeen stayed {last_seen()!r}"
        with cases.case("1029"):
            set_stale()
            confirm(conn, client_id, "seen.bin")
            assert last_seen() not in (None, stale), f"LastSeen stayed {last_seen()!r}"
    cases.check()
