"""The encrypted file-transfer server (PROTOCOL.md, version 3).

Run it from the submission folder: `python server.py`. It listens on the port
named in `port.info` beside this file (1357 if that is missing or invalid),
keeps its clients in `defensive.db` and received files under `storage/`.

This module is the shell: configuration, the threaded TCP server, and the
per-connection loop that reads a request, dispatches it to handlers.py,
writes the response, and is the connection's one error boundary.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import signal
import socket
import socketserver
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from dependencies import exit_if_missing_package

try:
    from database import (
        DATABASE_FILE_NAME,
        DEFAULT_MAX_CLIENTS,
        DEFAULT_MAX_FILES_PER_CLIENT,
        DEFAULT_MAX_INCOMPLETE_REGISTRATIONS,
        DEFAULT_REGISTRATION_TIMEOUT,
        Database,
        DatabaseError,
        Limits,
    )
    from forgeries import DecryptionFailures
    from handlers import HANDLERS, RequestContext, read_send_file_head
    from protocol import (
        MAX_CONTENT_SIZE_ON_WIRE,
        MAX_DISCARDED_PAYLOAD,
        REQUEST_HEADER,
        FramingError,
        RequestCode,
        RequestError,
        RequestHeader,
        ResponseCode,
        check_request_size,
        pack_response,
    )
    from slots import ConnectionSlots, Slot
    from storage import DEFAULT_MIN_FREE_SPACE, FileStore, UnsafeStorage, make_private
    from streams import PayloadReader, PeerGone, RateGuard, TooSlow, read_exact_into
except ModuleNotFoundError as err:  # pycryptodome or anycrc not installed: one line, not a traceback
    exit_if_missing_package(err, "server.py")

log = logging.getLogger("server")

SERVER_DIR = Path(__file__).resolve().parent
PORT_FILE = SERVER_DIR / "port.info"
DEFAULT_PORT = 1357
DEFAULT_IDLE_TIMEOUT = 60.0  # seconds a connection may stay silent before it is closed
# A request that has lasted the idle timeout must have averaged this many bytes/s:
# a real client on a poor link sends far more; a peer trickling bytes to pin a thread, far less.
DEFAULT_MIN_RATE = 8 * 1024
# Threads are cheap but not free; each active transfer holds two chunk buffers.
DEFAULT_MAX_CONNECTIONS = 200
# A whole class behind one NAT (a lab, a campus) submitting at a deadline: each student's
# client holds one connection at a time, and a new one takes an idle one's slot (slots.py).
DEFAULT_MAX_CONNECTIONS_PER_ADDRESS = 64
# A connection's first refusals are logged one line each, the rest counted, and the count
# logged at most once a REFUSAL_SUMMARY_INTERVAL (seconds) and when the connection ends.
REFUSALS_LOGGED_PER_CONNECTION = 5
REFUSAL_SUMMARY_INTERVAL = 60.0


@dataclass(frozen=True)
class ServerConfig:
    host: str
    port: int
    data_dir: Path
    idle_timeout: float
    min_rate: float  # bytes per second, after the first idle_timeout seconds of a request
    max_connections: int
    max_file_size: int  # largest encrypted content accepted in one 1028
    min_free_space: int  # bytes that must stay free on the disk after a file is accepted
    limits: Limits = field(default_factory=Limits)  # files per client, registrations (database.py)
    max_connections_per_address: int = DEFAULT_MAX_CONNECTIONS_PER_ADDRESS


class FileTransferServer(socketserver.ThreadingTCPServer):
    # Handler threads must not keep the process alive on shutdown: a stalled
    # peer is cut off by the idle timeout anyway, and its partial file removed.
    daemon_threads = True
    # Restarting right after a stop must not fail on the old socket's TIME_WAIT.
    allow_reuse_address = True
    # Room for a burst of connections at a submission deadline.
    request_queue_size = 128

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.db = Database(config.data_dir / DATABASE_FILE_NAME, config.limits)
        try:
            # The database (AES keys) and its journal are the server's user's alone, whatever
            # mode an older version or a copy left them with (SECURITY.md).
            for suffix in ("", "-wal", "-shm"):
                path = self.db.path.with_name(self.db.path.name + suffix)
                if os.path.lexists(path):
                    make_private(path, 0o600)
            self.store = FileStore(config.data_dir, config.min_free_space)
            self._reconcile_storage()
        except BaseException:
            self.db.close()
            raise
        self.slots = ConnectionSlots(config.max_connections, config.max_connections_per_address)
        self.decryption_failures = DecryptionFailures()
        # Each handler is made by _serve_connection, with its slot; never by finish_request.
        super().__init__((config.host, config.port), ConnectionHandler)  # type: ignore[arg-type]

    def _reconcile_storage(self) -> None:
        """Make the records and the storage folder agree after an unclean stop."""
        missing = self.store.reconcile(self.db.path_names())
        if missing:
            log.warning("start-up: %d file records had no stored file; removed", len(missing))
            self.db.delete_files_by_path(missing)
        expired = self.db.expire_incomplete_registrations()
        if expired:
            log.info("start-up: %d registrations without a public key expired", expired)
        log.info("loaded %d registered clients from %s", self.db.count_clients(), self.db.path)

    def process_request(self, request: socket.socket, client_address: tuple[str, int]) -> None:  # type: ignore[override]
        """Give the connection a slot and a thread of its own, or close it at once."""
        host, port = client_address[:2]
        slot = self.slots.acquire(request, host, f"{host}:{port}")
        if slot is None:
            self.shutdown_request(request)
            return
        thread = threading.Thread(
            target=self._serve_connection, args=(request, client_address, slot), daemon=self.daemon_threads
        )
        try:
            thread.start()
        except Exception as err:  # RuntimeError "can't start new thread", MemoryError
            # The thread will never give its slot back: give it back here (issue 10, point 5).
            self.slots.release(slot)
            log.error("cannot serve %s: %s; closing the connection", slot.peer, err)
            self.shutdown_request(request)

    def _serve_connection(self, request: socket.socket, client_address: tuple[str, int], slot: Slot) -> None:
        """A connection's thread: its handler, then the slot given back, then the socket closed."""
        try:
            ConnectionHandler(request, client_address, self, slot)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            # Before the close: a client that sees the close and reconnects finds the slot free.
            self.slots.release(slot)
            log.debug("%s disconnected; %d connections open", slot.peer, len(self.slots))
            self.shutdown_request(request)

    def handle_error(self, request: object, client_address: object) -> None:
        """Anything that escapes a handler goes to the log, never as a bare traceback."""
        log.exception("unhandled error on connection from %s", client_address)

    def server_close(self) -> None:
        """Stop: no new connection, then no new transfer (a 1028 now gets 2107 and a close),
        then the temporary files go, then the database closes (a late request gets 2107)."""
        super().server_close()
        self.store.close()
        self.db.close()


