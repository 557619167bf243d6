// The client's flow (PROTOCOL.md section 6): identify (1027, or 1025 + 1026), send the file
// (1028), confirm or resend on a checksum mismatch (1029 / 1030 / 1031).
#pragma once

#include <chrono>
#include <cstddef>
#include <filesystem>
#include <ostream>

namespace client {

struct Options {
    // Deadline of each network operation (connect, one write, one response).
    std::chrono::milliseconds io_timeout{std::chrono::seconds(30)};
    // Bytes of the file read, checksummed, encrypted and sent per step.
    std::size_t chunk_size = 64 * 1024;
};

// Runs one transfer from `work_dir` (where transfer.info, me.info and priv.key live).
// Progress goes to `out`, errors to `err`. Returns the process exit status: 0 when the file
// was sent and its checksum confirmed, 1 otherwise. Never throws.
int run(const std::filesystem::path& work_dir, std::ostream& out, std::ostream& err, const Options& options = {});

}  // namespace client
