"""Cryptography of the protocol (PROTOCOL.md §4), streaming where the data is large.

- RSA-1024 key wrap with OAEP (SHA-1, MGF1-SHA-1): Crypto++'s RSAES_OAEP_SHA.
- AES-128-CBC with an all-zero IV and PKCS#7 padding, as a streaming
  encryptor and decryptor working on caller-owned buffers.
- The POSIX `cksum` checksum, computed incrementally.

Two libraries: pycryptodome for RSA-OAEP and for CBC decryption (the server's
side, run as ECB plus one XOR in C, at GB/s); OpenSSL, through the
`cryptography` package, for CBC encryption (the client's side), which is
sequential and which OpenSSL runs at more than twice pycryptodome's speed
(CbcEncryptor says why that matters).

Weak by today's standards (fixed IV, no MAC, RSA-1024, SHA-1): fixed by the
clients that exist. SECURITY.md says what that means and what the server does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anycrc
from Crypto.Cipher import AES, PKCS1_OAEP
from Crypto.PublicKey import RSA
from Crypto.Random import get_random_bytes
from Crypto.Util.strxor import strxor

from protocol import AES_BLOCK_SIZE, AES_KEY_SIZE, ENCRYPTED_AES_KEY_SIZE, PUBLIC_KEY_SIZE

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers import CipherContext

RSA_KEY_BITS = 1024
# Crypto++'s default public exponent; with 65537 the DER key is 162 bytes and does not fit (§4).
RSA_PUBLIC_EXPONENT = 17
ZERO_IV = bytes(AES_BLOCK_SIZE)


class CryptoError(ValueError):
    """Key material or ciphertext the peer sent cannot be used."""


# --- RSA key wrap -----------------------------------------------------------


def generate_rsa_key() -> RSA.RsaKey:
    return RSA.generate(RSA_KEY_BITS, e=RSA_PUBLIC_EXPONENT)


def export_public_key(key: RSA.RsaKey) -> bytes:
    """The 160-byte X.509 SubjectPublicKeyInfo DER that travels in 1026."""
    der: bytes = key.public_key().export_key("DER")
    if len(der) != PUBLIC_KEY_SIZE:
        raise CryptoError(f"public key DER is {len(der)} bytes, expected {PUBLIC_KEY_SIZE}")
    return der


def import_public_key(der: bytes) -> RSA.RsaKey:
    """Import a client's public key, accepting only a public RSA-1024 key."""
    try:
        key = RSA.import_key(der)
    except (ValueError, IndexError, TypeError) as err:
        raise CryptoError("public key is not a valid RSA key") from err
    if key.has_private():
        raise CryptoError("public key field holds a private key")
    if key.size_in_bits() != RSA_KEY_BITS:
        raise CryptoError(f"public key is RSA-{key.size_in_bits()}, expected RSA-{RSA_KEY_BITS}")
    return key


def generate_aes_key() -> bytes:
    return get_random_bytes(AES_KEY_SIZE)


def wrap_aes_key(public_key_der: bytes, aes_key: bytes) -> bytes:
    """Encrypt `aes_key` for the holder of `public_key_der` (RSA-OAEP, SHA-1)."""
    wrapped: bytes = PKCS1_OAEP.new(import_public_key(public_key_der)).encrypt(aes_key)
    return wrapped


def unwrap_aes_key(private_key: RSA.RsaKey, wrapped: bytes) -> bytes:
    if len(wrapped) != ENCRYPTED_AES_KEY_SIZE:
        raise CryptoError(f"encrypted AES key is {len(wrapped)} bytes")
    try:
        aes_key: bytes = PKCS1_OAEP.new(private_key).decrypt(wrapped)
    except ValueError as err:
        raise CryptoError("encrypted AES key does not decrypt") from err
    if len(aes_key) != AES_KEY_SIZE:
        raise CryptoError(f"AES key is {len(aes_key)} bytes, expected {AES_KEY_SIZE}")
    return aes_key


# --- AES-128-CBC, streaming -------------------------------------------------


class CbcDecryptor:
    """AES-128-CBC decryption (zero IV) of a stream, chunk by chunk, into a separate buffer.

    CBC decryption is P[i] = D(C[i]) xor C[i-1]; unlike encryption every block
    is independent, so each chunk goes through ECB (which pycryptodome runs
    many blocks at a time with AES-NI) and one C-level XOR with the ciphertext
    shifted by a block, read where it is: about ten times the speed of
    MODE_CBC's block-by-block loop, with the same result (tests compare the
    two). The last ciphertext block of a chunk is kept to chain the next one.
    """

    def __init__(self, key: bytes, max_chunk_size: int) -> None:
        if len(key) != AES_KEY_SIZE:
            raise CryptoError(f"AES key is {len(key)} bytes, expected {AES_KEY_SIZE}")
        self._ecb = AES.new(key, AES.MODE_ECB)
        self._previous_block = bytearray(ZERO_IV)
        self._max_chunk_size = max_chunk_size

    def decrypt_into(self, ciphertext: memoryview, output: memoryview) -> None:
        """Decrypt `ciphertext` (a multiple of 16 bytes) into `output`, a buffer of its own.

        The XOR reads the ciphertext after ECB has written `output`, so the two
        must not overlap: views of one object are refused, views of distinct
        objects never overlap.
        """
        size = len(ciphertext)
        if size % AES_BLOCK_SIZE or size > self._max_chunk_size or len(output) != size:
            raise ValueError(f"bad chunk size {size}")
        if ciphertext.obj is output.obj:
            raise ValueError("decrypt_into needs an output buffer apart from the ciphertext")
        if not size:
            return
        self._ecb.decrypt(ciphertext, output=output)
        strxor(output[AES_BLOCK_SIZE:], ciphertext[:-AES_BLOCK_SIZE], output=output[AES_BLOCK_SIZE:])
        strxor(output[:AES_BLOCK_SIZE], self._previous_block, output=output[:AES_BLOCK_SIZE])
        self._previous_block[:] = ciphertext[-AES_BLOCK_SIZE:]


