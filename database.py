"""The server's SQLite store, `defensive.db` (PROTOCOL.md §5).

Tables and columns are exactly those the protocol fixes: `clients(ID, Name,
PublicKey, LastSeen, AESKey)` and `files(ID, FileName, PathName, Verified)`.
One connection shared by the handler threads behind a lock: SQLite serialises
writers anyway, every operation here is a few microseconds, and a lock is the
simplest thing that is obviously thread-safe. WAL journaling keeps the file
consistent if the process is killed mid-write. Its errors are
`protocol.ServerFailure`s: the request that met one is answered 2107.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

from protocol import OverLimit, ServerFailure

SCHEMA = """
CREATE TABLE IF NOT EXISTS clients (
    ID        BLOB PRIMARY KEY CHECK (length(ID) = 16),
    Name      TEXT NOT NULL UNIQUE CHECK (length(Name) BETWEEN 1 AND 255),
    PublicKey BLOB CHECK (PublicKey IS NULL OR length(PublicKey) = 160),
    LastSeen  TEXT NOT NULL,
    AESKey    BLOB CHECK (AESKey IS NULL OR length(AESKey) = 16)
);
CREATE TABLE IF NOT EXISTS files (
    ID       BLOB NOT NULL REFERENCES clients (ID) ON DELETE CASCADE,
    FileName TEXT NOT NULL CHECK (length(FileName) BETWEEN 1 AND 255),
    PathName TEXT NOT NULL CHECK (length(PathName) BETWEEN 1 AND 255),
    Verified BOOLEAN NOT NULL DEFAULT 0 CHECK (Verified IN (0, 1)),
    PRIMARY KEY (ID, FileName)
);
-- Start-up forgets records by PathName: without an index each is a scan of the table.
CREATE INDEX IF NOT EXISTS files_by_path ON files (PathName);
-- Half registrations (no public key yet) are counted and expired on every 1025.
CREATE INDEX IF NOT EXISTS incomplete_clients ON clients (LastSeen) WHERE PublicKey IS NULL;
"""

DATABASE_FILE_NAME = "defensive.db"
# How long a statement waits for another process holding the database (e.g. an
# operator's sqlite3 shell) before it fails and the request gets 2107.
BUSY_TIMEOUT_SECONDS = 5.0
# A registration with no public key (1025 without its 1026) is dropped after this many
# seconds without a request, which frees its name: an honest client sends its 1026 at once.
DEFAULT_REGISTRATION_TIMEOUT = 300.0
# Half registrations held at once; a 1025 beyond it gets 2107 (SECURITY.md §2).
DEFAULT_MAX_INCOMPLETE_REGISTRATIONS = 1000
# Clients registered at once, complete or not: bounds the database's size.
DEFAULT_MAX_CLIENTS = 100_000
# Files one client may have stored at once (a course's client sends a few per run).
DEFAULT_MAX_FILES_PER_CLIENT = 1000


@dataclass(frozen=True)
class Limits:
    """The bounds on what peers can make the database hold (server options)."""

    registration_timeout: float = DEFAULT_REGISTRATION_TIMEOUT
    max_incomplete_registrations: int = DEFAULT_MAX_INCOMPLETE_REGISTRATIONS
    max_clients: int = DEFAULT_MAX_CLIENTS
    max_files_per_client: int = DEFAULT_MAX_FILES_PER_CLIENT


class DatabaseError(ServerFailure):
    """The database could not carry out an operation (locked, read-only, corrupt)."""


class ConstraintViolation(DatabaseError):
    """A change broke a constraint: a taken name, a file of a client that is gone."""


class LimitReached(OverLimit):
    """A change would go over one of the Limits: the request is refused (2107), with this reason."""


@dataclass(frozen=True)
class ClientRecord:
    client_id: bytes
    name: str
    public_key: bytes | None
    aes_key: bytes | None


@dataclass(frozen=True)
class FileRecord:
    client_id: bytes
    file_name: str
    path_name: str
    verified: bool


@dataclass(frozen=True)
class _Result:
    rows: list[tuple[Any, ...]]
    rowcount: int

    def one(self) -> tuple[Any, ...] | None:
        return self.rows[0] if self.rows else None


def _timestamp(moment: datetime) -> str:
    """LastSeen's text form; one fixed form and zone, so that text order is time order."""
    return moment.isoformat(sep=" ", timespec="seconds")


def _now() -> str:
    return _timestamp(datetime.now(UTC))


