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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from protocol import ServerFailure

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
"""

DATABASE_FILE_NAME = "defensive.db"
# How long a statement waits for another process holding the database (e.g. an
# operator's sqlite3 shell) before it fails and the request gets 2107.
BUSY_TIMEOUT_SECONDS = 5.0


class DatabaseError(ServerFailure):
    """The database could not carry out an operation (locked, read-only, corrupt)."""


class ConstraintViolation(DatabaseError):
    """A change broke a constraint: a taken name, a file of a client that is gone."""


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


def _now() -> str:
    return datetime.now(UTC).isoformat(sep=" ", timespec="seconds")


class Database:
    """Thread-safe access to `defensive.db`; every change is one transaction."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fresh = not path.exists()
        if fresh:
            # Created readable by the server's user only: it holds AES keys.
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, check_same_thread=False)
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

    # --- clients ------------------------------------------------------------

    def count_clients(self) -> int:
        return int(self._execute("SELECT count(*) FROM clients").rows[0][0])

    def register_client(self, name: str) -> bytes | None:
        """Create a client with a fresh random UUID; None if the name is taken.

        The UNIQUE constraint decides races: of many threads registering one
        name at once, exactly one INSERT succeeds.
        """
        client_id = uuid.uuid4().bytes
        try:
            self._execute(
                "INSERT INTO clients (ID, Name, LastSeen) VALUES (?, ?, ?)",
                (client_id, name, _now()),
            )
        except ConstraintViolation:
            return None
        return client_id

    def get_client(self, client_id: bytes) -> ClientRecord | None:
        row = self._execute(
            "SELECT ID, Name, PublicKey, AESKey FROM clients WHERE ID = ?", (client_id,)
        ).one()
        return ClientRecord(*row) if row else None

    def set_keys(self, client_id: bytes, public_key: bytes, aes_key: bytes) -> None:
        self._execute(
            "UPDATE clients SET PublicKey = ?, AESKey = ?, LastSeen = ? WHERE ID = ?",
            (public_key, aes_key, _now(), client_id),
        )

    def set_aes_key(self, client_id: bytes, aes_key: bytes) -> None:
        self._execute(
            "UPDATE clients SET AESKey = ?, LastSeen = ? WHERE ID = ?",
            (aes_key, _now(), client_id),
        )

    def touch(self, client_id: bytes) -> None:
        self._execute("UPDATE clients SET LastSeen = ? WHERE ID = ?", (_now(), client_id))

    def delete_incomplete_client(self, client_id: bytes) -> bool:
        """Drop a registration that never completed its key exchange (§2, 1027)."""
        result = self._execute("DELETE FROM clients WHERE ID = ? AND PublicKey IS NULL", (client_id,))
        return result.rowcount == 1

    # --- files --------------------------------------------------------------

    def put_file(self, client_id: bytes, file_name: str, path_name: str) -> None:
        """Record a received file, unverified, replacing an earlier copy of the same name."""
        self._execute(
            "INSERT INTO files (ID, FileName, PathName, Verified) VALUES (?, ?, ?, 0) "
            "ON CONFLICT (ID, FileName) DO UPDATE SET PathName = excluded.PathName, Verified = 0",
            (client_id, file_name, path_name),
        )

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

    def delete_file(self, client_id: bytes, file_name: str) -> bool:
        result = self._execute("DELETE FROM files WHERE ID = ? AND FileName = ?", (client_id, file_name))
        return result.rowcount == 1

    def path_names(self) -> set[str]:
        """Every stored file's PathName: what start-up keeps in the storage folder."""
        return {row[0] for row in self._execute("SELECT PathName FROM files").rows}

    def delete_files_by_path(self, path_names: set[str]) -> None:
        """Forget records whose stored file is gone (found at start-up)."""
        for path_name in path_names:
            self._execute("DELETE FROM files WHERE PathName = ?", (path_name,))
