"""What a newcomer meets first: the README's first command, and failures that say what to do.

Each failure a user can run into before anything works (python3-venv missing, a
package missing, a port taken, a wrong --data-dir) prints one line that names
the problem and what to do, and a test here asserts that line. About 10 s in all,
most of it Python start-ups.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from support import LISTENING_LINE, REPO_ROOT, START_TIMEOUT, ServerProcess, wait_until

import dependencies

REAL_PYTHON3 = shutil.which("python3") or sys.executable


def copy_of_the_repository(destination: Path) -> Path:
    """The top-level programs and requirements, as a fresh clone has them (no .venv)."""
    destination.mkdir()
    for path in REPO_ROOT.iterdir():
        if path.suffix in (".py", ".sh", ".txt") and path.is_file():
            shutil.copy2(path, destination / path.name)
    return destination


def python3_without_ensurepip(folder: Path) -> Path:
    """A `python3` on PATH that is Debian's python3 without python3-venv: no ensurepip."""
    folder.mkdir()
    stub = folder / "python3"
    stub.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "-c" ] && [ "$2" = "import ensurepip" ]; then\n'
        "    echo \"ModuleNotFoundError: No module named 'ensurepip'\" >&2; exit 1\n"
        "fi\n"
        f'exec {REAL_PYTHON3} "$@"\n'
    )
    stub.chmod(0o755)
    return folder


def test_run_server_without_python3_venv_says_what_to_apt_get(tmp_path: Path) -> None:
    clone = copy_of_the_repository(tmp_path / "clone")
    stubs = python3_without_ensurepip(tmp_path / "bin")
    result = subprocess.run(
        [str(clone / "run-server.sh")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PATH": f"{stubs}:/usr/bin:/bin"},
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr == (
        "run-server.sh: python3 cannot make a virtual environment: sudo apt-get install python3-venv\n"
    )
    assert not (clone / ".venv").exists()


def test_run_server_sets_up_and_runs_the_server(tmp_path: Path) -> None:
    """With the packages installed (our own environment as its .venv), it starts server.py."""
    assert sys.prefix != sys.base_prefix, "the tests run in a virtual environment (./test.sh makes .venv)"
    clone = copy_of_the_repository(tmp_path / "clone")
    (clone / ".venv").symlink_to(sys.prefix)
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(clone / "run-server.sh"), "--host", "127.0.0.1", "--port", "0"],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
    try:
        assert wait_until(
            lambda: LISTENING_LINE.search(log_path.read_text()) or process.poll() is not None,
            timeout=START_TIMEOUT + 30,  # pip checks the installed packages first
        )
        assert LISTENING_LINE.search(log_path.read_text()), log_path.read_text()
        assert (clone / "defensive.db").is_file(), "beside server.py, as the README says"
    finally:
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=10)
    assert returncode == 0, log_path.read_text()


# --- a missing package: one line that names it and the command that installs it -------------


def site_packages_without(module: str, folder: Path) -> Path:
    """A folder of links to every installed package but `module`: with `python -S` (no site)
    and this as PYTHONPATH, the package is missing exactly as on a machine without it."""
    import Crypto  # noqa: PLC0415 (its folder is the environment's site-packages)

    site_packages = Path(Crypto.__file__).resolve().parent.parent
    folder.mkdir()
    for entry in site_packages.iterdir():
        if entry.name != module and not entry.name.startswith((f"{module}-", f"{module}.")):
            (folder / entry.name).symlink_to(entry)
    return folder