class ConnectionHandler(socketserver.StreamRequestHandler):
    """One client connection: requests one after another until the peer closes."""

    server: FileTransferServer

    def __init__(
        self, request: socket.socket, client_address: tuple[str, int], server: FileTransferServer, slot: Slot
    ) -> None:
        self.slot = slot
        super().__init__(request, client_address, server)  # runs setup(), handle(), finish()

    def setup(self) -> None:
        super().setup()
        config = self.server.config
        # A silent peer raises TimeoutError in a read instead of pinning this thread forever;
        # a trickling one is cut off by the rate guard.
        self.connection.settimeout(config.idle_timeout)
        self.guard = RateGuard(config.min_rate, grace=config.idle_timeout)
        host, port = self.client_address[:2]
        self.peer = f"{host}:{port}"
        self.refusals = RefusalLog(self.peer)
        self.warned_head_only_size = False

    def handle(self) -> None:
        log.debug("%s connected", self.peer)
        try:
            while self._serve_one_request():
                pass
        except TooSlow as err:
            log.warning("%s too slow: %s; closing", self.peer, err)
        except (PeerGone, ConnectionError) as err:
            log.info("%s went away: %s", self.peer, err)
        except TimeoutError:
            log.info("%s idle for %.0f s: closing", self.peer, self.server.config.idle_timeout)
        except Exception:
            log.exception("%s: unexpected error; closing the connection", self.peer)
            self._send_quietly(pack_response(ResponseCode.GENERAL_ERROR))
        finally:
            self.refusals.summarise()

    def _serve_one_request(self) -> bool:
        """Read, dispatch and answer one request. False when the connection should close."""
        raw_header = bytearray(REQUEST_HEADER.size)
        # Between requests the peer may stay silent up to the idle timeout; once
        # a request has begun, the rate guard bounds how long it may take.
        if not self.rfile.readinto1(memoryview(raw_header)[:1]):
            log.debug("%s closed the connection", self.peer)
            return False
        if not self.server.slots.busy(self.slot):
            log.debug("%s: its slot went to a new connection as its request began", self.peer)
            return False
        started = time.monotonic()
        self.guard.restart()
        try:
            read_exact_into(self.rfile, memoryview(raw_header)[1:], self.guard)
        except TooSlow:
            raise
        except PeerGone as err:
            log.warning("%s: truncated request header (%s); closing", self.peer, err)
            self._send_quietly(pack_response(FramingError.response_code))
            return False
        header = RequestHeader.unpack(bytes(raw_header))
        payload = PayloadReader(self.rfile, header.payload_size, self.guard)
        try:
            outcome, keep_open = self._dispatch(header, payload)
        except TooSlow:
            raise
        except PeerGone as err:
            # What is missing of the whole request, not only of the read that came up short.
            raise PeerGone(
                f"connection closed {err.missing + payload.unread} bytes short of the end of a "
                f"{header.code} request",
                missing=err.missing + payload.unread,
            ) from err
        if keep_open:
            # Answered: idle from now on, until the next request's first byte. Before the
            # request's log line, so that the line shows the slot can be taken (slots.py).
            self.server.slots.idle(self.slot)
        if payload.head_only_size and not self.warned_head_only_size:
            self.warned_head_only_size = True  # once per connection (§7)
            log.warning(
                "%s client=%s: its 1028 declares a payload size of %d, the head without the "
                "content; served, but the client should declare 259 + Content size (PROTOCOL.md §2)",
                self.peer,
                header.client_id.hex(),
                header.payload_size,
            )
        if outcome is not None:
            log.info(
                "%s client=%s code=%d -> %s bytes=%d %.1f ms",
                self.peer,
                header.client_id.hex(),
                header.code,
                outcome,
                header.payload_size,
                (time.monotonic() - started) * 1000,
            )
        return keep_open

    def _dispatch(self, header: RequestHeader, payload: PayloadReader) -> tuple[str | None, bool]:
        """Run the handler for `header`; answer it.

        Returns the outcome for the request's log line (None: a refusal, already
        logged) and whether the connection stays open.
        """
        context = RequestContext(
            header,
            payload,
            self.server.db,
            self.server.store,
            peer=self.peer,
            max_file_size=self.server.config.max_file_size,
            decryption_failures=self.server.decryption_failures,
        )
        try:
            # A 1028's size against --max-file-size is checked by its handler, once its
            # head is read: a refusal must know the request's framing to read it to its end.
            check_request_size(header, MAX_CONTENT_SIZE_ON_WIRE)
            if header.code != RequestCode.REGISTER:
                self.server.db.touch(header.client_id)  # LastSeen, on every request (§2)
            reply = HANDLERS[RequestCode(header.code)](context)
        except RequestError as err:
            closing = not self._can_read_to_end(context, err)
            self.refusals.refused(header, err, closing)
            self._send(pack_response(err.response_code))  # now: the refusal needs none of the rest
            if not closing:
                # §3: a refused request whose framing is intact is read to its end and
                # thrown away (under the rate guard and the idle timeout), so that the
                # client, still sending it, reads the 2107 afterwards and can retry here.
                payload.skip_rest()
            return None, not closing
        if reply is None:
            return "no reply", True
        code, body = reply
        self._send(pack_response(code, body))
        return str(code.value), True

    def _can_read_to_end(self, context: RequestContext, err: RequestError) -> bool:
        """After a refusal: is the rest of the request known, so that it can be skipped?"""
        if err.closes_connection:
            return False
        payload = context.payload
        if context.header.code == RequestCode.SEND_FILE and not payload.framed:
            # Refused before its handler read the head (a failing database, say): only
            # the head tells whether the declared sizes agree (§2, §7).
            try:
                read_send_file_head(context)
            except FramingError:
                return False
            except RequestError:
                pass  # the head's framing is sound; its content is not what matters now
        return payload.framed or payload.unread <= MAX_DISCARDED_PAYLOAD

    def _send(self, response: bytes) -> None:
        self.wfile.write(response)  # one write: header and payload together (§7)

    def _send_quietly(self, response: bytes) -> None:
        """Best-effort reply on a connection that is about to close."""
        with contextlib.suppress(OSError):
            self._send(response)


