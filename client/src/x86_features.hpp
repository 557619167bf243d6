// Which x86-64 instructions this processor has, for the kernels that use them when it does
// (cksum_clmul.cpp, aes_ni.cpp), and how to compile a function for them.
//
// Portability: all of it exists only for x86-64 (CLIENT_X86_64: __x86_64__, or _M_X64
// without ARM64EC); elsewhere (ARM, 32-bit x86) those kernels are not built and the portable
// ones run. GCC and Clang (MinGW included) compile a kernel's functions for its instructions
// with a target attribute (CLIENT_TARGET) and ask the processor with __builtin_cpu_supports;
// MSVC needs no attribute (its intrinsics are always available on x64) and asks with __cpuid.
// Only SSE registers are used, which every x86-64 operating system saves: no XGETBV check.
#pragma once

#if defined(__x86_64__) || (defined(_M_X64) && !defined(_M_ARM64EC))
#define CLIENT_X86_64 1

#include <immintrin.h>  // SSE2, SSSE3, PCLMULQDQ and AES-NI intrinsics
#if defined(_MSC_VER)
#include <intrin.h>  // __cpuid
#endif

#if defined(__GNUC__) || defined(__clang__)
#define CLIENT_TARGET(features) __attribute__((target(features)))
#else
#define CLIENT_TARGET(features)
#endif

namespace x86 {

struct Features {
    bool ssse3 = false;
    bool pclmul = false;
    bool aes = false;
};

inline Features detect_features() {
    Features found;
#if defined(_MSC_VER)
    int registers[4] = {};
    __cpuid(registers, 1);
    const int ecx = registers[2];
    found.ssse3 = (ecx & (1 << 9)) != 0;
    found.pclmul = (ecx & (1 << 1)) != 0;
    found.aes = (ecx & (1 << 25)) != 0;
#else
    __builtin_cpu_init();
    found.ssse3 = __builtin_cpu_supports("ssse3");
    found.pclmul = __builtin_cpu_supports("pclmul");
    found.aes = __builtin_cpu_supports("aes");
#endif
    return found;
}

// Asked once.
inline const Features& features() {
    static const Features found = detect_features();
    return found;
}

}  // namespace x86

#endif