@pytest.mark.parametrize(
    ("program", "module", "package"),
    [
        ("server.py", "Crypto", "pycryptodome"),
        ("server.py", "anycrc", "anycrc"),
        ("client.py", "Crypto", "pycryptodome"),
        ("client.py", "anycrc", "anycrc"),
        ("client.py", "cryptography", "cryptography"),
        ("client.py", "tqdm", "tqdm"),
    ],
)
def test_a_missing_package_is_one_line_naming_it_and_the_install_command(
    tmp_path: Path, program: str, module: str, package: str
) -> None:
    packages = site_packages_without(module, tmp_path / "site-packages")
    result = subprocess.run(
        [sys.executable, "-S", str(REPO_ROOT / program), "--help"],
        cwd=tmp_path,  # a user's folder: the advice names the repository's files by full path
        env={**os.environ, "PYTHONPATH": str(packages)},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    venv = REPO_ROOT / ".venv"
    assert result.stderr == (
        f"{program}: the Python package {package} is not installed (no module named {module!r}); "
        f"install the packages with: python3 -m venv {venv} && {venv}/bin/pip install -r "
        f"{REPO_ROOT}/requirements.txt, then run {venv}/bin/python {REPO_ROOT / program}\n"
    )


def test_the_cpp_build_without_crypto_pp_is_one_line_naming_the_package(tmp_path: Path) -> None:
    """The C++ client's missing library: CMake stops with the package to apt-get (or vcpkg).

    Crypto++ is hidden by rooting every library, header and package search in an empty
    folder; Boost's headers are named directly, so Crypto++ is the first thing missing.
    """
    empty = tmp_path / "empty-root"
    empty.mkdir()
    result = subprocess.run(
        [
            "cmake",
            "-S",
            str(REPO_ROOT / "client"),
            "-B",
            str(tmp_path / "build"),
            "-DCLIENT_BOOST_INCLUDE_DIR=/usr/include",
            f"-DCMAKE_FIND_ROOT_PATH={empty}",
            "-DCMAKE_FIND_ROOT_PATH_MODE_INCLUDE=ONLY",
            "-DCMAKE_FIND_ROOT_PATH_MODE_LIBRARY=ONLY",
            "-DCMAKE_FIND_ROOT_PATH_MODE_PACKAGE=ONLY",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode != 0, result.stdout
    # CMake wraps the message; its words, joined again, are the one line of CMakeLists.txt.
    message = " ".join(result.stderr.split())
    assert (
        "Crypto++ not found. On Debian/Ubuntu: apt-get install libcrypto++-dev; with vcpkg: "
        "vcpkg install cryptopp (and pass the vcpkg toolchain file)." in message
    ), result.stderr


def test_the_install_command_inside_a_virtual_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """In a venv the advice installs into it, with paths as typed from the repository folder."""
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setattr(sys, "prefix", str(REPO_ROOT / ".venv"))
    monkeypatch.setattr(sys, "base_prefix", "/usr")
    monkeypatch.setattr(sys, "executable", str(REPO_ROOT / ".venv" / "bin" / "python"))
    error = ModuleNotFoundError("No module named 'Crypto'", name="Crypto.PublicKey")
    assert dependencies.missing_package_line(error, "server.py") == (
        "server.py: the Python package pycryptodome is not installed (no module named 'Crypto'); "
        "install the packages with: .venv/bin/python -m pip install -r requirements.txt"
    )
    # Our own module missing is a broken copy, not a package to install: the traceback stays.
    assert dependencies.missing_package_line(ModuleNotFoundError(name="handlers"), "server.py") is None


# --- start-up errors name the port or the folder, and say what to do -------------------------


def run_server(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "server.py"), "--host", "127.0.0.1", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert "Traceback" not in result.stderr
    return [line.split(" ERROR server: ", 1)[1] for line in result.stderr.splitlines() if " ERROR " in line]


def test_a_taken_port_is_named(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run_server("--port", str(port), "--data-dir", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 1
    assert error_lines(result) == [
        f"cannot start: port {port} is already in use (another server running?); "
        "choose another with --port or port.info"
    ]


def test_a_data_dir_that_is_a_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a folder")
    result = run_server("--port", "0", "--data-dir", "data", cwd=tmp_path)
    assert result.returncode == 1
    assert error_lines(result) == [
        f"cannot start: --data-dir {tmp_path / 'data'} is a file, not a folder; "
        "name a folder for the database and storage"
    ]


def test_a_data_dir_that_does_not_exist_is_refused_not_created(tmp_path: Path) -> None:
    """Decision (docs/server.md): a typo in --data-dir must not start an empty database."""
    result = run_server("--port", "0", "--data-dir", "dtaa/new", cwd=tmp_path)
    missing = tmp_path / "dtaa" / "new"
    assert result.returncode == 1
    assert error_lines(result) == [
        f"cannot start: --data-dir {missing} does not exist; create it (mkdir -p {missing}) "
        "or correct the path"
    ]
    assert not (tmp_path / "dtaa").exists()


# --- the Python client: Ctrl-C, and one timeout ---------------------------------------------


class PausingProxy:
    """Relays one client to the server, but stops reading from the client after `pause_after`
    bytes until `resume()`: the client is then held in the middle of its 1028."""

    def __init__(self, upstream: tuple[str, int], pause_after: int) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._upstream = upstream
        self._pause_after = pause_after
        self.paused = threading.Event()
        self._resumed = threading.Event()
        self._sockets: list[socket.socket] = [self._listener]
        self._thread = threading.Thread(target=self._relay, daemon=True)
        self._thread.start()

    def _relay(self) -> None:
        with contextlib.suppress(OSError):
            client, _ = self._listener.accept()
            server = socket.create_connection(self._upstream)
            self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(server, client), daemon=True).start()
            forwarded = 0
            while True:
                if forwarded >= self._pause_after and not self.paused.is_set():
                    self.paused.set()
                    self._resumed.wait()
                data = client.recv(1 << 16)
                if not data:
                    break
                server.sendall(data)
                forwarded += len(data)
            server.shutdown(socket.SHUT_WR)  # the client went away: so does its connection

    @staticmethod
    def _pump(source: socket.socket, destination: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(1 << 16):
                destination.sendall(data)

    def resume(self) -> None:
        self._resumed.set()

    def close(self) -> None:
        self.resume()
        for sock in self._sockets:
            sock.close()
        self._thread.join(timeout=10)


def start_client(folder: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "client.py"), *args],
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        # Ctrl-C reaches a Python program as KeyboardInterrupt only if SIGINT is not ignored,
        # which a shell does to background jobs (`./test.sh &`): the test must not depend on it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509
    )


def transfer_folder(tmp_path: Path, address: tuple[str, int], size: int) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    with (folder / "big.bin").open("wb") as big:
        big.truncate(size)
    (folder / "transfer.info").write_text(f"{address[0]}:{address[1]}\n{uuid.uuid4().hex[:12]}\nbig.bin\n")
    return folder


def stored(server: ServerProcess) -> list[Path]:
    return [path for path in (server.data_dir / "storage").rglob("*") if path.is_file()]


def test_ctrl_c_mid_transfer_prints_interrupted_and_the_server_keeps_nothing(
    server: ServerProcess, tmp_path: Path, ours: None
) -> None:
    """SIGINT while the client is held in its 1028: `Interrupted`, status 130; the server's
    half-received file goes, and no record of it is left (§7: a peer vanishing mid-file)."""
    proxy = PausingProxy(server.address, pause_after=2 << 20)
    try:
        folder = transfer_folder(tmp_path, proxy.address, 48 << 20)  # far more than socket buffers
        client = start_client(folder)
        assert proxy.paused.wait(timeout=30), "the client did not get 2 MiB into its transfer"
        assert wait_until(lambda: any(path.stat().st_size for path in stored(server))), (
            "the server holds part of the file"
        )
        client.send_signal(signal.SIGINT)
        stdout, stderr = client.communicate(timeout=30)
        assert (client.returncode, stderr) == (130, "Interrupted\n"), stdout
        proxy.resume()  # what the client had sent reaches the server, then its close
        assert wait_until(lambda: not stored(server)), f"left in storage: {stored(server)}"
        assert server.query("SELECT count(*) FROM files") == [(0,)]
    finally:
        proxy.close()


def test_no_answer_within_the_timeout_is_one_fatal_line(tmp_path: Path) -> None:
    """A server that accepts (the kernel's backlog does) and never answers."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        folder = transfer_folder(tmp_path, ("127.0.0.1", port), 10)
        client = start_client(folder, "--timeout", "1")
        _, stderr = client.communicate(timeout=30)
    assert (client.returncode, stderr) == (1, f"Fatal: no answer from 127.0.0.1:{port} within 1 s\n")


def test_a_server_that_takes_nothing_within_the_timeout_is_the_same_fatal_line(
    server: ServerProcess, tmp_path: Path
) -> None:
    """The wait for the server to take the file counts as a wait for an answer too."""
    proxy = PausingProxy(server.address, pause_after=1 << 20)
    try:
        folder = transfer_folder(tmp_path, proxy.address, 48 << 20)
        client = start_client(folder, "--timeout", "1.5")
        _, stderr = client.communicate(timeout=60)
        host, port = proxy.address
        assert (client.returncode, stderr) == (1, f"Fatal: no answer from {host}:{port} within 1.5 s\n")
    finally:
        proxy.close()


def test_the_timeout_is_30_s_by_default_and_must_be_positive() -> None:
    help_text = subprocess.run(
        [sys.executable, str(REPO_ROOT / "client.py"), "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--timeout SECONDS" in help_text and "(default: 30)" in " ".join(help_text.split())
    refused = subprocess.run(
        [sys.executable, str(REPO_ROOT / "client.py"), "--timeout", "0"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 2 and "'0' is not a positive number of seconds" in refused.stderr


def test_a_host_that_is_not_an_address_of_this_machine_is_named(tmp_path: Path) -> None:
    """192.0.2.1 is TEST-NET-1 (RFC 5737): never an address of a test machine."""
    result = run_server("--host", "192.0.2.1", "--port", "0", "--data-dir", ".", cwd=tmp_path)  # last wins
    assert result.returncode == 1
    assert error_lines(result) == [
        "cannot start: 192.0.2.1 is not an address of this machine; correct --host"
    ]
