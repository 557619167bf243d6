"""§4 cryptography: the key wrap, the checksum, AES-CBC with a zero IV and PKCS#7."""

from __future__ import annotations

import os

import pytest

from crypto_utils import CryptoError, export_public_key, unwrap_aes_key
from grading.database import SubmissionDatabase
from grading.harness import RawConnection, ServerProcess
from grading.wire import (
    RSA_KEY,
    Cases,
    NameFactory,
    describe_bytes,
    expect,
    new_client,
    parse,
    register,
    send_file,
    send_file_request,
    stored_bytes,
)
from protocol import AesKeyResponse, RequestCode, ResponseCode, encode_name, pack_request

spec = pytest.mark.spec


@spec("§4 key wrap", needs=("§2 1025", "§2 1026", "§2 1027"))
def test_s4_the_aes_key_is_wrapped_with_rsa_oaep_sha1(
    server: ServerProcess, unique_name: NameFactory
) -> None:
    name = unique_name()
    with RawConnection(server.address) as conn:
        client_id = register(conn, name)
        conn.send(
            pack_request(client_id, RequestCode.PUBLIC_KEY, encode_name(name) + export_public_key(RSA_KEY))
        )
        exchanged = parse("§2 1026", AesKeyResponse.unpack, expect(conn, ResponseCode.AES_KEY, "§2 1026"))
    with RawConnection(server.address) as conn:
        conn.send(pack_request(client_id, RequestCode.RECONNECT, encode_name(name)))
        reconnected = parse(
            "§2 1027", AesKeyResponse.unpack, expect(conn, ResponseCode.RECONNECTED, "§2 1027")
        )
    for code, reply in ((2102, exchanged), (2105, reconnected)):
        try:
            key = unwrap_aes_key(RSA_KEY, reply.encrypted_key)
        except CryptoError as err:
            pytest.fail(
                f"§4 key wrap: the 128-byte key in {code} does not decrypt with RSA-OAEP-SHA1 and the "
                f"client's private key: {err}",
                pytrace=False,
            )
        assert len(key) == 16, f"§4 key wrap: the key in {code} is {len(key)} bytes, not AES-128's 16"


@spec("§4 cksum", needs=("§2 1025", "§2 1026"))
def test_s4_the_cksum_in_2103_is_posix_cksum_of_the_decrypted_file(
    server: ServerProcess, unique_name: NameFactory
) -> None:
    cases = Cases("§4 cksum: the vectors of PROTOCOL.md (POSIX cksum, not zlib's CRC-32)")
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, unique_name(), server)
        for case, content, expected in (
            ("empty", b"", 4294967295),
            ("a", b"a", 1220704766),
            ("123456789", b"123456789", 930766865),
            ("100000 zero bytes", bytes(100_000), 1260869142),
        ):
            with cases.case(case):
                conn.send(send_file_request(client_id, aes_key, "c.bin", content))
                payload = expect(conn, ResponseCode.FILE_RECEIVED, "1028")
                got = int.from_bytes(payload[-4:], "little")
                assert got == expected, f"2103 carries the cksum {got}, expected {expected}"
    cases.check()


@spec("§4 AES-CBC", needs=("§2 1028",))
def test_s4_the_stored_file_is_the_decrypted_content(
    server: ServerProcess, db: SubmissionDatabase, unique_name: NameFactory
) -> None:
    """AES-128-CBC, IV all zeros, PKCS#7: every padding length, 0 to a full block."""
    sizes = [0, 1, 15, 16, 17, 100_000]
    contents = {f"{size}.bin": os.urandom(size) for size in sizes}
    with RawConnection(server.address) as conn:
        client_id, aes_key = new_client(conn, unique_name(), server)
        for file_name, content in contents.items():
            send_file(conn, client_id, aes_key, file_name, content)
    stored = {str(row.file_name): stored_bytes(server, row.path_name) for row in db.files_of(client_id)}
    cases = Cases("§4 AES-CBC: the stored file is the decrypted content")
    for file_name, content in contents.items():
        with cases.case(f"{len(content)} bytes"):
            assert file_name in stored, "no files row"
            got = stored[file_name]
            first_block_only = len(content) > 16 and got[16:] == content[16:]
            hint = " (only the first block differs: IV not zero?)" if first_block_only else ""
            assert got == content, describe_bytes(got, content) + hint
    cases.check()
