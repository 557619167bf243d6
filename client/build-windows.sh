#!/usr/bin/env bash
# Cross-builds the C++ client for 64-bit Windows with Debian's mingw-w64 and leaves
#   build/client-windows/client.exe         the program (one static .exe, no DLLs beside it)
#   build/client-windows/client_tests.exe   its unit tests
# Run it from anywhere; `wine64 build/client-windows/client_tests.exe` runs the tests.
#
# Crypto++ is cross-built from Debian's source package of the same release that the Linux build
# uses (libcrypto++-dev), fetched through apt, which checks it against the signed index. apt
# works here on a private state folder under build/ (its own deb-src list, its own package
# lists): nothing in /etc/apt is added or changed, so there is nothing to remove afterwards.
# The result is cached in build/windows-deps/, so a second run only rebuilds the client.
#
# Needs (Debian): apt-get install g++-mingw-w64-x86-64-posix cmake make libboost-dev
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
deps="$repo/build/windows-deps"
out="$repo/build/client-windows"
triplet=x86_64-w64-mingw32
cxx="$triplet-g++-posix"

# Pinned: Debian 12 (bookworm)'s libcrypto++, the version its libcrypto++-dev gives the Linux
# build, so that both builds of the client run the same Crypto++.
cryptopp_suite=bookworm
cryptopp_version=8.7.0+git220824-1
# Same Windows API level as the client (CMakeLists.txt): Crypto++'s headers pick the CNG random
# generator (bcrypt) from it, and the library and the client must agree on its class layout.
cryptopp_flags="-O2 -DNDEBUG -D_WIN32_WINNT=0x0A00"
# The members of Crypto++'s library that the client and client_tests link. Found on Linux with
#   cmake -S client -B /tmp/map -DCRYPTOPP_LIBRARY=/usr/lib/x86_64-linux-gnu/libcrypto++.a \
#         -DCMAKE_EXE_LINKER_FLAGS=-Wl,-Map=link.map && cmake --build /tmp/map
#   grep -oE 'libcrypto\+\+\.a\([a-z0-9_]+\.o\)' /tmp/map/link.map | sort -u
# If the client comes to use more of Crypto++, the link fails naming the missing symbol: add
# its object here.
cryptopp_objects=(
    algparam.o allocate.o asn.o base64.o basecode.o cpu.o cryptlib.o dll.o ec2n.o ecp.o
    filters.o fips140.o gf2n.o gf2n_simd.o gfpcrypt.o hex.o hmac.o hrtimer.o integer.o
    iterhash.o misc.o modes.o mqueue.o nbtheory.o oaep.o osrng.o pkcspad.o pubkey.o queue.o
    randpool.o rdtables.o rijndael.o rijndael_simd.o rng.o rsa.o sha.o sha_simd.o sse_simd.o
)

for tool in "$cxx" "$triplet-ar" "$triplet-ranlib" cmake make apt-get; do
    if ! command -v "$tool" >/dev/null; then
        echo "build-windows.sh: $tool not found; install: apt-get install g++-mingw-w64-x86-64-posix cmake make" >&2
        exit 1
    fi
done
if [[ ! -f /usr/include/boost/asio.hpp ]]; then
    echo "build-windows.sh: Boost headers not found; install: apt-get install libboost-dev" >&2
    exit 1
fi
jobs=$(nproc 2>/dev/null || echo 2)

# ---- Crypto++ for Windows (cached) ---------------------------------------------------------

cryptopp="$deps/cryptopp"
stamp="$cryptopp/built-with"
want_stamp="$cryptopp_version | $("$cxx" -dumpversion) | $cryptopp_flags | ${cryptopp_objects[*]}"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want_stamp" ]]; then
    echo "build-windows.sh: building Crypto++ $cryptopp_version for Windows (once; cached in $cryptopp)"
    apt_dir="$deps/apt"
    rm -rf "$apt_dir" "$cryptopp" "$deps/cryptopp-src"
    mkdir -p "$apt_dir/sources.list.d" "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/download"
    cat >"$apt_dir/sources.list.d/cryptopp-source.sources" <<EOF
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: $cryptopp_suite
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    apt_options=(
        -o "Dir::Etc::SourceList=/dev/null"
        -o "Dir::Etc::SourceParts=$apt_dir/sources.list.d"
        -o "Dir::State::Lists=$apt_dir/lists"
        -o "Dir::Cache=$apt_dir/cache"
        -o "Debug::NoLocking=1"          # private state: the system's apt lock is not ours to take
        -o "APT::Sandbox::User=$(id -un)" # the files are ours; apt's _apt user cannot write here
    )
    apt-get -qq "${apt_options[@]}" update
    (cd "$apt_dir/download" && apt-get -qq "${apt_options[@]}" source --download-only "libcrypto++=$cryptopp_version")
    orig=("$apt_dir"/download/libcrypto++_*.orig.tar.*)
    mkdir -p "$deps/cryptopp-src"
    tar -xf "${orig[0]}" -C "$deps/cryptopp-src" --strip-components=1
    # Only the objects the client and its unit tests link, built by Crypto++'s own GNUmakefile
    # rules (which give the *_simd files their instruction-set flags; it recognises MinGW from
    # the compiler's target triplet): a fifth of the library, a third of its build time.
    make -C "$deps/cryptopp-src" -j"$jobs" "${cryptopp_objects[@]}" \
        CXX="$cxx" CXXFLAGS="$cryptopp_flags" >"$deps/cryptopp-build.log" 2>&1 ||
        { tail -n 40 "$deps/cryptopp-build.log" >&2; exit 1; }
    mkdir -p "$cryptopp/include/cryptopp" "$cryptopp/lib"
    (cd "$deps/cryptopp-src" && "$triplet-ar" rcs "$cryptopp/lib/libcryptopp.a" "${cryptopp_objects[@]}")
    cp "$deps/cryptopp-src"/*.h "$cryptopp/include/cryptopp/"
    rm -rf "$deps/cryptopp-src" "$apt_dir"
    echo "$want_stamp" >"$stamp"
fi

# ---- Boost: the distribution's headers alone -------------------------------------------------

# A folder holding only boost/, so that the target's include path does not get all of the
# host's /usr/include (glibc's headers would shadow mingw's).
mkdir -p "$deps/boost-include"
ln -sfn /usr/include/boost "$deps/boost-include/boost"

# ---- the client ------------------------------------------------------------------------------

mkdir -p "$out"
cmake -S "$repo/client" -B "$out" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_TOOLCHAIN_FILE="$repo/client/cmake/mingw-w64-x86_64.cmake" \
    -DCRYPTOPP_INCLUDE_DIR="$cryptopp/include" \
    -DCRYPTOPP_LIBRARY="$cryptopp/lib/libcryptopp.a" \
    -DCLIENT_BOOST_INCLUDE_DIR="$deps/boost-include" >"$out/configure.log" 2>&1 ||
    { cat "$out/configure.log" >&2; exit 1; }
cmake --build "$out" --parallel "$jobs" >"$out/build.log" 2>&1 || { tail -n 60 "$out/build.log" >&2; exit 1; }
for exe in client.exe client_tests.exe; do
    [[ -f "$out/$exe" ]] || { echo "build-windows.sh: $out/$exe was not built" >&2; exit 1; }
done
echo "build-windows.sh: built $out/client.exe and $out/client_tests.exe"