def padding_length(last_block: memoryview | bytes) -> int:
    """Validate the PKCS#7 padding at the end of the decrypted content; return its length."""
    if len(last_block) != AES_BLOCK_SIZE:
        raise CryptoError("content is shorter than one block")
    pad = last_block[-1]
    if not 1 <= pad <= AES_BLOCK_SIZE or any(b != pad for b in last_block[-pad:]):
        raise CryptoError("bad PKCS#7 padding (wrong AES key or corrupted content)")
    return pad


class CbcEncryptor:
    """AES-128-CBC encryption (zero IV, PKCS#7) of a stream of known length, by OpenSSL.

    CBC encryption is sequential: each block is chained to the previous
    block's ciphertext, so one stream runs one block after another whatever
    the library. pycryptodome's loop does about 550 MB/s on one core here,
    OpenSSL's (through the `cryptography` package) about 1.3 GB/s, and this
    is what bounds the client (README.md "Performance"). Decryption has no
    such chain: CbcDecryptor stays on pycryptodome, as RSA-OAEP does.

    Chunks are encrypted in place. OpenSSL allows the output to be exactly
    the input when no partial block is held back, which is always so here
    (every chunk is whole blocks, the tail goes to `encrypt_final`); and
    `update_into` wants room for one block (15 bytes) past its input, so the
    caller's buffer holds SLACK bytes past the chunk. Tests compare the result
    with pycryptodome's CBC.
    """

    SLACK = AES_BLOCK_SIZE  # bytes past the chunk in the buffer given to encrypt_in_place

    def __init__(self, key: bytes) -> None:
        # Imported here: the server never encrypts, and loading OpenSSL's bindings
        # would add ~5 MiB to its memory (README.md "Performance" reports its peak).
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes  # noqa: PLC0415

        if len(key) != AES_KEY_SIZE:
            raise CryptoError(f"AES key is {len(key)} bytes, expected {AES_KEY_SIZE}")
        self._encryptor: CipherContext = Cipher(algorithms.AES(key), modes.CBC(ZERO_IV)).encryptor()

    def encrypt_in_place(self, buffer: memoryview, size: int) -> None:
        """Encrypt `buffer[:size]` (whole blocks) in place; `buffer` has SLACK bytes more."""
        if size % AES_BLOCK_SIZE or not 0 <= size <= len(buffer) - self.SLACK:
            raise ValueError(f"bad chunk size {size} for a buffer of {len(buffer)} bytes")
        if not size:
            return
        written = self._encryptor.update_into(buffer[:size], buffer)
        if written != size:  # whole blocks in, none held back: OpenSSL returns them all
            raise AssertionError(f"OpenSSL encrypted {written} bytes of {size}")

    def encrypt_final(self, tail: bytes) -> bytes:
        """Pad and encrypt the last 0..15 bytes of the stream: always one 16-byte block."""
        if len(tail) >= AES_BLOCK_SIZE:
            raise ValueError("the tail must be shorter than one block")
        pad = AES_BLOCK_SIZE - len(tail)
        last: bytes = self._encryptor.update(tail + bytes([pad]) * pad) + self._encryptor.finalize()
        return last


def encrypt(key: bytes, plaintext: bytes) -> bytes:
    """Encrypt a whole (small) message: what a client sends in 1028."""
    encryptor = CbcEncryptor(key)
    whole = len(plaintext) - len(plaintext) % AES_BLOCK_SIZE
    buffer = bytearray(whole + CbcEncryptor.SLACK)
    buffer[:whole] = plaintext[:whole]
    encryptor.encrypt_in_place(memoryview(buffer), whole)
    return bytes(buffer[:whole]) + encryptor.encrypt_final(plaintext[whole:])


# --- POSIX cksum ------------------------------------------------------------

# CRC-32, polynomial 0x04C11DB7, MSB first, initial value 0, no final XOR in the
# register itself: cksum feeds the length after the data, then complements.
# anycrc computes it in C (several GB/s) and continues from a previous register.
_CKSUM_CRC = anycrc.CRC(width=32, poly=0x04C11DB7, init=0, refin=False, refout=False, xorout=0)


class Cksum:
    """The POSIX `cksum` of a stream, fed in pieces."""

    def __init__(self) -> None:
        self._register = 0  # pragma: no mutate  (anycrc starts from init=0 when given None)
        self._length = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._register = _CKSUM_CRC.calc(data, self._register)
        self._length += len(data)

    @property
    def value(self) -> int:
        length = self._length
        length_bytes = bytearray()
        while length:
            length_bytes.append(length & 0xFF)
            length >>= 8
        register: int = _CKSUM_CRC.calc(bytes(length_bytes), self._register)
        return register ^ 0xFFFFFFFF


def cksum(data: bytes | bytearray | memoryview) -> int:
    checksum = Cksum()
    checksum.update(data)
    return checksum.value
