"""The client's send path (client.encrypt_stream): serial and pipelined, byte for byte.

Pipelined, a worker thread reads, checksums and encrypts chunks ahead of the
thread that sends them, through a ring of buffers; these tests check that the
ciphertext is the same as one CBC encryption of the whole file at every chunk
boundary, and that an error on either side ends the other. About 1 s.
"""

from __future__ import annotations

import io
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from Crypto.Cipher import AES
from Crypto.Util.Padding import pad
from support import ServerProcess

import client
from client import CHUNK_SIZE, PIPELINE_BUFFERS, ClientError, encrypt_stream
from crypto_utils import cksum

KEY = bytes(range(16))
SIZES = [0, 1, 15, 16, 17, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1]
SIZES += [5 * CHUNK_SIZE - 16, 5 * CHUNK_SIZE, 5 * CHUNK_SIZE + 15, 7 * CHUNK_SIZE + 4097]


def reference_ciphertext(data: bytes) -> bytes:
    """What §4 says a client sends: one AES-128-CBC of the whole file, zero IV, PKCS#7."""
    return AES.new(KEY, AES.MODE_CBC, iv=bytes(16)).encrypt(pad(data, 16))


def encrypted(data: bytes, *, pipelined: bool) -> tuple[bytes, int, list[int]]:
    """The ciphertext encrypt_stream writes, its checksum, and the progress it reported."""
    pieces: list[bytes] = []
    progress: list[int] = []
    checksum = encrypt_stream(
        io.BytesIO(data),
        len(data),
        KEY,
        lambda view: pieces.append(bytes(view)),
        progress.append,
        pipelined=pipelined,
    )
    return b"".join(pieces), checksum, progress


def workers() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "encrypt-stream"]


@pytest.mark.parametrize("pipelined", [False, True], ids=["serial", "pipelined"])
@pytest.mark.parametrize("size", SIZES)
def test_ciphertext_is_one_cbc_of_the_whole_file(size: int, pipelined: bool) -> None:
    data = os.urandom(size)
    ciphertext, checksum, progress = encrypted(data, pipelined=pipelined)
    assert ciphertext == reference_ciphertext(data)
    assert checksum == cksum(data)
    assert sum(progress) == size
    assert not workers()


def test_a_buffer_is_refilled_only_once_it_is_sent() -> None:
    """Through a socket that takes the data slowly, as sendall to a busy server does: the
    worker must not refill a buffer that is still being sent (the GIL is released meanwhile)."""
    data = os.urandom(6 * CHUNK_SIZE + 100)
    sender, receiver = socket.socketpair()
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)  # sendall blocks in every chunk
    received = bytearray()

    def drain() -> None:
        while piece := receiver.recv(4096):
            received.extend(piece)

    reader = threading.Thread(target=drain)
    reader.start()
    with sender, receiver:
        checksum = encrypt_stream(io.BytesIO(data), len(data), KEY, sender.sendall, pipelined=True)
        sender.shutdown(socket.SHUT_WR)
        reader.join()
    assert bytes(received) == reference_ciphertext(data)
    assert checksum == cksum(data)


def test_pipelined_by_default_from_its_minimum_size() -> None:
    """Large files go through the worker thread unless told otherwise; small ones do not."""
    seen: list[list[str]] = []

    def write(_view: memoryview | bytes) -> None:
        seen.append([thread.name for thread in workers()])

    encrypt_stream(io.BytesIO(bytes(client.PIPELINE_MIN_SIZE)), client.PIPELINE_MIN_SIZE, KEY, write)
    # The ring holds fewer buffers than the file has chunks: the worker is still at work
    # when the first chunk is sent.
    assert client.PIPELINE_MIN_SIZE > PIPELINE_BUFFERS * CHUNK_SIZE
    assert seen[0] == ["encrypt-stream"]
    seen.clear()
    encrypt_stream(io.BytesIO(bytes(CHUNK_SIZE)), CHUNK_SIZE, KEY, write)
    assert seen == [[], []]


def test_an_error_in_the_worker_reaches_the_sender() -> None:
    """The file ends before its size: the worker's ClientError is raised by encrypt_stream."""
    data = os.urandom(3 * CHUNK_SIZE)
    written: list[int] = []
    with pytest.raises(ClientError, match="shrank"):
        encrypt_stream(
            io.BytesIO(data),
            len(data) + CHUNK_SIZE,
            KEY,
            lambda view: written.append(len(view)),
            pipelined=True,
        )
    assert written == [CHUNK_SIZE] * 3  # what was read whole was sent, then the error
    assert not workers()


def test_an_error_in_the_sender_stops_the_worker() -> None:
    """The connection breaks: encrypt_stream raises it, and the worker stops reading the file."""
    source = io.BytesIO(bytes(16 * CHUNK_SIZE))
    calls: list[int] = []

    def write(view: memoryview | bytes) -> None:
        calls.append(len(view))
        if len(calls) == 2:
            raise BrokenPipeError("the server went away")

    with pytest.raises(BrokenPipeError):
        encrypt_stream(source, 16 * CHUNK_SIZE, KEY, write, pipelined=True)
    assert not workers()
    # At most the buffers of the ring were filled ahead of the two sends, and one more chunk
    # that was being read when the error came.
    assert source.tell() <= (2 + PIPELINE_BUFFERS + 1) * CHUNK_SIZE


def test_a_file_that_shrinks_while_it_is_sent_is_a_fatal_error(
    server: ServerProcess,
    tmp_path: Path,
    unique_name: Callable[[], str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Cut to one chunk after the first chunk is sent: `Fatal: ...`, status 1, nothing stored."""
    path = tmp_path / "shrinking.bin"
    path.write_bytes(os.urandom(8 * CHUNK_SIZE))
    (tmp_path / "transfer.info").write_text(
        f"{server.address[0]}:{server.address[1]}\n{unique_name()}\n{path}\n"
    )

    def truncating_progress(_total: int) -> Callable[[int], object]:
        return lambda _count: os.truncate(path, CHUNK_SIZE)

    monkeypatch.setattr(client, "_progress_bar", truncating_progress)
    assert client.main(["--dir", str(tmp_path)]) == 1
    assert "Fatal: the file shrank while it was being sent" in capsys.readouterr().err
    assert not workers()
    assert server.query("SELECT FileName FROM files") == []
