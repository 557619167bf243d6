// Parsing and writing of transfer.info, me.info and priv.key (PROTOCOL.md section 5).
#include "info_files.hpp"

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <system_error>
#include <vector>

#include "paths.hpp"

namespace info {

namespace {

// The length of the line break at text[at], 0 if there is none (str.splitlines()'s set).
std::size_t line_break_length(const std::string& text, std::size_t at) {
    const auto byte = [&](std::size_t i) { return i < text.size() ? static_cast<unsigned char>(text[i]) : 0u; };
    switch (byte(at)) {
        case '\r':
            return byte(at + 1) == '\n' ? 2 : 1;
        case '\n':
        case '\v':
        case '\f':
        case 0x1C:
        case 0x1D:
        case 0x1E:
            return 1;
        case 0xC2:  // U+0085 (NEXT LINE)
            return byte(at + 1) == 0x85 ? 2 : 0;
        case 0xE2:  // U+2028 (LINE SEPARATOR), U+2029 (PARAGRAPH SEPARATOR)
            return byte(at + 1) == 0x80 && (byte(at + 2) == 0xA8 || byte(at + 2) == 0xA9) ? 3 : 0;
        default:
            return 0;
    }
}

// Drops the empty lines at the end (a final newline, or blank lines after the content).
std::vector<std::string> without_trailing_empty_lines(std::vector<std::string> lines) {
    while (!lines.empty() && lines.back().empty()) {
        lines.pop_back();
    }
    return lines;
}

bool is_blank(const std::string& line) { return line.find_first_not_of(" \t") == std::string::npos; }

// Well-formed UTF-8 (no overlong forms, no surrogates, nothing above U+10FFFF) without control
// characters: what a path on line 3 may hold.
bool is_utf8_text(const std::string& text) {
    std::size_t i = 0;
    while (i < text.size()) {
        const auto lead = static_cast<unsigned char>(text[i]);
        if (lead < 0x80) {
            if (lead < 0x20 || lead == 0x7F) {
                return false;
            }
            ++i;
            continue;
        }
        std::size_t length = 0;
        std::uint32_t code = 0;
        if (lead >= 0xC2 && lead <= 0xDF) {
            length = 2, code = lead & 0x1Fu;
        } else if (lead >= 0xE0 && lead <= 0xEF) {
            length = 3, code = lead & 0x0Fu;
        } else if (lead >= 0xF0 && lead <= 0xF4) {
            length = 4, code = lead & 0x07u;
        } else {
            return false;
        }
        if (i + length > text.size()) {
            return false;
        }
        for (std::size_t k = 1; k < length; ++k) {
            const auto next = static_cast<unsigned char>(text[i + k]);
            if ((next & 0xC0u) != 0x80u) {
                return false;
            }
            code = (code << 6) | (next & 0x3Fu);
        }
        const std::uint32_t smallest[] = {0, 0, 0x80, 0x800, 0x10000};
        if (code < smallest[length] || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF) ||
            (code >= 0x80 && code < 0xA0)) {  // C1 control characters
            return false;
        }
        i += length;
    }
    return true;
}

std::string trim_blanks(const std::string& text) {
    const auto first = text.find_first_not_of(" \t");
    if (first == std::string::npos) {
        return {};
    }
    const auto last = text.find_last_not_of(" \t");
    return text.substr(first, last - first + 1);
}

[[noreturn]] void fail(const char* file, int line, const std::string& why) {
    throw InfoFileError(std::string(file) + " line " + std::to_string(line) + ": " + why);
}

std::uint16_t parse_port(const std::string& digits) {
    if (digits.empty() || digits.size() > 5 ||
        !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) {
        fail(kTransferInfoName, 1, "port '" + digits + "' is not a number from 1 to 65535");
    }
    const unsigned long value = std::stoul(digits);
    if (value < 1 || value > 65535) {
        fail(kTransferInfoName, 1, "port " + digits + " is out of range 1..65535");
    }
    return static_cast<std::uint16_t>(value);
}

bool is_base64_char(char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
           c == '/' || c == '=';
}

}  // namespace

bool is_printable_ascii(const std::string& text) {
    return std::all_of(text.begin(), text.end(), [](char c) { return c >= 0x20 && c <= 0x7E; });
}

