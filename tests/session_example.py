"""The whole session of docs/PROTOCOL.md §9: recorded from a real run, parsed back from the doc.

`python tests/session_example.py` starts our server, runs `client.py` through a
recording relay, and prints the hex dumps of every request and response, the
client's `me.info` and the file, in the format of §9 (paste them there when
the wire format changes). `tests/test_docs.py` parses the same blocks out of
the doc and replays them against a fresh server.

The dumps are in the format of `hexdump -C`: 16 bytes a line, the offset in hex,
a line of `*` for lines repeating the one before, and the total length last.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from support import REPO_ROOT, ServerProcess

from protocol import REQUEST_HEADER, RESPONSE_HEADER, RequestCode, ResponseCode

DOC = REPO_ROOT / "docs" / "PROTOCOL.md"
CLIENT_NAME = "alice"
FILE_NAME = "hello.txt"
FILE_CONTENT = b"Hello, MMN15!\n"
MARKER = re.compile(r"<!-- session: (?P<what>[\w. ]+) -->\n+```[a-z]*\n(?P<body>.*?)```", re.S)


@dataclass(frozen=True)
class Message:
    """One request or response as it crossed the wire."""

    direction: str  # "request" or "response"
    code: int
    data: bytes

    @property
    def label(self) -> str:
        return f"{self.direction} {self.code}"


def split_messages(data: bytes, direction: str) -> list[Message]:
    """Cut one direction's byte stream into messages by their headers' payload sizes (§1)."""
    header = REQUEST_HEADER if direction == "request" else RESPONSE_HEADER
    messages = []
    offset = 0
    while offset < len(data):
        fields = header.unpack_from(data, offset)
        code, payload_size = fields[-2], fields[-1]
        end = offset + header.size + payload_size
        messages.append(Message(direction, code, data[offset:end]))
        offset = end
    return messages


def hexdump(data: bytes) -> str:
    """`hexdump -C` of `data`."""
    lines = []
    previous = None
    starred = False
    for offset in range(0, len(data), 16):
        row = data[offset : offset + 16]
        if row == previous and len(row) == 16:
            if not starred:
                lines.append("*")
                starred = True
            continue
        previous, starred = row, False
        hex_part = " ".join(f"{byte:02x}" for byte in row[:8]) + "  " + " ".join(f"{b:02x}" for b in row[8:])
        text = "".join(chr(byte) if 0x20 <= byte < 0x7F else "." for byte in row)
        lines.append(f"{offset:08x}  {hex_part:<48}  |{text}|")
    lines.append(f"{len(data):08x}")
    return "\n".join(lines) + "\n"


def parse_hexdump(text: str) -> bytes:
    """The bytes of a `hexdump -C` listing (the inverse of `hexdump`)."""
    data = bytearray()
    last_row = b""
    repeat = False
    for line in text.strip().splitlines():
        if line == "*":
            repeat = True
            continue
        offset_text, _, rest = line.partition("  ")
        offset = int(offset_text, 16)
        if repeat:
            while len(data) < offset:
                data += last_row
            repeat = False
        if len(data) != offset:
            raise ValueError(f"hexdump line at {offset_text} follows {len(data)} bytes")
        if not rest:
            break  # the total length
        last_row = bytes.fromhex(rest.split("|", 1)[0])
        data += last_row
    return bytes(data)


@dataclass(frozen=True)
class Session:
    messages: list[Message]
    me_info: str
    file_content: bytes

    def message(self, label: str) -> Message:
        [found] = [message for message in self.messages if message.label == label]
        return found


def session_from_doc(doc: Path = DOC) -> Session:
    """The recorded session as §9 of the doc shows it, in the order of the doc."""
    blocks = [(match["what"], match["body"]) for match in MARKER.finditer(doc.read_text(encoding="utf-8"))]
    messages = []
    me_info, file_content = "", b""
    for what, body in blocks:
        direction, _, code = what.partition(" ")
        if direction in ("request", "response"):
            message = Message(direction, int(code), parse_hexdump(body))
            if split_messages(message.data, direction) != [message]:
                raise ValueError(f"{what}: the dump is not one whole message")
            messages.append(message)
        elif what == "me.info":
            me_info = body
        elif what == FILE_NAME:
            file_content = body.encode("ascii")
    return Session(messages, me_info, file_content)


class RecordingRelay:
    """Relays one connection to `upstream`, keeping every byte of each direction."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._upstream = upstream
        self.sent = bytearray()  # client to server
        self.received = bytearray()  # server to client
        self._thread = threading.Thread(target=self._relay)
        self._thread.start()

    def _relay(self) -> None:
        client, _ = self._listener.accept()
        server = socket.create_connection(self._upstream)
        back = threading.Thread(target=self._pump, args=(server, client, self.received))
        back.start()
        self._pump(client, server, self.sent)
        back.join()
        client.close()
        server.close()

    @staticmethod
    def _pump(source: socket.socket, destination: socket.socket, record: bytearray) -> None:
        while data := source.recv(1 << 16):
            record += data
            destination.sendall(data)
        destination.shutdown(socket.SHUT_WR)

    def join(self) -> None:
        self._thread.join(timeout=30)
        self._listener.close()


def record() -> Session:
    """One run of client.py against our server, through the relay."""
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        server = ServerProcess(REPO_ROOT, root / "data")
        server.start()
        try:
            relay = RecordingRelay(server.address)
            work = root / "work"
            work.mkdir()
            (work / FILE_NAME).write_bytes(FILE_CONTENT)
            host, port = relay.address
            (work / "transfer.info").write_text(f"{host}:{port}\n{CLIENT_NAME}\n{FILE_NAME}\n")
            subprocess.run(
                [sys.executable, str(REPO_ROOT / "client.py")], cwd=work, check=True, capture_output=True
            )
            relay.join()
            me_info = (work / "me.info").read_text()
        finally:
            server.stop()
    messages = [
        message
        for pair in zip(
            split_messages(bytes(relay.sent), "request"),
            split_messages(bytes(relay.received), "response"),
            strict=True,
        )
        for message in pair
    ]
    return Session(messages, me_info, FILE_CONTENT)


def render(session: Session) -> str:
    """The blocks of §9, each with the marker that session_from_doc finds."""
    names = {
        **{code.value: code.name for code in RequestCode},
        **{code.value: code.name for code in ResponseCode},
    }
    parts = [
        f"<!-- session: {FILE_NAME} -->\n```text\n{session.file_content.decode('ascii')}```\n",
        f"<!-- session: me.info -->\n```text\n{session.me_info}```\n",
    ]
    for message in session.messages:
        parts.append(
            f"{message.direction.capitalize()} {message.code} ({names[message.code].lower()}), "
            f"{len(message.data)} bytes:\n\n"
            f"<!-- session: {message.label} -->\n```text\n{hexdump(message.data)}```\n"
        )
    return "\n".join(parts)


if __name__ == "__main__":
    print(render(record()))
