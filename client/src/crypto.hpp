// The client's cryptography (PROTOCOL.md section 4), on Crypto++:
// RSA-1024 key pair (Crypto++ defaults, e = 17), RSA-OAEP-SHA1 unwrap of the AES key,
// and streaming AES-128-CBC encryption with a zero IV and PKCS#7 padding.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "protocol.hpp"

namespace crypto {

using proto::Bytes;
using AesKey = std::array<std::uint8_t, proto::kAesKeySize>;

class CryptoError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// An RSA-1024 private key. The implementation lives behind a pointer so that Crypto++
// headers stay out of every other translation unit.
class RsaPrivateKey {
public:
    // A fresh key pair: InvertibleRSAFunction::Initialize(rng, 1024), i.e. e = 17.
    static RsaPrivateKey generate();
    // Base64 (Crypto++ Base64Decoder; line breaks ignored) of the PKCS#8 DER that save_base64()
    // writes. Throws CryptoError unless it decodes whole, validates, and is a 1024-bit key.
    static RsaPrivateKey load_base64(const std::string& base64);

    RsaPrivateKey(RsaPrivateKey&&) noexcept;
    RsaPrivateKey& operator=(RsaPrivateKey&&) noexcept;
    ~RsaPrivateKey();

    // PKCS#8 DER in Base64 exactly as Crypto++'s Base64Encoder makes it: lines of 72
    // characters, each ended by '\n'.
    std::string save_base64() const;
    // X.509 SubjectPublicKeyInfo DER. Throws CryptoError unless it is exactly 160 bytes,
    // the size the protocol's 1026 field has.
    Bytes public_key_der() const;
    // RSAES-OAEP-SHA1 decryption of a wrapped AES-128 key. Throws CryptoError if the
    // ciphertext does not decrypt or the plaintext is not 16 bytes.
    AesKey unwrap_aes_key(const std::uint8_t* ciphertext, std::size_t size) const;

private:
    struct Impl;
    explicit RsaPrivateKey(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

// AES-128-CBC, IV all zeros, PKCS#7 padding, fed in chunks of any size. Full blocks are
// encrypted as they arrive; the (< 16 byte) tail waits for the next chunk or for finish().
// The caller owns the output memory (nothing is allocated or zero-filled per chunk), and the
// encryption may be in place.
class AesCbcEncryptor {
public:
    // Crypto++, or AES-NI instructions of our own (aes_ni.hpp) where the processor has them:
    // the same bytes, the second a fifth cheaper. Kernel::AesNi where it has not throws
    // CryptoError.
    enum class Kernel { Fastest, CryptoPP, AesNi };

    explicit AesCbcEncryptor(const AesKey& key, Kernel kernel = Kernel::Fastest);
    AesCbcEncryptor(AesCbcEncryptor&&) noexcept;
    AesCbcEncryptor& operator=(AesCbcEncryptor&&) noexcept;
    ~AesCbcEncryptor();

    // Writes the ciphertext of every block completed by `data` to `out` and returns its size:
    // a multiple of 16, at most size + 15 (the tail held over plus `data`). `out` either does
    // not overlap `data` or is `data` itself (in place); in place needs no tail held over,
    // that is, every earlier update a multiple of 16 bytes (else CryptoError).
    std::size_t update(const std::uint8_t* data, std::size_t size, std::uint8_t* out);
    // Pads the tail (1..16 bytes of padding) and writes the last block: 16 bytes, returned.
    // Call once.
    std::size_t finish(std::uint8_t* out);
    // The kernel in use (never Fastest).
    Kernel kernel() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace crypto
