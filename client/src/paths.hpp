// Paths as text, without the system's narrow code page.
//
// A path stays std::filesystem::path from where it is read to where a file is opened (the
// wide Windows APIs underneath). It becomes text only for messages, and then as UTF-8:
// path::string() on MSVC converts to the ANSI code page and throws for characters outside it
// (a Hebrew folder name on a machine with another code page, PROTOCOL.md section 7).
//
// u8path()/u8string() work on std::string in C++17 and on std::u8string from C++20 on; the
// standard feature-test macro __cpp_char8_t tells them apart, so both standards build.
#pragma once

#include <filesystem>
#include <string>

namespace paths {

// The path as UTF-8 text, for messages.
inline std::string to_utf8(const std::filesystem::path& path) {
#if defined(__cpp_char8_t)
    const std::u8string text = path.u8string();
    return std::string(text.begin(), text.end());
#else
    return path.u8string();
#endif
}

// The path whose UTF-8 text is `text` (as read from transfer.info).
inline std::filesystem::path from_utf8(const std::string& text) {
#if defined(__cpp_char8_t)
    return std::filesystem::path(std::u8string(text.begin(), text.end()));
#else
    return std::filesystem::u8path(text);
#endif
}

}  // namespace paths
