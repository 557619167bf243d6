"""What a newcomer meets first: the README's first command, and failures that say what to do.

Each failure a user can run into before anything works (python3-venv missing, a
package missing, a port taken, a wrong --data-dir) prints one line that names
the problem and what to do, and a test here asserts that line. About 10 s in all,
most of it Python start-ups.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from support import LISTENING_LINE, REPO_ROOT, START_TIMEOUT, wait_until

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
            [str(clone / "run-server.sh"), "--host", "127.0.0.1", "--port", "0", "--data-dir", "data"],
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
        assert (clone / "data" / "defensive.db").is_file()
    finally:
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=10)
    assert returncode == 0, log_path.read_text()