std::vector<std::string> split_lines(const std::string& text) {
    std::vector<std::string> lines;
    std::size_t start = 0;
    for (std::size_t at = 0; at < text.size();) {
        const std::size_t length = line_break_length(text, at);
        if (length == 0) {
            ++at;
            continue;
        }
        lines.push_back(text.substr(start, at - start));
        at += length;
        start = at;
    }
    if (start < text.size()) {
        lines.push_back(text.substr(start));
    }
    return lines;
}

TransferInfo parse_transfer_info(const std::string& text) {
    constexpr const char* kBom = "\xEF\xBB\xBF";  // Notepad's UTF-8 files may start with one
    const std::vector<std::string> lines = split_lines(text.rfind(kBom, 0) == 0 ? text.substr(3) : text);
    if (lines.size() < 3 || !std::all_of(lines.begin() + 3, lines.end(), is_blank)) {
        throw InfoFileError(std::string(kTransferInfoName) + " has " + std::to_string(lines.size()) +
                            " lines; expected 3 (host:port, name, file path)");
    }
    TransferInfo parsed;

    const std::string address = trim_blanks(lines[0]);
    const auto colon = address.rfind(':');
    if (colon == std::string::npos) {
        fail(kTransferInfoName, 1, "expected host:port, got '" + address + "'");
    }
    std::string host = address.substr(0, colon);
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
        host = host.substr(1, host.size() - 2);  // [::1]:1234
    }
    if (host.empty() || !is_printable_ascii(host) || host.find(' ') != std::string::npos) {
        fail(kTransferInfoName, 1, "missing or invalid host in '" + address + "'");
    }
    parsed.host = host;
    parsed.port = parse_port(address.substr(colon + 1));

    parsed.client_name = lines[1];
    if (parsed.client_name.empty()) {
        fail(kTransferInfoName, 2, "the client name is empty");
    }
    if (parsed.client_name.size() > kMaxClientNameLength) {
        fail(kTransferInfoName, 2, "the client name has " + std::to_string(parsed.client_name.size()) +
                                       " characters, at most " + std::to_string(kMaxClientNameLength) + " allowed");
    }
    if (!is_printable_ascii(parsed.client_name)) {
        fail(kTransferInfoName, 2, "the client name must be printable ASCII");
    }

    parsed.file_path_text = lines[2];
    if (parsed.file_path_text.empty()) {
        fail(kTransferInfoName, 3, "the file path is empty");
    }
    if (!is_utf8_text(parsed.file_path_text)) {
        fail(kTransferInfoName, 3, "the file path must be UTF-8 text without control characters");
    }
    const auto separator = parsed.file_path_text.find_last_of("/\\");
    parsed.file_name =
        separator == std::string::npos ? parsed.file_path_text : parsed.file_path_text.substr(separator + 1);
    if (parsed.file_name.empty() || parsed.file_name == "." || parsed.file_name == "..") {
        fail(kTransferInfoName, 3, "'" + parsed.file_path_text + "' names a folder, not a file");
    }
    if (parsed.file_name.size() > proto::kMaxNameFieldText) {
        fail(kTransferInfoName, 3, "the file name has " + std::to_string(parsed.file_name.size()) +
                                       " bytes; the protocol's file name field holds at most 254");
    }
    if (!is_printable_ascii(parsed.file_name)) {
        fail(kTransferInfoName, 3, "the file name '" + parsed.file_name +
                                       "' must be printable ASCII (the protocol's text fields are ASCII; "
                                       "the folders around it may have any name)");
    }
    parsed.file_path = paths::from_utf8(parsed.file_path_text);
    return parsed;
}

