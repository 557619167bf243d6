"""§6 the client's flow, with a real client program: client.py, or --client-exe (transfer.info)."""

from __future__ import annotations

import base64
import os
import textwrap
import uuid
from pathlib import Path

import pytest

from crypto_utils import generate_rsa_key
from grading.database import SubmissionDatabase
from grading.harness import ClientProgram, ClientRun, ServerProcess
from grading.plugin import ProxyFactory
from grading.wire import NameFactory, stored_bytes

spec = pytest.mark.spec
FLOW = ("§2 1025", "§2 1026", "§2 1028", "§2 1029")


def work_folder(tmp_path: Path, address: tuple[str, int], name: str, content: bytes) -> Path:
    """A client's working folder: transfer.info (§5) and the file it names."""
    folder = tmp_path / "client"
    folder.mkdir(exist_ok=True)
    (folder / "file.bin").write_bytes(content)
    host, port = address
    (folder / "transfer.info").write_text(f"{host}:{port}\n{name}\nfile.bin\n", newline="\n")
    return folder


def me_info(folder: Path, run: ClientRun | None = None) -> tuple[str, bytes]:
    """(name, client ID) from the me.info a client wrote (§5)."""
    path = folder / "me.info"
    assert path.is_file(), "§6: the client wrote no me.info" + (f": {run.tail()}" if run else "")
    lines = path.read_text("ascii", "replace").splitlines()
    assert len(lines) >= 3, f"§5 me.info: a name, a UUID and a key, not {len(lines)} lines"
    return lines[0].strip(), bytes.fromhex(lines[1].strip())


def write_me_info(folder: Path, name: str, client_id: bytes) -> None:
    """A me.info as a client registered elsewhere has it: PKCS#8 DER in Base64, 72 a line."""
    key_text = base64.b64encode(generate_rsa_key().export_key("DER", pkcs=8)).decode("ascii")
    key_lines = "\n".join(textwrap.wrap(key_text, 72))
    (folder / "me.info").write_text(f"{name}\n{client_id.hex()}\n{key_lines}\n", newline="\n")
    (folder / "priv.key").write_text(f"{key_lines}\n", newline="\n")


def run_to_success(program: ClientProgram, folder: Path, what: str) -> None:
    run = program.run(folder)
    assert run.returncode == 0, (
        f"§6 {what}: {program.description} exited with status {run.returncode}; its last output: {run.tail()}"
    )


def assert_verified_copy(
    server: ServerProcess, db: SubmissionDatabase, client_id: bytes, content: bytes
) -> None:
    rows = db.files_of(client_id)
    found = [(row.file_name, row.verified) for row in rows]
    assert found == [("file.bin", True)], f"§6: the server holds one verified file.bin; it holds {found}"
    assert stored_bytes(server, rows[0].path_name) == content, "§6: the stored file.bin is the one sent"


@spec("§6 register", needs=FLOW)
def test_s6_a_first_run_registers_and_sends_the_file(
    server: ServerProcess,
    db: SubmissionDatabase,
    client_program: ClientProgram,
    unique_name: NameFactory,
    tmp_path: Path,
) -> None:
    name, content = unique_name(), os.urandom(100_000)
    folder = work_folder(tmp_path, server.address, name, content)
    run_to_success(client_program, folder, "register and send")
    written_name, client_id = me_info(folder)
    assert written_name == name, f"§5 me.info: line 1 is the name, {name!r}, not {written_name!r}"
    row = db.client(client_id, "Name")
    assert row is not None and row.name == name, f"§6: the clients row of {client_id.hex()} holds {name!r}"
    assert_verified_copy(server, db, client_id, content)


@spec("§6 reconnect", needs=(*FLOW, "§2 1027"))
def test_s6_a_second_run_reconnects(
    server: ServerProcess,
    db: SubmissionDatabase,
    client_program: ClientProgram,
    unique_name: NameFactory,
    tmp_path: Path,
) -> None:
    name, content = unique_name(), os.urandom(30_000)
    folder = work_folder(tmp_path, server.address, name, content)
    run_to_success(client_program, folder, "first run")
    _, client_id = me_info(folder)
    run_to_success(client_program, folder, "second run (reconnect)")
    assert me_info(folder)[1] == client_id, "§6: a reconnecting client keeps its ID"
    ids = [row.client_id for row in db.clients_named(name)]
    assert ids == [client_id], (
        f"§6: one clients row for {name!r}, with ID {client_id.hex()}; found {len(ids)}"
    )
    assert_verified_copy(server, db, client_id, content)


@spec("§6 reconnect denied", needs=(*FLOW, "§2 1027 denied"))
def test_s6_a_denied_reconnect_registers_anew(
    server: ServerProcess,
    db: SubmissionDatabase,
    client_program: ClientProgram,
    unique_name: NameFactory,
    tmp_path: Path,
) -> None:
    """me.info from another server: 1027 gets 2106, and the client registers (1025) instead."""
    name, content = unique_name(), os.urandom(10_000)
    folder = work_folder(tmp_path, server.address, name, content)
    unknown_id = uuid.uuid4().bytes
    write_me_info(folder, name, unknown_id)
    run_to_success(client_program, folder, "reconnect denied, register anew")
    _, client_id = me_info(folder)
    assert client_id != unknown_id, "§6: after 2106 the client registers and writes its new ID"
    ids = [row.client_id for row in db.clients_named(name)]
    assert ids == [client_id], (
        f"§6: one clients row for {name!r}, with ID {client_id.hex()}; found {len(ids)}"
    )
    assert_verified_copy(server, db, client_id, content)


@spec("§6 resend", needs=(*FLOW, "§2 1030", "§1 pipelining"))
def test_s6_a_corrupted_transfer_is_resent(
    server: ServerProcess,
    db: SubmissionDatabase,
    client_program: ClientProgram,
    corrupting_proxy: ProxyFactory,
    unique_name: NameFactory,
    tmp_path: Path,
) -> None:
    """Two corrupted transfers: 1030 twice, the third attempt verifies."""
    content = os.urandom(70_000)
    folder = work_folder(tmp_path, corrupting_proxy(server, corrupt=2), unique_name(), content)
    run_to_success(client_program, folder, "two checksum mismatches, then a match")
    assert_verified_copy(server, db, me_info(folder)[1], content)


@spec("§6 give up", needs=(*FLOW, "§2 1030", "§2 1031", "§1 pipelining"))
def test_s6_the_fourth_mismatch_gives_up(
    server: ServerProcess,
    db: SubmissionDatabase,
    client_program: ClientProgram,
    corrupting_proxy: ProxyFactory,
    unique_name: NameFactory,
    tmp_path: Path,
) -> None:
    """Every transfer corrupted: 1030 three times, then 1031; the server keeps nothing."""
    folder = work_folder(tmp_path, corrupting_proxy(server, corrupt=None), unique_name(), os.urandom(20_000))
    run = client_program.run(folder)
    assert run.returncode != 0, f"§6 give up: the client reports failure (status != 0): {run.tail()}"
    assert db.files_of(me_info(folder, run)[1]) == [], "§2 1031: the record of the failed file is removed"
