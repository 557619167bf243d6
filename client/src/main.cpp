// Entry point: one transfer as described by transfer.info in the working folder.
//
//   client [--timeout SECONDS]
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <iostream>
#include <string>

#ifdef _WIN32
#include <io.h>
#else
#include <unistd.h>
#endif

#include "client.hpp"

namespace {

constexpr const char* kUsage =
    "usage: client [--timeout SECONDS]\n"
    "Sends the file named in transfer.info (working folder) to the server named there.\n"
    "Registers on the first run (writes me.info and priv.key), reconnects on later runs.\n"
    "  --timeout SECONDS  how long to wait for each answer of the server (default 30)\n";

// The status a shell gives a program stopped by Ctrl-C (128 + SIGINT), as the Python client.
constexpr int kInterruptedStatus = 130;
// A day: more is a typo, and the milliseconds must not overflow.
constexpr double kMaxTimeoutSeconds = 86400;

bool stderr_is_terminal() {
#ifdef _WIN32
    return _isatty(_fileno(stderr)) != 0;
#else
    return isatty(STDERR_FILENO) != 0;
#endif
}

// Ctrl-C: one word, no stack of messages, the status of a program stopped by SIGINT. Only
// async-signal-safe calls on POSIX (write, _Exit); on Windows the C runtime runs this handler
// in a thread of its own, where stdio is allowed. me.info and priv.key are written through a
// temporary file and a rename, so stopping anywhere leaves them whole or absent.
extern "C" void on_interrupt(int) {
    const bool newline = client::progress_line_shown();
    constexpr char kMessage[] = "\nInterrupted\n";
    const char* text = newline ? kMessage : kMessage + 1;
    const std::size_t size = sizeof kMessage - (newline ? 1 : 2);
#ifdef _WIN32
    std::fwrite(text, 1, size, stderr);
    std::fflush(stderr);
#else
    const ssize_t ignored = write(STDERR_FILENO, text, size);
    static_cast<void>(ignored);
#endif
    std::_Exit(kInterruptedStatus);
}

// "30", "0.5": a positive number of seconds, at most a day. False if `text` is anything else.
bool parse_seconds(const std::string& text, std::chrono::milliseconds& timeout) {
    if (text.empty() || text.find_first_not_of("0123456789.") != std::string::npos) {
        return false;
    }
    errno = 0;
    char* end = nullptr;
    const double seconds = std::strtod(text.c_str(), &end);
    if (errno != 0 || end != text.c_str() + text.size() || !(seconds > 0) || seconds > kMaxTimeoutSeconds) {
        return false;
    }
    timeout = std::chrono::milliseconds(static_cast<long long>(seconds * 1000 + 0.5));
    return timeout.count() > 0;
}

}  // namespace

int main(int argc, char* argv[]) {
    try {
        client::Options options;
        for (int i = 1; i < argc; ++i) {
            const std::string arg = argv[i];
            if (arg == "-h" || arg == "--help") {
                std::cout << kUsage;
                return 0;
            }
            if (arg == "--timeout" && i + 1 < argc) {
                if (!parse_seconds(argv[++i], options.io_timeout)) {
                    std::cerr << "client: --timeout wants a number of seconds greater than 0 (at most 86400), not '"
                              << argv[i] << "'\n";
                    return 2;
                }
                continue;
            }
            std::cerr << kUsage;
            return 2;
        }
        options.show_progress = stderr_is_terminal();
        std::signal(SIGINT, on_interrupt);
        return client::run(std::filesystem::current_path(), std::cout, std::cerr, options);
    } catch (const std::exception& error) {
        std::cerr << "Fatal: " << error.what() << '\n';
    } catch (...) {
        std::cerr << "Fatal: unexpected error\n";
    }
    return 1;
}
