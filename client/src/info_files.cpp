// Parsing and writing of transfer.info, me.info and priv.key (PROTOCOL.md section 5).
#include "info_files.hpp"

#include <algorithm>
#include <fstream>
#include <system_error>
#include <vector>

namespace info {

namespace {

// Splits into lines on '\n', dropping one '\r' before each '\n' (CRLF files), and drops the
// empty lines at the end (a final newline, or blank lines after the content).
std::vector<std::string> split_lines(const std::string& text) {
    std::vector<std::string> lines;
    std::size_t start = 0;
    while (start <= text.size()) {
        std::size_t end = text.find('\n', start);
        if (end == std::string::npos) {
            end = text.size();
        }
        std::string line = text.substr(start, end - start);
        if (!line.empty() && line.back() == '\r') {
            line.pop_back();
        }
        lines.push_back(std::move(line));
        start = end + 1;
    }
    while (!lines.empty() && lines.back().empty()) {
        lines.pop_back();
    }
    return lines;
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

TransferInfo parse_transfer_info(const std::string& text) {
    const std::vector<std::string> lines = split_lines(text);
    if (lines.size() < 3) {
        throw InfoFileError(std::string(kTransferInfoName) + ": expected 3 lines (host:port, name, file path), found " +
                            std::to_string(lines.size()));
    }
    if (lines.size() > 3) {
        fail(kTransferInfoName, 4, "unexpected extra line (the file has exactly 3 lines)");
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

    parsed.file_path = lines[2];
    if (parsed.file_path.empty()) {
        fail(kTransferInfoName, 3, "the file path is empty");
    }
    if (parsed.file_path.size() > proto::kMaxNameFieldText) {
        fail(kTransferInfoName, 3, "the file path has " + std::to_string(parsed.file_path.size()) +
                                       " bytes; the protocol's file name field holds at most 254");
    }
    if (!is_printable_ascii(parsed.file_path)) {
        fail(kTransferInfoName, 3, "the file path must be printable ASCII (the protocol's text fields are ASCII)");
    }
    return parsed;
}

MeInfo parse_me_info(const std::string& text) {
    const std::vector<std::string> lines = split_lines(text);
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
    const std::uintmax_t size = regular_file_size(path, path.string());
    if (size > max_size) {
        throw InfoFileError(path.string() + ": " + std::to_string(size) + " bytes, larger than the " +
                            std::to_string(max_size) + " such a file can have");
    }
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        throw InfoFileError(path.string() + ": cannot open for reading");
    }
    std::string text(static_cast<std::size_t>(size), '\0');
    in.read(text.data(), static_cast<std::streamsize>(text.size()));
    if (in.gcount() != static_cast<std::streamsize>(text.size())) {
        throw InfoFileError(path.string() + ": read failed");
    }
    return text;
}

void write_file_replacing(const std::filesystem::path& path, const std::string& content) {
    std::filesystem::path temporary = path;
    temporary += ".tmp";
    {
        std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
        if (!out) {
            throw InfoFileError(temporary.string() + ": cannot open for writing");
        }
        out.write(content.data(), static_cast<std::streamsize>(content.size()));
        out.flush();
        if (!out) {
            throw InfoFileError(temporary.string() + ": write failed");
        }
    }
    std::error_code error;
    std::filesystem::rename(temporary, path, error);
    if (error) {
        std::error_code ignored;  // the rename's error is the one worth reporting
        std::filesystem::remove(temporary, ignored);
        throw InfoFileError(path.string() + ": cannot replace: " + error.message());
    }
}

}  // namespace info
