"""crypto_utils.py: the cksum vectors of PROTOCOL.md §4, the cksum command, CBC against pycryptodome."""

from __future__ import annotations

import itertools
import os
import random
import subprocess
import zlib
from pathlib import Path

import pytest
from Crypto.Cipher import AES
from Crypto.Util.Padding import pad
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto_utils import (
    CbcDecryptor,
    CbcEncryptor,
    Cksum,
    CryptoError,
    cksum,
    encrypt,
    export_public_key,
    generate_rsa_key,
    import_public_key,
    padding_length,
    unwrap_aes_key,
    wrap_aes_key,
)
from handlers import CHUNK_SIZE

KEY = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
RSA_KEY = generate_rsa_key()


@pytest.mark.parametrize(
    ("data", "expected"),
    [(b"", 4294967295), (b"a", 1220704766), (b"123456789", 930766865), (bytes(100000), 1260869142)],
    ids=["empty", "a", "123456789", "100000-zero-bytes"],  # not a 200 kB test ID
)
def test_cksum_vectors(data: bytes, expected: int) -> None:
    assert cksum(data) == expected


def test_cksum_is_not_zlib_crc32() -> None:
    assert cksum(b"123456789") != zlib.crc32(b"123456789")


@pytest.mark.parametrize("size", [0, 1, 255, 256, 65536, 1_000_003])
def test_cksum_matches_the_cksum_command(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    path = tmp_path / "random.bin"
    path.write_bytes(data)
    output = subprocess.run(["cksum", str(path)], capture_output=True, text=True, check=True).stdout
    assert cksum(data) == int(output.split()[0])


@given(st.binary(max_size=5000), st.lists(st.integers(0, 5000), max_size=5))
def test_cksum_in_pieces_equals_cksum_whole(data: bytes, cuts: list[int]) -> None:
    checksum = Cksum()
    previous = 0
    for cut in [*sorted(min(c, len(data)) for c in cuts), len(data)]:
        checksum.update(memoryview(data)[previous:cut])
        previous = cut
    assert checksum.value == cksum(data)


def _decrypt_in_chunks(decryptor: CbcDecryptor, ciphertext: bytes, chunk: int) -> bytes:
    """As the server does (handlers._receive_content): each chunk of ciphertext, read into one
    buffer, is decrypted into another buffer, reused from chunk to chunk."""
    received = memoryview(bytearray(min(chunk, len(ciphertext))))
    plain_buffer = memoryview(bytearray(len(received)))
    decrypted = bytearray()
    for start in range(0, len(ciphertext), chunk):
        piece = received[: min(chunk, len(ciphertext) - start)]
        piece[:] = ciphertext[start : start + len(piece)]
        plain = plain_buffer[: len(piece)]
        decryptor.decrypt_into(piece, plain)
        decrypted += plain
    return bytes(decrypted)


@settings(max_examples=200)
@given(st.integers(0, 256), st.integers(0, 2**32), st.sampled_from([16, 48, 1024]))
def test_streaming_decryptor_equals_pycryptodome_cbc(blocks: int, seed: int, chunk: int) -> None:
    # Random content from a seed: hypothesis's own bytes are mostly zeros, and a zero block
    # chains like no block at all.
    ciphertext = random.Random(seed).randbytes(16 * blocks)
    expected = AES.new(KEY, AES.MODE_CBC, iv=bytes(16)).decrypt(ciphertext)
    assert _decrypt_in_chunks(CbcDecryptor(KEY, chunk), ciphertext, chunk) == expected


@pytest.mark.parametrize(
    "size",
    [
        CHUNK_SIZE - 16,
        CHUNK_SIZE,
        CHUNK_SIZE + 16,
        2 * CHUNK_SIZE - 16,
        2 * CHUNK_SIZE,
        2 * CHUNK_SIZE + 16,
        3 * CHUNK_SIZE + 4096,
    ],
    ids=["256K-16", "256K", "256K+16", "512K-16", "512K", "512K+16", "768K+4096"],
)
def test_decryption_chains_across_the_servers_chunks(size: int) -> None:
    """The server decrypts a 1028 in CHUNK_SIZE pieces: the last block of one chunk is the
    chaining value of the next one's first block (§4, CBC). The whole, decrypted by
    pycryptodome's MODE_CBC, is what every chunk boundary must give."""
    ciphertext = random.Random(size).randbytes(size)
    expected = AES.new(KEY, AES.MODE_CBC, iv=bytes(16)).decrypt(ciphertext)
    assert _decrypt_in_chunks(CbcDecryptor(KEY, CHUNK_SIZE), ciphertext, CHUNK_SIZE) == expected


def test_the_first_block_is_chained_to_the_zero_iv() -> None:
    ciphertext = encrypt(KEY, bytes(15))
    output = bytearray(16)
    CbcDecryptor(KEY, 16).decrypt_into(memoryview(ciphertext), memoryview(output))
    assert bytes(output) == bytes(15) + b"\x01"


def test_decrypting_in_place_is_refused() -> None:
    buffer = bytearray(encrypt(KEY, b"x" * 40))
    view = memoryview(buffer)
    with pytest.raises(ValueError, match="apart from the ciphertext"):
        CbcDecryptor(KEY, 64).decrypt_into(view, view)
    with pytest.raises(ValueError, match="apart from the ciphertext"):
        CbcDecryptor(KEY, 64).decrypt_into(view[:16], view[16:32])


@pytest.mark.parametrize(("size", "output_size"), [(15, 15), (17, 17), (80, 80), (32, 16), (16, 32)])
def test_decrypt_into_wants_whole_blocks_within_the_chunk_size(size: int, output_size: int) -> None:
    with pytest.raises(ValueError, match=f"bad chunk size {size}"):
        CbcDecryptor(KEY, 64).decrypt_into(memoryview(bytes(size)), memoryview(bytearray(output_size)))


def test_a_chunk_of_exactly_the_maximum_and_an_empty_one_are_fine() -> None:
    decryptor = CbcDecryptor(KEY, 64)
    ciphertext = encrypt(KEY, bytes(63))
    output = bytearray(64)
    decryptor.decrypt_into(memoryview(ciphertext), memoryview(output))
    decryptor.decrypt_into(memoryview(b""), memoryview(bytearray()))
    assert bytes(output) == bytes(63) + b"\x01"


@pytest.mark.parametrize("key_size", [0, 15, 17, 32])
def test_aes_keys_other_than_128_bits_are_refused(key_size: int) -> None:
    with pytest.raises(CryptoError, match=f"AES key is {key_size} bytes"):
        CbcDecryptor(bytes(key_size), 16)
    with pytest.raises(CryptoError, match=f"AES key is {key_size} bytes"):
        CbcEncryptor(bytes(key_size))


@given(st.binary(max_size=3000))
def test_encrypt_equals_pycryptodome_cbc_with_pkcs7(plaintext: bytes) -> None:
    expected = AES.new(KEY, AES.MODE_CBC, iv=bytes(16)).encrypt(pad(plaintext, 16))
    assert encrypt(KEY, plaintext) == expected


def _encrypt_in_pieces(plaintext: bytes, piece_sizes: list[int]) -> bytes:
    """As the client streams: piece after piece (sizes taken in turn, whole blocks) read into one
    buffer with a block of slack and encrypted there; then the padded tail."""
    encryptor = CbcEncryptor(KEY)
    buffer = memoryview(bytearray(max(piece_sizes) + CbcEncryptor.SLACK))
    whole = len(plaintext) - len(plaintext) % 16
    encrypted = bytearray()
    start = 0
    for piece_size in itertools.cycle(piece_sizes):
        if start == whole:
            break
        size = min(piece_size, whole - start)
        buffer[:size] = plaintext[start : start + size]
        encryptor.encrypt_in_place(buffer, size)
        encrypted += buffer[:size]
        start += size
    return bytes(encrypted) + encryptor.encrypt_final(plaintext[whole:])


@settings(max_examples=200)
@given(
    st.integers(0, 20000),
    st.integers(0, 2**32),
    st.lists(st.integers(1, 1024).map(lambda blocks: 16 * blocks), min_size=1, max_size=8),
)
def test_streaming_encryptor_in_place_equals_pycryptodome_cbc_with_pkcs7(
    size: int, seed: int, pieces: list[int]
) -> None:
    plaintext = random.Random(seed).randbytes(size)  # random, and reproducible from hypothesis's report
    expected = AES.new(KEY, AES.MODE_CBC, iv=bytes(16)).encrypt(pad(plaintext, 16))
    assert _encrypt_in_pieces(plaintext, pieces) == expected


def test_streaming_encryptor_in_client_sized_chunks() -> None:
    plaintext = os.urandom(4 * 256 * 1024 + 5)  # four client chunks and a padded tail
    expected = AES.new(KEY, AES.MODE_CBC, iv=bytes(16)).encrypt(pad(plaintext, 16))
    assert _encrypt_in_pieces(plaintext, [256 * 1024] * 4) == expected


@pytest.mark.parametrize(("buffer_size", "size"), [(64, 64), (64, 56), (79, 64), (64, 40)])
def test_encrypt_in_place_wants_whole_blocks_and_a_block_of_slack(buffer_size: int, size: int) -> None:
    with pytest.raises(ValueError, match="bad chunk size"):
        CbcEncryptor(KEY).encrypt_in_place(memoryview(bytearray(buffer_size)), size)


def test_known_answer_aes128_cbc_zero_iv() -> None:
    # FIPS-197 appendix C.1: AES-128 of 00112233...eeff under key 000102...0f;
    # with a zero IV the first CBC block is the same.
    plaintext = bytes.fromhex("00112233445566778899aabbccddeeff")
    assert encrypt(KEY, plaintext)[:16] == bytes.fromhex("69c4e0d86a7b0430d8cdb78070b4c55a")


@pytest.mark.parametrize("pad_byte", [0, 17, 255])
def test_padding_out_of_range_is_refused(pad_byte: int) -> None:
    with pytest.raises(CryptoError):
        padding_length(bytes(15) + bytes([pad_byte]))


def test_inconsistent_padding_is_refused() -> None:
    with pytest.raises(CryptoError):
        padding_length(bytes(12) + b"\x03\x04\x04\x04")


def test_valid_padding() -> None:
    assert padding_length(bytes(12) + b"\x04" * 4) == 4
    assert padding_length(b"\x10" * 16) == 16


def test_public_key_is_160_bytes_with_e_17() -> None:
    der = export_public_key(RSA_KEY)
    assert len(der) == 160
    assert import_public_key(der).e == 17


def test_key_wrap_round_trip() -> None:
    aes_key = os.urandom(16)
    wrapped = wrap_aes_key(export_public_key(RSA_KEY), aes_key)
    assert len(wrapped) == 128
    assert unwrap_aes_key(RSA_KEY, wrapped) == aes_key


@pytest.mark.parametrize("der", [b"", bytes(160), b"\x30" + bytes(159)])
def test_garbage_public_keys_are_refused(der: bytes) -> None:
    with pytest.raises(CryptoError):
        import_public_key(der)


def test_a_private_key_in_the_public_key_field_is_refused() -> None:
    with pytest.raises(CryptoError):
        import_public_key(RSA_KEY.export_key("DER"))


@pytest.mark.parametrize("tail", [16, 17])
def test_the_tail_must_be_shorter_than_a_block(tail: int) -> None:
    with pytest.raises(ValueError, match="shorter than one block"):
        CbcEncryptor(KEY).encrypt_final(bytes(tail))
