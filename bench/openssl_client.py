"""An experiment, not the product: the Python client with OpenSSL's AES-CBC.

CBC encryption is sequential, and pycryptodome's runs at about 550 MB/s on one
core here, which limits the Python client; OpenSSL's, through the
`cryptography` package, runs at about 1.3 GB/s. This is client.py's
`FileTransferClient` with only its encryption loop changed, so that one
benchmark run shows what switching the client's AES to OpenSSL would give.
Needs `cryptography` (bench/requirements.txt): `bench.run` loads this module
only when that is installed.
"""

from __future__ import annotations

from collections.abc import Callable
from io import BufferedIOBase

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from client import CHUNK_SIZE, FileTransferClient, _read_into
from crypto_utils import ZERO_IV, Cksum
from protocol import AES_BLOCK_SIZE


class OpenSslFileTransferClient(FileTransferClient):
    """FileTransferClient whose 1028 content is encrypted by OpenSSL (same bytes on the wire)."""

    def _stream_encrypted(
        self, source: BufferedIOBase, size: int, progress: Callable[[int], object] | None
    ) -> int:
        assert self.aes_key is not None
        encryptor = Cipher(algorithms.AES(self.aes_key), modes.CBC(ZERO_IV)).encryptor()
        checksum = Cksum()
        # update_into wants room for one block more than its input.
        buffer = memoryview(bytearray(min(CHUNK_SIZE, size) + AES_BLOCK_SIZE))
        remaining = size
        tail = b""
        while remaining:
            chunk = buffer[: min(CHUNK_SIZE, remaining)]
            _read_into(source, chunk)
            remaining -= len(chunk)
            checksum.update(chunk)
            whole = len(chunk) - len(chunk) % AES_BLOCK_SIZE
            if whole != len(chunk):
                tail = bytes(chunk[whole:])
                chunk = chunk[:whole]
            encrypted = encryptor.update_into(chunk, buffer)
            self.sock.sendall(buffer[:encrypted])
            if progress:
                progress(len(chunk) + len(tail))
        pad = AES_BLOCK_SIZE - len(tail)
        self.sock.sendall(encryptor.update(tail + bytes([pad]) * pad) + encryptor.finalize())
        return checksum.value
