"""A submission's defensive.db, read leniently (everywhere but the one `§5 database` check).

PROTOCOL.md §5 fixes the tables, columns and types; `§5 database` alone holds
a submission to them. Every other check wants to know what the server stored,
whatever form it chose, so that one schema defect fails one row:

- table and column names match case-insensitively, with or without underscores
  (`clients.AESKey`, `Clients.aes_key`);
- IDs are 16-byte blobs, 32 hex digits, or UUID text;
- names are text or NUL-padded blobs;
- Verified is 0/1, true/false in any case, or 'True'/'False'.

A table or column that cannot be found even so makes the check that needed it
"not run", naming what is missing; `§5 database` fails for it.
"""

from __future__ import annotations

import sqlite3
import uuid
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest

READ_TIMEOUT = 10.0  # seconds to wait for the server's write lock

TABLES = {
    "clients": ("ID", "Name", "PublicKey", "LastSeen", "AESKey"),
    "files": ("ID", "FileName", "PathName", "Verified"),
}
# Other spellings of a column seen in real submissions (normalised: lower case, no underscores).
ALIASES = {"files.ID": ("clientid", "ownerid", "uuid"), "clients.ID": ("clientid", "uuid")}


def normalised(name: str) -> str:
    return name.lower().replace("_", "")


def as_id(value: object) -> bytes | None:
    """A client ID in any of the forms submissions store: 16 bytes, 32 hex digits, UUID text."""
    if isinstance(value, bytes) and len(value) == 16:
        return value
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    if isinstance(value, str):
        try:
            return uuid.UUID(value.strip()).bytes  # 32 hex digits, or with dashes or braces
        except ValueError:
            return None
    return None


def as_text(value: object) -> str | None:
    """Text, or a blob up to its first NUL (a name stored as its 255-byte field)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.split(b"\0", 1)[0].decode("utf-8", "replace")
    return None


def as_bool(value: object) -> bool | None:
    """Verified: 0/1, true/false in any case, 'True'/'False'; None for anything else."""
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if isinstance(value, str) and value.strip().lower() in ("0", "1", "true", "false"):
        return value.strip().lower() in ("1", "true")
    return None


@dataclass(frozen=True)
class ClientRow:
    client_id: bytes | None
    name: str | None
    public_key: object
    last_seen: object
    aes_key: object


@dataclass(frozen=True)
class FileRow:
    client_id: bytes | None
    file_name: str | None
    path_name: str | None
    verified: bool | None
    verified_raw: object


class SubmissionDatabase:
    """Read-only access to a running server's database, whatever its spelling of §5."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _connect(self) -> sqlite3.Connection:
        if not self.path.is_file():
            pytest.skip("needs the database: there is no defensive.db (see §5 database)")
        return sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=READ_TIMEOUT)

    def names(self, table: str) -> tuple[str, dict[str, str]]:
        """The table's name as the submission spells it, and its columns: §5 name -> its name."""
        with closing(self._connect()) as db:
            tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            wanted = {normalised(table), normalised(table.rstrip("s"))}
            found = [name for name in tables if normalised(name) in wanted]
            if not found:
                pytest.skip(f"needs the {table} table: defensive.db has only {tables} (see §5 database)")
            columns = [row[1] for row in db.execute(f'PRAGMA table_info("{found[0]}")')]
        mapping = {}
        for column in TABLES[table]:
            spellings = {normalised(column), *ALIASES.get(f"{table}.{column}", ())}
            matches = [name for name in columns if normalised(name) in spellings]
            if matches:
                mapping[column] = matches[0]
        return found[0], mapping

    def _rows(self, table: str, columns: tuple[str, ...]) -> list[dict[str, object]]:
        name, mapping = self.names(table)
        missing = [column for column in columns if column not in mapping]
        if missing:
            pytest.skip(
                f"needs {table}.{', '.join(missing)}: the table has {sorted(mapping.values())} "
                "(see §5 database)"
            )
        selected = ", ".join(f'"{mapping[column]}"' for column in columns)
        with closing(self._connect()) as db:
            # Names from the database's own catalogue, quoted: no peer input reaches this text.
            query = f'SELECT {selected} FROM "{name}"'  # noqa: S608
            return [dict(zip(columns, row, strict=True)) for row in db.execute(query)]

    def clients(self, *columns: str) -> list[ClientRow]:
        wanted = ("ID", *columns)
        rows = self._rows("clients", wanted)
        return [
            ClientRow(
                as_id(row["ID"]),
                as_text(row.get("Name")),
                row.get("PublicKey"),
                row.get("LastSeen"),
                row.get("AESKey"),
            )
            for row in rows
        ]

    def client(self, client_id: bytes, *columns: str) -> ClientRow | None:
        found = [row for row in self.clients(*columns) if row.client_id == client_id]
        return found[0] if found else None

    def clients_named(self, name: str) -> list[ClientRow]:
        return [row for row in self.clients("Name") if row.name == name]

    def files(self) -> list[FileRow]:
        rows = self._rows("files", TABLES["files"])
        return [
            FileRow(
                as_id(row["ID"]),
                as_text(row["FileName"]),
                as_text(row["PathName"]),
                as_bool(row["Verified"]),
                row["Verified"],
            )
            for row in rows
        ]

    def files_of(self, client_id: bytes) -> list[FileRow]:
        return [row for row in self.files() if row.client_id == client_id]

    def row_key(self, table: str, client_id: bytes) -> tuple[str, str, object]:
        """(table, ID column, ID value) as the submission spells them: to update a row of its own."""
        name, mapping = self.names(table)
        with closing(self._connect()) as db:
            query = f'SELECT "{mapping["ID"]}" FROM "{name}"'  # noqa: S608  # names from its catalogue
            for (value,) in db.execute(query):
                if as_id(value) == client_id:
                    return name, mapping["ID"], value
        pytest.skip(f"needs the {table} row of client {client_id.hex()}, which is not there")
