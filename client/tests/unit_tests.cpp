// Unit tests of the client's pure logic: golden vectors typed from PROTOCOL.md, checked
// against our encoders and decoders in both directions. No framework: CHECK records a failure
// and the run goes on; the exit status is the number of failed checks, capped at
// kMaxExitStatus.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <iostream>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include <cryptopp/aes.h>
#include <cryptopp/filters.h>
#include <cryptopp/modes.h>
#include <cryptopp/osrng.h>
#include <cryptopp/rsa.h>

#include "aes_ni.hpp"
#include "cksum.hpp"
#include "connection.hpp"
#include "crypto.hpp"
#include "info_files.hpp"
#include "paths.hpp"
#include "protocol.hpp"

namespace {

int g_failures = 0;
int g_checks = 0;

// Exit statuses above 125 mean "not run" or "killed by a signal" to shells; 100 is plenty.
constexpr int kMaxExitStatus = 100;

#define CHECK(condition)                                                                      \
    do {                                                                                      \
        ++g_checks;                                                                           \
        if (!(condition)) {                                                                   \
            ++g_failures;                                                                     \
            std::cerr << __FILE__ << ":" << __LINE__ << ": CHECK failed: " #condition "\n"; \
        }                                                                                     \
    } while (false)

// Checks that `body` throws an exception of type E whose message contains `fragment`.
template <typename E>
void check_throws(const char* file, int line, const std::function<void()>& body, const std::string& fragment) {
    ++g_checks;
    try {
        body();
    } catch (const E& error) {
        if (std::string(error.what()).find(fragment) != std::string::npos) {
            return;
        }
        std::cerr << file << ":" << line << ": message '" << error.what() << "' lacks '" << fragment << "'\n";
        ++g_failures;
        return;
    } catch (const std::exception& error) {
        std::cerr << file << ":" << line << ": wrong exception type: " << error.what() << "\n";
        ++g_failures;
        return;
    }
    std::cerr << file << ":" << line << ": no exception (expected one containing '" << fragment << "')\n";
    ++g_failures;
}
#define CHECK_THROWS(E, body, fragment) check_throws<E>(__FILE__, __LINE__, [&] { body; }, fragment)

using proto::Bytes;

Bytes from_hex(const std::string& spaced) {
    std::string hex;
    std::copy_if(spaced.begin(), spaced.end(), std::back_inserter(hex), [](char c) { return c != ' '; });
    Bytes out;
    for (std::size_t i = 0; i + 1 < hex.size(); i += 2) {
        out.push_back(static_cast<std::uint8_t>(std::stoul(hex.substr(i, 2), nullptr, 16)));
    }
    return out;
}

std::string hex(const Bytes& bytes) { return proto::to_hex(bytes.data(), bytes.size()); }

Bytes as_bytes(const std::string& text) { return Bytes(text.begin(), text.end()); }

proto::ClientId counting_id() {
    proto::ClientId id{};
    for (std::size_t i = 0; i < id.size(); ++i) id[i] = static_cast<std::uint8_t>(i);
    return id;
}

// A 255-byte field holding `text`, in hex.
std::string name_field_hex(const std::string& text) {
    return proto::to_hex(reinterpret_cast<const std::uint8_t*>(text.data()), text.size()) +
           std::string((255 - text.size()) * 2, '0');
}

// ---- cksum ------------------------------------------------------------------------------------

// The kernels this build and this processor can run: the tables always, the carry-less
// multiplication one on x86-64 with PCLMULQDQ (tests/test_cpp_client.py checks that the CPUs
// that have it do test it).
std::vector<Cksum::Kernel> cksum_kernels() {
    std::vector<Cksum::Kernel> kernels = {Cksum::Kernel::Table};
    if (cksum_kernel::clmul_available()) {
        kernels.push_back(Cksum::Kernel::Clmul);
    }
    return kernels;
}

std::uint32_t cksum_with(Cksum::Kernel kernel, const Bytes& data) {
    Cksum sum(kernel);
    sum.update(data.data(), data.size());
    CHECK(sum.kernel() == kernel);
    return sum.value();
}

// (i * 131 + 7) mod 256, the first `size` bytes.
Bytes cksum_pattern(std::size_t size) {
    Bytes data(size);
    for (std::size_t i = 0; i < size; ++i) data[i] = static_cast<std::uint8_t>(i * 131 + 7);
    return data;
}

void test_cksum_vectors() {
    // What GNU coreutils' `cksum` prints for the same bytes.
    CHECK(cksum(nullptr, 0) == 4294967295u);
    for (const Cksum::Kernel kernel : cksum_kernels()) {
        CHECK(cksum_with(kernel, Bytes{}) == 4294967295u);
        CHECK(cksum_with(kernel, as_bytes("a")) == 1220704766u);
        CHECK(cksum_with(kernel, as_bytes("123456789")) == 930766865u);
        CHECK(cksum_with(kernel, Bytes(100000, 0)) == 1260869142u);
        CHECK(cksum_with(kernel, Bytes(4111, 0xFF)) == 3355348997u);
        CHECK(cksum_with(kernel, cksum_pattern(64)) == 3683550529u);
        CHECK(cksum_with(kernel, cksum_pattern(1000)) == 4100247057u);
        CHECK(cksum_with(kernel, cksum_pattern(10007)) == 577396413u);
    }
    CHECK(cksum(cksum_pattern(10007).data(), 10007) == 577396413u);
    std::cout << "cksum kernels tested:" << (cksum_kernel::clmul_available() ? " table clmul" : " table") << "\n";
}

void test_cksum_fastest_kernel() {
    const Cksum fastest;
    CHECK(fastest.kernel() == (cksum_kernel::clmul_available() ? Cksum::Kernel::Clmul : Cksum::Kernel::Table));
    if (!cksum_kernel::clmul_available()) {
        CHECK_THROWS(std::logic_error, Cksum{Cksum::Kernel::Clmul}, "not available");
        CHECK_THROWS(std::logic_error, cksum_kernel::update_clmul(0, nullptr, 0), "cksum");
    }
}

void test_cksum_chunking() {
    const Bytes data = cksum_pattern(10007);
    for (const Cksum::Kernel kernel : cksum_kernels()) {
        for (std::size_t step : {1u, 3u, 7u, 8u, 9u, 15u, 16u, 17u, 63u, 64u, 65u, 100u, 4096u}) {
            Cksum sum(kernel);
            for (std::size_t at = 0; at < data.size(); at += step) {
                sum.update(data.data() + at, std::min(step, data.size() - at));
            }
            CHECK(sum.value() == 577396413u);
        }
    }
}

// The two kernels against each other: every length 0..4096 of random bytes, from a random
// register, then the same bytes cut at random places.
void test_cksum_kernels_agree() {
    if (!cksum_kernel::clmul_available()) {
        return;  // one kernel: nothing to compare (test_cksum_vectors says which were tested)
    }
    std::mt19937 random(20261202u);
    Bytes data(4096 + 64);
    for (auto& byte : data) byte = static_cast<std::uint8_t>(random());
    int disagreements = 0;
    for (std::size_t size = 0; size <= 4096; ++size) {
        const std::uint32_t start = static_cast<std::uint32_t>(random());
        const std::size_t offset = random() % 64;  // unaligned starts too
        const std::uint8_t* at = data.data() + offset;
        if (cksum_kernel::update_table(start, at, size) != cksum_kernel::update_clmul(start, at, size)) {
            ++disagreements;
        }
    }
    CHECK(disagreements == 0);
    int split_disagreements = 0;
    for (int round = 0; round < 200; ++round) {
        const std::size_t size = random() % 4097;
        Cksum table(Cksum::Kernel::Table);
        Cksum clmul(Cksum::Kernel::Clmul);
        for (std::size_t at = 0; at < size;) {
            const std::size_t piece = std::min<std::size_t>(size - at, random() % 700);
            table.update(data.data() + at, piece);
            clmul.update(data.data() + at, piece);
            at += piece;
        }
        Cksum whole(Cksum::Kernel::Table);
        whole.update(data.data(), size);
        if (clmul.value() != table.value() || clmul.value() != whole.value()) {
            ++split_disagreements;
        }
    }
    CHECK(split_disagreements == 0);
}

// ---- little-endian and request encoding -------------------------------------------------------

void test_little_endian() {
    Bytes out;
    proto::put_le16(out, 0x0401);
    proto::put_le32(out, 0x11223344);
    CHECK(hex(out) == "010444332211");
    CHECK(proto::get_le16(out.data()) == 0x0401);
    CHECK(proto::get_le32(out.data() + 2) == 0x11223344u);
    const Bytes high = from_hex("fe ff ff ff");
    CHECK(proto::get_le32(high.data()) == 0xFFFFFFFEu);
}

void test_request_header_vector() {
    Bytes out;
    proto::put_request_header(out, {counting_id(), 3, proto::RequestCode::Register, 255});
    CHECK(out.size() == proto::kRequestHeaderSize);
    CHECK(hex(out) == "000102030405060708090a0b0c0d0e0f" "03" "0104" "ff000000");
}

void test_name_requests() {
    const Bytes reg = proto::encode_name_request(counting_id(), proto::RequestCode::Register, "alice");
    CHECK(reg.size() == 23 + 255);
    CHECK(hex(reg) == "000102030405060708090a0b0c0d0e0f" "03" "0104" "ff000000" + name_field_hex("alice"));
    const Bytes crc_failed = proto::encode_name_request(counting_id(), proto::RequestCode::CrcFailedResending, "x");
    CHECK(hex(Bytes(crc_failed.begin() + 16, crc_failed.begin() + 23)) == "03" "0604" "ff000000");  // 1030

    const std::string longest(254, 'n');
    CHECK(proto::encode_name_request({}, proto::RequestCode::Reconnect, longest).size() == 278);
    CHECK_THROWS(proto::EncodeError, proto::encode_name_request({}, proto::RequestCode::Reconnect, longest + "n"),
                 "at most 254");
    CHECK_THROWS(proto::EncodeError,
                 proto::encode_name_request({}, proto::RequestCode::Reconnect, std::string("a\0b", 3)), "NUL");
}

void test_public_key_request() {
    const Bytes key(160, 0xAB);
    const Bytes request = proto::encode_public_key_request(counting_id(), "bob", key);
    CHECK(request.size() == 23 + 415);
    CHECK(hex(Bytes(request.begin() + 16, request.begin() + 23)) == "03" "0204" "9f010000");  // 1026, 415
    CHECK(Bytes(request.end() - 160, request.end()) == key);
    CHECK_THROWS(proto::EncodeError, proto::encode_public_key_request(counting_id(), "bob", Bytes(162, 1)),
                 "exactly 160");
}

void test_send_file_prefix() {
    // Content size 32 -> payload 259 + 32 = 291 = 0x123.
    const Bytes prefix = proto::encode_send_file_prefix(counting_id(), 32, "dir/a b.txt");
    CHECK(prefix.size() == 23 + 4 + 255);
    CHECK(hex(prefix) == "000102030405060708090a0b0c0d0e0f" "03" "0404" "23010000" "20000000" +
                             name_field_hex("dir/a b.txt"));
    CHECK_THROWS(proto::EncodeError, proto::encode_send_file_prefix(counting_id(), 0, "a"), "multiple of 16");
    CHECK_THROWS(proto::EncodeError, proto::encode_send_file_prefix(counting_id(), 17, "a"), "multiple of 16");
    CHECK_THROWS(proto::EncodeError, proto::encode_send_file_prefix(counting_id(), 0xFFFFFFF0u, "a"),
                 "does not fit");
}

void test_encrypted_size() {
    // 1028 payload size = 259 + ((n / 16) + 1) * 16.
    CHECK(proto::encrypted_size(0) == 16);
    CHECK(proto::encrypted_size(15) == 16);
    CHECK(proto::encrypted_size(16) == 32);
    CHECK(proto::encrypted_size(5000000) == 5000016);
    CHECK(proto::kMaxPlainFileSize == 4294967023ull);
    CHECK(proto::encrypted_size(proto::kMaxPlainFileSize) + 259 <= 0xFFFFFFFFull);
}

// ---- responses ----------------------------------------------------------------------------------

void test_response_header_decoding() {
    const Bytes header = from_hex("03 3408 10000000");  // version 3, 2100, 16
    const proto::ResponseHeader decoded = proto::decode_response_header(header.data());
    CHECK(decoded.version == 3);
    CHECK(decoded.code == 2100);
    CHECK(decoded.payload_size == 16);
    proto::validate_response_header(decoded);

    const auto validate = [](const std::string& hex_header) {
        const Bytes bytes = from_hex(hex_header);
        proto::validate_response_header(proto::decode_response_header(bytes.data()));
    };
    validate("03 3b08 00000000");  // 2107, empty
    validate("03 3708 17010000");  // 2103, 279
    validate("03 3608 90000000");  // 2102, 144
    CHECK_THROWS(proto::ProtocolError, validate("02 3408 10000000"), "version 2");
    CHECK_THROWS(proto::ProtocolError, validate("03 3c08 00000000"), "unknown response code 2108");
    CHECK_THROWS(proto::ProtocolError, validate("03 3408 11000000"), "expected 16");
    CHECK_THROWS(proto::ProtocolError, validate("03 3b08 ffffffff"), "expected 0");
    CHECK_THROWS(proto::ProtocolError, validate("03 3608 80000000"), "expected 144");
}

void test_response_payloads() {
    const Bytes id_payload = from_hex("000102030405060708090a0b0c0d0e0f");
    CHECK(proto::decode_client_id_payload(id_payload) == counting_id());
    CHECK_THROWS(proto::ProtocolError, proto::decode_client_id_payload(Bytes(15)), "expected 16");

    Bytes aes = id_payload;
    aes.insert(aes.end(), 128, 0x5A);
    const proto::AesKeyPayload key = proto::decode_aes_key_payload(aes);
    CHECK(key.client_id == counting_id());
    CHECK(key.encrypted_key[0] == 0x5A && key.encrypted_key[127] == 0x5A);

    // 2103: id, content size 32, name "a.txt", cksum 0x01020304.
    const Bytes received =
        from_hex("000102030405060708090a0b0c0d0e0f" "20000000" + name_field_hex("a.txt") + "04030201");
    const proto::FileReceivedPayload file = proto::decode_file_received_payload(received);
    CHECK(file.client_id == counting_id());
    CHECK(file.content_size == 32);
    CHECK(file.file_name == "a.txt");
    CHECK(file.cksum == 0x01020304u);

    Bytes garbage_after_nul = received;
    garbage_after_nul[16 + 4 + 6] = 'Z';  // after "a.txt\0": ignored
    CHECK(proto::decode_file_received_payload(garbage_after_nul).file_name == "a.txt");
    Bytes no_nul = received;
    std::fill(no_nul.begin() + 20, no_nul.begin() + 20 + 255, 'x');
    CHECK_THROWS(proto::ProtocolError, proto::decode_file_received_payload(no_nul), "no NUL");
    CHECK_THROWS(proto::ProtocolError, proto::decode_file_received_payload(Bytes(received.begin(), received.end() - 1)),
                 "expected 279");
}

void test_client_id_hex() {
    CHECK(proto::client_id_to_hex(counting_id()) == "000102030405060708090a0b0c0d0e0f");
    CHECK(proto::client_id_from_hex("000102030405060708090A0B0C0D0E0F") == counting_id());
    CHECK(!proto::client_id_from_hex("000102030405060708090a0b0c0d0e0"));
    CHECK(!proto::client_id_from_hex("000102030405060708090a0b0c0d0e0g"));
    CHECK(!proto::client_id_from_hex("000102030405060708090a0b0c0d0e0f00"));
}

// ---- crypto ------------------------------------------------------------------------------------

crypto::AesKey counting_key() {
    crypto::AesKey key{};
    for (std::size_t i = 0; i < key.size(); ++i) key[i] = static_cast<std::uint8_t>(i);
    return key;
}

using AesKernel = crypto::AesCbcEncryptor::Kernel;

// The AES kernels this build and this processor can run: Crypto++ always, AES-NI on x86-64
// with it (tests/test_cpp_client.py checks that the CPUs that have it do test it).
std::vector<AesKernel> aes_kernels() {
    std::vector<AesKernel> kernels = {AesKernel::CryptoPP};
    if (aes_ni::available()) {
        kernels.push_back(AesKernel::AesNi);
    }
    return kernels;
}

// Into a separate buffer, `step` bytes at a time; each update's output right after the last.
Bytes encrypt_in_chunks(const Bytes& plain, std::size_t step, AesKernel kernel = AesKernel::Fastest,
                        const crypto::AesKey& key = counting_key()) {
    crypto::AesCbcEncryptor encryptor(key, kernel);
    Bytes out(plain.size() + proto::kAesBlockSize);
    std::size_t written = 0;
    for (std::size_t at = 0; at < plain.size(); at += step) {
        const std::size_t size = std::min(step, plain.size() - at);
        const std::size_t held_over = at - written;  // plaintext bytes not yet encrypted
        const std::size_t produced = encryptor.update(plain.data() + at, size, out.data() + written);
        CHECK(produced == (held_over + size) / proto::kAesBlockSize * proto::kAesBlockSize);
        written += produced;
    }
    CHECK(encryptor.finish(out.data() + written) == proto::kAesBlockSize);
    out.resize(written + proto::kAesBlockSize);
    return out;
}

// In place, as the client sends: `step` a multiple of 16, the last chunk's padding after it.
Bytes encrypt_in_place(Bytes data, std::size_t step, AesKernel kernel = AesKernel::Fastest,
                       const crypto::AesKey& key = counting_key()) {
    crypto::AesCbcEncryptor encryptor(key, kernel);
    const std::size_t size = data.size();
    data.resize(size + proto::kAesBlockSize, 0xEE);
    std::size_t written = 0;
    for (std::size_t at = 0; at < size; at += step) {
        std::uint8_t* chunk = data.data() + at;
        written += encryptor.update(chunk, std::min(step, size - at), chunk);
    }
    written += encryptor.finish(data.data() + written);
    CHECK(written == proto::encrypted_size(size));
    data.resize(written);
    return data;
}

void test_aes_vectors() {
    // Computed independently (pycryptodome, AES-128-CBC, key 00..0f, zero IV, PKCS#7).
    for (const AesKernel kernel : aes_kernels()) {
        CHECK(hex(encrypt_in_chunks({}, 1, kernel)) == "954f64f2e4e86e9eee82d20216684899");
        CHECK(hex(encrypt_in_chunks(as_bytes("a"), 1, kernel)) == "fe123486508b0eb503a8468388ef5812");
        CHECK(hex(encrypt_in_chunks(as_bytes("0123456789abcdef"), 5, kernel)) ==
              "281567ab2f4cf0d73d3198225b8b83938e0d4fe286966ba47afeab038d2e3acc");
        CHECK(hex(encrypt_in_chunks(as_bytes("0123456789abcdefg"), 16, kernel)) ==
              "281567ab2f4cf0d73d3198225b8b83938fdfbeab543be7f891a15aad9d71ff66");
        CHECK(crypto::AesCbcEncryptor(counting_key(), kernel).kernel() == kernel);
    }
    // FIPS-197 appendix C.1 (one block; with a zero IV, CBC's first block is the cipher's).
    const Bytes fips_key = from_hex("000102030405060708090a0b0c0d0e0f");
    crypto::AesKey key{};
    std::copy(fips_key.begin(), fips_key.end(), key.begin());
    const Bytes fips_plain = from_hex("00112233445566778899aabbccddeeff");
    for (const AesKernel kernel : aes_kernels()) {
        const Bytes ours = encrypt_in_chunks(fips_plain, 16, kernel, key);
        CHECK(hex(Bytes(ours.begin(), ours.begin() + 16)) == "69c4e0d86a7b0430d8cdb78070b4c55a");
    }
    std::cout << "aes kernels tested:" << (aes_ni::available() ? " crypto++ aes-ni" : " crypto++") << "\n";
}

void test_aes_fastest_kernel() {
    const crypto::AesCbcEncryptor fastest(counting_key());
    CHECK(fastest.kernel() == (aes_ni::available() ? AesKernel::AesNi : AesKernel::CryptoPP));
    if (aes_ni::available()) {
        const aes_ni::KeySchedule schedule = aes_ni::expand_key(counting_key().data());
        std::uint8_t chain[16] = {};
        Bytes data(17);
        CHECK_THROWS(std::invalid_argument, aes_ni::cbc_encrypt(schedule, chain, data.data(), data.data(), 17),
                     "multiple of 16");
    } else {
        CHECK_THROWS(crypto::CryptoError, crypto::AesCbcEncryptor(counting_key(), AesKernel::AesNi), "AES-NI");
        CHECK_THROWS(std::logic_error, aes_ni::expand_key(counting_key().data()), "aes_ni");
    }
}

void test_aes_matches_crypto_filter() {
    // Our streaming encryptor against Crypto++'s own one-shot filter with PKCS padding.
    const crypto::AesKey key = counting_key();
    const std::uint8_t iv[16] = {};
    for (std::size_t size : {0u, 1u, 15u, 16u, 17u, 31u, 65536u + 5u}) {
        Bytes plain(size);
        for (std::size_t i = 0; i < size; ++i) plain[i] = static_cast<std::uint8_t>(i * 7 + size);
        std::string expected;
        CryptoPP::CBC_Mode<CryptoPP::AES>::Encryption reference;
        reference.SetKeyWithIV(key.data(), key.size(), iv, sizeof iv);
        CryptoPP::StringSource(plain.data(), plain.size(), true,
                               new CryptoPP::StreamTransformationFilter(reference, new CryptoPP::StringSink(expected)));
        for (const AesKernel kernel : aes_kernels()) {
            for (std::size_t step : {1u, 7u, 16u, 1000u, 65536u}) {
                const Bytes ours = encrypt_in_chunks(plain, step, kernel);
                CHECK(ours.size() == proto::encrypted_size(size));
                CHECK(std::string(ours.begin(), ours.end()) == expected);
            }
            for (std::size_t step : {16u, 64u, 65536u}) {
                const Bytes ours = encrypt_in_place(plain, step, kernel);
                CHECK(std::string(ours.begin(), ours.end()) == expected);
            }
        }
    }
}

// AES-NI against Crypto++: random keys, random lengths 0..4096, cut at random places, apart
// and in place.
void test_aes_kernels_agree() {
    if (!aes_ni::available()) {
        return;  // one kernel: nothing to compare (test_aes_vectors says which were tested)
    }
    std::mt19937 random(20261202u);
    int disagreements = 0;
    for (int round = 0; round < 300; ++round) {
        crypto::AesKey key{};
        for (auto& byte : key) byte = static_cast<std::uint8_t>(random());
        Bytes plain(random() % 4097);
        for (auto& byte : plain) byte = static_cast<std::uint8_t>(random());
        const std::size_t step = 1 + random() % 700;
        const std::size_t blocks_step = 16 * (1 + random() % 40);
        const Bytes reference = encrypt_in_chunks(plain, plain.size() + 1, AesKernel::CryptoPP, key);
        if (encrypt_in_chunks(plain, step, AesKernel::AesNi, key) != reference ||
            encrypt_in_place(plain, blocks_step, AesKernel::AesNi, key) != reference ||
            encrypt_in_place(plain, blocks_step, AesKernel::CryptoPP, key) != reference) {
            ++disagreements;
        }
    }
    CHECK(disagreements == 0);
}

void test_aes_in_place_needs_whole_blocks() {
    crypto::AesCbcEncryptor encryptor(counting_key());
    Bytes data(64, 1);
    CHECK(encryptor.update(data.data(), 5, data.data()) == 0);  // 5 bytes held over
    CHECK_THROWS(crypto::CryptoError, encryptor.update(data.data() + 5, 32, data.data() + 5), "in place");
    Bytes out(64);
    CHECK(encryptor.update(data.data() + 5, 32, out.data()) == 32);  // apart: fine
    CHECK(encryptor.finish(out.data() + 32) == 16);
    CHECK_THROWS(crypto::CryptoError, encryptor.update(data.data(), 16, out.data()), "after finish");
    CHECK_THROWS(crypto::CryptoError, encryptor.finish(out.data()), "twice");
}

void test_rsa_roundtrip() {
    const crypto::RsaPrivateKey key = crypto::RsaPrivateKey::generate();
    const Bytes der = key.public_key_der();
    CHECK(der.size() == 160);
    const std::string base64 = key.save_base64();
    CHECK(base64.find('\n') == 72);  // Crypto++'s Base64Encoder: lines of 72
    CHECK(base64.back() == '\n');

    const crypto::RsaPrivateKey loaded = crypto::RsaPrivateKey::load_base64(base64);
    CHECK(loaded.public_key_der() == der);

    // Wrap a key the way the server does (RSA-OAEP SHA-1) and unwrap it.
    CryptoPP::AutoSeededRandomPool rng;
    CryptoPP::RSA::PublicKey public_key;
    CryptoPP::StringSource der_source(der.data(), der.size(), true);
    public_key.Load(der_source);
    CHECK(public_key.GetPublicExponent() == CryptoPP::Integer(17));
    const CryptoPP::RSAES_OAEP_SHA_Encryptor encryptor(public_key);
    const crypto::AesKey aes = counting_key();
    Bytes wrapped(encryptor.CiphertextLength(aes.size()));
    encryptor.Encrypt(rng, aes.data(), aes.size(), wrapped.data());
    CHECK(wrapped.size() == 128);
    CHECK(loaded.unwrap_aes_key(wrapped.data(), wrapped.size()) == aes);

    Bytes tampered = wrapped;
    tampered[50] ^= 0x01;
    CHECK_THROWS(crypto::CryptoError, loaded.unwrap_aes_key(tampered.data(), tampered.size()), "does not decrypt");
    CHECK_THROWS(crypto::CryptoError, loaded.unwrap_aes_key(wrapped.data(), 127), "expected 128");
    Bytes long_message(20, 1);
    Bytes wrapped_long(encryptor.CiphertextLength(long_message.size()));
    encryptor.Encrypt(rng, long_message.data(), long_message.size(), wrapped_long.data());
    CHECK_THROWS(crypto::CryptoError, loaded.unwrap_aes_key(wrapped_long.data(), wrapped_long.size()), "expected 16");

    CHECK_THROWS(crypto::CryptoError, crypto::RsaPrivateKey::load_base64("AAAA\n"), "");
    CHECK_THROWS(crypto::CryptoError, crypto::RsaPrivateKey::load_base64(base64.substr(0, 100)), "");
}

// ---- info files -------------------------------------------------------------------------------

void test_transfer_info_ok() {
    const info::TransferInfo parsed = info::parse_transfer_info("127.0.0.1:1234\nMichael Jackson\nnew folder/a b.bin\n");
    CHECK(parsed.host == "127.0.0.1");
    CHECK(parsed.port == 1234);
    CHECK(parsed.client_name == "Michael Jackson");
    CHECK(parsed.file_path_text == "new folder/a b.bin");
    CHECK(parsed.file_path == std::filesystem::path("new folder") / "a b.bin");
    CHECK(parsed.file_name == "a b.bin");

    const info::TransferInfo crlf = info::parse_transfer_info("localhost:65535\r\nbob\r\nC:\\files\\x.bin\r\n\r\n");
    CHECK(crlf.host == "localhost");
    CHECK(crlf.port == 65535);
    CHECK(crlf.client_name == "bob");
    CHECK(crlf.file_path_text == "C:\\files\\x.bin");
    CHECK(crlf.file_name == "x.bin");  // section 6: the base name, whichever separator

    const info::TransferInfo v6 = info::parse_transfer_info("[::1]:1\nbob\nx");  // no final newline
    CHECK(v6.host == "::1");
    CHECK(v6.port == 1);
    CHECK(v6.file_name == "x");
    CHECK(info::parse_transfer_info("h:1\n" + std::string(100, 'n') + "\nx\n").client_name.size() == 100);

    // Folders with any name (Hebrew "shalom" here, in UTF-8); only the name sent is ASCII.
    const std::string hebrew = "\xD7\xA9\xD7\x9C\xD7\x95\xD7\x9D";
    const info::TransferInfo unicode =
        info::parse_transfer_info("h:1\nbob\nC:\\Users\\" + hebrew + "\\thesis.pdf\n");
    CHECK(unicode.file_name == "thesis.pdf");
    CHECK(paths::to_utf8(unicode.file_path) == "C:\\Users\\" + hebrew + "\\thesis.pdf");
    CHECK(paths::to_utf8(paths::from_utf8(hebrew + "/a.bin")) == hebrew + "/a.bin");
    CHECK(paths::from_utf8(hebrew + "/a.bin").filename() == "a.bin");
    CHECK(info::parse_transfer_info("h:1\nbob\nsub/a.bin\n").file_name ==
          info::parse_transfer_info("h:1\nbob\nsub\\a.bin\n").file_name);
    // Notepad's byte order mark; blank lines after line 3.
    CHECK(info::parse_transfer_info("\xEF\xBB\xBFh:1\nbob\nx\n\n  \n").host == "h");
    CHECK(info::parse_transfer_info("h:1\nbob\n" + std::string(254, 'p') + "\n").file_name.size() == 254);
    CHECK(info::parse_transfer_info("h:1\nbob\n" + std::string(300, 'd') + "/x\n").file_name == "x");
}

void test_transfer_info_errors() {
    using info::InfoFileError;
    using info::parse_transfer_info;
    const std::string expected = " lines; expected 3 (host:port, name, file path)";
    CHECK_THROWS(InfoFileError, parse_transfer_info(""), "transfer.info has 0" + expected);
    CHECK_THROWS(InfoFileError, parse_transfer_info("\n"), "transfer.info has 1" + expected);  // as Python's
    CHECK_THROWS(InfoFileError, parse_transfer_info("127.0.0.1:1234\nbob\n"), "transfer.info has 2" + expected);
    CHECK_THROWS(InfoFileError, parse_transfer_info("h:1\nbob\nx\ny\n"), "transfer.info has 4" + expected);
    CHECK_THROWS(InfoFileError, parse_transfer_info("h:1\rbob\rx\ry"), "transfer.info has 4" + expected);
    CHECK_THROWS(InfoFileError, parse_transfer_info("h:1\nbob\fy\nx\n"), "transfer.info has 4" + expected);
    CHECK_THROWS(InfoFileError, parse_transfer_info("127.0.0.1\nbob\nx\n"), "line 1: expected host:port");
    CHECK_THROWS(InfoFileError, parse_transfer_info(":1234\nbob\nx\n"), "line 1: missing or invalid host");
    CHECK_THROWS(InfoFileError, parse_transfer_info("h:0\nbob\nx\n"), "out of range");
    CHECK_THROWS(InfoFileError, parse_transfer_info("h:65536\nbob\nx\n"), "out of range");
    CHECK_THROWS(InfoFileError, parse_transfer_info("h:123456\nbob\nx\n"), "not a number");
    CHECK_THROWS(InfoFileError, parse_transfer_info("h:12a\nbob\nx\n"), "not a number");
    CHECK_THROWS(InfoFileError, parse_transfer_info("h:-1\nbob\nx\n"), "not a number");
    CHECK_THROWS(InfoFileError, parse_transfer_info("h:\nbob\nx\n"), "not a number");
    CHECK_THROWS(InfoFileError, parse_transfer_info("h:1\n\nx\n"), "line 2: the client name is empty");
    CHECK_THROWS(InfoFileError, parse_transfer_info("h:1\n" + std::string(101, 'n') + "\nx\n"), "at most 100");
    CHECK_THROWS(InfoFileError, parse_transfer_info("h:1\nb\tob\nx\n"), "printable ASCII");
    CHECK_THROWS(InfoFileError, parse_transfer_info("h:1\nbob\n\n"), "line 3: the file path is empty");
    CHECK_THROWS(InfoFileError, parse_transfer_info("h:1\nbob\n" + std::string(255, 'p') + "\n"), "at most 254");
    CHECK_THROWS(InfoFileError, parse_transfer_info("h:1\nbob\nx\xC3\xA9\n"), "line 3: the file name");
    CHECK_THROWS(InfoFileError, parse_transfer_info("h:1\nbob\nd\xC3\xA9/x\xFF\n"), "line 3: the file path must be UTF-8");
    CHECK_THROWS(InfoFileError, parse_transfer_info("h:1\nbob\n\xC0\xAF\n"), "must be UTF-8");  // overlong '/'
    CHECK_THROWS(InfoFileError, parse_transfer_info("h:1\nbob\na\tb\n"), "must be UTF-8");
    CHECK_THROWS(InfoFileError, parse_transfer_info("h:1\nbob\nsub/\n"), "names a folder");
    CHECK_THROWS(InfoFileError, parse_transfer_info("h:1\nbob\nsub\\..\n"), "names a folder");
}

void test_split_lines() {
    using info::split_lines;
    using Lines = std::vector<std::string>;
    // The vectors are what Python's str.splitlines() returns for the same text.
    CHECK(split_lines("").empty());
    CHECK(split_lines("\n") == Lines{""});
    CHECK(split_lines("a") == Lines{"a"});
    CHECK(split_lines("a\n") == Lines{"a"});
    CHECK(split_lines("a\n\n") == (Lines{"a", ""}));
    CHECK(split_lines("a\r\nb\rc\nd") == (Lines{"a", "b", "c", "d"}));
    CHECK(split_lines("a\r\rb") == (Lines{"a", "", "b"}));
    CHECK(split_lines("a\vb\fc\x1C" "d\x1D" "e\x1E" "f") == (Lines{"a", "b", "c", "d", "e", "f"}));
    CHECK(split_lines("a\xC2\x85" "b\xE2\x80\xA8" "c\xE2\x80\xA9" "d") == (Lines{"a", "b", "c", "d"}));
    CHECK(split_lines("a\xC2\x84" "b\xE2\x80\xAA") == Lines{"a\xC2\x84" "b\xE2\x80\xAA"});  // not breaks
    CHECK(split_lines("a\tb c") == Lines{"a\tb c"});
}

void test_seconds_text() {
    using std::chrono::milliseconds;
    CHECK(net::seconds_text(milliseconds(30000)) == "30");
    CHECK(net::seconds_text(milliseconds(500)) == "0.5");
    CHECK(net::seconds_text(milliseconds(1250)) == "1.25");
    CHECK(net::seconds_text(milliseconds(1001)) == "1.001");
}

void test_me_info() {
    const crypto::RsaPrivateKey key = crypto::RsaPrivateKey::generate();
    const std::string base64 = key.save_base64();
    const info::MeInfo me{"alice", counting_id(), base64};
    const std::string text = info::format_me_info(me);
    CHECK(text.rfind("alice\n000102030405060708090a0b0c0d0e0f\n", 0) == 0);
    CHECK(std::count(text.begin(), text.end(), '\n') >= 5);  // a multi-line key

    const info::MeInfo parsed = info::parse_me_info(text);
    CHECK(parsed.client_name == "alice");
    CHECK(parsed.client_id == counting_id());
    CHECK(parsed.private_key_base64 == base64);
    CHECK(crypto::RsaPrivateKey::load_base64(parsed.private_key_base64).public_key_der() == key.public_key_der());

    std::string crlf;
    for (char c : text) {
        if (c == '\n') crlf += '\r';
        crlf += c;
    }
    const info::MeInfo parsed_crlf = info::parse_me_info(crlf);
    CHECK(parsed_crlf.client_id == counting_id());
    CHECK(crypto::RsaPrivateKey::load_base64(parsed_crlf.private_key_base64).public_key_der() == key.public_key_der());

    using info::InfoFileError;
    using info::parse_me_info;
    CHECK_THROWS(InfoFileError, parse_me_info("alice\n000102030405060708090a0b0c0d0e0f\n"), "3 or more lines");
    CHECK_THROWS(InfoFileError, parse_me_info("alice\n0001020304050607\nAAAA\n"), "line 2");
    CHECK_THROWS(InfoFileError, parse_me_info("alice\nzz0102030405060708090a0b0c0d0e0f\nAAAA\n"), "line 2");
    CHECK_THROWS(InfoFileError, parse_me_info("alice\n000102030405060708090a0b0c0d0e0f\nAAAA\nAA*A\n"),
                 "line 4: not Base64");
    CHECK_THROWS(InfoFileError, parse_me_info("\n000102030405060708090a0b0c0d0e0f\nAAAA\n"), "line 1");
}

}  // namespace

