// AES-128-CBC encryption with the AES-NI instructions, for x86-64 processors that have them
// (asked at run time). crypto.cpp's AesCbcEncryptor uses it when available() and Crypto++
// otherwise; both give the same bytes (tests/unit_tests.cpp compares them).
//
// Why not Crypto++ alone: CBC encryption is one chain (each block needs the previous one's
// ciphertext), and Crypto++'s AES-NI path takes the previous ciphertext back from memory and
// its round keys from memory for every block; keeping both in registers makes the encryption
// about a fifth cheaper (1.18 -> 0.97 CPU s/GiB here), the largest part of the client's CPU.
#pragma once

#include <cstddef>
#include <cstdint>

namespace aes_ni {

// x86-64 build, and the processor has AES-NI.
bool available();

// The 11 round keys of AES-128 (FIPS-197 key expansion).
struct KeySchedule {
    std::uint8_t round_keys[11][16];
};

// Only when available(); otherwise they throw std::logic_error.
KeySchedule expand_key(const std::uint8_t key[16]);
// CBC-encrypts `size` bytes (a multiple of 16) from `in` to `out`, which may be `in` itself
// (in place) or must not overlap it. `chain` is the IV on entry and the last ciphertext
// block on return.
void cbc_encrypt(const KeySchedule& schedule, std::uint8_t chain[16], const std::uint8_t* in, std::uint8_t* out,
                 std::size_t size);

}  // namespace aes_ni
