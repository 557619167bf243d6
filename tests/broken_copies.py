"""Broken copies of our own server, one defect each, and the rows grading each must report.

Each copy is this repository's top-level `.py` files and `port.info` in a
folder, with its defect put in by text substitutions (each asserted to apply
exactly once). tests/test_grading.py grades them; the batch command's test
grades a folder of all of them (`python -m grading`):

    from broken_copies import BROKEN_COPIES, make_broken_copy
    for copy in BROKEN_COPIES:
        make_broken_copy(copy.name, submissions / copy.name)

What each must report is given as row patterns: a spec point (`§2 1030`)
stands for every row of that point; a point with a parameter
(`§5 storage [after 1029]`) for the rows of that point whose check ends with
it. A row that no pattern of `fail`, `non_strict` or `not_run` names passes.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from grading.plugin import START_UP_POINT

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Edit:
    """One substitution: `pattern` (a regular expression, DOTALL) matches exactly once in `file`."""

    file: str
    pattern: str
    replacement: str


@dataclass(frozen=True)
class BrokenCopy:
    """A copy of our server with one defect, and what grading it must report."""

    name: str
    defect: str  # in words, for messages
    edits: tuple[Edit, ...]
    fail: frozenset[str] = frozenset()  # row patterns reported `fail`
    non_strict: frozenset[str] = frozenset()  # row patterns reported `non-strict` (a SHOULD missed)
    not_run: frozenset[str] = frozenset()  # row patterns reported `not run`
    # Spec points whose checks the test runs besides the copy's own rows, their prerequisites,
    # the checks that need them and the fixed sample: those the defect could plausibly touch.
    also: tuple[str, ...] = ()
    others: str = "pass"  # the result of every other row: "pass", or "not run" (no server to test)
    passes: frozenset[str] = frozenset()  # row patterns that pass all the same when others are not run
    messages: dict[str, str] = field(default_factory=dict)  # row pattern -> text its message holds
    unsaid: dict[str, str] = field(default_factory=dict)  # row pattern -> text its message must not hold

    def points(self) -> set[str]:
        """The spec points named by the copy's row patterns."""
        return {pattern.partition(" [")[0] for pattern in self.fail | self.non_strict | self.not_run}


def row_matches(pattern: str, spec: str, check: str) -> bool:
    point, bracket, parameter = pattern.partition(" [")
    if point != spec:
        return False
    return not bracket or check.endswith(f"[{parameter}")


