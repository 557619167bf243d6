// The client's flow (PROTOCOL.md section 6): identify (1027, or 1025 + 1026), send the file
// (1028), confirm or resend on a checksum mismatch (1029 / 1030 / 1031).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <ostream>

namespace client {

// The one timeout of both clients: the server has 30 s to answer (--timeout SECONDS).
constexpr std::chrono::milliseconds kDefaultTimeout = std::chrono::seconds(30);
// Files this big or bigger get a progress line on a terminal, as in the Python client.
constexpr std::uint64_t kProgressMinSize = 1024 * 1024;

struct Options {
    // Deadline of each network operation (connect, one write, one response).
    std::chrono::milliseconds io_timeout = kDefaultTimeout;
    // Bytes of the file read, checksummed, encrypted and sent per step.
    std::size_t chunk_size = 64 * 1024;
    // One line on `err`, rewritten in place ('\r') while a large file is sent, and erased
    // afterwards: only when `err` is a terminal (main.cpp decides).
    bool show_progress = false;
};

// Runs one transfer from `work_dir` (where transfer.info, me.info and priv.key live).
// Progress goes to `out`, errors to `err`. Returns the process exit status: 0 when the file
// was sent and its checksum confirmed, 1 otherwise. Never throws.
int run(const std::filesystem::path& work_dir, std::ostream& out, std::ostream& err, const Options& options = {});

// Whether a progress line is on the terminal now (the Ctrl-C handler ends it with a newline
// first). Lock-free, so safe in a signal handler.
bool progress_line_shown() noexcept;

}  // namespace client
