// The client's flow (PROTOCOL.md section 6) over one connection.
//
// Error policy:
// - a response the server is allowed to send but that is not the answer to this step (2107,
//   another code, a wrong echoed client ID or file name) is "server responded with an error":
//   the step is retried up to 3 times on the same connection;
// - a response that breaks the framing (version, unknown code, payload size) leaves the byte
//   stream unusable: same treatment, but the retry starts on a fresh connection;
// - anything else (bad info files, network failure, timeout) stops the client at once.
#include "client.hpp"

#include <algorithm>
#include <atomic>
#include <fstream>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>

#include "cksum.hpp"
#include "connection.hpp"
#include "crypto.hpp"
#include "info_files.hpp"
#include "protocol.hpp"

namespace client {

namespace {

namespace fs = std::filesystem;
using proto::Bytes;
using proto::ClientId;
using proto::RequestCode;
using proto::ResponseCode;

// Section 6: a step answered with an error is retried up to 3 times.
constexpr int kMaxStepRetries = 3;
// Section 6: the file is sent at most 4 times; after the fourth mismatch, 1031.
constexpr int kMaxFileAttempts = 4;

// Stops the client: printed as "Fatal: <what>".
class FatalError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// The server answered, but not with what this step needs.
class ServerErrorResponse : public std::runtime_error {
public:
    ServerErrorResponse(const std::string& what, bool stream_broken)
        : std::runtime_error(what), stream_broken_(stream_broken) {}
    bool stream_broken() const { return stream_broken_; }

private:
    bool stream_broken_;
};

struct Response {
    std::uint16_t code = 0;
    Bytes payload;
};

struct Identity {
    std::string name;
    ClientId id{};
};

// `size` rounded down to whole AES blocks, at least one block.
std::size_t whole_blocks(std::size_t size) {
    return std::max(size - size % proto::kAesBlockSize, proto::kAesBlockSize);
}

struct FileAttempt {
    std::uint32_t local_cksum = 0;
    std::uint32_t server_cksum = 0;
};

std::atomic<bool> g_progress_shown{false};

// The progress line of a large file on a terminal, "big.bin: 42% (430 of 1024 MiB)", rewritten
// in place when the percentage changes and erased when the attempt ends, however it ends.
class ProgressLine {
public:
    ProgressLine(std::ostream& err, const std::string& name, std::uint64_t total, bool enabled)
        : err_(err), name_(name), total_(total), enabled_(enabled && total >= kProgressMinSize) {}
    ProgressLine(const ProgressLine&) = delete;
    ProgressLine& operator=(const ProgressLine&) = delete;
    ~ProgressLine() {
        if (width_ > 0) {
            err_ << '\r' << std::string(width_, ' ') << '\r' << std::flush;
            g_progress_shown = false;
        }
    }

    void advance(std::uint64_t bytes) {
        done_ += bytes;
        if (!enabled_) {
            return;
        }
        const auto percent = static_cast<int>(done_ * 100 / total_);
        if (percent == percent_) {
            return;
        }
        percent_ = percent;
        constexpr std::uint64_t mib = 1024 * 1024;
        const std::string line = name_ + ": " + std::to_string(percent) + "% (" + std::to_string(done_ / mib) +
                                 " of " + std::to_string((total_ + mib - 1) / mib) + " MiB)";
        err_ << '\r' << line << std::string(width_ > line.size() ? width_ - line.size() : 0, ' ') << std::flush;
        width_ = std::max(width_, line.size());
        g_progress_shown = true;
    }

private:
    std::ostream& err_;
    std::string name_;
    std::uint64_t total_;
    bool enabled_;
    std::uint64_t done_ = 0;
    int percent_ = -1;
    std::size_t width_ = 0;
};

class Session {
public:
    Session(info::TransferInfo transfer, fs::path work_dir, std::ostream& out, std::ostream& err,
            const Options& options)
        : transfer_(std::move(transfer)), work_dir_(std::move(work_dir)), out_(out), err_(err), options_(options) {}

    int run() {
        check_file();
        identify();
        return send_file();
    }

private:
    // ---- the file ------------------------------------------------------------------------

    // Line 3 relative to the working folder (an absolute line 3 stays as it is).
    fs::path file_path() const { return work_dir_ / transfer_.file_path; }

