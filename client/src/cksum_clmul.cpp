// The POSIX cksum's CRC register by carry-less multiplication (PCLMULQDQ), folding 64 bytes
// at a time, for x86-64 processors that have PCLMULQDQ and SSSE3 (asked at run time).
//
// The CRC is MSB-first, so each 16-byte block is byte-reversed into an XMM register: bit i
// is then the coefficient of x^i, the first byte's top bit at x^127, and a carry-less product
// of two 64-bit halves is exactly their polynomial product. With the register X = H x^64 + L
// and the next block B at a distance of D bits,
//     X x^D + B  =  H (x^(D+64) mod P) + L (x^D mod P) + B   (mod P),
// two products of a 64-bit half by a 32-bit constant (at most 95 bits each): the message
// folds into 128 bits congruent to it modulo P. Four registers fold in parallel (D = 512,
// each 64 bytes on), then into one (D = 128), then the remaining whole blocks one by one.
// The last 128 bits and the tail (< 16 bytes) go through the table kernel from a register of
// 0, which yields (X x^(8 t) + tail) x^32 mod P: the CRC register of the whole message. The
// register fed in (`crc`) is added to the first 4 bytes: crc x^(8n) = (crc x^(8n-32)) x^32.
//
// Built for x86-64 only, for PCLMULQDQ and SSSE3 (x86_features.hpp says how, for each compiler);
// elsewhere clmul_available() is false and Cksum uses the tables.
#include <stdexcept>

#include "cksum.hpp"
#include "x86_features.hpp"

namespace cksum_kernel {

#if defined(CLIENT_X86_64)

namespace {

constexpr std::uint64_t kPolynomial = 0x104C11DB7u;  // with its x^32 term

// x^n mod P.
constexpr std::uint64_t x_power_mod(unsigned n) {
    std::uint64_t remainder = 1;
    for (unsigned i = 0; i < n; ++i) {
        remainder <<= 1;
        if (remainder & 0x100000000u) {
            remainder ^= kPolynomial;
        }
    }
    return remainder;
}

// The folding constants: x^(D+64) mod P and x^D mod P for D = 512 and D = 128.
constexpr std::uint64_t kFold512High = x_power_mod(512 + 64);
constexpr std::uint64_t kFold512Low = x_power_mod(512);
constexpr std::uint64_t kFold128High = x_power_mod(128 + 64);
constexpr std::uint64_t kFold128Low = x_power_mod(128);

// 16 bytes, the first at the top: bit i of the result is the coefficient of x^i.
CLIENT_TARGET("pclmul,ssse3") inline __m128i load_block(const std::uint8_t* at, __m128i reverse) {
    return _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(at)), reverse);
}

// X x^D mod P, up to 128 bits, for constants (x^(D+64) mod P, x^D mod P) in (high, low).
CLIENT_TARGET("pclmul,ssse3") inline __m128i fold(__m128i x, __m128i constants) {
    return _mm_xor_si128(_mm_clmulepi64_si128(x, constants, 0x11), _mm_clmulepi64_si128(x, constants, 0x00));
}

// At least 64 bytes.
CLIENT_TARGET("pclmul,ssse3") std::uint32_t fold_message(std::uint32_t crc, const std::uint8_t* data, std::size_t size) {
    const __m128i reverse = _mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m128i by_512 = _mm_set_epi64x(static_cast<long long>(kFold512High), static_cast<long long>(kFold512Low));
    const __m128i by_128 = _mm_set_epi64x(static_cast<long long>(kFold128High), static_cast<long long>(kFold128Low));
    const std::uint8_t* const end = data + size;

    __m128i x0 = _mm_xor_si128(load_block(data, reverse), _mm_set_epi32(static_cast<int>(crc), 0, 0, 0));
    __m128i x1 = load_block(data + 16, reverse);
    __m128i x2 = load_block(data + 32, reverse);
    __m128i x3 = load_block(data + 48, reverse);
    data += 64;
    while (end - data >= 64) {
        x0 = _mm_xor_si128(fold(x0, by_512), load_block(data, reverse));
        x1 = _mm_xor_si128(fold(x1, by_512), load_block(data + 16, reverse));
        x2 = _mm_xor_si128(fold(x2, by_512), load_block(data + 32, reverse));
        x3 = _mm_xor_si128(fold(x3, by_512), load_block(data + 48, reverse));
        data += 64;
    }
    __m128i x = _mm_xor_si128(fold(x0, by_128), x1);
    x = _mm_xor_si128(fold(x, by_128), x2);
    x = _mm_xor_si128(fold(x, by_128), x3);
    while (end - data >= 16) {
        x = _mm_xor_si128(fold(x, by_128), load_block(data, reverse));
        data += 16;
    }
    std::uint8_t folded[16];
    _mm_storeu_si128(reinterpret_cast<__m128i*>(folded), _mm_shuffle_epi8(x, reverse));
    return update_table(update_table(0, folded, sizeof folded), data, static_cast<std::size_t>(end - data));
}

}  // namespace

bool clmul_available() {
    return x86::features().pclmul && x86::features().ssse3;
}

std::uint32_t update_clmul(std::uint32_t crc, const std::uint8_t* data, std::size_t size) {
    if (!clmul_available()) {
        throw std::logic_error("cksum: this processor lacks PCLMULQDQ or SSSE3");
    }
    // Below 64 bytes the four registers are not filled; the tables are as fast there.
    return size < 64 ? update_table(crc, data, size) : fold_message(crc, data, size);
}

#else  // not x86-64

bool clmul_available() { return false; }

std::uint32_t update_clmul(std::uint32_t, const std::uint8_t*, std::size_t) {
    throw std::logic_error("cksum: the carry-less multiplication kernel is built for x86-64 only");
}

#endif

}  // namespace cksum_kernel