class RefusalLog:
    """A connection's refusal lines, rate-limited: a peer sending nothing but refused requests
    must not make the log grow faster than it sends (issue 10, point 10)."""

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.count = 0
        self.unlogged = 0
        self._last_summary = time.monotonic()

    def refused(self, header: RequestHeader, err: RequestError, closing: bool) -> None:
        self.count += 1
        if self.count <= REFUSALS_LOGGED_PER_CONNECTION:
            log.warning(
                "%s client=%s code=%d -> %d (%s) refused: %s%s",
                self.peer,
                header.client_id.hex(),
                header.code,
                err.response_code,
                type(err).__name__,
                err,
                "; closing" if closing else "",
            )
            if self.count == REFUSALS_LOGGED_PER_CONNECTION:
                log.warning("%s: further refusals on this connection are counted, not logged", self.peer)
            return
        self.unlogged += 1
        if time.monotonic() - self._last_summary >= REFUSAL_SUMMARY_INTERVAL:
            self.summarise()

    def summarise(self) -> None:
        """One line for the refusals not logged since the last one (and at the connection's end)."""
        if self.unlogged:
            log.warning(
                "%s: %d more refusals not logged (%d on this connection)",
                self.peer,
                self.unlogged,
                self.count,
            )
        self.unlogged = 0
        self._last_summary = time.monotonic()


