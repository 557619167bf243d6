// Slice-by-8 table-driven POSIX cksum (MSB-first CRC-32), and the Cksum class that picks a
// kernel (the carry-less multiplication one is in cksum_clmul.cpp).
#include "cksum.hpp"

#include <array>
#include <stdexcept>

namespace {

constexpr std::uint32_t kPolynomial = 0x04C11DB7u;

using Tables = std::array<std::array<std::uint32_t, 256>, 8>;

// tables[0][b] is the CRC register after shifting byte b in from the top; tables[k][b] is the
// same byte followed by k zero bytes, which lets the loop below consume 8 bytes per step.
Tables make_tables() {
    Tables tables{};
    for (std::uint32_t byte = 0; byte < 256; ++byte) {
        std::uint32_t crc = byte << 24;
        for (int bit = 0; bit < 8; ++bit) {
            crc = (crc & 0x80000000u) ? (crc << 1) ^ kPolynomial : (crc << 1);
        }
        tables[0][byte] = crc;
    }
    for (std::size_t k = 1; k < 8; ++k) {
        for (std::size_t byte = 0; byte < 256; ++byte) {
            const std::uint32_t previous = tables[k - 1][byte];
            tables[k][byte] = (previous << 8) ^ tables[0][previous >> 24];
        }
    }
    return tables;
}

// Built once at start-up rather than as a constexpr variable: 4096 entries would run into
// MSVC's default limit on constant-evaluation steps.
const Tables kTables = make_tables();

inline std::uint32_t feed_byte(std::uint32_t crc, std::uint8_t byte) {
    return (crc << 8) ^ kTables[0][((crc >> 24) ^ byte) & 0xFFu];
}

}  // namespace

namespace cksum_kernel {

std::uint32_t update_table(std::uint32_t crc, const std::uint8_t* data, std::size_t size) {
    while (size >= 8) {
        const std::uint32_t high = crc ^ ((std::uint32_t{data[0]} << 24) | (std::uint32_t{data[1]} << 16) |
                                          (std::uint32_t{data[2]} << 8) | std::uint32_t{data[3]});
        crc = kTables[7][high >> 24] ^ kTables[6][(high >> 16) & 0xFFu] ^ kTables[5][(high >> 8) & 0xFFu] ^
              kTables[4][high & 0xFFu] ^ kTables[3][data[4]] ^ kTables[2][data[5]] ^ kTables[1][data[6]] ^
              kTables[0][data[7]];
        data += 8;
        size -= 8;
    }
    while (size > 0) {
        crc = feed_byte(crc, *data++);
        --size;
    }
    return crc;
}

}  // namespace cksum_kernel

Cksum::Cksum(Kernel kernel) {
    switch (kernel) {
        case Kernel::Fastest:
            clmul_ = cksum_kernel::clmul_available();
            break;
        case Kernel::Table:
            clmul_ = false;
            break;
        case Kernel::Clmul:
            if (!cksum_kernel::clmul_available()) {
                throw std::logic_error("the carry-less multiplication cksum is not available here");
            }
            clmul_ = true;
            break;
    }
}

void Cksum::update(const std::uint8_t* data, std::size_t size) {
    length_ += size;
    crc_ = clmul_ ? cksum_kernel::update_clmul(crc_, data, size) : cksum_kernel::update_table(crc_, data, size);
}

std::uint32_t Cksum::value() const {
    std::uint32_t crc = crc_;
    for (std::uint64_t length = length_; length != 0; length >>= 8) {
        crc = feed_byte(crc, static_cast<std::uint8_t>(length & 0xFFu));
    }
    return ~crc;
}

std::uint32_t cksum(const std::uint8_t* data, std::size_t size) {
    Cksum sum;
    sum.update(data, size);
    return sum.value();
}
