"""protocol.py against vectors typed from PROTOCOL.md, both directions, plus properties."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

import database
import protocol
import storage
from protocol import (
    AesKeyResponse,
    ClientIdResponse,
    FileReceivedResponse,
    FramingError,
    MalformedPayload,
    NameRequest,
    OverLimit,
    ProtocolError,
    PublicKeyRequest,
    RequestCode,
    RequestHeader,
    ResponseCode,
    ResponseHeader,
    SendFileHead,
    UnknownRequestCode,
    check_request_size,
    decode_name,
    encode_name,
    encrypted_size,
    pack_response,
)

CLIENT_ID = bytes(range(16))


def name_field(text: bytes) -> bytes:
    return text + bytes(255 - len(text))


def test_struct_sizes_match_the_protocol() -> None:
    assert protocol.REQUEST_HEADER.size == 23
    assert protocol.RESPONSE_HEADER.size == 7
    assert protocol.SEND_FILE_HEAD.size == 259
    assert protocol.FILE_RECEIVED.size == 279
    assert protocol.FIXED_REQUEST_PAYLOAD_SIZES[RequestCode.PUBLIC_KEY] == 415
    assert protocol.RESPONSE_PAYLOAD_SIZES == {
        ResponseCode.REGISTERED: 16,
        ResponseCode.REGISTRATION_FAILED: 0,
        ResponseCode.AES_KEY: 144,
        ResponseCode.FILE_RECEIVED: 279,
        ResponseCode.ACK: 16,
        ResponseCode.RECONNECTED: 144,
        ResponseCode.RECONNECT_DENIED: 16,
        ResponseCode.GENERAL_ERROR: 0,
    }


# Request header: client id 00..0f, version 3, code 1025 (0x0401), payload 255 (0xff).
REGISTER_HEADER_HEX = "000102030405060708090a0b0c0d0e0f030104ff000000"


def test_request_header_vector() -> None:
    header = RequestHeader(CLIENT_ID, 3, 1025, 255)
    assert header.pack() == bytes.fromhex(REGISTER_HEADER_HEX)
    assert RequestHeader.unpack(bytes.fromhex(REGISTER_HEADER_HEX)) == header


def test_request_header_of_a_large_file_vector() -> None:
    # 1028 (0x0404) with payload 275 = 259 + one block (0x113, little-endian 13 01 00 00).
    raw = bytes.fromhex("ff" * 16 + "03" + "0404" + "13010000")
    assert RequestHeader.unpack(raw) == RequestHeader(b"\xff" * 16, 3, 1028, 275)


@pytest.mark.parametrize(
    ("code", "payload_hex", "raw_hex"),
    [
        (ResponseCode.REGISTERED, CLIENT_ID.hex(), "03340810000000" + CLIENT_ID.hex()),
        (ResponseCode.REGISTRATION_FAILED, "", "03350800000000"),
        (ResponseCode.ACK, CLIENT_ID.hex(), "03380810000000" + CLIENT_ID.hex()),
        (ResponseCode.RECONNECT_DENIED, CLIENT_ID.hex(), "033a0810000000" + CLIENT_ID.hex()),
        (ResponseCode.GENERAL_ERROR, "", "033b0800000000"),
    ],
)
def test_response_vectors(code: ResponseCode, payload_hex: str, raw_hex: str) -> None:
    raw = bytes.fromhex(raw_hex)
    assert pack_response(code, bytes.fromhex(payload_hex)) == raw
    header = ResponseHeader.unpack(raw[:7])
    assert (header.version, header.code, header.payload_size) == (3, code, len(payload_hex) // 2)


def test_file_received_vector() -> None:
    raw = (
        CLIENT_ID
        + bytes.fromhex("20000000")  # content size 32
        + name_field(b"a.txt")
        + bytes.fromhex("fe79c248")  # cksum 1220704766 = 0x48c279fe
    )
    response = FileReceivedResponse(CLIENT_ID, 32, "a.txt", 1220704766)
    assert response.pack() == raw
    assert FileReceivedResponse.unpack(raw) == response
    assert pack_response(ResponseCode.FILE_RECEIVED, raw)[:7] == bytes.fromhex("03370817010000")


def test_a_request_or_response_without_a_payload_declares_size_zero() -> None:
    # A header alone, as 2101 and 2104 are: the default payload is empty.
    header = CLIENT_ID + bytes.fromhex("03010400000000")
    assert protocol.pack_request(CLIENT_ID, RequestCode.REGISTER) == header
    assert pack_response(ResponseCode.ACK) == bytes.fromhex("03380800000000")


def test_aes_key_response_vector() -> None:
    wrapped = bytes(range(128))
    response = AesKeyResponse(CLIENT_ID, wrapped)
    assert response.pack() == CLIENT_ID + wrapped
    assert AesKeyResponse.unpack(CLIENT_ID + wrapped) == response


def test_send_file_head_vector() -> None:
    raw = bytes.fromhex("30000000") + name_field(b"C:\\Users\\me\\file.bin")
    head = SendFileHead.unpack(raw, payload_size=259 + 48)
    assert head == SendFileHead(48, "C:\\Users\\me\\file.bin")
    assert head.pack() == raw


def test_send_file_head_must_agree_with_the_header() -> None:
    raw = bytes.fromhex("30000000") + name_field(b"x")
    with pytest.raises(FramingError):
        SendFileHead.unpack(raw, payload_size=259 + 64)


def test_send_file_content_must_be_whole_blocks() -> None:
    raw = bytes.fromhex("11000000") + name_field(b"x")
    with pytest.raises(FramingError):
        SendFileHead.unpack(raw, payload_size=259 + 17)


def test_public_key_request_layout() -> None:
    key = bytes(range(160))
    raw = name_field(b"alice") + key
    assert PublicKeyRequest.unpack(raw) == PublicKeyRequest("alice", key)
    assert PublicKeyRequest("alice", key).pack() == raw


def test_name_is_read_up_to_the_first_nul_and_garbage_after_it_is_ignored() -> None:
    field = b"alice\0garbage" + b"\xff" * (255 - 13)
    assert decode_name(field) == "alice"
    assert NameRequest.unpack(field) == NameRequest("alice")


@pytest.mark.parametrize(
    ("field", "reason"),
    [
        (b"a" * 255, "no NUL"),
        (bytes(255), "empty"),
        (name_field(b"caf\xc3\xa9"), "not ASCII"),
        (name_field(b"a\nb"), "control character"),
        (name_field(b"a")[:254], "short field"),
    ],
)
def test_bad_name_fields_are_refused(field: bytes, reason: str) -> None:
    with pytest.raises(MalformedPayload):
        decode_name(field)


def test_encode_name_limits() -> None:
    assert encode_name("x" * 254) == b"x" * 254 + b"\0"
    with pytest.raises(ValueError, match="254"):
        encode_name("x" * 255)
    with pytest.raises(ValueError, match="ASCII"):
        encode_name("é")


def test_encrypted_size_always_pads() -> None:
    assert [encrypted_size(n) for n in (0, 1, 15, 16, 17, 32)] == [16, 16, 16, 32, 32, 48]


@pytest.mark.parametrize(
    ("code", "size", "error"),
    [
        (1025, 254, MalformedPayload),
        (1025, 2**32 - 1, MalformedPayload),  # the caller closes: too large to skip
        (1026, 255, MalformedPayload),
        (9999, 0, UnknownRequestCode),
        (1028, 258, MalformedPayload),  # not even the head
        (1028, 260, MalformedPayload),  # a head and less than one block: PKCS#7 always adds one
        (1028, 259 + 16 * 1024 + 16, OverLimit),  # over the configured maximum
    ],
)
def test_declared_sizes_are_checked_before_reading(code: int, size: int, error: type[Exception]) -> None:
    with pytest.raises(error):
        check_request_size(RequestHeader(CLIENT_ID, 3, code, size), max_content_size=16 * 1024)


@pytest.mark.parametrize(
    ("code", "size"),
    [(1025, 255), (1026, 415), (1027, 255), (1029, 255), (1030, 255), (1031, 255), (1028, 275), (1028, 259)],
)
def test_correct_sizes_pass(code: int, size: int) -> None:
    check_request_size(RequestHeader(CLIENT_ID, 3, code, size), max_content_size=16 * 1024)


@pytest.mark.parametrize(
    ("payload_size", "content_size", "error"),
    [
        (259 + 32, 32, None),
        (259, 32, None),  # the head alone declared: served, the content follows (§7)
        (259, 0, MalformedPayload),  # both readings agree nothing follows: framed, but no file
        (259, 20, FramingError),  # not a whole number of blocks: where it ends is unknowable
        (259 + 32, 48, FramingError),  # header and head disagree
        (259 + 32, 16, FramingError),
    ],
)
def test_a_1028_head_settles_its_framing(
    payload_size: int, content_size: int, error: type[Exception] | None
) -> None:
    head = content_size.to_bytes(4, "little") + encode_name("x.bin")
    if error is None:
        assert protocol.send_file_content_size(head, payload_size) == content_size
        assert SendFileHead.unpack(head, payload_size) == SendFileHead(content_size, "x.bin")
    else:
        with pytest.raises(error):
            protocol.send_file_content_size(head, payload_size)


def test_every_error_carries_its_response_and_only_broken_framing_or_a_shutdown_closes() -> None:
    """One hierarchy (STYLE.md): the connection loop needs nothing but these two attributes."""
    errors = [
        obj
        for module in (protocol, storage, database)
        for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, Exception)
    ]
    assert {protocol.ProtocolError, protocol.RequestRefused, protocol.ServerFailure} <= set(errors)
    for error in errors:
        if error is protocol.RequestError or not issubclass(error, protocol.RequestError):
            continue
        assert error.response_code is ResponseCode.GENERAL_ERROR, error  # §3: 2107 for all
        # Broken framing closes (§3), and so does a server that is stopping (no new transfer).
        assert error.closes_connection is (error in {FramingError, storage.ShuttingDown}), error
        branches = (protocol.ProtocolError, protocol.RequestRefused, protocol.ServerFailure)
        if error not in branches:  # each error is one of the three kinds
            assert sum(issubclass(error, branch) for branch in branches) == 1, error
    # Failures of the server are not the peer's protocol errors.
    assert not issubclass(storage.StorageError, ProtocolError)
    assert not issubclass(database.DatabaseError, ProtocolError)


def test_every_request_code_has_a_size_rule() -> None:
    assert set(protocol.FIXED_REQUEST_PAYLOAD_SIZES) | {RequestCode.SEND_FILE} == set(RequestCode)


# --- properties -------------------------------------------------------------

names = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=254)
client_ids = st.binary(min_size=16, max_size=16)


@given(client_ids, st.integers(0, 255), st.integers(0, 65535), st.integers(0, 2**32 - 1))
def test_request_header_round_trip(client_id: bytes, version: int, code: int, size: int) -> None:
    header = RequestHeader(client_id, version, code, size)
    assert RequestHeader.unpack(header.pack()) == header


@given(names)
def test_name_round_trip(name: str) -> None:
    assert NameRequest.unpack(NameRequest(name).pack()) == NameRequest(name)


@given(client_ids, st.integers(0, 2**32 - 1), names, st.integers(0, 2**32 - 1))
def test_file_received_round_trip(client_id: bytes, size: int, name: str, checksum: int) -> None:
    response = FileReceivedResponse(client_id, size, name, checksum)
    assert FileReceivedResponse.unpack(response.pack()) == response


@given(client_ids)
def test_client_id_round_trip(client_id: bytes) -> None:
    assert ClientIdResponse.unpack(ClientIdResponse(client_id).pack()).client_id == client_id


DECODERS = [
    NameRequest.unpack,
    PublicKeyRequest.unpack,
    ClientIdResponse.unpack,
    AesKeyResponse.unpack,
    FileReceivedResponse.unpack,
    RequestHeader.unpack,
    ResponseHeader.unpack,
    lambda data: SendFileHead.unpack(data, len(data) + 16),
]


@pytest.mark.parametrize("decoder", DECODERS)
@given(data=st.binary(max_size=600))
def test_random_bytes_decode_or_raise_the_protocol_error(decoder: object, data: bytes) -> None:
    assert callable(decoder)
    with contextlib.suppress(ProtocolError):
        decoder(data)


@pytest.mark.parametrize("decoder", DECODERS)
@given(data=st.data())
def test_valid_lengths_with_random_content_decode_or_raise(decoder: object, data: st.DataObject) -> None:
    """Random bytes of exactly the right length reach the field checks, not only the length check."""
    assert callable(decoder)
    size = data.draw(st.sampled_from([7, 16, 23, 144, 255, 259, 279, 415]))
    with contextlib.suppress(ProtocolError):
        decoder(data.draw(st.binary(min_size=size, max_size=size)))


def test_pack_request_frames_a_request() -> None:
    # §1: client ID(16), version 3, code 1025 little-endian, payload size 2, then the payload.
    raw = protocol.pack_request(CLIENT_ID, RequestCode.REGISTER, b"ab")
    assert raw == CLIENT_ID + bytes.fromhex("03 0104 02000000") + b"ab"


def test_encode_name_refuses_a_nul_inside() -> None:
    with pytest.raises(ValueError, match="contains NUL"):
        encode_name("a\0b")


def test_the_largest_1028_allowed_passes() -> None:
    check_request_size(RequestHeader(CLIENT_ID, 3, RequestCode.SEND_FILE, 259 + 1024), 1024)
    with pytest.raises(protocol.OverLimit):
        check_request_size(RequestHeader(CLIENT_ID, 3, RequestCode.SEND_FILE, 259 + 1040), 1024)
