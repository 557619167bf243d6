"""One line instead of a traceback when a package of requirements.txt is missing.

`server.py` and `client.py` import their third-party packages inside
`try: ... except ModuleNotFoundError as err: exit_if_missing_package(err, ...)`.
A newcomer who runs `python3 server.py` before installing anything then reads
which package is missing and the command that installs it, and the program
ends with status 1. Standard library only: it must work when nothing else is
installed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

PROGRAM_DIR = Path(__file__).resolve().parent
REQUIREMENTS = PROGRAM_DIR / "requirements.txt"

# The top-level modules of requirements.txt's packages, and the package that provides each.
PACKAGE_OF_MODULE = {
    "Crypto": "pycryptodome",
    "anycrc": "anycrc",
    "cryptography": "cryptography",
    "tqdm": "tqdm",
}


def _as_typed(path: Path) -> str:
    """`path` as the user would type it from the current folder: relative when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def install_advice(program: str) -> str:
    """The command that installs requirements.txt for the interpreter that runs `program`."""
    requirements = _as_typed(REQUIREMENTS)
    if sys.prefix != sys.base_prefix:  # a virtual environment: install into it
        return f"{_as_typed(Path(sys.executable))} -m pip install -r {requirements}"
    # A system Python refuses pip installs on Debian and Ubuntu (PEP 668): make a venv.
    venv = _as_typed(PROGRAM_DIR / ".venv")
    return (
        f"python3 -m venv {venv} && {os.path.join(venv, 'bin', 'pip')} install -r {requirements}, "
        f"then run {os.path.join(venv, 'bin', 'python')} {_as_typed(PROGRAM_DIR / program)}"
    )


def missing_package_line(err: ModuleNotFoundError, program: str) -> str | None:
    """The one line to print for `err`, or None when it is not about one of our packages."""
    module = (err.name or "").partition(".")[0]
    package = PACKAGE_OF_MODULE.get(module)
    if package is None:
        return None
    return (
        f"{program}: the Python package {package} is not installed (no module named {module!r}); "
        f"install the packages with: {install_advice(program)}"
    )


def exit_if_missing_package(err: ModuleNotFoundError, program: str) -> NoReturn:
    """Print the line and exit with status 1; re-raise an error about anything else."""
    line = missing_package_line(err, program)
    if line is None:
        raise err
    print(line, file=sys.stderr)
    raise SystemExit(1)