MeInfo parse_me_info(const std::string& text) {
    // CRLF files leave no '\r' behind; a final newline or blank lines at the end are not lines.
    const std::vector<std::string> lines = without_trailing_empty_lines(split_lines(text));
    if (lines.size() < 3) {
        throw InfoFileError(std::string(kMeInfoName) +
                            ": expected a name, a hex UUID and a Base64 private key (3 or more lines), found " +
                            std::to_string(lines.size()) + " lines");
    }
    MeInfo parsed;
    parsed.client_name = lines[0];
    if (parsed.client_name.empty() || parsed.client_name.size() > kMaxClientNameLength ||
        !is_printable_ascii(parsed.client_name)) {
        fail(kMeInfoName, 1, "the client name must be 1.." + std::to_string(kMaxClientNameLength) +
                                 " printable ASCII characters");
    }
    const auto id = proto::client_id_from_hex(lines[1]);
    if (!id) {
        fail(kMeInfoName, 2, "expected the client UUID as 32 hex digits");
    }
    parsed.client_id = *id;
    bool has_key_text = false;
    for (std::size_t i = 2; i < lines.size(); ++i) {
        const std::string& line = lines[i];
        if (!std::all_of(line.begin(), line.end(), is_base64_char)) {
            fail(kMeInfoName, static_cast<int>(i + 1), "not Base64 (the private key runs from line 3 to the end)");
        }
        has_key_text = has_key_text || !line.empty();
        parsed.private_key_base64 += line;
        parsed.private_key_base64 += '\n';
    }
    if (!has_key_text) {
        fail(kMeInfoName, 3, "the private key is empty");
    }
    return parsed;
}

std::string format_me_info(const MeInfo& me) {
    std::string text = me.client_name + '\n' + proto::client_id_to_hex(me.client_id) + '\n' + me.private_key_base64;
    if (text.back() != '\n') {
        text += '\n';
    }
    return text;
}

std::uintmax_t regular_file_size(const std::filesystem::path& path, const std::string& label) {
    std::error_code error;
    const auto status = std::filesystem::status(path, error);
    if (error || !std::filesystem::exists(status)) {
        throw InfoFileError(label + ": no such file");
    }
    if (!std::filesystem::is_regular_file(status)) {
        throw InfoFileError(label + ": not a regular file");
    }
    const std::uintmax_t size = std::filesystem::file_size(path, error);
    if (error) {
        throw InfoFileError(label + ": cannot read its size: " + error.message());
    }
    return size;
}

std::string read_small_file(const std::filesystem::path& path, std::uintmax_t max_size) {
    const std::uintmax_t size = regular_file_size(path, paths::to_utf8(path));
    if (size > max_size) {
        throw InfoFileError(paths::to_utf8(path) + ": " + std::to_string(size) + " bytes, larger than the " +
                            std::to_string(max_size) + " such a file can have");
    }
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        throw InfoFileError(paths::to_utf8(path) + ": cannot open for reading");
    }
    std::string text(static_cast<std::size_t>(size), '\0');
    in.read(text.data(), static_cast<std::streamsize>(text.size()));
    if (in.gcount() != static_cast<std::streamsize>(text.size())) {
        throw InfoFileError(paths::to_utf8(path) + ": read failed");
    }
    return text;
}

void write_file_replacing(const std::filesystem::path& path, const std::string& content) {
    namespace fs = std::filesystem;
    fs::path temporary = path;
    temporary += ".tmp";
    std::error_code error;
    // A leftover of a crash, or a link someone put there: removed, never written through.
    fs::remove(temporary, error);
    {
        std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
        if (!out) {
            throw InfoFileError(paths::to_utf8(temporary) + ": cannot open for writing");
        }
        // Owner only (0600 on POSIX), set while the file is still empty, whatever the umask.
        // On Windows this call only clears the read-only attribute: the file inherits the
        // folder's access list, which under the user's profile already keeps other users out
        // (client/README.md, "Private key files").
        fs::permissions(temporary, fs::perms::owner_read | fs::perms::owner_write, fs::perm_options::replace, error);
        if (error) {
            throw InfoFileError(paths::to_utf8(temporary) + ": cannot restrict to the owner: " + error.message());
        }
        out.write(content.data(), static_cast<std::streamsize>(content.size()));
        out.flush();
        if (!out) {
            throw InfoFileError(paths::to_utf8(temporary) + ": write failed");
        }
    }
    fs::rename(temporary, path, error);
    if (error) {
        std::error_code ignored;  // the rename's error is the one worth reporting
        fs::remove(temporary, ignored);
        throw InfoFileError(paths::to_utf8(path) + ": cannot replace: " + error.message());
    }
}

}  // namespace info
