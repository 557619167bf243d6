// Deadlines by running the io_context for at most the timeout (io_context::run_for); if the
// operation has not completed by then the socket is closed, which aborts it.
#include "connection.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>

namespace net {

namespace asio = boost::asio;
using asio::ip::tcp;
using boost::system::error_code;

std::string seconds_text(std::chrono::milliseconds duration) {
    const auto ms = duration.count();
    std::string text = std::to_string(ms / 1000);
    if (ms % 1000 != 0) {
        std::string fraction = std::to_string(1000 + ms % 1000).substr(1);  // 3 digits
        fraction.erase(fraction.find_last_not_of('0') + 1);
        text += "." + fraction;
    }
    return text;
}

struct Connection::Impl {
    asio::io_context io;
    tcp::socket socket{io};
    std::chrono::milliseconds timeout;
    std::string peer;

    // Runs the pending operation until it completes or the deadline passes. Returns false on
    // timeout, after `cancel` has aborted the operation and its handler has run.
    template <typename Cancel>
    bool run_with_deadline(Cancel cancel) {
        io.restart();
        io.run_for(timeout);
        if (io.stopped()) {
            return true;
        }
        cancel();
        io.run();
        return false;
    }

    [[noreturn]] void fail(const std::string& what, const error_code& error) const {
        if (error == asio::error::eof) {
            throw NetworkError(what + ": the server closed the connection");
        }
        throw NetworkError(what + ": " + error.message());
    }

    // The same words as the Python client's (one timeout, one message, whatever was waited for).
    [[noreturn]] void fail_timeout() const {
        throw NetworkError("no answer from " + peer + " within " + seconds_text(timeout) + " s");
    }
};

Connection::Connection(const std::string& host, std::uint16_t port, std::chrono::milliseconds timeout)
    : impl_(std::make_unique<Impl>()) {
    Impl& s = *impl_;
    s.timeout = timeout;
    s.peer = host + ":" + std::to_string(port);

    tcp::resolver resolver(s.io);
    error_code resolve_error;
    tcp::resolver::results_type endpoints;
    resolver.async_resolve(host, std::to_string(port),
                           [&](const error_code& error, tcp::resolver::results_type results) {
                               resolve_error = error;
                               endpoints = std::move(results);
                           });
    if (!s.run_with_deadline([&] { resolver.cancel(); })) {
        s.fail_timeout();
    }
    if (resolve_error) {
        s.fail("cannot resolve " + host, resolve_error);
    }

    error_code connect_error;
    asio::async_connect(s.socket, endpoints,
                        [&](const error_code& error, const tcp::endpoint&) { connect_error = error; });
    if (!s.run_with_deadline([&] { s.socket.close(); })) {
        s.fail_timeout();
    }
    if (connect_error) {
        s.fail("cannot connect to the server at " + s.peer, connect_error);
    }
    // Requests are written whole (header and payload start in one buffer); do not let Nagle
    // hold back the small ones waiting for an ACK.
    error_code ignored;
    s.socket.set_option(tcp::no_delay(true), ignored);
}

Connection::~Connection() = default;

void Connection::write_all(const std::uint8_t* data, std::size_t size) {
    Impl& s = *impl_;
    error_code write_error;
    asio::async_write(s.socket, asio::buffer(data, size),
                      [&](const error_code& error, std::size_t) { write_error = error; });
    if (!s.run_with_deadline([&] { s.socket.close(); })) {
        s.fail_timeout();
    }
    if (write_error) {
        s.fail("sending to the server", write_error);
    }
}

void Connection::read_exact(std::uint8_t* data, std::size_t size) {
    Impl& s = *impl_;
    error_code read_error;
    asio::async_read(s.socket, asio::buffer(data, size),
                     [&](const error_code& error, std::size_t) { read_error = error; });
    if (!s.run_with_deadline([&] { s.socket.close(); })) {
        s.fail_timeout();
    }
    if (read_error) {
        s.fail("reading the server's response", read_error);
    }
}

}  // namespace net
