"""§5 files around the server: the database schema, a restart, PathName, storage, port.info."""

from __future__ import annotations

import sqlite3
import uuid
from contextlib import closing
from pathlib import Path, PurePath

import pytest

from grading.database import READ_TIMEOUT, SubmissionDatabase
from grading.harness import RawConnection, ServerProcess
from grading.plugin import ServerFactory
from grading.wire import (
    Cases,
    NameFactory,
    confirm,
    expect,
    file_request,
    files_under,
    new_client,
    register,
    send_file,
    send_file_request,
    server_own,
    session,
    stored_bytes,
)
from protocol import RequestCode, ResponseCode, encode_name, pack_request

spec = pytest.mark.spec

# PROTOCOL.md §5: (column, SQLite type of every value, its length for a blob) per table.
SCHEMA: dict[str, list[tuple[str, str | None, int | None]]] = {
    "clients": [
        ("ID", "blob", 16),
        ("Name", "text", None),
        ("PublicKey", "blob", 160),
        ("LastSeen", None, None),
        ("AESKey", "blob", 16),
    ],
    "files": [
        ("ID", "blob", 16),
        ("FileName", "text", None),
        ("PathName", "text", None),
        ("Verified", "integer", None),
    ],
}
PRIMARY_KEYS = {"clients": ["id"], "files": ["id", "filename"]}
DANGEROUS_NAMES = [
    "../{tag}",
    "../../{tag}",
    "/tmp/{tag}",
    "..\\..\\{tag}",
    "server.py",
    "port.info",
    "defensive.db",
    "'; DROP TABLE files; --",
    ".",
    "..",
    "dir/",
]


def _found(value: object) -> str:
    if isinstance(value, str):
        return f"the text {value!r:.40}"
    if isinstance(value, bytes):
        return f"a {len(value)}-byte blob"
    return f"{type(value).__name__} {value!r}"


@spec("§5 database", needs=("§2 1025", "§2 1026", "§2 1028", "§2 1029"))
def test_s5_the_database_has_the_tables_columns_and_types_of_the_protocol(
    server: ServerProcess, unique_name: NameFactory
) -> None:
    """The one strict reading of the database: the names and types PROTOCOL.md §5 fixes."""
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, unique_name(), server)
        send_file(conn, client_id, aes_key, "kept.bin", b"data")
        send_file(conn, client_id, aes_key, "verified.bin", b"data")
        confirm(conn, client_id, "verified.bin")
    assert server.db_path.is_file(), "§5 database: there is no defensive.db beside the server"
    problems = []
    with closing(sqlite3.connect(f"file:{server.db_path}?mode=ro", uri=True, timeout=READ_TIMEOUT)) as db:
        for table, columns in SCHEMA.items():
            # Rows of (cid, name, type, notnull, default, pk): pk is the column's place in the key.
            info = db.execute(f"PRAGMA table_info({table})").fetchall()
            if not info:
                tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
                problems.append(f"there is no table {table} (the tables: {tables})")
                continue
            found = {row[1].lower(): row for row in info}
            missing = [column for column, _, _ in columns if column.lower() not in found]
            if missing:
                problems.append(f"{table} lacks {missing} (it has {[row[1] for row in info]})")
            primary = [name for _, name in sorted((row[5], row[1].lower()) for row in info if row[5])]
            if primary != PRIMARY_KEYS[table]:
                problems.append(f"the primary key of {table} is {primary}, not {PRIMARY_KEYS[table]}")
            for column, kind, length in columns:
                if column.lower() not in found or kind is None:
                    continue
                real = found[column.lower()][1]
                # In order: the value named in the message is the same on every run.
                for (value,) in db.execute(
                    f'SELECT DISTINCT "{real}" FROM {table} WHERE "{real}" IS NOT NULL ORDER BY "{real}"'
                ):
                    if kind == "integer":
                        good = isinstance(value, int) and value in (0, 1)
                        expected = "0 or 1"
                    elif kind == "blob":
                        good = isinstance(value, bytes) and len(value) == length
                        expected = f"a {length}-byte blob"
                    else:
                        good = isinstance(value, str)
                        expected = "text"
                    if not good:
                        problems.append(f"{table}.{column} holds {_found(value)}; PROTOCOL.md §5: {expected}")
                        break
    assert not problems, "§5 database: " + "; ".join(problems)


@spec("§5 restart", needs=("§2 1025", "§2 1026", "§2 1027"))
def test_s5_clients_survive_a_restart(server: ServerProcess, unique_name: NameFactory) -> None:
    name = unique_name()
    with RawConnection(server.address) as conn:
        client_id, _ = new_client(conn, name, server)
    server.restart()
    with RawConnection(server.address) as conn:
        conn.send(pack_request(client_id, RequestCode.RECONNECT, encode_name(name)))
        payload = expect(conn, ResponseCode.RECONNECTED, "§5 restart: a 1027 after the server restarted")
    assert payload[:16] == client_id, "§2 1027: 2105 starts with the client's ID"


@spec("§5 SQL text", needs=("§2 1025", "§2 1025 taken name"))
def test_s5_sql_metacharacters_in_a_name_are_plain_text(
    server: ServerProcess, db: SubmissionDatabase
) -> None:
    name = f"x'); DROP TABLE clients; -- {uuid.uuid4().hex[:8]}"
    with RawConnection(server.address) as conn:
        client_id = register(conn, name)
    with RawConnection(server.address) as conn:
        conn.send(pack_request(bytes(16), RequestCode.REGISTER, encode_name(name)))
        expect(conn, ResponseCode.REGISTRATION_FAILED, f"§5 SQL text: a second 1025 of {name!r}")
    row = db.client(client_id, "Name")
    assert row is not None and row.name == name, f"§5 SQL text: the name is stored as sent, {name!r}"


