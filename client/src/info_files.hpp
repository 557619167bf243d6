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
    std::string file_path;  // as given on line 3; also the file name sent in 1028
};

// Line 1 host:port (port 1..65535; an IPv6 host in brackets), line 2 the name (1..100
// printable ASCII characters), line 3 the file path (1..254 printable ASCII characters).
// CRLF and a missing final newline are accepted; trailing empty lines are ignored.
TransferInfo parse_transfer_info(const std::string& text);

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
// crash never leaves a half-written file. Throws InfoFileError on failure.
void write_file_replacing(const std::filesystem::path& path, const std::string& content);

}  // namespace info
