// The POSIX cksum algorithm (PROTOCOL.md section 4), computed in chunks.
//
// CRC-32, polynomial 0x04C11DB7, MSB-first (not reflected), initial value 0; after the data
// the length in bytes is fed least significant byte first while it is non-zero; the result is
// the complement. This is what `cksum` prints, and it is not zlib's CRC-32.
//
// Two kernels compute the CRC register: slice-by-8 tables (cksum.cpp), portable, and carry-less
// multiplication (cksum_clmul.cpp, x86-64 with PCLMULQDQ and SSSE3), about ten times faster.
// Cksum picks the second when the processor has those instructions (asked once, at run time)
// and the compiler could build it; both give the same register for the same bytes.
#pragma once

#include <cstddef>
#include <cstdint>

namespace cksum_kernel {

// The CRC register (no complement, no length) after feeding `size` bytes to `crc`:
// (crc * x^(8 size) + data(x) * x^32) mod P, with the first byte's top bit the highest term.
std::uint32_t update_table(std::uint32_t crc, const std::uint8_t* data, std::size_t size);

// Whether update_clmul may be called: built for this target and supported by this processor.
bool clmul_available();
// The same register as update_table, by carry-less multiplication (folding 64 bytes at a
// time). Only when clmul_available(); otherwise it throws std::logic_error.
std::uint32_t update_clmul(std::uint32_t crc, const std::uint8_t* data, std::size_t size);

}  // namespace cksum_kernel

class Cksum {
public:
    enum class Kernel { Fastest, Table, Clmul };

    // Kernel::Clmul when !cksum_kernel::clmul_available() throws std::logic_error.
    explicit Cksum(Kernel kernel = Kernel::Fastest);

    void update(const std::uint8_t* data, std::size_t size);
    // The checksum of everything fed so far; the object stays usable.
    std::uint32_t value() const;
    // The kernel in use (never Fastest).
    Kernel kernel() const { return clmul_ ? Kernel::Clmul : Kernel::Table; }

private:
    std::uint32_t crc_ = 0;
    std::uint64_t length_ = 0;
    bool clmul_ = false;
};

// One-shot convenience (the fastest kernel).
std::uint32_t cksum(const std::uint8_t* data, std::size_t size);
