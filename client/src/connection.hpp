// One TCP connection to the server (PROTOCOL.md section 1), on Boost.Asio.
//
// Blocking from the caller's view, but every operation (resolve, connect, write, read) runs as
// an asynchronous operation under a deadline, so a silent server cannot hang the client. This
// is portable: no socket options that differ between POSIX and Windows.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>

namespace net {

// Connecting failed, the peer closed or reset the connection, or an operation timed out.
class NetworkError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// "30", "0.5", "1.25": seconds as the timeout message gives them.
std::string seconds_text(std::chrono::milliseconds duration);

class Connection {
public:
    // Resolves and connects; throws NetworkError (e.g. "connection refused"). Every operation
    // below must finish within `timeout`, or NetworkError says
    // "no answer from HOST:PORT within N s".
    Connection(const std::string& host, std::uint16_t port, std::chrono::milliseconds timeout);
    ~Connection();
    Connection(const Connection&) = delete;
    Connection& operator=(const Connection&) = delete;

    // Writes all `size` bytes or throws NetworkError.
    void write_all(const std::uint8_t* data, std::size_t size);
    // Reads exactly `size` bytes or throws NetworkError (a short read means the peer closed).
    void read_exact(std::uint8_t* data, std::size_t size);

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace net