    // Fails early, before anything is sent, for a file that cannot be sent at all.
    void check_file() {
        const fs::path path = file_path();
        const std::uintmax_t size =
            info::regular_file_size(path, "the file to send '" + transfer_.file_path_text + "'");
        if (size > proto::kMaxPlainFileSize) {
            throw FatalError("'" + transfer_.file_path_text + "' is " + std::to_string(size) +
                             " bytes; the protocol's 32-bit sizes allow at most " +
                             std::to_string(proto::kMaxPlainFileSize) + " bytes (about 4 GiB)");
        }
        std::ifstream probe(path, std::ios::binary);
        if (!probe) {
            throw FatalError("cannot open the file to send '" + transfer_.file_path_text + "' for reading");
        }
        file_size_ = static_cast<std::uint64_t>(size);
    }

    // ---- connection and framing ----------------------------------------------------------

    net::Connection& connection() {
        if (!connection_) {
            connection_ = std::make_unique<net::Connection>(transfer_.host, transfer_.port, options_.io_timeout);
        }
        return *connection_;
    }

    void send(const Bytes& message) { connection().write_all(message.data(), message.size()); }

    // Reads one response; its header is validated before the payload is allocated.
    Response read_response() {
        std::uint8_t header_bytes[proto::kResponseHeaderSize];
        connection().read_exact(header_bytes, sizeof header_bytes);
        const proto::ResponseHeader header = proto::decode_response_header(header_bytes);
        try {
            proto::validate_response_header(header);
        } catch (const proto::ProtocolError& error) {
            throw ServerErrorResponse(std::string("malformed response: ") + error.what(), true);
        }
        Response response{header.code, Bytes(header.payload_size)};
        if (!response.payload.empty()) {
            connection().read_exact(response.payload.data(), response.payload.size());
        }
        return response;
    }

    Response exchange(const Bytes& request) {
        send(request);
        return read_response();
    }

    [[noreturn]] static void unexpected(const Response& response, const char* request) {
        throw ServerErrorResponse(proto::response_code_name(response.code) + " in answer to " + request, false);
    }

    void expect_own_id(const ClientId& echoed, const char* response) const {
        if (echoed != identity_.id) {
            throw ServerErrorResponse(std::string(response) + " carries client ID " + proto::client_id_to_hex(echoed) +
                                          ", ours is " + proto::client_id_to_hex(identity_.id),
                                      false);
        }
    }

    // Runs `attempt` and retries it up to 3 times while the server answers with an error.
    template <typename Attempt>
    auto with_retries(const std::string& step, Attempt attempt) -> decltype(attempt()) {
        for (int retry = 0;; ++retry) {
            try {
                return attempt();
            } catch (const ServerErrorResponse& error) {
                err_ << "server responded with an error (" << error.what() << ")\n";
                if (error.stream_broken()) {
                    connection_.reset();  // the byte stream cannot be trusted any more
                }
                if (retry == kMaxStepRetries) {
                    throw FatalError(step + " failed: the server answered with an error " +
                                     std::to_string(kMaxStepRetries + 1) + " times in a row (last: " + error.what() +
                                     ")");
                }
                err_ << "retrying " << step << " (" << retry + 1 << " of " << kMaxStepRetries << ")\n";
            }
        }
    }

    // ---- step 1: identify ------------------------------------------------------------------

    void identify() {
        const fs::path me_path = work_dir_ / info::kMeInfoName;
        std::error_code error;
        if (fs::exists(me_path, error)) {
            const info::MeInfo me = info::parse_me_info(info::read_small_file(me_path));
            crypto::RsaPrivateKey key = load_key(me);
            if (me.client_name != transfer_.client_name) {
                err_ << "warning: me.info is for '" << me.client_name << "', transfer.info names '"
                     << transfer_.client_name << "'; using the identity in me.info\n";
            }
            identity_ = Identity{me.client_name, me.client_id};
            if (with_retries("reconnecting (1027)", [&] { return reconnect(key); })) {
                out_ << "Reconnected as " << identity_.name << " (" << proto::client_id_to_hex(identity_.id) << ")\n";
                return;
            }
            out_ << "The server does not know this client any more (2106); registering again as " << identity_.name
                 << "\n";
        } else {
            identity_ = Identity{transfer_.client_name, ClientId{}};
        }
        register_and_exchange_keys();
    }

    static crypto::RsaPrivateKey load_key(const info::MeInfo& me) {
        try {
            return crypto::RsaPrivateKey::load_base64(me.private_key_base64);
        } catch (const crypto::CryptoError& error) {
            throw FatalError(std::string("me.info: the private key (line 3 on) is not usable: ") + error.what());
        }
    }

