// Wire format of the encrypted file-transfer protocol, version 3 (PROTOCOL.md sections 1-3).
//
// Pure code: no sockets, no files. Every multi-byte integer is encoded and decoded
// little-endian, byte by byte, so the result does not depend on the host's byte order
// or on struct padding.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace proto {

using Bytes = std::vector<std::uint8_t>;

// The server sent something that breaks the protocol (PROTOCOL.md section 3).
class ProtocolError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// A value we were asked to put on the wire does not fit its field.
class EncodeError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

constexpr std::uint8_t kClientVersion = 3;
constexpr std::uint8_t kServerVersion = 3;

constexpr std::size_t kClientIdSize = 16;
// Text fields: 255 bytes, NUL-terminated, zero-filled, so at most 254 characters (section 1).
constexpr std::size_t kNameFieldSize = 255;
constexpr std::size_t kMaxNameFieldText = kNameFieldSize - 1;
// X.509 SubjectPublicKeyInfo DER of an RSA-1024 key with e = 17 (section 4).
constexpr std::size_t kPublicKeySize = 160;
// RSA-OAEP ciphertext under a 1024-bit modulus (section 4).
constexpr std::size_t kEncryptedAesKeySize = 128;
constexpr std::size_t kAesKeySize = 16;
constexpr std::size_t kAesBlockSize = 16;

// Request header: client_id(16) version(1) code(2) payload_size(4) = 23 bytes.
constexpr std::size_t kRequestHeaderSize = kClientIdSize + 1 + 2 + 4;
// Response header: version(1) code(2) payload_size(4) = 7 bytes.
constexpr std::size_t kResponseHeaderSize = 1 + 2 + 4;
// 1028 payload prefix before the content: content_size(4) file_name(255) = 259 bytes.
constexpr std::size_t kSendFilePrefixSize = 4 + kNameFieldSize;

using ClientId = std::array<std::uint8_t, kClientIdSize>;

enum class RequestCode : std::uint16_t {
    Register = 1025,
    PublicKey = 1026,
    Reconnect = 1027,
    SendFile = 1028,
    CrcOk = 1029,
    CrcFailedResending = 1030,
    CrcFailedGivingUp = 1031,
};

enum class ResponseCode : std::uint16_t {
    RegisterOk = 2100,
    RegisterFailed = 2101,
    AesKey = 2102,
    FileReceived = 2103,
    Acknowledged = 2104,
    ReconnectOk = 2105,
    ReconnectDenied = 2106,
    GeneralError = 2107,
};

// ---- little-endian primitives -------------------------------------------------------

void put_le16(Bytes& out, std::uint16_t value);
void put_le32(Bytes& out, std::uint32_t value);
std::uint16_t get_le16(const std::uint8_t* in);
std::uint32_t get_le32(const std::uint8_t* in);

// ---- text fields ----------------------------------------------------------------------

// Appends `text` as a 255-byte NUL-terminated zero-filled field. Throws EncodeError if the
// text is longer than 254 bytes or contains a NUL.
void put_name_field(Bytes& out, std::string_view text);
// Reads a 255-byte field up to its first NUL. Throws ProtocolError if it has no NUL.
std::string get_name_field(const std::uint8_t* field);

// ---- requests --------------------------------------------------------------------------

struct RequestHeader {
    ClientId client_id{};
    std::uint8_t version = kClientVersion;
    RequestCode code = RequestCode::Register;
    std::uint32_t payload_size = 0;
};

// Appends the 23-byte header.
void put_request_header(Bytes& out, const RequestHeader& header);

// Whole requests (header + payload) for the codes with a fixed payload.
// 1025 / 1027 / 1029 / 1030 / 1031: Name or File name (255).
Bytes encode_name_request(const ClientId& id, RequestCode code, std::string_view name);
// 1026: Name(255) Public key(160).
Bytes encode_public_key_request(const ClientId& id, std::string_view name, const Bytes& public_key_der);
// 1028 without its content: header + Content size(4) + File name(255). The caller streams
// `content_size` bytes of ciphertext after it.
Bytes encode_send_file_prefix(const ClientId& id, std::uint32_t content_size, std::string_view file_name);

// ---- responses -------------------------------------------------------------------------

struct ResponseHeader {
    std::uint8_t version = 0;
    std::uint16_t code = 0;
    std::uint32_t payload_size = 0;
};

// Decodes the 7 bytes; does not judge them (see validate_response_header).
ResponseHeader decode_response_header(const std::uint8_t* in);

// The exact payload size section 3 fixes for a response code; nullopt for unknown codes.
std::optional<std::uint32_t> expected_response_payload_size(std::uint16_t code);

// Throws ProtocolError unless the version is 3, the code is a known response code and the
// payload size is exactly the one of that code. After this the payload size is bounded
// (at most 279 bytes) and safe to allocate.
void validate_response_header(const ResponseHeader& header);

// Payload decoders: each checks the exact size and throws ProtocolError otherwise.
// 2100 / 2104 / 2106: Client ID(16).
ClientId decode_client_id_payload(const Bytes& payload);

// 2102 / 2105: Client ID(16) Encrypted AES key(128).
struct AesKeyPayload {
    ClientId client_id{};
    std::array<std::uint8_t, kEncryptedAesKeySize> encrypted_key{};
};
AesKeyPayload decode_aes_key_payload(const Bytes& payload);

// 2103: Client ID(16) Content size(4) File name(255) Cksum(4).
struct FileReceivedPayload {
    ClientId client_id{};
    std::uint32_t content_size = 0;
    std::string file_name;
    std::uint32_t cksum = 0;
};
FileReceivedPayload decode_file_received_payload(const Bytes& payload);

// ---- helpers ---------------------------------------------------------------------------

// 1028 content size for a plaintext of `plain_size` bytes: PKCS#7 always adds 1..16 bytes.
constexpr std::uint64_t encrypted_size(std::uint64_t plain_size) {
    return (plain_size / kAesBlockSize + 1) * kAesBlockSize;
}
// The largest plaintext whose 1028 request still fits: the header's payload size
// (259 + content size) must fit in uint32.
constexpr std::uint64_t kMaxPlainFileSize = [] {
    constexpr std::uint64_t max_content = 0xFFFFFFFFull - kSendFilePrefixSize;
    // Largest multiple of 16 not above max_content, minus the always-present padding byte.
    return (max_content / kAesBlockSize) * kAesBlockSize - 1;
}();
static_assert(encrypted_size(kMaxPlainFileSize) + kSendFilePrefixSize <= 0xFFFFFFFFull);
static_assert(encrypted_size(kMaxPlainFileSize + 1) + kSendFilePrefixSize > 0xFFFFFFFFull);

std::string to_hex(const std::uint8_t* data, std::size_t size);
std::string client_id_to_hex(const ClientId& id);
// Parses exactly 32 hex digits (either case); nullopt otherwise.
std::optional<ClientId> client_id_from_hex(std::string_view hex);

std::string response_code_name(std::uint16_t code);

}  // namespace proto