BROKEN_COPIES = [
    BrokenCopy(
        "answers-1030",
        "1030 answered with 2104, as some clients expect and the protocol forbids (§7)",
        (
            Edit(
                "handlers.py",
                r"(def handle_crc_retry\(.*?\n)    return None\n",
                r"\g<1>    return ResponseCode.ACK, ClientIdResponse(client.client_id).pack()\n",
            ),
        ),
        fail=frozenset({"§2 1030"}),
        not_run=frozenset({"§6 resend", "§6 give up"}),
        also=("§1 pipelining", "§2 1031"),
        messages={"§2 1030": "got 2104", "§6 resend": "needs §2 1030, which failed"},
    ),
    BrokenCopy(
        "drops-surplus",
        # Whatever one recv(1024) brought beyond the request is lost, as with
        # `data = sock.recv(1024)` per request.
        "each request read through a fresh 1024-byte buffer: pipelined requests are dropped",
        (
            Edit(
                "server.py",
                r"(    def _serve_one_request\(self\) -> bool:\n        \"\"\".*?\"\"\"\n)",
                r'\g<1>        self.rfile = self.connection.makefile("rb", 1024)\n',
            ),
        ),
        fail=frozenset({"§1 pipelining"}),
        not_run=frozenset({"§6 resend", "§6 give up"}),
        also=("§2 1030",),
        messages={"§1 pipelining": "were the bytes after the 1030 dropped?"},
    ),
    BrokenCopy(
        "cannot-start",
        "a dependency the grader's machine lacks: the server dies before it listens",
        (
            Edit(
                "server.py",
                r"(from __future__ import annotations\n)",
                r"\g<1>\nimport a_package_that_is_not_installed\n",
            ),
        ),
        fail=frozenset({START_UP_POINT}),
        also=("§1 version", "§1 concurrency", "§3 2107"),
        others="not run",
        messages={START_UP_POINT: "No module named 'a_package_that_is_not_installed'"},
    ),
    BrokenCopy(
        "escapes-on-1029",
        # The storage check used to send 1028 alone: an escape made on 1029 passed grading.
        "on 1029 the verified file is written out to storage/<the name as sent>, following ../",
        (
            Edit(
                "handlers.py",
                r"(    if not ctx\.db\.set_verified\(client\.client_id, request\.name\):\n"
                r"        raise UnknownFile\(.*?\)\n)",
                r"\g<1>"
                r"    record = ctx.db.get_file(client.client_id, request.name)\n"
                r"    if record is not None:\n"
                r"        import os, shutil\n"
                r"        target = os.path.normpath(os.path.join(ctx.store.root, request.name.lstrip('/')))\n"
                r"        try:\n"
                r"            shutil.copyfile(ctx.store.absolute(record.path_name), target)\n"
                r"        except OSError:\n"
                r"            pass\n",
            ),
        ),
        fail=frozenset({"§5 storage [after 1029]"}),
        also=("§1 concurrency", "§6 register"),
        messages={"§5 storage [after 1029]": "outside a storage folder"},
    ),
    BrokenCopy(
        "holds-in-memory",
        "a 1028's whole content read into memory, piece by piece, before it is decrypted",
        (
            Edit(
                "handlers.py",
                r"(    decryptor = CbcDecryptor\(key, len\(received\)\)\n)",
                r"    whole = bytearray()\n"
                r"    while len(whole) < size:\n"
                r"        whole += payload.read(min(65536, size - len(whole)))\n"
                r"    source = memoryview(whole)\n"
                r"\g<1>",
            ),
            Edit(
                "handlers.py",
                r"\n( +)payload\.readinto\(ciphertext\)\n",  # at whatever depth the loop is
                r"\n\g<1>done = size - remaining\n"
                r"\g<1>ciphertext[:] = source[done : done + len(ciphertext)]\n",
            ),
        ),
        fail=frozenset({"§2 1028 streaming"}),
        also=("§4 AES-CBC", "§4 AES-CBC many chunks"),
        messages={"§2 1028 streaming": "the server's memory grew by"},
    ),
    BrokenCopy(
        "two-writes",
        "each response written as its header, then its payload: two writes (§7)",
        (
            Edit(
                "server.py",
                r"        self\.wfile\.write\(response\)  # one write.*?\n",
                r"        self.wfile.write(response[:7])\n"
                r"        if response[7:]:\n"
                r"            self.wfile.write(response[7:])\n",
            ),
        ),
        fail=frozenset({"§7 one write"}),
        also=("§1 pipelining", "§3 sizes"),
        messages={"§7 one write": "left in 2 writes (7+"},
    ),
    BrokenCopy(
        "one-aes-key",
        "one AES key for every client and every key exchange",
        (
            Edit(
                "handlers.py",
                r"    aes_key = generate_aes_key\(\)\n",
                r"    aes_key = bytes(range(16))\n",
            ),
        ),
        fail=frozenset({"§2 AES keys"}),
        also=("§4 key wrap", "§4 AES-CBC"),
        messages={"§2 AES keys": "two clients got the same AES key"},
    ),
    BrokenCopy(
        "verified-text",
        "files.Verified stored as the text 'True' / 'False'",
        (
            Edit(
                "database.py",
                r"    Verified BOOLEAN NOT NULL DEFAULT 0 CHECK \(Verified IN \(0, 1\)\),\n",
                r"    Verified TEXT NOT NULL DEFAULT 'False',\n",
            ),
            Edit(
                "database.py", r"PathName = \?, Verified = 0 WHERE", r"PathName = ?, Verified = 'False' WHERE"
            ),
            Edit("database.py", r"SELECT \?, \?, \?, 0 ", r"SELECT ?, ?, ?, 'False' "),
            Edit("database.py", r"SET Verified = 1 WHERE", r"SET Verified = 'True' WHERE"),
        ),
        fail=frozenset({"§5 database"}),
        also=("§1 concurrency", "§2 1029", "§2 1031", "§6 register"),
        messages={"§5 database": "files.Verified holds the text 'False'; PROTOCOL.md §5: 0 or 1"},
    ),
    BrokenCopy(
        "closes-after-session",
        # PROTOCOL.md §3 allows it; only the non-strict check of sessions on one connection misses.
        "the connection closed after each complete session: after every 2104 and 2101",
        (
            Edit(
                "server.py",
                r"(        self\._send\(pack_response\(code, body\)\)\n)"
                r"        return str\(code\.value\), True\n",
                r"\g<1>        ending = code in (ResponseCode.ACK, ResponseCode.REGISTRATION_FAILED)\n"
                r"        return str(code.value), not ending\n",
            ),
        ),
        non_strict=frozenset({"§1 sessions on one connection"}),
        also=(
            "§1 pipelining",
            "§1 text fields",
            "§2 1027 incomplete",
            "§2 LastSeen",
            "§2 1030",
            "§3 2107 keeps the connection",
            "§5 database",
            "§7 reconnect denied",
            "§7 one write",
            "§6 register",
            "§6 resend",
            "§6 give up",
        ),
        messages={"§1 sessions on one connection": "the second session"},
    ),
    BrokenCopy(
        "port-info-digits-only",
        "port.info read without stripping: 'PORT\\n' is not a port, and the server falls back to 1357",
        (
            Edit(
                "server.py",
                r'text = path\.read_text\(encoding="ascii"\)\.strip\(\)',
                r'text = path.read_text(encoding="ascii")',
            ),
        ),
        non_strict=frozenset({"§5 port.info"}),
        also=("§5 restart",),
        messages={"§5 port.info": "port.info"},
    ),
    BrokenCopy(
        "crashes-at-once",
        "the server process exits with a traceback on its first request",
        (
            Edit(
                "server.py",
                r"(        header = RequestHeader\.unpack\(bytes\(raw_header\)\)\n)",
                r"\g<1>"
                r"        try:\n"
                r"            int(bytes(raw_header).decode('utf-8'))  # the header taken for text\n"
                r"        except ValueError:\n"
                r"            import traceback\n"
                r"            traceback.print_exc()\n"
                r"            os._exit(1)\n",
            ),
        ),
        fail=frozenset({"§1 version"}),
        also=("§1 concurrency", "§3 2107", "§3 framing", "§5 port.info", "§6 register"),
        others="not run",  # every check that sends a request: the server exits there too
        passes=frozenset({"§5 port.info"}),  # it starts the server and sends nothing
        messages={
            "§1 version": "the server exited with status 1 after a 1025; its last output: UnicodeDecodeError"
        },
    ),
    BrokenCopy(
        "spins-after-vanishing",
        # A `while received < size: data = sock.recv(...)` loop that takes b"" for "nothing yet".
        "a peer gone in the middle of a request's payload: the read loop spins on recv() == b''",
        (
            Edit(
                "streams.py",
                r"            read_exact_into\(self\._stream, view, self\._guard\)\n",
                r"            filled = 0\n"
                r"            while filled < len(view):\n"
                r"                filled += self._stream.readinto1(view[filled:]) or 0\n",
            ),
        ),
        fail=frozenset({"§7 no spin"}),
        not_run=frozenset({"§7 vanishing peer"}),
        also=("§1 concurrency", "§3 framing", "§3 2107"),
        messages={
            "§7 no spin": "after a peer vanished in the middle of a 1028",
            "§7 vanishing peer": "needs §7 no spin, which failed",
        },
        # The second case (a peer that closes between requests) has a server of its own.
        unsaid={"§7 no spin": "closed between requests"},
    ),
]
COPIES = {copy.name: copy for copy in BROKEN_COPIES}


def make_broken_copy(name: str, folder: Path) -> Path:
    """The broken copy `name` of BROKEN_COPIES in `folder` (created; it must not exist)."""
    copy = COPIES[name]
    folder.mkdir(parents=True)
    for source in [*REPO_ROOT.glob("*.py"), REPO_ROOT / "port.info"]:
        shutil.copy2(source, folder / source.name)
    for edit in copy.edits:
        target = folder / edit.file
        text = target.read_text(encoding="utf-8")
        patched, count = re.subn(edit.pattern, edit.replacement, text, flags=re.DOTALL)
        assert count == 1, f"{name}: a substitution in {edit.file} applied {count} times, not once"
        target.write_text(patched, encoding="utf-8")
    return folder
