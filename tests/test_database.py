"""database.py on its own: schema, constraints, and errors turned into DatabaseError."""

from __future__ import annotations

import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from database import ClientRecord, ConstraintViolation, Database, FileRecord, LimitReached, Limits, _timestamp


@pytest.fixture
def db(tmp_path: Path) -> Database:
    return Database(tmp_path / "defensive.db")


def test_schema_has_exactly_the_protocol_columns(db: Database) -> None:
    with closing(sqlite3.connect(db.path)) as conn:
        clients = [row[1] for row in conn.execute("PRAGMA table_info(clients)")]
        files = [row[1] for row in conn.execute("PRAGMA table_info(files)")]
    assert clients == ["ID", "Name", "PublicKey", "LastSeen", "AESKey"]
    assert files == ["ID", "FileName", "PathName", "Verified"]
    assert stat.S_IMODE(db.path.stat().st_mode) == 0o600


def test_a_taken_name_is_none(db: Database) -> None:
    assert db.register_client("alice") is not None
    assert db.register_client("alice") is None


def test_a_file_of_an_unknown_client_is_a_constraint_violation(db: Database) -> None:
    with pytest.raises(ConstraintViolation):
        db.put_file(bytes(16), "x.bin", "storage/x")


def test_key_sizes_are_enforced_by_the_schema(db: Database) -> None:
    client_id = db.register_client("bob")
    assert client_id is not None
    with pytest.raises(ConstraintViolation):
        db.set_keys(client_id, "bob", b"short", bytes(16))


def test_records_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "defensive.db"
    with Database(path) as first:
        client_id = first.register_client("carol")
        assert client_id is not None
        first.set_keys(client_id, "carol", bytes(160), bytes(16))
        first.put_file(client_id, "a/x.bin", "storage/p")
        assert first.set_verified(client_id, "a/x.bin")
    with Database(path) as second:
        record = second.get_client(client_id)
        assert record is not None and record.name == "carol" and record.aes_key == bytes(16)
        stored = second.get_file(client_id, "a/x.bin")
        assert stored is not None and stored.verified and stored.path_name == "storage/p"


def test_replacing_a_file_resets_verified(db: Database) -> None:
    client_id = db.register_client("dave")
    assert client_id is not None
    db.put_file(client_id, "f", "storage/1")
    db.set_verified(client_id, "f")
    db.put_file(client_id, "f", "storage/1")
    stored = db.get_file(client_id, "f")
    assert stored is not None and not stored.verified


def test_only_an_incomplete_registration_is_dropped(db: Database) -> None:
    complete, incomplete = db.register_client("erin"), db.register_client("frank")
    assert complete is not None and incomplete is not None
    db.set_keys(complete, "erin", bytes(160), bytes(16))
    assert not db.delete_incomplete_client(complete)
    assert db.delete_incomplete_client(incomplete)
    assert db.count_clients() == 1


def test_the_schema_itself_refuses_a_second_client_of_one_name(db: Database) -> None:
    """The UNIQUE constraint, not a SELECT before the INSERT, decides the name race (§2 1025):
    a duplicate written straight into the table, past register_client, is refused."""
    assert db.register_client("alice") is not None
    with closing(sqlite3.connect(db.path)) as conn, pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        conn.execute(
            "INSERT INTO clients (ID, Name, LastSeen) VALUES (?, 'alice', '2000-01-01 00:00:00')",
            (bytes(range(16)),),
        )


RACE_ROUNDS = 30
RACERS = 16


def test_racing_registrations_of_one_name_give_exactly_one_client(db: Database) -> None:
    """Many threads released at once by a barrier, round after round: exactly one wins each
    name. The schema test above is the proof; this one checks register_client uses it."""
    barrier = threading.Barrier(RACERS)

    def race(name: str) -> bytes | None:
        barrier.wait(10)
        return db.register_client(name)

    with ThreadPoolExecutor(RACERS) as pool:
        for round_number in range(RACE_ROUNDS):
            name = f"racer-{round_number}"
            winners = [result for result in pool.map(race, [name] * RACERS) if result is not None]
            assert len(winners) == 1, f"round {round_number}: {len(winners)} registrations of {name}"
            record = db.get_client(winners[0])
            assert record is not None and record.name == name
    assert db.count_clients() == RACE_ROUNDS


def _last_seen(db: Database, client_id: bytes) -> str:
    [(value,)] = db._execute("SELECT LastSeen FROM clients WHERE ID = ?", (client_id,)).rows
    return str(value)


def test_touch_moves_last_seen_of_that_client_only(db: Database) -> None:
    first, second = db.register_client("alice"), db.register_client("bob")
    assert first is not None and second is not None
    stale = "2000-01-01 00:00:00+00:00"
    db._execute("UPDATE clients SET LastSeen = ?", (stale,))
    db.touch(first)
    assert datetime.fromisoformat(_last_seen(db, first)) > datetime.now(UTC) - timedelta(minutes=1)
    assert _last_seen(db, second) == stale


