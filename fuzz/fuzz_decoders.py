"""Coverage-guided fuzzing of every decoder the server runs on peer bytes (PROTOCOL.md §1-4).

Each input is one selector byte, which picks a target, and the bytes that
target decodes. A target may raise only the protocol's own errors
(`protocol.RequestError`; `crypto_utils.CryptoError` where keys or padding
are checked): any other exception, or a decoded value that breaks an
invariant (a stored path outside its client's folder, a `PathName` over 255
characters, an encoding that does not round-trip), is a finding.

With atheris (libFuzzer, coverage-guided):

    python fuzz/fuzz_decoders.py [CORPUS_DIR] -atheris_runs=20000
    python fuzz/fuzz_decoders.py build/fuzz-corpus -max_total_time=3600
    python fuzz/fuzz_decoders.py crash-<sha1>        # replay one input

An empty CORPUS_DIR is first filled with valid encodings of every target.
Without atheris, or with `--plain`, the same targets are fed random and
mutated inputs by a plain loop:

    python fuzz/fuzz_decoders.py --plain --runs 200000 --seed 1
    python fuzz/fuzz_decoders.py --replay crash-<sha1>

Either way the exit status is 0 when nothing was found. A finding prints its
traceback, is saved as a `crash-<sha1>` file (libFuzzer's `-artifact_prefix`,
or `--artifacts`) and exits non-zero: 77 from libFuzzer, 1 from the plain loop.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import io
import random
import sys
import tempfile
import time
import traceback
import types
from collections.abc import Callable, Iterator
from pathlib import Path

# The modules under test live in the repository root, one level up.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from crypto_utils import (
    CryptoError,
    encrypt,
    export_public_key,
    generate_rsa_key,
    padding_length,
    wrap_aes_key,
)
from protocol import (
    AES_BLOCK_SIZE,
    CLIENT_ID_SIZE,
    ENCRYPTED_AES_KEY_SIZE,
    FIXED_REQUEST_PAYLOAD_SIZES,
    HEAD_ONLY_PAYLOAD_SIZE,
    MAX_CONTENT_SIZE_ON_WIRE,
    MAX_DISCARDED_PAYLOAD,
    NAME_FIELD_SIZE,
    REQUEST_HEADER,
    SEND_FILE_HEAD,
    AesKeyResponse,
    ClientIdResponse,
    FileReceivedResponse,
    NameRequest,
    PublicKeyRequest,
    RequestCode,
    RequestError,
    RequestHeader,
    ResponseCode,
    ResponseHeader,
    SendFileHead,
    check_request_size,
    decode_name,
    encode_name,
    pack_request,
    pack_response,
)
from storage import MAX_STORED_BASE_NAME, FileStore, safe_base_name

Target = Callable[[bytes], None]

FIXED_AES_KEY = bytes(range(16))
CLIENT_ID = bytes(range(0xA0, 0xB0))
MAX_PATH_NAME = 255  # PathName column, PROTOCOL.md §5
STORE_DIR = Path(tempfile.gettempdir()) / "fuzz-decoders-store"


class Finding(Exception):
    """A decoded value that breaks an invariant the server relies on."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise Finding(message)


def u32(data: bytes) -> tuple[int, bytes]:
    """A little-endian 32-bit parameter taken from the front of the input (0 if it is short)."""
    return int.from_bytes(data[:4], "little"), data[4:]


