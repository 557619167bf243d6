// Encoders and strict decoders for the wire format (PROTOCOL.md sections 1-3).
#include "protocol.hpp"

#include <algorithm>

namespace proto {

void put_le16(Bytes& out, std::uint16_t value) {
    out.push_back(static_cast<std::uint8_t>(value & 0xFFu));
    out.push_back(static_cast<std::uint8_t>((value >> 8) & 0xFFu));
}

void put_le32(Bytes& out, std::uint32_t value) {
    for (int shift = 0; shift < 32; shift += 8) {
        out.push_back(static_cast<std::uint8_t>((value >> shift) & 0xFFu));
    }
}

std::uint16_t get_le16(const std::uint8_t* in) {
    return static_cast<std::uint16_t>(in[0] | (in[1] << 8));
}

std::uint32_t get_le32(const std::uint8_t* in) {
    return static_cast<std::uint32_t>(in[0]) | (static_cast<std::uint32_t>(in[1]) << 8) |
           (static_cast<std::uint32_t>(in[2]) << 16) | (static_cast<std::uint32_t>(in[3]) << 24);
}

void put_name_field(Bytes& out, std::string_view text) {
    if (text.size() > kMaxNameFieldText) {
        throw EncodeError("text of " + std::to_string(text.size()) +
                          " bytes does not fit a 255-byte field (at most 254)");
    }
    if (text.find('\0') != std::string_view::npos) {
        throw EncodeError("text for a 255-byte field contains a NUL byte");
    }
    out.insert(out.end(), text.begin(), text.end());
    out.insert(out.end(), kNameFieldSize - text.size(), 0);
}

std::string get_name_field(const std::uint8_t* field) {
    const std::uint8_t* end = field + kNameFieldSize;
    const std::uint8_t* nul = std::find(field, end, 0);
    if (nul == end) {
        throw ProtocolError("255-byte text field has no NUL terminator");
    }
    return std::string(field, nul);
}

void put_request_header(Bytes& out, const RequestHeader& header) {
    out.insert(out.end(), header.client_id.begin(), header.client_id.end());
    out.push_back(header.version);
    put_le16(out, static_cast<std::uint16_t>(header.code));
    put_le32(out, header.payload_size);
}

namespace {

Bytes start_request(const ClientId& id, RequestCode code, std::size_t payload_size,
                    std::size_t bytes_in_this_buffer) {
    Bytes out;
    out.reserve(kRequestHeaderSize + bytes_in_this_buffer);
    put_request_header(out, RequestHeader{id, kClientVersion, code,
                                          static_cast<std::uint32_t>(payload_size)});
    return out;
}

}  // namespace

Bytes encode_name_request(const ClientId& id, RequestCode code, std::string_view name) {
    Bytes out = start_request(id, code, kNameFieldSize, kNameFieldSize);
    put_name_field(out, name);
    return out;
}

Bytes encode_public_key_request(const ClientId& id, std::string_view name, const Bytes& public_key_der) {
    if (public_key_der.size() != kPublicKeySize) {
        throw EncodeError("public key is " + std::to_string(public_key_der.size()) +
                          " bytes of DER; the protocol needs exactly 160");
    }
    constexpr std::size_t payload_size = kNameFieldSize + kPublicKeySize;
    Bytes out = start_request(id, RequestCode::PublicKey, payload_size, payload_size);
    put_name_field(out, name);
    out.insert(out.end(), public_key_der.begin(), public_key_der.end());
    return out;
}

Bytes encode_send_file_prefix(const ClientId& id, std::uint32_t content_size, std::string_view file_name) {
    const std::uint64_t payload_size = std::uint64_t{kSendFilePrefixSize} + content_size;
    if (payload_size > 0xFFFFFFFFull) {
        throw EncodeError("encrypted file of " + std::to_string(content_size) +
                          " bytes does not fit one 1028 request");
    }
    if (content_size == 0 || content_size % kAesBlockSize != 0) {
        throw EncodeError("1028 content size must be a positive multiple of 16");
    }
    Bytes out = start_request(id, RequestCode::SendFile, static_cast<std::size_t>(payload_size),
                              kSendFilePrefixSize);
    put_le32(out, content_size);
    put_name_field(out, file_name);
    return out;
}

ResponseHeader decode_response_header(const std::uint8_t* in) {
    return ResponseHeader{in[0], get_le16(in + 1), get_le32(in + 3)};
}

std::optional<std::uint32_t> expected_response_payload_size(std::uint16_t code) {
    switch (static_cast<ResponseCode>(code)) {
        case ResponseCode::RegisterOk:
        case ResponseCode::Acknowledged:
        case ResponseCode::ReconnectDenied:
            return kClientIdSize;
        case ResponseCode::AesKey:
        case ResponseCode::ReconnectOk:
            return kClientIdSize + kEncryptedAesKeySize;
        case ResponseCode::FileReceived:
            return kClientIdSize + 4 + kNameFieldSize + 4;
        case ResponseCode::RegisterFailed:
        case ResponseCode::GeneralError:
            return 0;
    }
    return std::nullopt;
}

void validate_response_header(const ResponseHeader& header) {
    if (header.version != kServerVersion) {
        throw ProtocolError("response has version " + std::to_string(header.version) + ", expected " +
                            std::to_string(kServerVersion));
    }
    const auto expected = expected_response_payload_size(header.code);
    if (!expected) {
        throw ProtocolError("unknown response code " + std::to_string(header.code));
    }
    if (header.payload_size != *expected) {
        throw ProtocolError("response " + std::to_string(header.code) + " declares a payload of " +
                            std::to_string(header.payload_size) + " bytes, expected " +
                            std::to_string(*expected));
    }
}

namespace {

void check_payload_size(const Bytes& payload, std::size_t expected, const char* what) {
    if (payload.size() != expected) {
        throw ProtocolError(std::string(what) + " payload is " + std::to_string(payload.size()) +
                            " bytes, expected " + std::to_string(expected));
    }
}

ClientId read_client_id(const std::uint8_t* in) {
    ClientId id{};
    std::copy(in, in + kClientIdSize, id.begin());
    return id;
}

}  // namespace

ClientId decode_client_id_payload(const Bytes& payload) {
    check_payload_size(payload, kClientIdSize, "client-id");
    return read_client_id(payload.data());
}

AesKeyPayload decode_aes_key_payload(const Bytes& payload) {
    check_payload_size(payload, kClientIdSize + kEncryptedAesKeySize, "AES-key");
    AesKeyPayload decoded;
    decoded.client_id = read_client_id(payload.data());
    std::copy(payload.begin() + kClientIdSize, payload.end(), decoded.encrypted_key.begin());
    return decoded;
}

FileReceivedPayload decode_file_received_payload(const Bytes& payload) {
    // Client ID(16) Content size(4) File name(255) Cksum(4)
    constexpr std::size_t content_size_at = kClientIdSize;
    constexpr std::size_t file_name_at = content_size_at + 4;
    constexpr std::size_t cksum_at = file_name_at + kNameFieldSize;
    check_payload_size(payload, cksum_at + 4, "file-received");
    FileReceivedPayload decoded;
    decoded.client_id = read_client_id(payload.data());
    decoded.content_size = get_le32(payload.data() + content_size_at);
    decoded.file_name = get_name_field(payload.data() + file_name_at);
    decoded.cksum = get_le32(payload.data() + cksum_at);
    return decoded;
}

std::string to_hex(const std::uint8_t* data, std::size_t size) {
    static constexpr char digits[] = "0123456789abcdef";
    std::string hex;
    hex.reserve(size * 2);
    for (std::size_t i = 0; i < size; ++i) {
        hex.push_back(digits[data[i] >> 4]);
        hex.push_back(digits[data[i] & 0x0F]);
    }
    return hex;
}

std::string client_id_to_hex(const ClientId& id) {
    return to_hex(id.data(), id.size());
}

namespace {

int hex_digit_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

}  // namespace

std::optional<ClientId> client_id_from_hex(std::string_view hex) {
    if (hex.size() != kClientIdSize * 2) {
        return std::nullopt;
    }
    ClientId id{};
    for (std::size_t i = 0; i < kClientIdSize; ++i) {
        const int high = hex_digit_value(hex[2 * i]);
        const int low = hex_digit_value(hex[2 * i + 1]);
        if (high < 0 || low < 0) {
            return std::nullopt;
        }
        id[i] = static_cast<std::uint8_t>(high * 16 + low);
    }
    return id;
}

std::string response_code_name(std::uint16_t code) {
    switch (static_cast<ResponseCode>(code)) {
        case ResponseCode::RegisterOk: return "2100 (registration succeeded)";
        case ResponseCode::RegisterFailed: return "2101 (registration failed)";
        case ResponseCode::AesKey: return "2102 (AES key)";
        case ResponseCode::FileReceived: return "2103 (file received)";
        case ResponseCode::Acknowledged: return "2104 (acknowledged)";
        case ResponseCode::ReconnectOk: return "2105 (reconnect accepted)";
        case ResponseCode::ReconnectDenied: return "2106 (reconnect denied)";
        case ResponseCode::GeneralError: return "2107 (general server error)";
    }
    return std::to_string(code);
}

}  // namespace proto
