"""End to end: the C++ client in client/ against the server, run as a user runs it.

The client is built three times per session: a plain (Release) build in build/client, an
AddressSanitizer + UndefinedBehaviorSanitizer build in build/client-asan, and a Windows build
(client/build-windows.sh: mingw-w64, Crypto++ cross-built and cached) in build/client-windows,
run under wine. Every test runs against each build, except the few that test something only
POSIX has (file modes, signals, a pty). Each run is a subprocess in a temporary working folder
whose name is Hebrew (PROTOCOL.md §7: students' folders often are not ASCII) holding
transfer.info, and the results are read back from the server's database and storage (§5).

Without the toolchain the tests are skipped, naming the packages; under CI (env CI set) they
fail instead, since test.sh installs them. Cost: the Windows build is cached (a few seconds
when nothing changed; the first Crypto++ build is test.sh's), wine starts once per session
(wineboot, ~10 s the first time), and each client.exe run costs about a second more than a
native run.
"""

from __future__ import annotations

import base64
import functools
import os
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest
from Crypto.PublicKey import RSA
from support import REPO_ROOT, ServerProcess, free_port, wait_until

from crypto_utils import (
    CbcDecryptor,
    cksum,
    export_public_key,
    generate_aes_key,
    padding_length,
    wrap_aes_key,
)
from protocol import (
    FILE_RECEIVED,
    NAME_FIELD_SIZE,
    REQUEST_HEADER,
    SEND_FILE_HEAD,
    RequestCode,
    ResponseCode,
    pack_response,
)

ServerFactory = Callable[..., ServerProcess]
ProxyFactory = Callable[..., tuple[str, int]]

CLIENT_SOURCE = REPO_ROOT / "client"
BUILD_ROOT = REPO_ROOT / "build"
REQUIRED_PACKAGES = {
    "linux": "g++ cmake libcrypto++-dev libboost-dev",
    "windows": "g++-mingw-w64-x86-64-posix wine64 cmake make libboost-dev",
}
WINDOWS_BUILD_SCRIPT = CLIENT_SOURCE / "build-windows.sh"
WINE_PREFIX = BUILD_ROOT / "wine-prefix"  # cached between runs, like the Crypto++ build
WINE_ENV = {"WINEPREFIX": str(WINE_PREFIX), "WINEDEBUG": "-all"}  # -all: no wine chatter on stderr
# Hebrew for "work, peace": the working folder of every run (§7), with a space in it too.
WORK_DIR_NAME = "\u05e2\u05d1\u05d5\u05d3\u05d4 \u05e9\u05dc\u05d5\u05dd"
BUILD_TIMEOUT = 900.0  # seconds for one configure + build on a 2-core machine
CLIENT_TIMEOUT = 120.0  # seconds for one client run (a 5 MB file under ASan takes a few)
SANITIZER_FLAGS = "-fsanitize=address,undefined -fno-omit-frame-pointer"
SANITIZER_ENV = {
    "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=1",
    "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
}
SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer", "runtime error:")
# What a configure step prints when a prerequisite (not our CMakeLists.txt) is missing.
MISSING_PREREQUISITE = re.compile(
    r"Crypto\+\+ not found|Could NOT find Boost|provided by \"Boost\"|No CMAKE_CXX_COMPILER could be found"
)
MIB = 1024 * 1024


@dataclass(frozen=True)
class ClientBuild:
    """One build of the client: where it is and how to run it."""

    name: str
    build_dir: Path
    sanitized: bool
    wine: str | None = None  # the wine64 loader for a Windows build run here

    @property
    def windows(self) -> bool:
        return self.wine is not None or os.name == "nt"

    @property
    def executable(self) -> Path:
        return self.build_dir / ("client.exe" if self.windows else "client")

    def command(self, program: str = "client", *args: str) -> list[str]:
        path = str(self.build_dir / (f"{program}.exe" if self.windows else program))
        return ([self.wine] if self.wine else []) + [path, *args]

    def host_path(self, path: Path) -> str:
        """`path` as the client spells it: under wine, the Unix root is drive Z:."""
        return "Z:" + str(path).replace("/", "\\") if self.wine else str(path)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.sanitized:
            env.update(SANITIZER_ENV)
        if self.wine:
            env.update(WINE_ENV)
        return env

    def assert_no_sanitizer_report(self, stderr: str) -> None:
        if self.sanitized:
            found = [marker for marker in SANITIZER_MARKERS if marker in stderr]
            assert not found, f"sanitizer report on stderr:\n{stderr}"


@dataclass(frozen=True)
class ClientRun:
    returncode: int
    stdout: str
    stderr: str


def _unavailable(reason: str, platform: str) -> None:
    """Skip on a developer's machine without the toolchain; fail under CI, which has it."""
    message = f"{reason}; install: apt-get install -y {REQUIRED_PACKAGES[platform]}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _wine64() -> str | None:
    """Debian's wine64 package puts its loader outside PATH; the wine package adds `wine64`."""
    found = shutil.which("wine64")
    if found:
        return found
    return "/usr/lib/wine/wine64" if Path("/usr/lib/wine/wine64").is_file() else None