class Targets:
    """The decoders, each with the invariants the server needs of its results."""

    def __init__(self, store: FileStore) -> None:
        self.store = store
        self.client_folder = (store.root / CLIENT_ID.hex()).resolve()
        self.table: list[tuple[str, Target, tuple[type[Exception], ...]]] = [
            ("request_header", self.request_header, (RequestError,)),
            ("decode_name", self.decode_name, (RequestError,)),
            ("name_request", self.name_request, (RequestError,)),
            ("public_key_request", self.public_key_request, (RequestError, CryptoError)),
            ("public_key", self.public_key, (CryptoError,)),
            ("file_name_request", self.file_name_request, (RequestError,)),
            ("send_file_head", self.send_file_head, (RequestError,)),
            ("response_header", self.response_header, (RequestError,)),
            ("client_id_response", self.client_id_response, (RequestError,)),
            ("aes_key_response", self.aes_key_response, (RequestError,)),
            ("file_received_response", self.file_received_response, (RequestError,)),
            ("padding_length", self.padding_length, (CryptoError,)),
            ("request_stream", self.request_stream, (RequestError,)),
        ]

    def run(self, data: bytes) -> None:
        """The fuzzing entry point: one selector byte, then the target's input."""
        if not data:
            return
        _, target, allowed = self.table[data[0] % len(self.table)]
        with contextlib.suppress(*allowed):
            target(data[1:])

    # --- requests -------------------------------------------------------------

    def request_header(self, data: bytes) -> None:
        """Header, then the size check the server makes before reading any payload (§3)."""
        limit, raw = u32(data)
        max_content_size = 1 + limit % MAX_CONTENT_SIZE_ON_WIRE  # what --max-file-size allows
        header = RequestHeader.unpack(raw)
        check(header.pack() == raw, "request header does not round-trip")
        check_request_size(header, max_content_size)
        code = RequestCode(header.code)  # a passed check means a known code
        if code is RequestCode.SEND_FILE:
            content = header.payload_size - SEND_FILE_HEAD.size
            check(AES_BLOCK_SIZE <= content <= max_content_size, f"1028 size {header.payload_size} passed")
        else:
            check(header.payload_size == FIXED_REQUEST_PAYLOAD_SIZES[code], "fixed size passed wrongly")

    def decode_name(self, data: bytes) -> None:
        self._check_name(decode_name(data), data)

    def name_request(self, data: bytes) -> None:
        request = NameRequest.unpack(data)
        self._check_name(request.name, data)
        check(NameRequest.unpack(request.pack()) == request, "1025/1027 does not round-trip")

    def public_key_request(self, data: bytes) -> None:
        """1026 as the server handles it: decode, then import the key and wrap an AES key."""
        request = PublicKeyRequest.unpack(data)
        self._check_name(request.name, data[:NAME_FIELD_SIZE])
        self.public_key(request.public_key)

    def public_key(self, data: bytes) -> None:
        """Any bytes as a public key: the server gives wrap_aes_key the 160 bytes of a 1026."""
        wrapped = wrap_aes_key(data, FIXED_AES_KEY)
        check(len(wrapped) == ENCRYPTED_AES_KEY_SIZE, f"wrapped key is {len(wrapped)} bytes")

    def file_name_request(self, data: bytes) -> None:
        request = NameRequest.unpack(data)
        self._check_name(request.name, data)
        self._check_stored_path(request.name)

    def send_file_head(self, data: bytes) -> None:
        """1028's head against the header's payload size (§2), then where the file would go."""
        payload_size, raw = u32(data)
        head = SendFileHead.unpack(raw, payload_size)
        if payload_size == HEAD_ONLY_PAYLOAD_SIZE:
            # The 259 extension (§7): the head's own Content size frames the stream.
            check(head.content_size == u32(raw)[0], "259-byte 1028 lost its content size")
        else:
            check(head.content_size == payload_size - SEND_FILE_HEAD.size, "content size disagrees")
        check(head.content_size % AES_BLOCK_SIZE == 0, "content is not whole blocks")
        self._check_name(head.file_name, raw[4:])
        self._check_stored_path(head.file_name)

    def request_stream(self, data: bytes) -> None:
        """The server's framing loop (server.py) over a byte stream, without I/O or database.

        Exact reads: a short one is the peer closing, and ends the stream. A refused
        request's rest is skipped if it is at most MAX_DISCARDED_PAYLOAD bytes; a
        FramingError, or a larger rest, closes the connection (§3).
        """
        stream = io.BytesIO(data)
        while len(raw_header := stream.read(REQUEST_HEADER.size)) == REQUEST_HEADER.size:
            header = RequestHeader.unpack(raw_header)
            start = stream.tell()
            length = header.payload_size
            try:
                check_request_size(header, MAX_CONTENT_SIZE_ON_WIRE)
                length = self._decode_payload(RequestCode(header.code), header, stream)
            except RequestError as err:
                unread = header.payload_size - (stream.tell() - start)
                if err.closes_connection or unread > MAX_DISCARDED_PAYLOAD:
                    return
            stream.seek(start + length)
        if raw_header:
            RequestHeader.unpack(raw_header)  # a truncated header: FramingError

    def _decode_payload(self, code: RequestCode, header: RequestHeader, stream: io.BytesIO) -> int:
        """Decode one request's payload; returns its length on the wire."""
        if code is RequestCode.SEND_FILE:
            head = SendFileHead.unpack(stream.read(SEND_FILE_HEAD.size), header.payload_size)
            self._check_stored_path(head.file_name)
            # The head's Content size frames it, also when the header declares 259 (§7).
            return SEND_FILE_HEAD.size + head.content_size
        payload = stream.read(header.payload_size)
        if len(payload) < header.payload_size:
            return header.payload_size  # the peer closed mid-payload: the stream ends here
        if code in (RequestCode.REGISTER, RequestCode.RECONNECT):
            self._check_name(NameRequest.unpack(payload).name, payload)
        elif code is RequestCode.PUBLIC_KEY:
            PublicKeyRequest.unpack(payload)
        else:
            request = NameRequest.unpack(payload)
            self._check_name(request.name, payload)
        return header.payload_size

    # --- responses (what the clients decode) ------------------------------------

    def response_header(self, data: bytes) -> None:
        header = ResponseHeader.unpack(data)
        check(header.pack() == data, "response header does not round-trip")

    def client_id_response(self, data: bytes) -> None:
        response = ClientIdResponse.unpack(data)
        check(response.pack() == data, "client ID response does not round-trip")

    def aes_key_response(self, data: bytes) -> None:
        response = AesKeyResponse.unpack(data)
        check(response.pack() == data, "AES key response does not round-trip")

    def file_received_response(self, data: bytes) -> None:
        response = FileReceivedResponse.unpack(data)
        check(FileReceivedResponse.unpack(response.pack()) == response, "2103 does not round-trip")
        self._check_name(response.file_name, data[CLIENT_ID_SIZE + 4 : CLIENT_ID_SIZE + 4 + NAME_FIELD_SIZE])

    # --- crypto -----------------------------------------------------------------

    def padding_length(self, data: bytes) -> None:
        pad = padding_length(data)
        check(1 <= pad <= AES_BLOCK_SIZE, f"padding length {pad}")
        check(data[-pad:] == bytes([pad]) * pad, f"padding {data.hex()} accepted as {pad}")

    # --- invariants -------------------------------------------------------------

    def _check_name(self, name: str, field: bytes) -> None:
        """A decoded text field: the printable ASCII before the field's first NUL (§1)."""
        check(0 < len(name) <= NAME_FIELD_SIZE - 1, f"name of {len(name)} characters")
        check(name.isascii() and name.isprintable(), f"name {name!r} is not printable ASCII")
        check(field.split(b"\0", 1)[0] == name.encode("ascii"), f"name {name!r} is not the text before NUL")
        check(encode_name(name).split(b"\0", 1)[0] == name.encode("ascii"), "name does not re-encode")

    def _check_stored_path(self, file_name: str) -> None:
        """Where a 1028 of `file_name` would be stored: inside its client's folder (§5)."""
        base = safe_base_name(file_name)
        check(0 < len(base) <= MAX_STORED_BASE_NAME, f"base name of {len(base)} characters")
        check(base not in (".", "..") and not {"/", "\\", ":", "\0"} & set(base), f"base name {base!r}")
        path_name = self.store.path_name(CLIENT_ID, file_name)
        check(len(path_name) <= MAX_PATH_NAME, f"PathName of {len(path_name)} characters: {path_name}")
        path = self.store.absolute(path_name)  # StorageError (a RequestError) if outside the root
        check(path.parent == self.client_folder, f"{file_name!r} is stored at {path}")


