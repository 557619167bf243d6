#!/usr/bin/env bash
# Sets up everything the test suite needs on a fresh Debian machine, then runs
# the linters and the whole suite. Usage: ./test.sh [extra pytest arguments]
set -euo pipefail
cd "$(dirname "$0")"

# System packages: the C++ client's toolchain and libraries (tests/test_cpp_client.py),
# cksum (coreutils) for the checksum cross-check, sshd and scp (openssh-server) for the
# benchmark's scp reference (tests/test_bench.py), python3-venv for `python3 -m venv` below
# (Debian and Ubuntu ship it apart from python3). Installed when missing and root.
packages=(g++ cmake make libcrypto++-dev libboost-dev pkg-config coreutils openssh-server python3-venv)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    if [[ $(id -u) == 0 ]]; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "missing packages (install them with apt-get): ${missing[*]}" >&2
    fi
fi

# Python packages in a virtual environment of the repository's own.
python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
export PATH="$PWD/.venv/bin:$PATH"

ruff check .
ruff format --check .
mypy
python -m pytest "$@"
