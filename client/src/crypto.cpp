// Crypto++ behind the small interface of crypto.hpp.
#include "crypto.hpp"

#include <cryptopp/aes.h>
#include <cryptopp/base64.h>
#include <cryptopp/cryptlib.h>
#include <cryptopp/filters.h>
#include <cryptopp/misc.h>
#include <cryptopp/modes.h>
#include <cryptopp/osrng.h>
#include <cryptopp/queue.h>
#include <cryptopp/rsa.h>

#include <algorithm>

#include "aes_ni.hpp"

namespace crypto {

namespace {

constexpr unsigned int kRsaModulusBits = 1024;

}  // namespace

struct RsaPrivateKey::Impl {
    CryptoPP::RSA::PrivateKey key;
};

RsaPrivateKey::RsaPrivateKey(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
RsaPrivateKey::RsaPrivateKey(RsaPrivateKey&&) noexcept = default;
RsaPrivateKey& RsaPrivateKey::operator=(RsaPrivateKey&&) noexcept = default;
RsaPrivateKey::~RsaPrivateKey() = default;

RsaPrivateKey RsaPrivateKey::generate() {
    try {
        CryptoPP::AutoSeededRandomPool rng;
        auto impl = std::make_unique<Impl>();
        // Crypto++'s default public exponent is 17, which is what keeps the X.509 DER at
        // 160 bytes (section 4).
        impl->key.Initialize(rng, kRsaModulusBits);
        return RsaPrivateKey(std::move(impl));
    } catch (const CryptoPP::Exception& error) {
        throw CryptoError(std::string("RSA key generation failed: ") + error.what());
    }
}

RsaPrivateKey RsaPrivateKey::load_base64(const std::string& base64) {
    try {
        CryptoPP::ByteQueue der;
        CryptoPP::StringSource source(base64, true, new CryptoPP::Base64Decoder(new CryptoPP::Redirector(der)));
        auto impl = std::make_unique<Impl>();
        impl->key.Load(der);
        if (der.MaxRetrievable() != 0) {
            throw CryptoError("private key has trailing bytes after its DER encoding");
        }
        CryptoPP::AutoSeededRandomPool rng;
        if (!impl->key.Validate(rng, 3)) {
            throw CryptoError("private key does not validate");
        }
        if (impl->key.GetModulus().BitCount() != kRsaModulusBits) {
            throw CryptoError("private key is not an RSA-1024 key");
        }
        return RsaPrivateKey(std::move(impl));
    } catch (const CryptoPP::Exception& error) {
        throw CryptoError(std::string("private key does not decode: ") + error.what());
    }
}

std::string RsaPrivateKey::save_base64() const {
    std::string base64;
    CryptoPP::Base64Encoder encoder(new CryptoPP::StringSink(base64));  // line breaks every 72
    impl_->key.Save(encoder);
    encoder.MessageEnd();
    return base64;
}

Bytes RsaPrivateKey::public_key_der() const {
    const CryptoPP::RSA::PublicKey public_key(impl_->key);
    std::string der;
    CryptoPP::StringSink sink(der);
    public_key.Save(sink);
    if (der.size() != proto::kPublicKeySize) {
        throw CryptoError("public key DER is " + std::to_string(der.size()) +
                          " bytes; the protocol's field holds exactly 160 (RSA-1024, e = 17)");
    }
    return Bytes(der.begin(), der.end());
}

AesKey RsaPrivateKey::unwrap_aes_key(const std::uint8_t* ciphertext, std::size_t size) const {
    try {
        CryptoPP::AutoSeededRandomPool rng;
        const CryptoPP::RSAES_OAEP_SHA_Decryptor decryptor(impl_->key);
        if (size != decryptor.FixedCiphertextLength()) {
            throw CryptoError("wrapped AES key is " + std::to_string(size) + " bytes, expected " +
                              std::to_string(decryptor.FixedCiphertextLength()));
        }
        Bytes plain(decryptor.MaxPlaintextLength(size));
        const CryptoPP::DecodingResult result = decryptor.Decrypt(rng, ciphertext, size, plain.data());
        if (!result.isValidCoding) {
            throw CryptoError("wrapped AES key does not decrypt with our private key");
        }
        if (result.messageLength != proto::kAesKeySize) {
            throw CryptoError("unwrapped AES key is " + std::to_string(result.messageLength) +
                              " bytes, expected 16");
        }
        AesKey key{};
        std::copy_n(plain.begin(), key.size(), key.begin());
        return key;
    } catch (const CryptoPP::Exception& error) {
        throw CryptoError(std::string("wrapped AES key does not decrypt: ") + error.what());
    }
}

struct AesCbcEncryptor::Impl {
    bool aes_ni = false;
    CryptoPP::CBC_Mode<CryptoPP::AES>::Encryption cipher;  // keyed when !aes_ni
    aes_ni::KeySchedule schedule{};                         // when aes_ni
    std::uint8_t chain[proto::kAesBlockSize] = {};           // the IV, then the last ciphertext block
    std::array<std::uint8_t, proto::kAesBlockSize> tail{};
    std::size_t tail_size = 0;
    bool finished = false;

    ~Impl() { CryptoPP::SecureWipeArray(&schedule.round_keys[0][0], sizeof schedule.round_keys); }

    // Whole blocks; `out` is `in` or apart from it.
    void encrypt(const std::uint8_t* in, std::uint8_t* out, std::size_t size) {
        if (aes_ni) {
            aes_ni::cbc_encrypt(schedule, chain, in, out, size);
        } else {
            // Crypto++ allows the input and the output to be the same memory.
            cipher.ProcessData(out, in, size);
        }
    }
};

AesCbcEncryptor::AesCbcEncryptor(const AesKey& key, Kernel kernel) : impl_(std::make_unique<Impl>()) {
    Impl& s = *impl_;
    if (kernel == Kernel::AesNi && !aes_ni::available()) {
        throw CryptoError("AES-NI is not available on this processor");
    }
    s.aes_ni = kernel == Kernel::AesNi || (kernel == Kernel::Fastest && aes_ni::available());
    if (s.aes_ni) {
        s.schedule = aes_ni::expand_key(key.data());
    } else {
        s.cipher.SetKeyWithIV(key.data(), key.size(), s.chain, sizeof s.chain);  // zero IV
    }
}
AesCbcEncryptor::AesCbcEncryptor(AesCbcEncryptor&&) noexcept = default;
AesCbcEncryptor& AesCbcEncryptor::operator=(AesCbcEncryptor&&) noexcept = default;
AesCbcEncryptor::~AesCbcEncryptor() = default;

std::size_t AesCbcEncryptor::update(const std::uint8_t* data, std::size_t size, std::uint8_t* out) {
    constexpr std::size_t block = proto::kAesBlockSize;
    Impl& s = *impl_;
    if (s.finished) {
        throw CryptoError("AesCbcEncryptor::update after finish");
    }
    std::size_t written = 0;
    if (s.tail_size > 0 && size > 0) {
        if (out == data) {
            // The held-over block would be written over bytes of `data` not read yet.
            throw CryptoError("AesCbcEncryptor::update in place while a partial block is held over");
        }
        const std::size_t take = std::min(block - s.tail_size, size);
        std::copy_n(data, take, s.tail.begin() + static_cast<std::ptrdiff_t>(s.tail_size));
        s.tail_size += take;
        data += take;
        size -= take;
        if (s.tail_size < block) {
            return 0;
        }
        s.encrypt(s.tail.data(), out, block);
        s.tail_size = 0;
        written = block;
    }
    const std::size_t whole = size - size % block;
    if (whole > 0) {
        s.encrypt(data, out + written, whole);
        written += whole;
    }
    // Read after the blocks before it were written: in place, these bytes are past them.
    std::copy_n(data + whole, size - whole, s.tail.begin() + static_cast<std::ptrdiff_t>(s.tail_size));
    s.tail_size += size - whole;
    return written;
}

std::size_t AesCbcEncryptor::finish(std::uint8_t* out) {
    Impl& s = *impl_;
    if (s.finished) {
        throw CryptoError("AesCbcEncryptor::finish called twice");
    }
    // PKCS#7: always 1..16 bytes, each holding the padding length.
    const auto pad = static_cast<std::uint8_t>(proto::kAesBlockSize - s.tail_size);
    std::fill(s.tail.begin() + static_cast<std::ptrdiff_t>(s.tail_size), s.tail.end(), pad);
    s.encrypt(s.tail.data(), out, proto::kAesBlockSize);
    s.finished = true;
    return proto::kAesBlockSize;
}

AesCbcEncryptor::Kernel AesCbcEncryptor::kernel() const { return impl_->aes_ni ? Kernel::AesNi : Kernel::CryptoPP; }

}  // namespace crypto