# --- seeds and the plain loop ---------------------------------------------------


def seed_inputs(targets: Targets) -> Iterator[bytes]:
    """Valid encodings for every target: where mutation starts."""
    index = {name: bytes([position]) for position, (name, _, _) in enumerate(targets.table)}
    names = ["alice", "C:\\Users\\me\\file.bin", "/home/me/a.b", "x" * 254, "../../etc/passwd", "a/..\\b"]
    fields = [encode_name(name) for name in names]
    fields.append(b"bob\0\xffgarbage".ljust(NAME_FIELD_SIZE, b"\x01"))
    rsa_key = generate_rsa_key()
    public_key = export_public_key(rsa_key)
    limit = MAX_CONTENT_SIZE_ON_WIRE.to_bytes(4, "little")
    for code in RequestCode:
        size = FIXED_REQUEST_PAYLOAD_SIZES.get(code, SEND_FILE_HEAD.size + 32)
        yield index["request_header"] + limit + RequestHeader(CLIENT_ID, 3, code, size).pack()
    for field in fields:
        yield index["decode_name"] + field
        yield index["name_request"] + field
        yield index["file_name_request"] + field
        yield index["public_key_request"] + field + public_key
        yield (
            index["send_file_head"]
            + (SEND_FILE_HEAD.size + 32).to_bytes(4, "little")
            + (32).to_bytes(4, "little")
            + field
        )
        yield index["file_received_response"] + CLIENT_ID + (32).to_bytes(4, "little") + field + bytes(4)
    # RSA.import_key also reads PEM, OpenSSH and PKCS#1: 160 peer bytes reach every parser.
    for key_format in ("DER", "PEM", "OpenSSH"):
        yield index["public_key"] + rsa_key.public_key().export_key(key_format)
    yield index["public_key"] + rsa_key.public_key().export_key("DER", pkcs=1)
    yield index["public_key"] + b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"
    yield index["response_header"] + ResponseHeader(3, ResponseCode.FILE_RECEIVED, 279).pack()
    yield index["client_id_response"] + CLIENT_ID
    yield index["aes_key_response"] + CLIENT_ID + bytes(ENCRYPTED_AES_KEY_SIZE)
    for pad in (1, 2, 15, 16):
        yield index["padding_length"] + bytes(AES_BLOCK_SIZE - pad) + bytes([pad]) * pad
    ciphertext = encrypt(FIXED_AES_KEY, b"hello")
    yield index["request_stream"] + b"".join(
        [
            pack_request(CLIENT_ID, RequestCode.REGISTER, fields[0]),
            pack_request(CLIENT_ID, RequestCode.PUBLIC_KEY, fields[0] + public_key),
            pack_request(
                CLIENT_ID, RequestCode.SEND_FILE, SendFileHead(len(ciphertext), "a.bin").pack() + ciphertext
            ),
            pack_request(CLIENT_ID, RequestCode.CRC_RETRY, fields[1]),
            pack_request(CLIENT_ID, RequestCode.CRC_OK, fields[2]),
            RequestHeader(CLIENT_ID, 3, 9999, 10).pack() + b"z" * 10,  # an unknown code
            pack_response(ResponseCode.GENERAL_ERROR),
        ]
    )


