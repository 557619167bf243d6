# Cross-compiling the client for 64-bit Windows with Debian's mingw-w64 (posix threads), e.g.
#
#   cmake -S client -B build/client-windows \
#         -DCMAKE_TOOLCHAIN_FILE=client/cmake/mingw-w64-x86_64.cmake \
#         -DCMAKE_PREFIX_PATH=/where/crypto++/for/windows/is/installed
#
# client/build-windows.sh does all of it, Crypto++ included. The posix-threads flavour of the
# compiler is the one whose libstdc++ has std::thread (the win32 flavour of GCC 12 has not).
set(CMAKE_SYSTEM_NAME Windows)
set(CMAKE_SYSTEM_PROCESSOR x86_64)

set(MINGW_TRIPLET x86_64-w64-mingw32)
set(CMAKE_C_COMPILER ${MINGW_TRIPLET}-gcc-posix)
set(CMAKE_CXX_COMPILER ${MINGW_TRIPLET}-g++-posix)
set(CMAKE_RC_COMPILER ${MINGW_TRIPLET}-windres)
set(CMAKE_AR ${MINGW_TRIPLET}-ar CACHE FILEPATH "archiver")
set(CMAKE_RANLIB ${MINGW_TRIPLET}-ranlib CACHE FILEPATH "ranlib")

# Libraries, headers and CMake packages of the target come from the mingw sysroot only, never
# from the host's /usr (its libcrypto++.so is a Linux library, and /usr/include on the include
# path would put glibc's headers before mingw's). Programs (the compiler) come from the host.
# Crypto++ and the header-only Boost are therefore named explicitly (CRYPTOPP_INCLUDE_DIR,
# CRYPTOPP_LIBRARY, CLIENT_BOOST_INCLUDE_DIR: see CMakeLists.txt and build-windows.sh).
set(CMAKE_FIND_ROOT_PATH /usr/${MINGW_TRIPLET})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# One self-contained .exe: no libstdc++-6.dll, libgcc_s_seh-1.dll or libwinpthread-1.dll to
# ship beside it (a student copies client.exe alone).
set(CMAKE_EXE_LINKER_FLAGS_INIT "-static")