def test_half_registrations_expire_after_the_timeout_and_keyed_clients_stay(tmp_path: Path) -> None:
    db = Database(tmp_path / "defensive.db", Limits(registration_timeout=60))
    keyed, half = db.register_client("keyed"), db.register_client("half")
    assert keyed is not None and half is not None
    assert db.set_keys(keyed, "keyed", bytes(160), bytes(16))
    now = datetime.now(UTC)
    assert db.expire_incomplete_registrations(now + timedelta(seconds=30)) == 0
    assert db.expire_incomplete_registrations(now + timedelta(seconds=120)) == 1
    assert db.get_client(half) is None and db.get_client(keyed) is not None


def test_put_file_returns_the_path_it_replaced(db: Database) -> None:
    client_id = db.register_client("erin")
    assert client_id is not None
    assert db.put_file(client_id, "f", "storage/1") is None
    assert db.set_verified(client_id, "f")
    assert db.put_file(client_id, "f", "storage/2") == "storage/1"
    assert db.get_file(client_id, "f") == FileRecord(client_id, "f", "storage/2", False)
    assert db.put_file(client_id, "g", "storage/3") is None
    assert db.path_names() == {"storage/2", "storage/3"}


def test_the_files_per_client_limit(tmp_path: Path) -> None:
    db = Database(tmp_path / "defensive.db", Limits(max_files_per_client=2))
    client_id, other = db.register_client("a"), db.register_client("b")
    assert client_id is not None and other is not None
    db.put_file(client_id, "1", "storage/1")
    assert db.may_add_file(client_id, "2")
    db.put_file(client_id, "2", "storage/2")
    assert not db.may_add_file(client_id, "3")
    assert db.may_add_file(client_id, "2"), "a replacement adds no file"
    assert db.may_add_file(other, "3"), "the limit is per client"
    with pytest.raises(LimitReached, match=r"has 2 files, the most it may have \(--max-files-per-client\)$"):
        db.put_file(client_id, "3", "storage/3")
    assert db.put_file(client_id, "2", "storage/2b") == "storage/2"


def test_set_verified_and_delete_file_say_whether_there_was_a_file(db: Database) -> None:
    client_id = db.register_client("frank")
    assert client_id is not None
    assert not db.set_verified(client_id, "f")
    assert db.delete_file(client_id, "f") is None
    db.put_file(client_id, "f", "storage/1")
    db.put_file(client_id, "g", "storage/2")
    assert db.delete_file(client_id, "f") == "storage/1"
    assert db.get_file(client_id, "f") is None and db.get_file(client_id, "g") is not None


def test_set_aes_key_needs_the_public_key_still_stored(db: Database) -> None:
    client_id = db.register_client("gina")
    assert client_id is not None
    db.set_keys(client_id, "gina", bytes(160), bytes(16))
    assert not db.set_aes_key(client_id, b"\x01" * 160, b"\x02" * 16)
    assert db.set_aes_key(client_id, bytes(160), b"\x03" * 16)
    record = db.get_client(client_id)
    assert record == ClientRecord(client_id, "gina", bytes(160), b"\x03" * 16)
    assert not db.delete_incomplete_client(bytes(16))


def test_set_keys_refuses_another_name_or_another_key(db: Database) -> None:
    client_id = db.register_client("hank")
    assert client_id is not None
    assert not db.set_keys(client_id, "other", bytes(160), bytes(16))
    assert db.set_keys(client_id, "hank", bytes(160), bytes(16))
    assert not db.set_keys(client_id, "hank", b"\x01" * 160, bytes(16))
    assert db.set_keys(client_id, "hank", bytes(160), b"\x01" * 16)


def test_records_whose_files_are_gone_are_forgotten(db: Database) -> None:
    client_id = db.register_client("ivy")
    assert client_id is not None
    for name in ("a", "b", "c"):
        db.put_file(client_id, name, f"storage/{name}")
    db.delete_files_by_path({"storage/a", "storage/c"})
    assert db.path_names() == {"storage/b"}
    assert db.count_clients() == 1


def test_last_seen_has_one_text_form_in_utc() -> None:
    # Text order is time order only if every LastSeen has this one form.
    moment = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    assert _timestamp(moment) == "2026-01-02 03:04:05+00:00"


def test_full_registrations_say_which_limits_are_reached(tmp_path: Path) -> None:
    db = Database(tmp_path / "defensive.db", Limits(max_incomplete_registrations=1, max_clients=5))
    assert db.register_client("first") is not None
    with pytest.raises(LimitReached, match=r"^registrations are full \(1 without a key or 5 in all\)$"):
        db.register_client("second")


@pytest.fixture
def far_east_local_time(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process's local time 14 hours ahead of UTC (POSIX TZ: the offset is west of UTC)."""
    monkeypatch.setenv("TZ", "FAR-14")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("far_east_local_time")
def test_half_registrations_expire_by_utc_whatever_the_local_time(tmp_path: Path) -> None:
    # LastSeen is UTC; a cutoff taken in local time would be 14 hours late here and drop
    # a registration made a moment ago.
    db = Database(tmp_path / "defensive.db", Limits(registration_timeout=3600))
    half = db.register_client("half")
    assert half is not None
    assert db.expire_incomplete_registrations() == 0
    assert db.register_client("other") is not None  # which expires the old ones first
    assert db.get_client(half) is not None
