// AES-128 key expansion and CBC encryption with AES-NI (Intel's AES-NI white paper, 2010:
// AESKEYGENASSIST for the expansion, AESENC x 9 and AESENCLAST per block).
// Built for x86-64 only (x86_features.hpp says how, for each compiler).
#include "aes_ni.hpp"

#include <stdexcept>

#include "x86_features.hpp"

namespace aes_ni {

#if defined(CLIENT_X86_64)

namespace {

// Round key i + 1 from round key i: the last word of `key` rotated, substituted and added to
// Rcon (AESKEYGENASSIST, word 3), then added to every prefix xor of the words of `key`.
template <int Rcon>
CLIENT_TARGET("aes") inline __m128i next_round_key(__m128i key) {
    const __m128i assist = _mm_shuffle_epi32(_mm_aeskeygenassist_si128(key, Rcon), 0xFF);
    key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
    key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
    key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
    return _mm_xor_si128(key, assist);
}

CLIENT_TARGET("aes") KeySchedule expand(const std::uint8_t key[16]) {
    __m128i keys[11];
    keys[0] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(key));
    keys[1] = next_round_key<0x01>(keys[0]);
    keys[2] = next_round_key<0x02>(keys[1]);
    keys[3] = next_round_key<0x04>(keys[2]);
    keys[4] = next_round_key<0x08>(keys[3]);
    keys[5] = next_round_key<0x10>(keys[4]);
    keys[6] = next_round_key<0x20>(keys[5]);
    keys[7] = next_round_key<0x40>(keys[6]);
    keys[8] = next_round_key<0x80>(keys[7]);
    keys[9] = next_round_key<0x1B>(keys[8]);
    keys[10] = next_round_key<0x36>(keys[9]);
    KeySchedule schedule{};
    for (int round = 0; round < 11; ++round) {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(schedule.round_keys[round]), keys[round]);
    }
    return schedule;
}

// The round keys and the chain stay in registers for the whole call.
CLIENT_TARGET("aes") void encrypt(const KeySchedule& schedule, std::uint8_t chain[16], const std::uint8_t* in,
                                  std::uint8_t* out, std::size_t size) {
    const auto key = [&schedule](int round) {
        return _mm_loadu_si128(reinterpret_cast<const __m128i*>(schedule.round_keys[round]));
    };
    const __m128i k0 = key(0), k1 = key(1), k2 = key(2), k3 = key(3), k4 = key(4), k5 = key(5);
    const __m128i k6 = key(6), k7 = key(7), k8 = key(8), k9 = key(9), k10 = key(10);
    __m128i block = _mm_loadu_si128(reinterpret_cast<const __m128i*>(chain));
    for (std::size_t at = 0; at < size; at += 16) {
        const __m128i plain = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + at));
        block = _mm_xor_si128(_mm_xor_si128(plain, block), k0);
        block = _mm_aesenc_si128(block, k1);
        block = _mm_aesenc_si128(block, k2);
        block = _mm_aesenc_si128(block, k3);
        block = _mm_aesenc_si128(block, k4);
        block = _mm_aesenc_si128(block, k5);
        block = _mm_aesenc_si128(block, k6);
        block = _mm_aesenc_si128(block, k7);
        block = _mm_aesenc_si128(block, k8);
        block = _mm_aesenc_si128(block, k9);
        block = _mm_aesenclast_si128(block, k10);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + at), block);
    }
    _mm_storeu_si128(reinterpret_cast<__m128i*>(chain), block);
}

void require() {
    if (!available()) {
        throw std::logic_error("aes_ni: this processor lacks AES-NI");
    }
}

}  // namespace

bool available() { return x86::features().aes; }

KeySchedule expand_key(const std::uint8_t key[16]) {
    require();
    return expand(key);
}

void cbc_encrypt(const KeySchedule& schedule, std::uint8_t chain[16], const std::uint8_t* in, std::uint8_t* out,
                 std::size_t size) {
    require();
    if (size % 16 != 0) {
        throw std::invalid_argument("aes_ni::cbc_encrypt: the size is not a multiple of 16");
    }
    encrypt(schedule, chain, in, out, size);
}

#else  // not x86-64

bool available() { return false; }

KeySchedule expand_key(const std::uint8_t*) { throw std::logic_error("aes_ni: built for x86-64 only"); }

void cbc_encrypt(const KeySchedule&, std::uint8_t*, const std::uint8_t*, std::uint8_t*, std::size_t) {
    throw std::logic_error("aes_ni: built for x86-64 only");
}

#endif

}  // namespace aes_ni