# --- start-up ---------------------------------------------------------------


def read_port_file(path: Path = PORT_FILE) -> int:
    """The port in `port.info`, or the default with a one-line warning (§5)."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else "unreadable"
        log.warning("%s: %s; using the default port %d", path.name, reason, DEFAULT_PORT)
        return DEFAULT_PORT
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        log.warning("%s: %r is not a port number; using the default port %d", path.name, text, DEFAULT_PORT)
        return DEFAULT_PORT
    return int(text)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Encrypted file-transfer server (protocol version 3).",
        epilog=f"Without --port, the port is read from {PORT_FILE.name} beside server.py "
        f"(default {DEFAULT_PORT} if it is missing or invalid).",
    )
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all interfaces)")
    parser.add_argument(
        "--port", type=int, help=f"TCP port, 0 for any free port (default: from {PORT_FILE.name})"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=SERVER_DIR,
        help=f"folder for {DATABASE_FILE_NAME} and storage/ (default: the folder of server.py)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=DEFAULT_IDLE_TIMEOUT,
        help=f"seconds a connection may stay silent (default: {DEFAULT_IDLE_TIMEOUT:.0f})",
    )
    parser.add_argument(
        "--min-rate",
        type=float,
        default=DEFAULT_MIN_RATE,
        help="bytes/s a request must average once it has lasted the idle timeout "
        f"(default: {DEFAULT_MIN_RATE})",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=DEFAULT_MAX_CONNECTIONS,
        help="connections served at once; when full, a new one takes the slot of the one idle "
        f"between requests the longest, or is closed at once (default: {DEFAULT_MAX_CONNECTIONS})",
    )
    parser.add_argument(
        "--max-connections-per-address",
        type=int,
        default=DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
        help="connections served at once from one address (a class behind one NAT shares one); "
        f"the same rule applies within it (default: {DEFAULT_MAX_CONNECTIONS_PER_ADDRESS})",
    )
    parser.add_argument(
        "--min-free-space",
        type=int,
        default=DEFAULT_MIN_FREE_SPACE,
        help="bytes that must stay free on the disk after a file is accepted "
        f"(default: {DEFAULT_MIN_FREE_SPACE})",
    )
    parser.add_argument(
        "--max-file-size",
        type=int,
        default=MAX_CONTENT_SIZE_ON_WIRE,
        help="largest encrypted file accepted, in bytes (default: the protocol's limit, about 4 GiB)",
    )
    parser.add_argument(
        "--max-files-per-client",
        type=int,
        default=DEFAULT_MAX_FILES_PER_CLIENT,
        help="files one client may have stored; a 1028 of a new name beyond it gets 2107 "
        f"(default: {DEFAULT_MAX_FILES_PER_CLIENT})",
    )
    parser.add_argument(
        "--registration-timeout",
        type=float,
        default=DEFAULT_REGISTRATION_TIMEOUT,
        help="seconds a registration without a public key (1025 with no 1026) is kept after its last "
        f"request; then it is dropped and its name is free (default: {DEFAULT_REGISTRATION_TIMEOUT:.0f})",
    )
    parser.add_argument(
        "--max-incomplete-registrations",
        type=int,
        default=DEFAULT_MAX_INCOMPLETE_REGISTRATIONS,
        help="registrations without a public key held at once; a 1025 beyond it gets 2107 "
        f"(default: {DEFAULT_MAX_INCOMPLETE_REGISTRATIONS})",
    )
    parser.add_argument(
        "--max-clients",
        type=int,
        default=DEFAULT_MAX_CLIENTS,
        help=f"clients registered in all; a 1025 beyond it gets 2107 (default: {DEFAULT_MAX_CLIENTS})",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging level (default: INFO)",
    )
    args = parser.parse_args(argv)
    if args.port is not None and not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port} is not a port number")
    if not 0 < args.max_file_size <= MAX_CONTENT_SIZE_ON_WIRE:
        parser.error(f"--max-file-size must be 1..{MAX_CONTENT_SIZE_ON_WIRE}")
    if args.idle_timeout <= 0:
        parser.error("--idle-timeout must be positive")
    if args.max_connections_per_address < 1:
        parser.error("--max-connections-per-address must be >= 1")
    if args.min_rate < 0 or args.max_connections < 1 or args.min_free_space < 0:
        parser.error("--min-rate and --min-free-space must be >= 0, --max-connections >= 1")
    if args.registration_timeout <= 0:
        parser.error("--registration-timeout must be positive")
    if min(args.max_files_per_client, args.max_incomplete_registrations, args.max_clients) < 1:
        parser.error("--max-files-per-client, --max-incomplete-registrations and --max-clients must be >= 1")
    return args


def data_dir_problem(data_dir: Path) -> str | None:
    """What is wrong with --data-dir, or None. A missing folder is refused, not created:
    a typo in the path would otherwise start an empty database (docs/server.md)."""
    if not data_dir.exists():
        return f"--data-dir {data_dir} does not exist; create it (mkdir -p {data_dir}) or correct the path"
    if not data_dir.is_dir():
        return f"--data-dir {data_dir} is a file, not a folder; name a folder for the database and storage"
    return None


def start_up_failure(err: OSError | DatabaseError | UnsafeStorage, config: ServerConfig) -> str:
    """One line for a failed start that names the port or the file and says what to do."""
    where = "choose another with --port or port.info"
    if isinstance(err, OSError) and err.errno == errno.EADDRINUSE:
        return f"port {config.port} is already in use (another server running?); {where}"
    if isinstance(err, OSError) and err.errno == errno.EACCES and err.filename is None:
        return f"no permission to listen on port {config.port} (below 1024 needs root?); {where}"
    if isinstance(err, OSError) and err.errno == errno.EADDRNOTAVAIL:
        return f"{config.host} is not an address of this machine; correct --host"
    if isinstance(err, socket.gaierror):
        return f"--host {config.host}: {err.strerror}; correct --host"
    if isinstance(err, OSError) and err.filename is not None:
        return f"{err.filename}: {err.strerror}; check --data-dir {config.data_dir}"
    return f"{err} (data in {config.data_dir})"


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # A second signal during the clean-up must not interrupt it with a traceback.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt  # unwinds serve_forever() in the main thread, as Ctrl-C does


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Everything the server creates (database, journal, stored files) is its user's alone.
    os.umask(0o077)
    port = args.port if args.port is not None else read_port_file()
    config = ServerConfig(
        host=args.host,
        port=port,
        data_dir=args.data_dir.resolve(),
        idle_timeout=args.idle_timeout,
        min_rate=args.min_rate,
        max_connections=args.max_connections,
        max_connections_per_address=args.max_connections_per_address,
        max_file_size=args.max_file_size,
        min_free_space=args.min_free_space,
        limits=Limits(
            registration_timeout=args.registration_timeout,
            max_incomplete_registrations=args.max_incomplete_registrations,
            max_clients=args.max_clients,
            max_files_per_client=args.max_files_per_client,
        ),
    )
    problem = data_dir_problem(config.data_dir)
    if problem is not None:
        log.error("cannot start: %s", problem)
        return 1
    try:
        server = FileTransferServer(config)
    except (OSError, DatabaseError, UnsafeStorage) as err:
        log.error("cannot start: %s", start_up_failure(err, config))
        return 1
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    signal.signal(signal.SIGINT, _stop_on_sigterm)
    with server:
        host, bound_port = server.server_address[:2]
        log.info("listening on %s:%d (data in %s)", host, bound_port, config.data_dir)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            log.info("stopping")
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