int main() {
    const std::vector<std::pair<const char*, void (*)()>> tests = {
        {"cksum vectors", test_cksum_vectors},
        {"cksum fastest kernel", test_cksum_fastest_kernel},
        {"cksum chunking", test_cksum_chunking},
        {"cksum kernels agree", test_cksum_kernels_agree},
        {"little endian", test_little_endian},
        {"request header vector", test_request_header_vector},
        {"name requests", test_name_requests},
        {"public key request", test_public_key_request},
        {"send file prefix", test_send_file_prefix},
        {"encrypted size", test_encrypted_size},
        {"response header decoding", test_response_header_decoding},
        {"response payloads", test_response_payloads},
        {"client id hex", test_client_id_hex},
        {"aes vectors", test_aes_vectors},
        {"aes fastest kernel", test_aes_fastest_kernel},
        {"aes kernels agree", test_aes_kernels_agree},
        {"aes matches crypto++ filter", test_aes_matches_crypto_filter},
        {"aes in place needs whole blocks", test_aes_in_place_needs_whole_blocks},
        {"rsa roundtrip", test_rsa_roundtrip},
        {"transfer.info ok", test_transfer_info_ok},
        {"transfer.info errors", test_transfer_info_errors},
        {"split lines as Python does", test_split_lines},
        {"seconds text", test_seconds_text},
        {"me.info", test_me_info},
    };
    int failed_tests = 0;
    for (const auto& [name, test] : tests) {
        const int before = g_failures;
        try {
            test();
        } catch (const std::exception& error) {
            ++g_failures;
            std::cerr << name << ": unexpected exception: " << error.what() << "\n";
        }
        const bool ok = g_failures == before;
        failed_tests += ok ? 0 : 1;
        std::cout << (ok ? "ok   " : "FAIL ") << name << "\n";
    }
    std::cout << g_checks << " checks, " << g_failures << " failed\n";
    std::cout << tests.size() - static_cast<std::size_t>(failed_tests) << " passed, " << failed_tests << " failed\n";
    return std::min(g_failures, kMaxExitStatus);
}