# NUL, '.', '/', ':', '\\', DEL, the first non-ASCII byte, 0xFF: where names and sizes break.
INTERESTING_BYTES = [0, 1, 0x2E, 0x2F, 0x3A, 0x5C, 0x7F, 0x80, 0xFF]


def mutate(rng: random.Random, data: bytes, seeds: list[bytes]) -> bytes:
    """One to eight byte-level edits: flips, overwrites, inserts, deletes, splices, truncation."""
    buffer = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        choice = rng.randrange(7)
        position = rng.randrange(len(buffer) + 1)
        if choice == 0 and position < len(buffer):
            buffer[position] ^= 1 << rng.randrange(8)
        elif choice == 1 and position < len(buffer):
            buffer[position] = rng.choice([*INTERESTING_BYTES, rng.randrange(256)])
        elif choice == 2:
            buffer[position:position] = rng.randbytes(rng.randint(1, 16))
        elif choice == 3:
            del buffer[position : position + rng.randint(1, 16)]
        elif choice == 4:
            other = rng.choice(seeds)
            start = rng.randrange(len(other))
            buffer[position:] = other[start : start + rng.randint(1, 300)]
        elif choice == 5:
            del buffer[position:]
        elif position + 4 <= len(buffer):
            buffer[position : position + 4] = rng.choice([0, 15, 16, 259, 275, 2**31, 2**32 - 1]).to_bytes(
                4, "little"
            )
    return bytes(buffer)


