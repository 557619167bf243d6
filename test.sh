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

# --- Windows build of the C++ client (tests/test_cpp_client.py runs it under wine) ---------
# The mingw-w64 cross-compiler and wine64, Debian packages. client/build-windows.sh then
# cross-builds Crypto++ from Debian's source package once (cached in build/windows-deps/)
# and the client into build/client-windows/; the tests start wine once per session with
# WINEPREFIX=build/wine-prefix.
windows_packages=(g++-mingw-w64-x86-64-posix wine64)
windows_missing=()
for package in "${windows_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || windows_missing+=("$package")
done
if ((${#windows_missing[@]})); then
    if [[ $(id -u) == 0 ]]; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${windows_missing[@]}" >/dev/null
    else
        echo "missing packages (install them with apt-get): ${windows_missing[*]}" >&2
    fi
fi
client/build-windows.sh
# --- end of the Windows build -------------------------------------------------------------

# Python packages in a virtual environment of the repository's own.
python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
export PATH="$PWD/.venv/bin:$PATH"

ruff check .
ruff format --check .
mypy
python -m pytest "$@"