def _build_windows() -> ClientBuild | str:
    """client/build-windows.sh (seconds when cached), then one wineboot for the session."""
    if shutil.which("x86_64-w64-mingw32-g++-posix") is None:
        return "x86_64-w64-mingw32-g++-posix not found"
    wine = _wine64()
    if wine is None:
        return "wine64 not found"
    built = subprocess.run(
        ["bash", str(WINDOWS_BUILD_SCRIPT)],
        check=False,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    assert built.returncode == 0, f"build-windows.sh failed:\n{(built.stdout + built.stderr)[-4000:]}"
    build = ClientBuild("windows", BUILD_ROOT / "client-windows", sanitized=False, wine=wine)
    assert build.executable.is_file()
    # Creates (or updates) the prefix and returns when it is ready, so that no test pays for it.
    booted = subprocess.run(
        [wine, "wineboot", "--init"],
        check=False,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        stdin=subprocess.DEVNULL,
        env=build.env(),
    )
    assert booted.returncode == 0, f"wineboot failed:\n{booted.stdout + booted.stderr}"
    return build


@functools.cache
def _build(name: str) -> ClientBuild | str:
    """Configures and builds one variant once per session; a string says why it could not."""
    if name == "windows":
        return _build_windows()
    for tool in ("cmake", "ctest"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    if not any(shutil.which(compiler) for compiler in ("c++", "g++", "clang++")):
        return "no C++ compiler found"
    sanitized = name == "asan"
    build = ClientBuild(name, BUILD_ROOT / ("client-asan" if sanitized else "client"), sanitized)
    configure = ["cmake", "-S", str(CLIENT_SOURCE), "-B", str(build.build_dir)]
    if sanitized:
        configure += [
            "-DCMAKE_BUILD_TYPE=Debug",
            f"-DCMAKE_CXX_FLAGS={SANITIZER_FLAGS}",
            "-DCMAKE_EXE_LINKER_FLAGS=-fsanitize=address,undefined",
        ]
    configured = subprocess.run(
        configure,
        check=False,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    if configured.returncode != 0:
        output = configured.stdout + configured.stderr
        if MISSING_PREREQUISITE.search(output):
            return f"cannot configure the C++ client:\n{output[-2000:]}"
        pytest.fail(f"cmake configure failed:\n{output[-4000:]}")
    built = subprocess.run(
        ["cmake", "--build", str(build.build_dir), "--parallel", str(os.cpu_count() or 2)],
        check=False,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    assert built.returncode == 0, f"cmake --build failed:\n{(built.stdout + built.stderr)[-4000:]}"
    assert build.executable.is_file()
    return build


def _client_build(name: str) -> ClientBuild:
    result = _build(name)
    if isinstance(result, str):
        _unavailable(result, "windows" if name == "windows" else "linux")
    assert isinstance(result, ClientBuild)
    return result


@pytest.fixture(scope="session", params=["release", "asan", "windows"])
def cpp_client(request: pytest.FixtureRequest) -> ClientBuild:
    return _client_build(request.param)


@pytest.fixture(scope="session", params=["release", "asan"])
def posix_client(request: pytest.FixtureRequest) -> ClientBuild:
    """The builds that run natively here: for what only POSIX has (modes, signals, a pty)."""
    return _client_build(request.param)


# --- helpers ---------------------------------------------------------------------------------


def run_program(command: list[str], work_dir: Path, env: dict[str, str] | None = None) -> ClientRun:
    """Runs a client as a user would: in its working folder, no input, bounded in time."""
    completed = subprocess.run(
        command,
        check=False,
        cwd=work_dir,
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    return ClientRun(completed.returncode, completed.stdout, completed.stderr)


def run_client(build: ClientBuild, work_dir: Path, *args: str) -> ClientRun:
    run = run_program(build.command("client", *args), work_dir, build.env())
    build.assert_no_sanitizer_report(run.stderr)
    return run


def make_work_dir(
    tmp_path: Path, address: tuple[str, int], name: str, file_path: str, content: bytes | None = b""
) -> Path:
    """A working folder with transfer.info and, unless content is None, the file to send.

    Its name is not ASCII (WORK_DIR_NAME), as many students' folders are not (§7).
    """
    work_dir = tmp_path / WORK_DIR_NAME
    work_dir.mkdir(exist_ok=True)
    host, port = address
    (work_dir / "transfer.info").write_text(f"{host}:{port}\n{name}\n{file_path}\n", newline="\n")
    if content is not None:
        target = work_dir / file_path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    return work_dir


def query(server: ServerProcess, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(f"file:{server.db_path}?mode=ro", uri=True, timeout=10)) as db:
        return db.execute(sql, params).fetchall()


def pattern_bytes(size: int) -> bytes:
    """Deterministic, non-repeating-looking content of `size` bytes."""
    block = bytes((i * 131 + 17) % 251 for i in range(251))
    return (block * (size // len(block) + 1))[:size]


@dataclass(frozen=True)
class MeInfo:
    name: str
    client_id: bytes
    key_text: str  # lines 3.. joined, each ended by "\n"


def read_me_info(work_dir: Path) -> MeInfo:
    """Parses me.info strictly as PROTOCOL.md §5 and Crypto++'s Base64Encoder lay it out."""
    text = (work_dir / "me.info").read_text("ascii")
    assert text.endswith("\n")
    lines = text.split("\n")[:-1]
    assert len(lines) >= 3, text
    assert re.fullmatch(r"[0-9a-fA-F]{32}", lines[1]), lines[1]
    key_lines = lines[2:]
    assert all(len(line) == 72 for line in key_lines[:-1]), "Base64Encoder breaks lines every 72"
    assert 0 < len(key_lines[-1]) <= 72
    assert all(re.fullmatch(r"[A-Za-z0-9+/=]+", line) for line in key_lines)
    return MeInfo(lines[0], bytes.fromhex(lines[1]), "".join(f"{line}\n" for line in key_lines))


def assert_stored(server: ServerProcess, client_id: bytes, file_name: str, content: bytes) -> None:
    rows = query(
        server, "SELECT PathName, Verified FROM files WHERE ID = ? AND FileName = ?", (client_id, file_name)
    )
    assert len(rows) == 1, rows
    path_name, verified = rows[0]
    assert verified == 1
    assert isinstance(path_name, str)
    assert (server.data_dir / path_name).read_bytes() == content


def register_and_send(
    build: ClientBuild, server: ServerProcess, tmp_path: Path, name: str, file_path: str, content: bytes
) -> MeInfo:
    work_dir = make_work_dir(tmp_path, server.address, name, file_path, content)
    run = run_client(build, work_dir)
    assert run.returncode == 0, run.stderr
    me = read_me_info(work_dir)
    # §6: the name sent (and recorded as FileName) is the base name of line 3.
    assert_stored(server, me.client_id, PurePosixPath(file_path).name, content)
    return me


# --- unit tests through ctest ----------------------------------------------------------------


def _cpu_flags() -> set[str]:
    """The processor's feature flags as Linux names them (/proc/cpuinfo); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    match = re.search(r"^flags\s*:(.*)$", text, re.MULTILINE)
    return set(match[1].split()) if match else set()


def assert_fast_kernels_tested(output: str) -> None:
    """The unit tests compare the x86 kernels with the portable ones wherever the CPU has them.

    They run a kernel only on a processor that has its instructions, and say which ran: on
    one that has them (this one, and wine runs on it too), all must have been tested.
    """
    flags = _cpu_flags()
    if {"pclmulqdq", "ssse3"} <= flags:
        assert "cksum kernels tested: table clmul" in output, output
    if "aes" in flags:
        assert "aes kernels tested: crypto++ aes-ni" in output, output


def test_unit_tests_pass(cpp_client: ClientBuild) -> None:
    """Through ctest natively; the Windows build's client_tests.exe directly under wine."""
    if cpp_client.wine:
        completed = subprocess.run(
            cpp_client.command("client_tests"),
            check=False,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            stdin=subprocess.DEVNULL,
            env=cpp_client.env(),
        )
        output = completed.stdout + completed.stderr
        assert completed.returncode == 0, output
        assert re.search(r"^\d+ checks, 0 failed$", output, re.MULTILINE), output
        assert "FAIL" not in output, output
        assert_fast_kernels_tested(output)
        return
    completed = subprocess.run(
        ["ctest", "--test-dir", str(cpp_client.build_dir), "--output-on-failure", "--verbose"],
        check=False,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        stdin=subprocess.DEVNULL,
        env=cpp_client.env(),
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    assert "100% tests passed" in output, output
    assert_fast_kernels_tested(output)
    cpp_client.assert_no_sanitizer_report(output)


# --- registration and reconnection -------------------------------------------------------------


def test_first_run_registers_then_second_run_reconnects(
    cpp_client: ClientBuild, server: ServerProcess, tmp_path: Path
) -> None:
    content = pattern_bytes(100_000)
    work_dir = make_work_dir(tmp_path, server.address, "Michael Jackson", "song.bin", content)

    first = run_client(cpp_client, work_dir)
    assert first.returncode == 0, first.stderr
    me = read_me_info(work_dir)
    assert me.name == "Michael Jackson"
    # priv.key: the same Base64 of the private key's DER.
    assert (work_dir / "priv.key").read_text("ascii") == me.key_text
    key = RSA.import_key(base64.b64decode(me.key_text))
    assert key.has_private()
    assert key.n.bit_length() == 1024
    assert key.e == 17
    clients = query(server, "SELECT ID, Name, PublicKey FROM clients")
    public_key_der = export_public_key(key)
    assert len(public_key_der) == 160
    assert clients == [(me.client_id, "Michael Jackson", public_key_der)]
    assert_stored(server, me.client_id, "song.bin", content)

    second = run_client(cpp_client, work_dir)
    assert second.returncode == 0, second.stderr
    assert "Reconnected" in second.stdout
    assert read_me_info(work_dir) == me
    assert query(server, "SELECT ID, Name FROM clients") == [(me.client_id, "Michael Jackson")]
    assert_stored(server, me.client_id, "song.bin", content)


def test_registers_again_after_reconnect_is_denied(
    cpp_client: ClientBuild, server_factory: ServerFactory, tmp_path: Path
) -> None:
    """A server that does not know the client answers 1027 with 2106: register anew (1025)."""
    first_server, second_server = server_factory(), server_factory()
    content = pattern_bytes(1000)
    old = register_and_send(cpp_client, first_server, tmp_path, "wanderer", "a.bin", content)

    work_dir = make_work_dir(tmp_path, second_server.address, "wanderer", "a.bin", content)
    run = run_client(cpp_client, work_dir)
    assert run.returncode == 0, run.stderr
    assert "2106" in run.stdout
    new = read_me_info(work_dir)
    assert new.name == "wanderer"
    assert new.client_id != old.client_id
    assert new.key_text != old.key_text
    assert query(second_server, "SELECT ID, Name FROM clients") == [(new.client_id, "wanderer")]
    assert_stored(second_server, new.client_id, "a.bin", content)


# --- files --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file_path", "size"),
    [
        pytest.param("empty.bin", 0, id="empty"),
        pytest.param("one-block.bin", 16, id="16-bytes"),
        pytest.param("five-mb.bin", 5 * MIB + 3, id="5MB"),
        pytest.param("my file with spaces.txt", 4321, id="spaces"),
        pytest.param("sub folder/deep file.bin", 70_000, id="path-with-folder"),
    ],
)
def test_stored_file_is_identical_and_verified(
    cpp_client: ClientBuild, server: ServerProcess, tmp_path: Path, file_path: str, size: int
) -> None:
    # The name sent (and recorded as FileName) is line 3 of transfer.info as given.
    register_and_send(cpp_client, server, tmp_path, "sender", file_path, pattern_bytes(size))


# --- checksum mismatch: 1030 and resend, 1031 after the fourth -------------------------------------


def test_one_corrupted_transfer_is_resent(
    cpp_client: ClientBuild, server: ServerProcess, corrupting_proxy: ProxyFactory, tmp_path: Path
) -> None:
    content = pattern_bytes(200_000)
    work_dir = make_work_dir(tmp_path, corrupting_proxy(server, corrupt=1), "unlucky", "data.bin", content)
    run = run_client(cpp_client, work_dir)
    assert run.returncode == 0, run.stderr
    assert run.stderr.count("checksum mismatch") == 1
    assert_stored(server, read_me_info(work_dir).client_id, "data.bin", content)


def test_four_corrupted_transfers_give_up(
    cpp_client: ClientBuild, server: ServerProcess, corrupting_proxy: ProxyFactory, tmp_path: Path
) -> None:
    content = pattern_bytes(50_000)
    work_dir = make_work_dir(
        tmp_path, corrupting_proxy(server, corrupt=None), "cursed", "doomed.bin", content
    )
    run = run_client(cpp_client, work_dir)
    assert run.returncode != 0
    assert run.stderr.count("checksum mismatch") == 4
    assert "Fatal:" in run.stderr
    assert "1031" in run.stderr
    assert query(server, "SELECT FileName FROM files") == []
    assert list(server.data_dir.rglob("*doomed*")) == []


# --- errors before or without a server ------------------------------------------------------------


def test_server_not_running(cpp_client: ClientBuild, tmp_path: Path) -> None:
    work_dir = make_work_dir(tmp_path, ("127.0.0.1", free_port()), "lonely", "a.bin", b"hello")
    run = run_client(cpp_client, work_dir)
    assert run.returncode != 0
    assert "Fatal: cannot connect" in run.stderr
    assert not (work_dir / "me.info").exists()


def test_file_too_large_for_the_protocol_is_refused(cpp_client: ClientBuild, tmp_path: Path) -> None:
    """4 GiB + 1 (sparse): its 1028 sizes would not fit 32 bits, so it is refused before connecting."""
    work_dir = make_work_dir(tmp_path, ("127.0.0.1", free_port()), "big", "huge.bin", None)
    with (work_dir / "huge.bin").open("wb") as huge:
        huge.truncate(2**32 + 1)
    run = run_client(cpp_client, work_dir)
    assert run.returncode != 0
    assert "Fatal: 'huge.bin' is 4294967297 bytes" in run.stderr
    assert "cannot connect" not in run.stderr


def test_missing_transfer_info(cpp_client: ClientBuild, tmp_path: Path) -> None:
    run = run_client(cpp_client, tmp_path)
    assert run.returncode != 0
    assert "Fatal:" in run.stderr
    assert "transfer.info" in run.stderr


@pytest.mark.parametrize(
    ("transfer_info", "message"),
    [
        pytest.param("127.0.0.1\nbob\na.bin\n", "transfer.info line 1", id="no-port"),
        pytest.param("127.0.0.1:70000\nbob\na.bin\n", "transfer.info line 1", id="port-out-of-range"),
        pytest.param("127.0.0.1:1234\n" + "n" * 101 + "\na.bin\n", "transfer.info line 2", id="long-name"),
        pytest.param(
            "127.0.0.1:1234\nbob\n",
            "Fatal: transfer.info has 2 lines; expected 3 (host:port, name, file path)\n",
            id="two-lines",
        ),
        # Counted as Python's str.splitlines() counts (one empty line is a line), as client.py.
        pytest.param(
            "\n",
            "Fatal: transfer.info has 1 lines; expected 3 (host:port, name, file path)\n",
            id="one-empty-line",
        ),
        pytest.param("127.0.0.1:1234\nbob\nmissing.bin\n", "missing.bin", id="missing-file"),
    ],
)
def test_bad_transfer_info(cpp_client: ClientBuild, tmp_path: Path, transfer_info: str, message: str) -> None:
    (tmp_path / "transfer.info").write_text(transfer_info, newline="\n")
    run = run_client(cpp_client, tmp_path)
    assert run.returncode != 0
    assert message in run.stderr
    assert "Fatal:" in run.stderr


def test_malformed_me_info_is_reported_not_replaced(
    cpp_client: ClientBuild, server: ServerProcess, tmp_path: Path
) -> None:
    work_dir = make_work_dir(tmp_path, server.address, "bob", "a.bin", b"data")
    broken = "bob\n00112233445566778899aabbccddeeff\nTm90IGEga2V5\n"
    (work_dir / "me.info").write_text(broken, newline="\n")
    run = run_client(cpp_client, work_dir)
    assert run.returncode != 0
    assert "me.info" in run.stderr
    assert (work_dir / "me.info").read_text() == broken
    assert query(server, "SELECT ID FROM clients") == []


def test_key_files_are_private(posix_client: ClientBuild, server: ServerProcess, tmp_path: Path) -> None:
    """me.info and priv.key hold the private key: 0600 whatever the umask; a link planted
    where the temporary file goes is replaced, not written through."""
    work_dir = make_work_dir(tmp_path, server.address, "private", "p.bin", b"secret")
    outside = tmp_path / "outside.txt"
    outside.write_text("not yours")
    (work_dir / "priv.key.tmp").symlink_to(outside)
    run = run_client(posix_client, work_dir)
    assert run.returncode == 0, run.stderr
    for name in ("me.info", "priv.key"):
        mode = (work_dir / name).lstat().st_mode
        assert stat.S_ISREG(mode), name
        assert stat.S_IMODE(mode) == 0o600, f"{name}: {oct(stat.S_IMODE(mode))}"
    assert outside.read_text() == "not yours"


def test_line_3_may_be_an_absolute_path_through_non_ascii_folders(
    cpp_client: ClientBuild, server: ServerProcess, tmp_path: Path
) -> None:
    """§6-§7: C:\\Users\\<Hebrew>\\sub\\a.bin is opened as it is and sent as a.bin."""
    content = pattern_bytes(12_345)
    elsewhere = tmp_path / WORK_DIR_NAME / "\u05ea\u05d9\u05e7\u05d9\u05d4" / "sub"  # "folder"
    elsewhere.mkdir(parents=True)
    (elsewhere / "a.bin").write_bytes(content)
    work_dir = make_work_dir(tmp_path, server.address, "far", cpp_client.host_path(elsewhere / "a.bin"), None)
    run = run_client(cpp_client, work_dir)
    assert run.returncode == 0, run.stderr
    assert "Sending a.bin (12345 bytes)" in run.stdout
    assert_stored(server, read_me_info(work_dir).client_id, "a.bin", content)


def test_progress_line_on_a_terminal_only(
    posix_client: ClientBuild, server: ServerProcess, tmp_path: Path
) -> None:
    """Over 1 MiB and stderr a terminal (`script`'s pty): one line rewritten with '\\r', erased
    at the end; piped: no progress at all."""
    content = pattern_bytes(3 * MIB)
    work_dir = make_work_dir(tmp_path, server.address, "watcher", "big.bin", content)
    command = f"stty cols 100 rows 24; {shlex.quote(str(posix_client.executable))}"
    on_terminal = subprocess.run(
        ["script", "--quiet", "--return", "--command", command, "/dev/null"],
        check=False,
        cwd=work_dir,
        capture_output=True,  # bytes: text mode would turn each "\r" into a newline
        timeout=CLIENT_TIMEOUT,
        stdin=subprocess.DEVNULL,
        env=posix_client.env(),
    )
    terminal = on_terminal.stdout.decode()
    assert on_terminal.returncode == 0, terminal
    updates = re.findall(r"\rbig\.bin: (\d+)% \((\d+) of 3 MiB\)", terminal)
    assert len(updates) >= 2, terminal
    assert updates[-1] == ("100", "3")
    assert re.search(r"\r +\r", terminal), "the line is erased when the file is sent"
    assert "File sent and verified" in terminal
    piped = run_client(posix_client, work_dir)
    assert piped.returncode == 0, piped.stderr
    assert "%" not in piped.stdout + piped.stderr
    assert "\r" not in piped.stdout + piped.stderr


class StallingProxy:
    """Forwards one connection each way, but stops passing the client's bytes on once `limit`
    have gone through (and sets `stalled`): the client is then stuck mid-request."""

    def __init__(self, target: tuple[str, int], limit: int) -> None:
        self.limit = limit
        self.stalled = threading.Event()
        self._target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._sockets: list[socket.socket] = [self._listener]
        threading.Thread(target=self._run, daemon=True).start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._listener.getsockname()[:2]
        return host, port

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()

    def _run(self) -> None:
        try:
            client, _ = self._listener.accept()
            upstream = socket.create_connection(self._target)
        except OSError:
            return
        self._sockets += [client, upstream]
        threading.Thread(target=self._pump, args=(upstream, client, None), daemon=True).start()
        self._pump(client, upstream, self.limit)

    def _pump(self, source: socket.socket, sink: socket.socket, limit: int | None) -> None:
        passed = 0
        try:
            while data := source.recv(65536):
                if limit is not None and passed + len(data) >= limit:
                    sink.sendall(data[: limit - passed])
                    self.stalled.set()
                    return  # reads no more: the client's writes fill the socket and block
                sink.sendall(data)
                passed += len(data)
        except OSError:
            return


def interrupt(build: ClientBuild, work_dir: Path, ready: Callable[[], bool]) -> ClientRun:
    """Starts the client, waits until `ready()`, then does what Ctrl-C does: SIGINT."""
    with subprocess.Popen(
        build.command("client"),
        cwd=work_dir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=build.env(),
    ) as process:
        try:
            assert wait_until(lambda: ready() or process.poll() is not None, timeout=CLIENT_TIMEOUT)
            assert process.poll() is None, "the client ended before it could be interrupted"
            process.send_signal(signal.SIGINT)
            stdout, stderr = process.communicate(timeout=CLIENT_TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
    return ClientRun(process.returncode, stdout, stderr)


def test_ctrl_c_while_waiting_for_the_server(
    posix_client: ClientBuild, fake_server: Callable[..., FakeServer], tmp_path: Path
) -> None:
    server = fake_server({(REGISTER, 1): lambda _: b""})  # never answers
    work_dir = make_work_dir(tmp_path, server.address, "impatient", "f.bin", b"x")
    run = interrupt(posix_client, work_dir, lambda: REGISTER in server.codes)
    assert (run.returncode, run.stderr) == (130, "Interrupted\n")
    assert not (work_dir / "me.info").exists()


def test_ctrl_c_mid_transfer_leaves_nothing_on_the_server(
    posix_client: ClientBuild, server: ServerProcess, tmp_path: Path
) -> None:
    """Stopped in the middle of a 1028: "Interrupted", 130, and the server keeps no file."""
    content = pattern_bytes(8 * MIB)
    # Past the 1025, 1026 and the first MiB of the 1028: the client is sending the file.
    proxy = StallingProxy(server.address, limit=2 * REQUEST_HEADER.size + 2 * 255 + 160 + MIB)
    try:
        work_dir = make_work_dir(tmp_path, proxy.address, "quitter", "big.bin", content)
        run = interrupt(posix_client, work_dir, proxy.stalled.is_set)
    finally:
        proxy.close()  # the server sees the request cut short
    assert (run.returncode, run.stderr) == (130, "Interrupted\n")
    me = read_me_info(work_dir)
    assert query(server, "SELECT ID FROM clients") == [(me.client_id,)]
    assert wait_until(lambda: not list(server.data_dir.rglob("*big*")))
    assert query(server, "SELECT FileName FROM files") == []


def test_crlf_info_files(cpp_client: ClientBuild, server: ServerProcess, tmp_path: Path) -> None:
    """Info files edited on Windows: CRLF line endings in transfer.info and me.info."""
    content = pattern_bytes(3000)
    work_dir = make_work_dir(tmp_path, server.address, "windows", "w.bin", content)
    host, port = server.address
    (work_dir / "transfer.info").write_bytes(f"{host}:{port}\r\nwindows\r\nw.bin\r\n".encode())
    first = run_client(cpp_client, work_dir)
    assert first.returncode == 0, first.stderr
    me_info = work_dir / "me.info"
    me_info.write_bytes(me_info.read_bytes().replace(b"\n", b"\r\n"))
    second = run_client(cpp_client, work_dir)
    assert second.returncode == 0, second.stderr
    assert "Reconnected" in second.stdout
    assert len(query(server, "SELECT ID FROM clients")) == 1


# --- a scripted server: the answers the real one never gives ------------------------------------

# Replaces the honest response (header and payload, bytes) by what the test wants sent.
Fault = Callable[[bytes], bytes]
SERVER_ERROR: Fault = lambda _honest: pack_response(ResponseCode.GENERAL_ERROR)  # noqa: E731


@dataclass(frozen=True)
class Received:
    connection: int  # 0 for the client's first connection, 1 for its second...
    code: int


@dataclass
class FakeServer:
    """Answers as PROTOCOL.md §2-3 says, except where `faults[(code, n)]` rewrites the answer to
    the n-th request (counting from 1) with that code. Records every request it reads.

    Small files only: a 1028 is read whole. One client identity, one AES key.
    """

    faults: dict[tuple[int, int], Fault]
    received: list[Received] = field(default_factory=list)
    client_id: bytes = field(default_factory=lambda: os.urandom(16))
    aes_key: bytes = field(default_factory=generate_aes_key)
    _counts: Counter[int] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _listener: socket.socket = field(default_factory=lambda: socket.create_server(("127.0.0.1", 0)))

    def __post_init__(self) -> None:
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._listener.getsockname()[:2]
        return host, port

    @property
    def codes(self) -> list[int]:
        return [request.code for request in self.received]

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        for index in range(100):  # bounded: no test makes more connections
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(connection, index), daemon=True).start()

    def _serve(self, connection: socket.socket, index: int) -> None:
        with connection, connection.makefile("rb") as stream:
            try:
                while len(header := stream.read(REQUEST_HEADER.size)) == REQUEST_HEADER.size:
                    _, _, code, size = REQUEST_HEADER.unpack(header)
                    payload = stream.read(size)
                    if len(payload) != size:
                        return
                    with self._lock:
                        self.received.append(Received(index, code))
                        self._counts[code] += 1
                        fault = self.faults.get((code, self._counts[code]))
                    honest = self._honest_answer(RequestCode(code), payload)
                    answer = fault(honest) if fault else honest
                    if answer:
                        connection.sendall(answer)
            except ConnectionError:
                return  # the client dropped the connection (it does after a malformed answer)

    def _honest_answer(self, code: RequestCode, payload: bytes) -> bytes:
        if code == RequestCode.REGISTER:
            return pack_response(ResponseCode.REGISTERED, self.client_id)
        if code == RequestCode.PUBLIC_KEY:
            wrapped = wrap_aes_key(payload[NAME_FIELD_SIZE:], self.aes_key)
            return pack_response(ResponseCode.AES_KEY, self.client_id + wrapped)
        if code == RequestCode.RECONNECT:
            return pack_response(ResponseCode.RECONNECT_DENIED, self.client_id)
        if code == RequestCode.SEND_FILE:
            content_size, name_field = SEND_FILE_HEAD.unpack(payload[: SEND_FILE_HEAD.size])
            content = memoryview(payload)[SEND_FILE_HEAD.size :]
            decrypted = bytearray(len(content))
            CbcDecryptor(self.aes_key, len(content)).decrypt_into(content, memoryview(decrypted))
            plain = decrypted[: len(decrypted) - padding_length(bytes(decrypted[-16:]))]
            body = FILE_RECEIVED.pack(self.client_id, content_size, name_field, cksum(plain))
            return pack_response(ResponseCode.FILE_RECEIVED, body)
        if code == RequestCode.CRC_RETRY:
            return b""  # §2: no response
        return pack_response(ResponseCode.ACK, self.client_id)  # 1029, 1031


@pytest.fixture
def fake_server() -> Iterator[Callable[..., FakeServer]]:
    servers: list[FakeServer] = []

    def start(faults: dict[tuple[int, int], Fault] | None = None) -> FakeServer:
        server = FakeServer(faults or {})
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def run_against(
    build: ClientBuild, server: FakeServer, tmp_path: Path, content: bytes = b"x" * 100
) -> ClientRun:
    return run_client(build, make_work_dir(tmp_path, server.address, "scripted", "f.bin", content))


REGISTER, PUBLIC_KEY, SEND_FILE, CRC_OK, CRC_RETRY, CRC_ABORT = 1025, 1026, 1028, 1029, 1030, 1031


def test_server_errors_are_retried(
    cpp_client: ClientBuild, fake_server: Callable[..., FakeServer], tmp_path: Path
) -> None:
    server = fake_server(
        {(REGISTER, 1): SERVER_ERROR, (REGISTER, 2): SERVER_ERROR, (CRC_OK, 1): SERVER_ERROR}
    )
    run = run_against(cpp_client, server, tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stderr.count("server responded with an error") == 3
    assert server.codes == [REGISTER, REGISTER, REGISTER, PUBLIC_KEY, SEND_FILE, CRC_OK, CRC_OK]
    assert {request.connection for request in server.received} == {0}


def test_fourth_server_error_is_fatal(
    cpp_client: ClientBuild, fake_server: Callable[..., FakeServer], tmp_path: Path
) -> None:
    server = fake_server({(SEND_FILE, n): SERVER_ERROR for n in range(1, 5)})
    run = run_against(cpp_client, server, tmp_path)
    assert run.returncode != 0
    assert run.stderr.count("server responded with an error") == 4
    assert "Fatal: sending the file (1028) failed" in run.stderr
    assert server.codes == [REGISTER, PUBLIC_KEY, SEND_FILE, SEND_FILE, SEND_FILE, SEND_FILE]


def test_registration_refused_stops_at_once(
    cpp_client: ClientBuild, fake_server: Callable[..., FakeServer], tmp_path: Path
) -> None:
    server = fake_server({(REGISTER, 1): lambda _: pack_response(ResponseCode.REGISTRATION_FAILED)})
    run = run_against(cpp_client, server, tmp_path)
    assert run.returncode != 0
    assert "Fatal: registration failed (2101)" in run.stderr
    assert server.codes == [REGISTER]
    assert not (tmp_path / WORK_DIR_NAME / "me.info").exists()


@pytest.mark.parametrize(
    ("code", "fault"),
    [
        pytest.param(CRC_OK, lambda honest: honest[:7] + bytes(16), id="2104-other-client-id"),
        pytest.param(SEND_FILE, lambda honest: honest[:23] + b"\0\0\0\0" + honest[27:], id="2103-wrong-size"),
        pytest.param(SEND_FILE, lambda honest: honest[:27] + b"g.bin\0" + honest[33:], id="2103-other-name"),
        pytest.param(SEND_FILE, lambda _: pack_response(ResponseCode.ACK, bytes(16)), id="2104-for-1028"),
    ],
)
def test_unexpected_answer_is_retried_on_the_same_connection(
    cpp_client: ClientBuild, fake_server: Callable[..., FakeServer], tmp_path: Path, code: int, fault: Fault
) -> None:
    server = fake_server({(code, 1): fault})
    run = run_against(cpp_client, server, tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stderr.count("server responded with an error") == 1
    assert server.codes.count(code) == 2
    assert {request.connection for request in server.received} == {0}


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(lambda honest: b"\x02" + honest[1:], id="version-2"),
        pytest.param(
            lambda honest: honest[:1] + (2108).to_bytes(2, "little") + honest[3:], id="unknown-code"
        ),
        pytest.param(lambda honest: honest[:3] + (2**32 - 1).to_bytes(4, "little"), id="huge-size"),
        pytest.param(lambda honest: honest[:3] + (200).to_bytes(4, "little") + honest[7:], id="short-size"),
    ],
)
def test_broken_framing_is_retried_on_a_new_connection(
    cpp_client: ClientBuild, fake_server: Callable[..., FakeServer], tmp_path: Path, fault: Fault
) -> None:
    server = fake_server({(SEND_FILE, 1): fault})
    run = run_against(cpp_client, server, tmp_path)
    assert run.returncode == 0, run.stderr
    assert "malformed response" in run.stderr
    assert server.received == [
        Received(0, REGISTER),
        Received(0, PUBLIC_KEY),
        Received(0, SEND_FILE),
        Received(1, SEND_FILE),
        Received(1, CRC_OK),
    ]


def test_checksum_mismatch_sequence(
    cpp_client: ClientBuild, fake_server: Callable[..., FakeServer], tmp_path: Path
) -> None:
    """1030 is followed at once by the next 1028 (no response read); 1031 after the fourth."""
    wrong_cksum: Fault = lambda honest: honest[:-1] + bytes([honest[-1] ^ 1])  # noqa: E731
    server = fake_server({(SEND_FILE, n): wrong_cksum for n in range(1, 5)})
    run = run_against(cpp_client, server, tmp_path)
    assert run.returncode != 0
    assert run.stderr.count("checksum mismatch") == 4
    assert server.codes == [REGISTER, PUBLIC_KEY] + [SEND_FILE, CRC_RETRY] * 3 + [SEND_FILE, CRC_ABORT]


def test_silent_server_times_out(
    cpp_client: ClientBuild, fake_server: Callable[..., FakeServer], tmp_path: Path
) -> None:
    """--timeout SECONDS bounds the wait for each answer; the words are the Python client's."""
    server = fake_server({(REGISTER, 1): lambda _: b""})
    host, port = server.address
    started = time.monotonic()
    run = run_client(
        cpp_client, make_work_dir(tmp_path, server.address, "scripted", "f.bin", b"x"), "--timeout", "1.5"
    )
    assert run.returncode == 1
    assert run.stderr == f"Fatal: no answer from {host}:{port} within 1.5 s\n"
    assert time.monotonic() - started < CLIENT_TIMEOUT


@pytest.mark.slow
def test_default_timeout_is_30_seconds(fake_server: Callable[..., FakeServer], tmp_path: Path) -> None:
    """One build is enough: the default is a constant, and waiting costs 30 s."""
    server = fake_server({(REGISTER, 1): lambda _: b""})
    host, port = server.address
    started = time.monotonic()
    run = run_against(_client_build("release"), server, tmp_path)
    assert run.returncode == 1
    assert run.stderr == f"Fatal: no answer from {host}:{port} within 30 s\n"
    assert 30 <= time.monotonic() - started < CLIENT_TIMEOUT


@pytest.mark.parametrize("value", ["0", "abc", "86401"])
def test_bad_timeout_is_refused(cpp_client: ClientBuild, tmp_path: Path, value: str) -> None:
    run = run_client(cpp_client, tmp_path, "--timeout", value)
    assert run.returncode == 2
    assert f"--timeout wants a number of seconds greater than 0 (at most 86400), not '{value}'" in run.stderr


# --- the two clients share a working folder ---------------------------------------------------


def run_python_client(work_dir: Path) -> ClientRun:
    return run_program([sys.executable, str(REPO_ROOT / "client.py")], work_dir)


@pytest.mark.parametrize("first", ["python", "cpp"])
def test_me_info_carries_over_between_the_two_clients(
    cpp_client: ClientBuild, server: ServerProcess, tmp_path: Path, first: str
) -> None:
    """me.info and priv.key written by one client let the other reconnect (PKCS#8 in Base64)."""
    content = pattern_bytes(10_000)
    work_dir = make_work_dir(tmp_path, server.address, f"shared-{first}", "shared.bin", content)
    clients: list[Callable[[], ClientRun]] = [
        lambda: run_python_client(work_dir),
        lambda: run_client(cpp_client, work_dir),
    ]
    for run in clients if first == "python" else reversed(clients):
        result = run()
        assert result.returncode == 0, result.stderr
    me = read_me_info(work_dir)
    assert query(server, "SELECT ID FROM clients") == [(me.client_id,)], "the second run reconnected"
    assert_stored(server, me.client_id, "shared.bin", content)
