#!/usr/bin/env bash
# The README's first command: sets up the server's Python packages in .venv (the first time)
# and runs server.py from this folder with the options given (./run-server.sh --help).
# Needs python3 >= 3.11 and, on Debian/Ubuntu, the python3-venv package; says so in one line.
set -euo pipefail
cd "$(dirname "$0")"

fail() {
    echo "run-server.sh: $*" >&2
    exit 1
}

command -v python3 >/dev/null || fail "python3 is not installed: sudo apt-get install python3 python3-venv"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    fail "python3 is $(python3 -c 'import platform; print(platform.python_version())'); 3.11 or later is needed"
if [[ ! -x .venv/bin/pip ]]; then
    # Debian and Ubuntu ship venv's ensurepip in a package apart; without it `python3 -m venv`
    # fails after many lines and leaves a .venv without pip behind.
    python3 -c 'import ensurepip' 2>/dev/null ||
        fail "python3 cannot make a virtual environment: sudo apt-get install python3-venv"
    python3 -m venv --clear .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt ||
    fail "could not install the packages of requirements.txt into .venv (see pip's message above)"
exec .venv/bin/python server.py "$@"
