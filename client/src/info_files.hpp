// The client's files in its working folder (PROTOCOL.md section 5):
// transfer.info (read), me.info and priv.key (written after registering, read later).
//
// The parsers take the file's text, so they are testable without files; the small file
// helpers below do the I/O.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

#include "protocol.hpp"

namespace info {

// A missing, unreadable or malformed info file; the message names the file and the line.
class InfoFileError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

constexpr const char* kTransferInfoName = "transfer.info";
constexpr const char* kMeInfoName = "me.info";
constexpr const char* kPrivateKeyName = "priv.key";

// Section 5: the client name has at most 100 characters.
constexpr std::size_t kMaxClientNameLength = 100;
// Both files are a few lines; anything bigger is not one of ours (and is not read whole).
constexpr std::uintmax_t kMaxInfoFileSize = 64 * 1024;

struct TransferInfo {
    std::string host;
    std::uint16_t port = 0;
    std::string client_name;
    std::filesystem::path file_path;  // line 3, relative to the working folder or absolute
    std::string file_path_text;       // line 3 as written (UTF-8), for messages
    // What 1028 carries (PROTOCOL.md section 6): the last component of line 3, after its last
    // '/' or a backslash on every system, so that the server never learns the sender's folders
    // and "sub/a.bin" means the same file as "sub\a.bin".
    std::string file_name;
};

// Line 1 host:port (port 1..65535; an IPv6 host in brackets), line 2 the name (1..100
// printable ASCII characters), line 3 the file path: UTF-8 (the folders may have any name),
// whose last component, the name sent, is 1..254 printable ASCII characters (section 1).
// Lines are counted as Python's str.splitlines() counts them, as the Python client does; CRLF,
// a UTF-8 byte order mark and a missing final newline are accepted, and blank lines after
// line 3 are ignored.
TransferInfo parse_transfer_info(const std::string& text);

// The lines of `text` as Python's str.splitlines() makes them: split at \n, \r\n, \r, \v, \f,
// \x1c, \x1d, \x1e and the UTF-8 of U+0085, U+2028 and U+2029, with no empty line after a
// final line break ("\n" is one empty line, "" none).
std::vector<std::string> split_lines(const std::string& text);

struct MeInfo {
    std::string client_name;
    proto::ClientId client_id{};
    std::string private_key_base64;  // lines 3.. joined with '\n', as written
};

// Line 1 the name, line 2 the UUID as 32 hex digits, lines 3.. the private key in Base64
// (only the Base64 alphabet; at least one line). The key itself is checked by
// crypto::RsaPrivateKey::load_base64.
MeInfo parse_me_info(const std::string& text);
// The exact text of me.info: name, lowercase hex UUID, then the Base64 key as given
// (Crypto++'s encoder output ends with '\n').
std::string format_me_info(const MeInfo& me);

// Printable ASCII (0x20..0x7E): what the protocol's text fields carry (section 1).
bool is_printable_ascii(const std::string& text);

// The size of the regular file at `path`. Throws InfoFileError, naming the file as `label`,
// if it is missing, not a regular file, or its size cannot be read.
std::uintmax_t regular_file_size(const std::filesystem::path& path, const std::string& label);
// Reads a small text file whole. Throws InfoFileError if it is missing, not a regular file,
// unreadable or larger than max_size.
std::string read_small_file(const std::filesystem::path& path, std::uintmax_t max_size = kMaxInfoFileSize);
// Writes `content` to a temporary file beside `path`, then renames it over `path`, so a
// crash never leaves a half-written file. Both files written so (me.info, priv.key) hold the
// private key, so the file is readable and writable by its owner only (0600 on POSIX).
// Throws InfoFileError on failure.
void write_file_replacing(const std::filesystem::path& path, const std::string& content);

}  // namespace info