@spec("§5 PathName", needs=("§2 1028",))
def test_s5_path_name_is_relative_to_the_server_folder(
    server: ServerProcess, db: SubmissionDatabase, unique_name: NameFactory
) -> None:
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, unique_name(), server)
        send_file(conn, client_id, aes_key, "where.bin", b"here")
    [row] = db.files_of(client_id)
    path_name = row.path_name
    assert isinstance(path_name, str) and path_name, f"§5 PathName: {path_name!r} is not a path"
    relative = PurePath(path_name.replace("\\", "/"))
    assert not relative.is_absolute() and ".." not in relative.parts, (
        f"§5 PathName: a path relative to the server folder, inside it, not {path_name!r}"
    )
    assert (server.data_dir / relative).is_file(), (
        f"§5 PathName: no file at {path_name!r} in the server folder"
    )


@spec("§5 storage", needs=("§2 1025", "§2 1026"))
@pytest.mark.parametrize("after", ["1028", "1029", "1031"], ids=["after 1028", "after 1029", "after 1031"])
def test_s5_file_names_stay_inside_the_storage_folder(
    server: ServerProcess, unique_name: NameFactory, tmp_path: Path, after: str
) -> None:
    """Every dangerous name, one session each, looked for on the filesystem (whatever the schema).

    2103 (the last path component kept, §7) or 2107; then 1029 or 1031 where
    the parameter says, since some servers write (or remove) only then.
    """
    tag = f"escape-{uuid.uuid4().hex[:8]}"
    root = tmp_path  # the submission's copy is two levels down: ../../ lands inside this folder
    beside = {server.server_dir.resolve(), (server.server_dir / server.entry).parent.resolve()}
    protected = {
        path: path.read_bytes()
        for folder in beside
        for path in folder.glob("*")
        if path.is_file() and not server_own(path)
    }
    cases = Cases(f"§5 storage: a file name must not reach outside the storage folder ({after})")
    for template in DANGEROUS_NAMES:
        file_name = template.format(tag=tag)
        with cases.case(repr(file_name)), RawConnection(server.address) as conn:
            before = files_under(root)
            client_id, aes_key = new_client(conn, unique_name(), server)
            conn.send(send_file_request(client_id, aes_key, file_name, b"payload"))
            code = conn.receive().code
            assert code in (2103, 2107), f"1028 got {code}, not 2103 or 2107"
            if code == 2103 and after != "1028":
                code_sent = RequestCode.CRC_OK if after == "1029" else RequestCode.CRC_ABORT
                conn.send(file_request(client_id, code_sent, file_name))
                reply = conn.receive().code
                assert reply in (2104, 2107), f"{after} got {reply}, not 2104"
            data_dir = server.data_dir.resolve()
            escaped = [
                str(path.relative_to(root.resolve()))
                for path in files_under(root) - before
                if not server_own(path) and (data_dir not in path.parents or path.parent in beside)
            ]
            assert not escaped, f"created {escaped} outside a storage folder"
            assert not Path("/tmp", tag).exists(), "reached /tmp"
            changed = [
                path.name
                for path, content in protected.items()
                if not path.is_file() or path.read_bytes() != content
            ]
            assert not changed, f"overwrote or removed {changed}"
    cases.check()


@spec("§5 storage", needs=("§2 1028",))
def test_s5_two_names_with_one_base_name_keep_separate_files(
    server: ServerProcess, db: SubmissionDatabase, unique_name: NameFactory
) -> None:
    client_id, _ = session(server, unique_name(), {"a/x.bin": b"from a", "b/x.bin": b"from b"}, verify=False)
    rows = {str(row.file_name): stored_bytes(server, row.path_name) for row in db.files_of(client_id)}
    assert rows == {"a/x.bin": b"from a", "b/x.bin": b"from b"}, (
        f"§5 storage: a/x.bin and b/x.bin of one client are two records with two files; got {rows}"
    )


@spec("§5 storage", needs=("§2 1028",))
def test_s5_two_clients_with_one_file_name_keep_separate_files(
    server: ServerProcess, db: SubmissionDatabase, unique_name: NameFactory
) -> None:
    contents = {}
    for content in (b"client one", b"client two"):
        client_id, _ = session(server, unique_name(), {"same.txt": content}, verify=False)
        contents[client_id] = content
    for client_id, content in contents.items():
        [row] = db.files_of(client_id)
        assert stored_bytes(server, row.path_name) == content, (
            "§5 storage: two clients' same.txt are two files; one replaced the other"
        )


@spec("§5 port.info", strict=False)
def test_s5_port_info_with_a_newline_or_spaces_is_read(server_factory: ServerFactory) -> None:
    """A SHOULD (§7): tools write the digits alone, but people add a newline, editors spaces."""
    cases = Cases("§5 port.info: the port is read from port.info holding it with a newline or spaces")
    for case, form in (("'PORT\\n'", "{}\n"), ("'  PORT  \\r\\n'", "  {}  \r\n")):
        with cases.case(case):
            server_factory(port_info=form.format, foreign=True)
    cases.check()