class Database:
    """Thread-safe access to `defensive.db`; every change is one transaction."""

    def __init__(self, path: Path, limits: Limits | None = None) -> None:
        self.path = path
        self.limits = limits or Limits()
        fresh = not path.exists()
        if fresh:
            # Created readable by the server's user only: it holds AES keys.
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        self._lock = threading.Lock()
        try:
            # pragma below: sqlite3's default timeout is 5 s too, so a call without timeout= does the same
            self._conn = sqlite3.connect(  # pragma: no mutate
                path, timeout=BUSY_TIMEOUT_SECONDS, check_same_thread=False
            )
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA foreign_keys = ON")
            with self._conn:
                self._conn.executescript(SCHEMA)
        except sqlite3.Error as err:
            raise DatabaseError(f"cannot open {path}: {err}") from err

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _execute(self, sql: str, params: tuple[object, ...] = ()) -> _Result:
        """Run one statement in its own transaction, under the lock, and fetch its rows."""
        try:
            with self._lock, self._conn:
                cursor = self._conn.execute(sql, params)
                return _Result(cursor.fetchall(), cursor.rowcount)
        except sqlite3.IntegrityError as err:
            raise ConstraintViolation(f"{err} (in: {sql.split(maxsplit=1)[0]} ...)") from err
        except sqlite3.Error as err:
            raise DatabaseError(f"{err} (in: {sql.split(maxsplit=1)[0]} ...)") from err

    @contextmanager
    def _transaction(self, what: str) -> Iterator[sqlite3.Connection]:
        """Several statements in one transaction, under the lock; committed if no error."""
        try:
            with self._lock, self._conn:
                # IMMEDIATE: take the write lock now, so another process cannot change
                # what the first statements read before the last one writes.
                self._conn.execute("BEGIN IMMEDIATE")
                yield self._conn
        except sqlite3.IntegrityError as err:
            raise ConstraintViolation(f"{err} (in: {what})") from err
        except sqlite3.Error as err:
            raise DatabaseError(f"{err} (in: {what})") from err

    # --- clients ------------------------------------------------------------

    def count_clients(self) -> int:
        return int(self._execute("SELECT count(*) FROM clients").rows[0][0])

    def register_client(self, name: str) -> bytes | None:
        """Create a client with a fresh random UUID; None if the name is taken.

        Expired half registrations go first, so that their names are free. The
        UNIQUE constraint decides races: of many threads registering one name
        at once, exactly one INSERT succeeds. LimitReached when the Limits on
        registrations are reached.
        """
        client_id = uuid.uuid4().bytes
        limits = self.limits
        try:
            with self._transaction("register") as conn:
                self._expire_incomplete(conn)
                inserted = conn.execute(
                    "INSERT INTO clients (ID, Name, LastSeen) SELECT ?, ?, ? "
                    "WHERE (SELECT count(*) FROM clients WHERE PublicKey IS NULL) < ? "
                    "AND (SELECT count(*) FROM clients) < ?",
                    (client_id, name, _now(), limits.max_incomplete_registrations, limits.max_clients),
                ).rowcount
        except ConstraintViolation:
            return None
        if inserted != 1:
            raise LimitReached(
                f"registrations are full ({limits.max_incomplete_registrations} without a key "
                f"or {limits.max_clients} in all)"
            )
        return client_id

    def _expire_incomplete(self, conn: sqlite3.Connection, now: datetime | None = None) -> int:
        cutoff = (now or datetime.now(UTC)) - timedelta(seconds=self.limits.registration_timeout)
        return conn.execute(
            "DELETE FROM clients WHERE PublicKey IS NULL AND LastSeen < ?", (_timestamp(cutoff),)
        ).rowcount

    def expire_incomplete_registrations(self, now: datetime | None = None) -> int:
        """Drop the half registrations silent for longer than the timeout; how many went."""
        with self._transaction("expire") as conn:
            return self._expire_incomplete(conn, now)

    def get_client(self, client_id: bytes) -> ClientRecord | None:
        row = self._execute(
            "SELECT ID, Name, PublicKey, AESKey FROM clients WHERE ID = ?", (client_id,)
        ).one()
        return ClientRecord(*row) if row else None

    def set_keys(self, client_id: bytes, name: str, public_key: bytes, aes_key: bytes) -> bool:
        """Store a 1026's keys; False if the client `name` is gone, or has another public key.

        Checked in the UPDATE itself: a 1027 (or the expiry) may have dropped the
        half registration since the handler read it (§2), and then no key may be
        handed out.
        """
        result = self._execute(
            "UPDATE clients SET PublicKey = ?, AESKey = ?, LastSeen = ? "
            "WHERE ID = ? AND Name = ? AND (PublicKey IS NULL OR PublicKey = ?)",
            (public_key, aes_key, _now(), client_id, name, public_key),
        )
        return result.rowcount == 1

    def set_aes_key(self, client_id: bytes, public_key: bytes, aes_key: bytes) -> bool:
        """Store a 1027's new AES key; False unless the client still has `public_key`."""
        result = self._execute(
            "UPDATE clients SET AESKey = ?, LastSeen = ? WHERE ID = ? AND PublicKey = ?",
            (aes_key, _now(), client_id, public_key),
        )
        return result.rowcount == 1

    def touch(self, client_id: bytes) -> None:
        self._execute("UPDATE clients SET LastSeen = ? WHERE ID = ?", (_now(), client_id))

    def delete_incomplete_client(self, client_id: bytes) -> bool:
        """Drop a registration that never completed its key exchange (§2, 1027)."""
        result = self._execute("DELETE FROM clients WHERE ID = ? AND PublicKey IS NULL", (client_id,))
        return result.rowcount == 1

    # --- files --------------------------------------------------------------

    def may_add_file(self, client_id: bytes, file_name: str) -> bool:
        """Whether a 1028 of `file_name` stays within the files-per-client limit (checked again
        when it is recorded, by put_file: this is the early refusal, before the content)."""
        row = self._execute(
            "SELECT count(*), sum(FileName = ?) FROM files WHERE ID = ?", (file_name, client_id)
        ).one()
        assert row is not None
        count, same = row
        return bool(same) or count < self.limits.max_files_per_client

    def put_file(self, client_id: bytes, file_name: str, path_name: str) -> str | None:
        """Record a received file, unverified, replacing an earlier copy of the same name.

        Returns the PathName it replaced (whose file the caller removes), or None.
        LimitReached if the client already has the most files it may have.
        """
        with self._transaction("put_file") as conn:
            row = conn.execute(
                "SELECT PathName FROM files WHERE ID = ? AND FileName = ?", (client_id, file_name)
            ).fetchone()
            if row is not None:
                conn.execute(
                    "UPDATE files SET PathName = ?, Verified = 0 WHERE ID = ? AND FileName = ?",
                    (path_name, client_id, file_name),
                )
                return str(row[0])
            inserted = conn.execute(
                "INSERT INTO files (ID, FileName, PathName, Verified) SELECT ?, ?, ?, 0 "
                "WHERE (SELECT count(*) FROM files WHERE ID = ?) < ?",
                (client_id, file_name, path_name, client_id, self.limits.max_files_per_client),
            ).rowcount
        if inserted != 1:
            raise LimitReached(
                f"client {client_id.hex()} has {self.limits.max_files_per_client} files, "
                "the most it may have (--max-files-per-client)"
            )
        return None

    def get_file(self, client_id: bytes, file_name: str) -> FileRecord | None:
        row = self._execute(
            "SELECT ID, FileName, PathName, Verified FROM files WHERE ID = ? AND FileName = ?",
            (client_id, file_name),
        ).one()
        return FileRecord(row[0], row[1], row[2], bool(row[3])) if row else None

    def set_verified(self, client_id: bytes, file_name: str) -> bool:
        result = self._execute(
            "UPDATE files SET Verified = 1 WHERE ID = ? AND FileName = ?", (client_id, file_name)
        )
        return result.rowcount == 1

    def delete_file(self, client_id: bytes, file_name: str) -> str | None:
        """Forget a file; its PathName (whose file the caller removes), or None if there was none."""
        row = self._execute(
            "DELETE FROM files WHERE ID = ? AND FileName = ? RETURNING PathName", (client_id, file_name)
        ).one()
        return str(row[0]) if row else None

    def path_names(self) -> set[str]:
        """Every stored file's PathName: what start-up keeps in the storage folder."""
        return {row[0] for row in self._execute("SELECT PathName FROM files").rows}

    def delete_files_by_path(self, path_names: set[str]) -> None:
        """Forget records whose stored file is gone (found at start-up): one transaction."""
        with self._transaction("delete_files_by_path") as conn:
            conn.executemany("DELETE FROM files WHERE PathName = ?", [(path,) for path in path_names])