    // 1027 -> 2105 (true, AES key set) or 2106 (false).
    bool reconnect(const crypto::RsaPrivateKey& key) {
        const Response response =
            exchange(proto::encode_name_request(identity_.id, RequestCode::Reconnect, identity_.name));
        switch (static_cast<ResponseCode>(response.code)) {
            case ResponseCode::ReconnectOk:
                aes_key_ = unwrap_key(key, response, "2105");
                return true;
            case ResponseCode::ReconnectDenied:
                expect_own_id(proto::decode_client_id_payload(response.payload), "2106");
                return false;
            default:
                unexpected(response, "1027 (reconnect)");
        }
    }

    crypto::AesKey unwrap_key(const crypto::RsaPrivateKey& key, const Response& response, const char* name) const {
        const proto::AesKeyPayload payload = proto::decode_aes_key_payload(response.payload);
        expect_own_id(payload.client_id, name);
        try {
            return key.unwrap_aes_key(payload.encrypted_key.data(), payload.encrypted_key.size());
        } catch (const crypto::CryptoError& error) {
            throw ServerErrorResponse(std::string(name) + ": " + error.what(), false);
        }
    }

    void register_and_exchange_keys() {
        // Generated first so that me.info can be written as soon as the server gives the UUID.
        const crypto::RsaPrivateKey key = crypto::RsaPrivateKey::generate();
        const Bytes public_key = key.public_key_der();  // throws unless exactly 160 bytes

        identity_.id = with_retries("registering (1025)", [&] { return register_name(); });
        out_ << "Registered as " << identity_.name << " (" << proto::client_id_to_hex(identity_.id) << ")\n";
        save_identity(key);

        aes_key_ = with_retries("sending the public key (1026)", [&] {
            const Response response =
                exchange(proto::encode_public_key_request(identity_.id, identity_.name, public_key));
            if (response.code != static_cast<std::uint16_t>(ResponseCode::AesKey)) {
                unexpected(response, "1026 (public key)");
            }
            return unwrap_key(key, response, "2102");
        });
    }

    // 1025 -> 2100 (the new UUID). 2101 is final: the same request would fail the same way.
    ClientId register_name() {
        const Response response = exchange(proto::encode_name_request(ClientId{}, RequestCode::Register, identity_.name));
        switch (static_cast<ResponseCode>(response.code)) {
            case ResponseCode::RegisterOk:
                return proto::decode_client_id_payload(response.payload);
            case ResponseCode::RegisterFailed:
                throw FatalError("registration failed (2101): the server already has a client named '" +
                                 identity_.name + "'; choose another name in transfer.info");
            default:
                unexpected(response, "1025 (register)");
        }
    }

    void save_identity(const crypto::RsaPrivateKey& key) {
        const std::string key_base64 = key.save_base64();
        info::write_file_replacing(work_dir_ / info::kMeInfoName,
                                   info::format_me_info(info::MeInfo{identity_.name, identity_.id, key_base64}));
        info::write_file_replacing(work_dir_ / info::kPrivateKeyName, key_base64);
    }

    // ---- steps 2 and 3: send, compare, confirm or resend -------------------------------------

    int send_file() {
        out_ << "Sending " << transfer_.file_name << " (" << file_size_ << " bytes)\n";
        for (int attempt = 1; attempt <= kMaxFileAttempts; ++attempt) {
            const FileAttempt result = with_retries("sending the file (1028)", [&] { return send_file_once(); });
            if (result.server_cksum == result.local_cksum) {
                with_retries("confirming the checksum (1029)", [&] { acknowledge(RequestCode::CrcOk, "1029"); });
                out_ << "File sent and verified (cksum " << result.local_cksum << ")\n";
                return 0;
            }
            err_ << "checksum mismatch on attempt " << attempt << " of " << kMaxFileAttempts << ": server computed "
                 << result.server_cksum << ", ours is " << result.local_cksum << "\n";
            if (attempt < kMaxFileAttempts) {
                // Section 2: 1030 has no response; the next request is the resent 1028.
                send(proto::encode_name_request(identity_.id, RequestCode::CrcFailedResending, transfer_.file_name));
            }
        }
        with_retries("cancelling the transfer (1031)", [&] { acknowledge(RequestCode::CrcFailedGivingUp, "1031"); });
        err_ << "Fatal: the file did not arrive intact after " << kMaxFileAttempts
             << " attempts; the transfer was cancelled (1031)\n";
        return 1;
    }