def plain_loop(targets: Targets, runs: int, seconds: float, seed: int, artifacts: Path) -> int:
    """Random and mutated inputs without coverage feedback: where atheris is not available."""
    rng = random.Random(seed)
    seeds = list(seed_inputs(targets))
    deadline = time.monotonic() + seconds
    executed = 0
    while executed < runs and time.monotonic() < deadline:
        if rng.random() < 0.2:
            data = bytes([rng.randrange(len(targets.table))]) + rng.randbytes(rng.randint(0, 600))
        else:
            data = mutate(rng, rng.choice(seeds), seeds)
        executed += 1
        try:
            targets.run(data)
        except Exception:
            report_finding(data, artifacts)
            return 1
    print(f"plain fuzzing: {executed} inputs, seed {seed}, no finding")
    return 0


def report_finding(data: bytes, artifacts: Path) -> None:
    path = artifacts / f"crash-{hashlib.sha1(data).hexdigest()}"
    path.write_bytes(data)
    traceback.print_exc()
    print(f"FINDING: input {data.hex()} saved to {path}", file=sys.stderr)


# --- main -------------------------------------------------------------------------


def write_seeds(corpus: Path, targets: Targets) -> None:
    """Fill an empty corpus folder with the seeds, so that libFuzzer starts from valid input."""
    if corpus.is_dir() and not any(corpus.iterdir()):
        for data in seed_inputs(targets):
            (corpus / f"seed-{hashlib.sha1(data).hexdigest()}").write_bytes(data)


# Modules whose code gets coverage feedback: ours, and pycryptodome's key import (the
# 160 bytes of a 1026 go to RSA.import_key). All of Python (atheris.instrument_all) takes
# 20 s to instrument and dilutes the feedback.
INSTRUMENTED_MODULES = (
    "__main__",
    "protocol",
    "crypto_utils",
    "storage",
    "Crypto.PublicKey",
    "Crypto.Util",
    "Crypto.IO",
)


def instrument(instrument_func: Callable[[types.FunctionType], object]) -> int:
    """Add coverage instrumentation to every loaded function of INSTRUMENTED_MODULES."""
    functions = [
        obj
        for obj in gc.get_objects()
        if isinstance(obj, types.FunctionType) and str(obj.__module__).startswith(INSTRUMENTED_MODULES)
    ]
    for function in functions:
        instrument_func(function)
    print(f"INFO: instrumented {len(functions)} functions", file=sys.stderr)
    return len(functions)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--replay", type=Path, help="run one saved input (a finding) and exit")
    parser.add_argument("--plain", action="store_true", help="the plain random loop even if atheris is there")
    parser.add_argument("--runs", type=int, default=100_000, help="plain loop: inputs to run")
    parser.add_argument("--seconds", type=float, default=float("inf"), help="plain loop: time bound")
    parser.add_argument("--seed", type=int, default=int(time.time()), help="plain loop: random seed")
    parser.add_argument("--artifacts", type=Path, default=Path(), help="plain loop: where findings go")
    options, libfuzzer_args = parser.parse_known_args(argv[1:])
    # The store only resolves paths and never writes a file; libFuzzer ends the process
    # without Python's clean-up, so one fixed folder rather than a new temporary one per run.
    STORE_DIR.mkdir(exist_ok=True)
    targets = Targets(FileStore(STORE_DIR))
    if options.replay:
        targets.run(options.replay.read_bytes())  # a finding raises, with its traceback
        print(f"{options.replay}: no finding")
        return 0
    try:
        import atheris  # noqa: PLC0415 (optional: the plain loop runs without it)
    except ImportError:
        atheris = None
    if options.plain or atheris is None:
        if atheris is None and not options.plain:
            print("atheris is not installed: running the plain random loop", file=sys.stderr)
        return plain_loop(targets, options.runs, options.seconds, options.seed, options.artifacts)
    for argument in libfuzzer_args:
        if not argument.startswith("-"):
            write_seeds(Path(argument), targets)
    instrument(atheris.instrument_func)
    atheris.Setup([argv[0], *libfuzzer_args], targets.run)
    atheris.Fuzz()  # exits the process: 0 when the runs or the time are used up, 1 on a finding
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
