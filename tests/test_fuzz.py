"""Fuzzing: mutated request streams against a live server, and a smoke run of the decoder fuzzer.

The live fuzzer throws hypothesis-made byte streams at one server: valid
requests of every code with fields flipped, truncated, duplicated, reordered,
sent in odd pieces and interleaved with garbage. After each stream it checks
that every byte the server sent is a sequence of valid responses (version 3, a
code 2100-2107, the payload size §3 gives that code) before it closed the
connection; that the process still runs; that its log shows no traceback; and
that a well-behaved client (1025, 1026, 1028, 1029 on a fresh connection) is
served. That client then becomes the target of the next stream, so that
mutated requests carry a registered client ID, its name and its AES key and
reach past the first checks.

FUZZ_EXAMPLES (default 150) sets the number of streams, for a longer run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest
from conftest import RSA_KEY
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from support import REPO_ROOT, RawConnection, ServerProcess

from crypto_utils import CryptoError, encrypt, export_public_key, unwrap_aes_key
from protocol import (
    AES_BLOCK_SIZE,
    NAME_FIELD_SIZE,
    RESPONSE_HEADER,
    RESPONSE_PAYLOAD_SIZES,
    AesKeyResponse,
    FileReceivedResponse,
    RequestCode,
    RequestHeader,
    ResponseCode,
    ResponseHeader,
    SendFileHead,
    encode_name,
    pack_request,
)

T = TypeVar("T")

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
STREAM_TIMEOUT = 5.0  # seconds for the server to answer a whole stream and close after our EOF
LOG_WAIT = 2.0  # seconds for the server's log to show the well-behaved client's last request
PUBLIC_KEY = export_public_key(RSA_KEY)
KNOWN_FILE = "known.bin"
FUZZER = REPO_ROOT / "fuzz" / "fuzz_decoders.py"
UNKNOWN_CODES = [0, 1, 1024, 1032, 2100, 2107, 0xFFFF]
# Sizes at the edges of what the server checks: empty, a block, the 1028 head, 64 KiB, 32 bits.
EDGE_SIZES = [0, 1, 15, 16, 17, 254, 255, 256, 259, 275, 415, 65536, 65537, 2**31, 2**32 - 1]


@dataclass
class FuzzRun:
    """What one example hands the next: the target, how far the log was read, what was seen."""

    target: Target
    log_at: int
    examples: int = 0
    resets: int = 0  # streams whose connection the server reset (it closed with our bytes unread)
    responses: Counter[int] = field(default_factory=Counter)


@dataclass
class Target:
    """A registered client with its AES key and one verified file: what the streams aim at."""

    client_id: bytes
    name: str
    aes_key: bytes


# --- the well-behaved client -------------------------------------------------------


def well_behaved_client(server: ServerProcess, name: str) -> Target:
    """1025, 1026, 1028, 1029 on a fresh connection, each answered as §2 says."""
    with RawConnection(server.address, timeout=STREAM_TIMEOUT) as conn:
        conn.send(pack_request(bytes(16), RequestCode.REGISTER, encode_name(name)))
        registered = conn.receive()
        assert registered.code == ResponseCode.REGISTERED, registered
        client_id = registered.payload
        conn.send(pack_request(client_id, RequestCode.PUBLIC_KEY, encode_name(name) + PUBLIC_KEY))
        keyed = conn.receive()
        assert keyed.code == ResponseCode.AES_KEY, keyed
        aes_key = unwrap_aes_key(RSA_KEY, AesKeyResponse.unpack(keyed.payload).encrypted_key)
        content = b"well-behaved " + name.encode()
        ciphertext = encrypt(aes_key, content)
        head = SendFileHead(len(ciphertext), KNOWN_FILE).pack()
        conn.send(pack_request(client_id, RequestCode.SEND_FILE, head + ciphertext))
        received = conn.receive()
        assert received.code == ResponseCode.FILE_RECEIVED, received
        assert FileReceivedResponse.unpack(received.payload).content_size == len(ciphertext)
        conn.send(pack_request(client_id, RequestCode.CRC_OK, encode_name(KNOWN_FILE)))
        acknowledged = conn.receive()
        assert acknowledged.code == ResponseCode.ACK and acknowledged.payload == client_id, acknowledged
    return Target(client_id, name, aes_key)


# --- streams -------------------------------------------------------------------------


def usually(valid: st.SearchStrategy[T], other: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """`valid` three times in four: a request with one bad field reaches further than one with five."""
    return st.integers(0, 3).flatmap(lambda roll: valid if roll else other)


def name_fields(own: str) -> st.SearchStrategy[bytes]:
    """255-byte text fields: usually `own`, else plausible, hostile or malformed ones."""
    hostile = st.sampled_from(
        ["..", ".", "../../etc/passwd", "/etc/passwd", "C:\\Windows\\x.bin", "a/", "a\\..\\", "x:y", "\x7f"]
    )
    texts = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=254)
    malformed = st.one_of(
        st.binary(min_size=NAME_FIELD_SIZE, max_size=NAME_FIELD_SIZE),  # often without a NUL
        st.just(bytes(NAME_FIELD_SIZE)),  # empty
        st.just(b"a" * NAME_FIELD_SIZE),  # no NUL
        st.binary(min_size=1, max_size=254).map(lambda raw: raw.ljust(NAME_FIELD_SIZE, b"\0")),
    )
    others = st.one_of(st.sampled_from([KNOWN_FILE, "other.bin", "x" * 254]), hostile, texts).map(encode_name)
    return usually(st.just(encode_name(own)), st.one_of(others, malformed))


@st.composite
def requests(draw: st.DrawFn, target: Target) -> bytes:
    """One request aimed at the target client: half of them well-formed, the rest with bad fields."""
    well_formed = draw(st.booleans())

    def pick(valid: st.SearchStrategy[T], other: st.SearchStrategy[T]) -> T:
        return draw(valid if well_formed else usually(valid, other))

    code = pick(st.sampled_from(list(RequestCode)), st.sampled_from(UNKNOWN_CODES))
    client_id = pick(
        st.just(target.client_id), st.one_of(st.just(bytes(16)), st.binary(min_size=16, max_size=16))
    )
    if code == RequestCode.REGISTER:
        fresh = st.from_regex(r"\Afuzz-new-[a-z0-9]{1,12}\Z").map(encode_name)
        name = pick(fresh, name_fields(target.name))
    elif code in (RequestCode.PUBLIC_KEY, RequestCode.RECONNECT):
        name = pick(st.just(encode_name(target.name)), name_fields(target.name))
    else:
        name = pick(st.just(encode_name(KNOWN_FILE)), name_fields(KNOWN_FILE))
    if code == RequestCode.PUBLIC_KEY:
        payload = name + pick(st.just(PUBLIC_KEY), st.binary(min_size=160, max_size=160))
    elif code == RequestCode.SEND_FILE:
        plaintext = draw(st.binary(max_size=600))
        key = pick(st.just(target.aes_key), st.binary(min_size=16, max_size=16))
        content = pick(
            st.just(encrypt(key, plaintext)),
            st.one_of(
                st.binary(max_size=100).map(lambda raw: raw[: len(raw) - len(raw) % AES_BLOCK_SIZE]),
                st.binary(max_size=100),
            ),
        )
        declared = pick(st.just(len(content)), st.sampled_from(EDGE_SIZES))
        payload = declared.to_bytes(4, "little") + name + content
    elif code in UNKNOWN_CODES:
        payload = draw(st.binary(max_size=300))
    else:
        payload = name
    version = pick(st.just(3), st.integers(0, 255))
    size = pick(st.just(len(payload)), st.one_of(st.sampled_from(EDGE_SIZES), st.integers(0, 2**32 - 1)))
    return RequestHeader(client_id, version, code, size).pack() + payload


@st.composite
def mutated(draw: st.DrawFn, part: bytes) -> bytes:
    """`part` with bits flipped, bytes overwritten, truncated, or duplicated."""
    data = bytearray(part)
    for _ in range(draw(st.integers(0, 3))):
        if not data:
            break
        kind = draw(st.sampled_from(["flip", "overwrite", "truncate", "duplicate"]))
        position = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif kind == "overwrite":
            data[position : position + 4] = draw(st.binary(min_size=1, max_size=4))
        elif kind == "truncate":
            del data[position:]
        else:
            data += bytes(data)
    return bytes(data)


@st.composite
def streams(draw: st.DrawFn, target: Target) -> list[bytes]:
    """The pieces, in sending order, of a stream of mutated requests and garbage."""
    parts = draw(
        st.lists(
            usually(
                requests(target),
                st.one_of(
                    requests(target).flatmap(mutated),
                    st.binary(min_size=1, max_size=64),  # garbage between requests
                ),
            ),
            min_size=1,
            max_size=6,
        )
    )
    if draw(st.booleans()):
        parts = draw(st.permutations(parts))
    stream = b"".join(parts)
    # Sent in pieces cut at arbitrary points: the server must not care where reads end.
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=4)))
    return [stream[start:end] for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True)]


# --- what the server sent --------------------------------------------------------------


def exchange(server: ServerProcess, pieces: list[bytes]) -> tuple[bytes, bool]:
    """Send the pieces, close our side, read until the server closes. (bytes read, reset seen)."""
    with socket.create_connection(server.address, timeout=STREAM_TIMEOUT) as sock:
        try:
            for piece in pieces:
                sock.sendall(piece)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server closed first (broken framing): what it sent is still to read
        received = bytearray()
        deadline = time.monotonic() + STREAM_TIMEOUT
        while True:
            assert time.monotonic() < deadline, f"server neither answered nor closed: {received.hex()}"
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                return bytes(received), True
            except TimeoutError:
                raise AssertionError(f"no close after our EOF; received {received.hex()}") from None
            if not data:
                return bytes(received), False
            received += data


def parse_responses(data: bytes, reset: bool) -> list[tuple[ResponseCode, bytes]]:
    """Every byte as a sequence of valid responses (§1, §3), or the assertion says where not."""
    responses: list[tuple[ResponseCode, bytes]] = []
    offset = 0
    while offset < len(data):
        raw = data[offset : offset + RESPONSE_HEADER.size]
        if len(raw) < RESPONSE_HEADER.size and reset:
            break  # a reset may cut what was in flight; only a complete response must be valid
        header = ResponseHeader.unpack(raw)
        assert header.version == 3, f"response version {header.version} at byte {offset}"
        assert header.code in RESPONSE_PAYLOAD_SIZES, f"unknown response code {header.code} at byte {offset}"
        code = ResponseCode(header.code)
        expected = RESPONSE_PAYLOAD_SIZES[code]
        assert header.payload_size == expected, f"{code.value} with payload size {header.payload_size}"
        payload = data[offset + RESPONSE_HEADER.size : offset + RESPONSE_HEADER.size + expected]
        if len(payload) < expected and reset:
            break
        assert len(payload) == expected, f"{code.value} cut short: {len(payload)} of {expected} bytes"
        if code is ResponseCode.FILE_RECEIVED:
            FileReceivedResponse.unpack(payload)  # the echoed file name must be a valid text field
        responses.append((code, payload))
        offset += RESPONSE_HEADER.size + expected
    return responses


def follow_new_keys(target: Target, responses: list[tuple[ResponseCode, bytes]]) -> None:
    """A fuzzed 1026 or 1027 may have given the target a new AES key: keep up with it."""
    for code, payload in responses:
        if code in (ResponseCode.AES_KEY, ResponseCode.RECONNECTED):
            reply = AesKeyResponse.unpack(payload)
            if reply.client_id == target.client_id:
                # Wrapped for a mutated public key, it does not unwrap: the next target's key is known.
                with contextlib.suppress(CryptoError):
                    target.aes_key = unwrap_aes_key(RSA_KEY, reply.encrypted_key)


def wait_for_log(server: ServerProcess, marker: str, start: int) -> str:
    """The log written since `start`, once it mentions `marker` (or after LOG_WAIT seconds)."""
    deadline = time.monotonic() + LOG_WAIT
    while True:
        whole = server.log_text()  # empty for a server we did not start (--server): nothing to wait for
        text = whole[start:]
        if marker in text or not whole or time.monotonic() > deadline:
            return text
        time.sleep(0.01)


# --- the tests -------------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_mutated_request_streams_get_only_valid_responses(server: ServerProcess) -> None:
    state = FuzzRun(well_behaved_client(server, "fuzz-target-start"), len(server.log_text()))

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=True,
    )
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        state.examples += 1
        pieces = data.draw(streams(state.target))
        note(f"sent {len(pieces)} pieces: {[piece.hex() for piece in pieces]}")
        received, reset = exchange(server, pieces)
        note(f"received (reset={reset}): {received.hex()}")
        state.resets += reset
        responses = parse_responses(received, reset)
        state.responses.update(code.value for code, _ in responses)
        follow_new_keys(state.target, responses)
        if server.process is not None:  # None for a server we did not start (--server)
            assert server.process.poll() is None, f"the server died: {server.process.returncode}"
        next_target = well_behaved_client(server, f"fuzz-target-{state.examples}")
        log = wait_for_log(server, next_target.client_id.hex(), state.log_at)
        assert "Traceback" not in log, f"traceback in the server log:\n{log}"
        state.target = next_target
        state.log_at += len(log)

    run()
    print(
        f"fuzzed streams: {state.examples} examples, {state.resets} reset by the server; "
        f"responses: {sorted(state.responses.items())}"
    )
    assert "Traceback" not in server.log_text()


# Where requirements-dev.txt installs atheris (its wheels: CPython 3.11-3.13 on Linux x86_64).
ATHERIS_PLATFORM = sys.platform == "linux" and platform.machine() == "x86_64" and sys.version_info < (3, 14)


@pytest.mark.skipif(not ATHERIS_PLATFORM, reason="atheris has no wheel for this platform")
def test_decoder_fuzzer_smoke_run_with_atheris(tmp_path: Path) -> None:
    """20000 coverage-guided inputs through fuzz/fuzz_decoders.py: no finding, exit 0."""
    assert importlib.util.find_spec("atheris"), "atheris missing: pip install -r requirements-dev.txt"
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    result = subprocess.run(
        [sys.executable, str(FUZZER), str(corpus), "-atheris_runs=20000", f"-artifact_prefix={tmp_path}/"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    assert "Done 20000" in result.stderr, result.stderr[-5000:]
    assert not list(tmp_path.glob("crash-*"))


def test_decoder_fuzzer_smoke_run_without_atheris(tmp_path: Path) -> None:
    """The plain random loop, which runs where atheris is not installed: no finding, exit 0."""
    result = subprocess.run(
        # A fixed seed: the same 20,000 inputs on every run (the default seed is the clock).
        [
            sys.executable,
            str(FUZZER),
            "--plain",
            "--runs",
            "20000",
            "--seed",
            "1",
            "--artifacts",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    assert "20000 inputs, seed 1" in result.stdout
    assert not list(tmp_path.glob("crash-*"))


# A CI finding (a clock-seeded run): the send_file_head target fed a 1028 whose header
# declares 259, the head alone, and whose head declares 32 bytes of content. The server
# serves it (§7); the model used to call the two sizes a disagreement.
HEAD_ONLY_1028_FINDING = (
    bytes([6])  # the selector byte: Targets.table[6], send_file_head
    + (259).to_bytes(4, "little")  # the header's payload size
    + (32).to_bytes(4, "little")  # the head's Content size
    + b"bob".ljust(255, b"\0")  # File Name
)


def test_decoder_fuzzer_models_the_259_byte_1028(tmp_path: Path) -> None:
    finding = tmp_path / "crash-head-only"
    finding.write_bytes(HEAD_ONLY_1028_FINDING)
    result = subprocess.run(
        [sys.executable, str(FUZZER), "--replay", str(finding)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-5000:]
