"""The reference client, run as a user runs it: `python client.py` in a folder with transfer.info."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import ProxyFactory, ServerFactory
from support import REPO_ROOT, ServerProcess, free_port

from client import base_name
from crypto_utils import cksum
from protocol import RequestCode

NameFactory = Callable[[], str]


def run_client(folder: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "client.py")],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def workdir(tmp_path: Path, address: tuple[str, int], name: str, file_name: str, content: bytes) -> Path:
    folder = tmp_path / "work"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / file_name).write_bytes(content)
    (folder / "transfer.info").write_text(f"{address[0]}:{address[1]}\n{name}\n{file_name}\n")
    return folder


def stored_files(server: ServerProcess) -> dict[str, tuple[bytes, int]]:
    return {
        name: ((server.data_dir / path).read_bytes(), verified)
        for name, path, verified in server.query("SELECT FileName, PathName, Verified FROM files")
    }


def test_first_run_registers_and_second_run_reconnects(
    server: ServerProcess, tmp_path: Path, unique_name: NameFactory
) -> None:
    name = unique_name()
    content = os.urandom(300_000)
    folder = workdir(tmp_path, server.address, name, "data.bin", content)

    first = run_client(folder)
    assert first.returncode == 0, first.stderr
    me_lines = (folder / "me.info").read_text().splitlines()
    assert me_lines[0] == name
    assert re.fullmatch("[0-9a-fA-F]{32}", me_lines[1]), me_lines[1]
    assert len(me_lines) > 3, "the Base64 key spans several lines, as Crypto++ writes it"
    assert all(len(line) <= 72 for line in me_lines[2:])
    key = base64.b64decode("".join(me_lines[2:]))
    assert base64.b64decode((folder / "priv.key").read_text()) == key
    [(client_id,)] = server.query("SELECT ID FROM clients WHERE Name = ?", (name,))
    assert client_id.hex() == me_lines[1]
    assert stored_files(server) == {"data.bin": (content, 1)}

    second = run_client(folder)
    assert second.returncode == 0, second.stderr
    assert "register" not in second.stdout
    assert server.query("SELECT ID FROM clients WHERE Name = ?", (name,)) == [(client_id,)]
    assert "code=1027 -> 2105" in server.log_text()
    assert second.stdout.startswith(f"reconnected as {uuid.UUID(hex=me_lines[1])}\n")


@pytest.mark.parametrize(
    ("file_name", "size"), [("empty.bin", 0), ("five-mb.bin", 5_000_000), ("name with spaces.txt", 1234)]
)
def test_files_arrive_byte_identical_and_verified(
    server: ServerProcess, tmp_path: Path, unique_name: NameFactory, file_name: str, size: int
) -> None:
    content = os.urandom(size)
    folder = workdir(tmp_path, server.address, unique_name(), file_name, content)
    result = run_client(folder)
    assert result.returncode == 0, result.stderr
    assert f"cksum {cksum(content)}" in result.stdout
    assert stored_files(server) == {file_name: (content, 1)}


def test_a_corrupted_transfer_is_resent(
    server: ServerProcess, corrupting_proxy: ProxyFactory, tmp_path: Path, unique_name: NameFactory
) -> None:
    content = os.urandom(50_000)
    folder = workdir(tmp_path, corrupting_proxy(server, corrupt=1), unique_name(), "f.bin", content)
    result = run_client(folder)
    assert result.returncode == 0, result.stderr
    assert "checksum mismatch (attempt 1)" in result.stdout
    assert "2 attempt(s)" in result.stdout
    assert stored_files(server) == {"f.bin": (content, 1)}
    assert f"code={RequestCode.CRC_RETRY.value} -> no reply" in server.log_text()


def test_four_corrupted_transfers_end_with_1031_and_a_fatal_error(
    server: ServerProcess, corrupting_proxy: ProxyFactory, tmp_path: Path, unique_name: NameFactory
) -> None:
    folder = workdir(tmp_path, corrupting_proxy(server), unique_name(), "f.bin", os.urandom(50_000))
    result = run_client(folder)
    assert result.returncode == 1
    assert result.stdout.count("checksum mismatch") == 4
    assert result.stderr.startswith("Fatal: ")
    assert "code=1031 -> 2104" in server.log_text()
    assert server.query("SELECT count(*) FROM files") == [(0,)]
    assert not [p for p in (server.data_dir / "storage").rglob("*") if p.is_file()]


# Under protocol.MAX_DISCARDED_PAYLOAD (64 KiB), the rest of a refused 1028 the server reads
# away today; to be 1 MB once it reads a refused 1028 of any size to its end (§3).
RETRIED_FILE_SIZE = 60_000


def test_2107_is_retried_three_times_then_fatal(
    server_factory: ServerFactory, tmp_path: Path, unique_name: NameFactory, ours: None
) -> None:
    server = server_factory(extra_args=["--min-free-space", str(2**62)])  # every 1028 gets 2107
    # Not a few bytes: the 2107 comes before the content is read, and the retry works only
    # if the rest of the refused 1028 is read away first (§3).
    folder = workdir(tmp_path, server.address, unique_name(), "f.bin", os.urandom(RETRIED_FILE_SIZE))
    result = run_client(folder)
    assert result.returncode == 1
    assert result.stdout.count("server responded with an error") == 4
    assert "Fatal: send file failed 4 times" in result.stderr


def test_a_taken_name_is_a_fatal_error(
    server: ServerProcess, tmp_path: Path, unique_name: NameFactory
) -> None:
    name = unique_name()
    first = workdir(tmp_path / "one", server.address, name, "a.bin", b"a")
    assert run_client(first).returncode == 0
    second = workdir(tmp_path / "two", server.address, name, "b.bin", b"b")
    result = run_client(second)
    assert result.returncode == 1 and "Fatal:" in result.stderr and "2101" in result.stderr


def test_reconnect_denied_registers_anew(
    server: ServerProcess, tmp_path: Path, unique_name: NameFactory
) -> None:
    folder = workdir(tmp_path, server.address, unique_name(), "a.bin", b"a")
    assert run_client(folder).returncode == 0
    lines = (folder / "me.info").read_text().splitlines()
    lines[0] = unique_name()  # a name the server does not know under this ID: 2106
    (folder / "me.info").write_text("\n".join(lines) + "\n")
    (folder / "transfer.info").write_text(f"{server.address[0]}:{server.address[1]}\n{lines[0]}\na.bin\n")
    result = run_client(folder)
    assert result.returncode == 0, result.stderr
    assert "reconnect denied: registering anew" in result.stdout


def test_server_not_running(tmp_path: Path) -> None:
    folder = workdir(tmp_path, ("127.0.0.1", free_port()), "alice", "a.bin", b"a")
    result = run_client(folder)
    assert result.returncode == 1
    assert result.stderr.startswith("Fatal: cannot connect to 127.0.0.1:")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("transfer_info", "message"),
    [
        (None, "cannot read"),
        ("127.0.0.1:1357\nalice\n", "transfer.info has 2 lines; expected 3 (host:port, name, file path)"),
        # Lines as str.splitlines() counts them, as the C++ client does: one empty line is a line.
        ("\n", "transfer.info has 1 lines; expected 3 (host:port, name, file path)"),
        ("", "transfer.info has 0 lines; expected 3 (host:port, name, file path)"),
        ("localhost\nalice\na.bin\n", "line 1 must be host:port"),
        ("127.0.0.1:99999\nalice\na.bin\n", "line 1 must be host:port"),
        ("127.0.0.1:1357\n" + "x" * 101 + "\na.bin\n", "line 2"),
        ("127.0.0.1:1357\nalice\nmissing.bin\n", "not a file"),
        ("127.0.0.1:1357\nalice\nfolder/\n", "line 3 must name the file to send"),
        ("127.0.0.1:1357\nalice\nfichier-é.bin\n", "line 3: the file's name 'fichier-é.bin' must be"),
        ("127.0.0.1:1357\nalicé\na.bin\n", "line 2 must be a name of 1 to 100 printable ASCII"),
    ],
)
def test_bad_transfer_info(tmp_path: Path, transfer_info: str | None, message: str) -> None:
    (tmp_path / "a.bin").write_bytes(b"a")
    if transfer_info is not None:
        (tmp_path / "transfer.info").write_text(transfer_info, encoding="utf-8")
    result = run_client(tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("Fatal: ") and message in result.stderr
    assert "Traceback" not in result.stderr


def test_malformed_me_info(tmp_path: Path) -> None:
    workdir(tmp_path, ("127.0.0.1", free_port()), "alice", "a.bin", b"a")
    (tmp_path / "work" / "me.info").write_text("alice\nnot-hex\n!!!\n")
    result = run_client(tmp_path / "work")
    assert result.returncode == 1 and "me.info: malformed" in result.stderr


def test_progress_bar_on_a_terminal_only(
    server: ServerProcess, tmp_path: Path, unique_name: NameFactory
) -> None:
    """A tqdm bar for files over 1 MiB when stderr is a terminal, none otherwise.

    The terminal is `script`'s pty, given a size as a real terminal has one.
    """
    folder = workdir(tmp_path, server.address, unique_name(), "big.bin", os.urandom(3 << 20))
    command = f"stty cols 100 rows 24; {sys.executable} {REPO_ROOT / 'client.py'}"
    on_terminal = subprocess.run(
        ["script", "--quiet", "--return", "--command", command, "/dev/null"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert on_terminal.returncode == 0, on_terminal.stdout
    assert "%|" in on_terminal.stdout and "B/s" in on_terminal.stdout
    piped = run_client(folder)
    assert piped.returncode == 0 and "%|" not in piped.stderr + piped.stdout


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("f.bin", "f.bin"),
        ("sub/dir/f.bin", "f.bin"),
        ("/home/me/f.bin", "f.bin"),
        ("C:\\Users\\me\\f.bin", "f.bin"),
        ("..\\up/mixed\\f.bin", "f.bin"),
        ("folder/", ""),
    ],
)
def test_base_name_is_the_last_component_at_either_separator(path: str, name: str) -> None:
    assert base_name(path) == name


def test_the_file_travels_under_its_base_name_from_a_non_ascii_folder(
    server: ServerProcess, tmp_path: Path, unique_name: NameFactory
) -> None:
    """§6: the 1028 names the file, not the sender's folders; §7: a folder named in Hebrew is
    no reason to fail."""
    folder = tmp_path / "work"
    shalom = "\u05e9\u05dc\u05d5\u05dd"  # Hebrew, as in C:\\Users\\<shalom>\\...
    (folder / shalom / "sub").mkdir(parents=True)
    content = os.urandom(1000)
    (folder / shalom / "sub" / "report.txt").write_bytes(content)
    (folder / "transfer.info").write_text(
        f"{server.address[0]}:{server.address[1]}\n{unique_name()}\n{shalom}/sub/report.txt\n",
        encoding="utf-8",
    )
    result = run_client(folder)
    assert result.returncode == 0, result.stderr
    assert stored_files(server) == {"report.txt": (content, 1)}
