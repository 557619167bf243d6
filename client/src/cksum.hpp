// The POSIX cksum algorithm (PROTOCOL.md section 4), computed in chunks.
//
// CRC-32, polynomial 0x04C11DB7, MSB-first (not reflected), initial value 0; after the data
// the length in bytes is fed least significant byte first while it is non-zero; the result is
// the complement. This is what `cksum` prints, and it is not zlib's CRC-32.
#pragma once

#include <cstddef>
#include <cstdint>

class Cksum {
public:
    void update(const std::uint8_t* data, std::size_t size);
    // The checksum of everything fed so far; the object stays usable.
    std::uint32_t value() const;

private:
    std::uint32_t crc_ = 0;
    std::uint64_t length_ = 0;
};

// One-shot convenience.
std::uint32_t cksum(const std::uint8_t* data, std::size_t size);