    // One 1028: reads, checksums and encrypts the file chunk by chunk and streams it out; the
    // header and the first chunk leave in one write. Then reads and checks 2103.
    //
    // One buffer serves every chunk (and every attempt): the file is read into it, checksummed
    // and encrypted in place, and written from it. Chunks are whole AES blocks, so no partial
    // block is ever held over and the ciphertext of a chunk is exactly where its plaintext was;
    // the last one gets its padding block in the room after it.
    FileAttempt send_file_once() {
        const auto content_size = static_cast<std::uint32_t>(proto::encrypted_size(file_size_));
        std::ifstream in(file_path(), std::ios::binary);
        if (!in) {
            throw FatalError("cannot open the file to send '" + transfer_.file_path_text + "' for reading");
        }
        const Bytes prefix = proto::encode_send_file_prefix(identity_.id, content_size, transfer_.file_name);
        const std::size_t chunk_size = whole_blocks(options_.chunk_size);
        const std::size_t buffer_size = prefix.size() + chunk_size + proto::kAesBlockSize;
        if (buffer_size_ < buffer_size) {
            buffer_.reset(new std::uint8_t[buffer_size]);  // not zero-filled: every byte sent is written first
            buffer_size_ = buffer_size;
        }
        std::uint8_t* const buffer = buffer_.get();
        std::copy(prefix.begin(), prefix.end(), buffer);
        std::size_t head = prefix.size();  // bytes before the chunk: the prefix, the first time
        Cksum sum;
        crypto::AesCbcEncryptor encryptor(aes_key_);
        ProgressLine progress(err_, transfer_.file_name, file_size_, options_.show_progress);
        std::uint64_t remaining = file_size_;
        do {
            const auto want = static_cast<std::size_t>(std::min<std::uint64_t>(remaining, chunk_size));
            std::uint8_t* const chunk = buffer + head;
            in.read(reinterpret_cast<char*>(chunk), static_cast<std::streamsize>(want));
            if (static_cast<std::size_t>(in.gcount()) != want) {
                // Part of the request is already on the wire: this connection is lost anyway.
                throw FatalError("reading '" + transfer_.file_path_text + "' failed (did the file shrink while it was sent?)");
            }
            sum.update(chunk, want);
            std::size_t encrypted = encryptor.update(chunk, want, chunk);
            remaining -= want;
            if (remaining == 0) {
                encrypted += encryptor.finish(chunk + encrypted);
            }
            connection().write_all(buffer, head + encrypted);
            head = 0;
            progress.advance(want);
        } while (remaining > 0);

        const Response response = read_response();
        if (response.code != static_cast<std::uint16_t>(ResponseCode::FileReceived)) {
            unexpected(response, "1028 (send file)");
        }
        const proto::FileReceivedPayload received = decode_file_received(response.payload);
        expect_own_id(received.client_id, "2103");
        if (received.content_size != content_size) {
            throw ServerErrorResponse("2103 reports " + std::to_string(received.content_size) +
                                          " bytes received, we sent " + std::to_string(content_size),
                                      false);
        }
        if (received.file_name != transfer_.file_name) {
            throw ServerErrorResponse("2103 names the file '" + received.file_name + "', we sent '" +
                                          transfer_.file_name + "'",
                                      false);
        }
        return FileAttempt{sum.value(), received.cksum};
    }

    static proto::FileReceivedPayload decode_file_received(const Bytes& payload) {
        try {
            return proto::decode_file_received_payload(payload);
        } catch (const proto::ProtocolError& error) {
            throw ServerErrorResponse(std::string("2103: ") + error.what(), false);
        }
    }

    // 1029 / 1031 -> 2104.
    void acknowledge(RequestCode code, const char* request) {
        const Response response = exchange(proto::encode_name_request(identity_.id, code, transfer_.file_name));
        if (response.code != static_cast<std::uint16_t>(ResponseCode::Acknowledged)) {
            unexpected(response, request);
        }
        expect_own_id(proto::decode_client_id_payload(response.payload), "2104");
    }

    info::TransferInfo transfer_;
    fs::path work_dir_;
    std::ostream& out_;
    std::ostream& err_;
    Options options_;
    std::uint64_t file_size_ = 0;
    Identity identity_;
    crypto::AesKey aes_key_{};
    std::unique_ptr<net::Connection> connection_;
    std::unique_ptr<std::uint8_t[]> buffer_;  // send_file_once's, kept for the resends
    std::size_t buffer_size_ = 0;
};

}  // namespace

bool progress_line_shown() noexcept { return g_progress_shown; }

int run(const fs::path& work_dir, std::ostream& out, std::ostream& err, const Options& options) {
    try {
        info::TransferInfo transfer =
            info::parse_transfer_info(info::read_small_file(work_dir / info::kTransferInfoName));
        Session session(std::move(transfer), work_dir, out, err, options);
        return session.run();
    } catch (const std::exception& error) {
        err << "Fatal: " << error.what() << '\n';
    } catch (...) {
        err << "Fatal: unexpected error\n";
    }
    return 1;
}

}  // namespace client
